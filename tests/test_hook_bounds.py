"""Every request is bounded: a whole-request deadline, a cap on answer bytes, a cap on pages.

Each limit ends in a typed error (a ``TesRequestTimeoutError`` or a ``TesResponseLimitError``)
within the configured bound, which the trigger treats like any failed poll. The trickling body
needs a real socket (``MockTransport`` hands the body over at once): a tiny HTTP server on a
thread, writing one byte every 0.1 s.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_tes.exceptions import (
    TesListingTooLongError,
    TesMalformedResponseError,
    TesRequestTimeoutError,
    TesResponseLimitError,
    TesResponseTooLargeError,
    TesServerUnavailableError,
)
from airflow_provider_tes.hooks.tes import TesHook

CONN_ID = "tes_bounds"


def _set(monkeypatch: pytest.MonkeyPatch, host: str = "http://tes.test/ga4gh/tes/v1", **extra: Any) -> None:
    conn = {"conn_type": "tes", "host": host, "extra": {"retries": 0, **extra}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))


def _hook(handler: Any = None) -> TesHook:
    mock = httpx.MockTransport(handler) if handler else None
    return TesHook(CONN_ID, transport=mock, async_transport=mock, retry_min_wait=0.001, retry_max_wait=0.01)


def test_limit_errors_are_failed_polls() -> None:
    # the trigger retries TesServerUnavailableError and TesMalformedResponseError within its budget
    assert issubclass(TesRequestTimeoutError, TesServerUnavailableError)
    assert issubclass(TesResponseLimitError, TesMalformedResponseError)
    assert issubclass(TesResponseTooLargeError, TesResponseLimitError)
    assert issubclass(TesListingTooLongError, TesResponseLimitError)


# -- pages ----------------------------------------------------------------------------------------


def test_endless_fresh_tokens_with_the_same_tasks_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch)
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        tasks = [{"id": "a", "state": "RUNNING"}]
        return httpx.Response(200, json={"tasks": tasks, "next_page_token": uuid.uuid4().hex})

    with pytest.raises(TesListingTooLongError, match="listed already"):
        list(_hook(handler).list_tasks())
    assert len(calls) == 2


async def test_endless_fresh_tokens_and_tasks_stop_at_max_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, max_pages=7)
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        tasks = [{"id": uuid.uuid4().hex, "state": "RUNNING"}]
        return httpx.Response(200, json={"tasks": tasks, "next_page_token": uuid.uuid4().hex})

    hook = _hook(handler)
    seen: list[str | None] = []

    async def drain() -> None:
        async for task in hook.a_list_tasks():
            seen.append(task.id)

    with pytest.raises(TesListingTooLongError, match=r"max_pages \(7\)"):
        await drain()
    await hook.aclose()
    assert len(calls) == 7 and len(seen) == 7


def test_a_task_repeated_across_pages_is_listed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch)
    pages = {
        None: {
            "tasks": [{"id": "a", "state": "RUNNING"}, {"id": "b", "state": "QUEUED"}],
            "next_page_token": "p1",
        },
        "p1": {
            "tasks": [{"id": "b", "state": "QUEUED"}, {"id": "c", "state": "RUNNING"}],
            "next_page_token": "",
        },
    }
    hook = _hook(lambda request: httpx.Response(200, json=pages[request.url.params.get("page_token")]))
    assert [t.id for t in hook.list_tasks()] == ["a", "b", "c"]


# -- bytes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_body_is_refused(monkeypatch: pytest.MonkeyPatch, declared: bool) -> None:
    _set(monkeypatch, max_response_bytes=1000)
    body = json.dumps({"id": "t1", "state": "RUNNING", "description": "x" * 5000}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=body)
        return httpx.Response(200, content=iter([body[:600], body[600:]]))  # no Content-Length

    with pytest.raises(TesResponseTooLargeError, match=r"max_response_bytes \(1000\)") as info:
        _hook(handler).get_task("t1")
    assert info.value.http_status == 200


async def test_oversized_body_is_refused_async(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, max_response_bytes=100)
    hook = _hook(lambda request: httpx.Response(200, json={"tasks": [], "junk": "y" * 500}))
    with pytest.raises(TesResponseTooLargeError):
        await hook.a_get_task("t1")
    await hook.aclose()


def test_body_at_the_limit_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"id": "t1", "state": "RUNNING"}).encode()
    _set(monkeypatch, max_response_bytes=len(body))
    assert _hook(lambda request: httpx.Response(200, content=body)).get_task("t1").id == "t1"


# -- time -------------------------------------------------------------------------------------------


@pytest.fixture
def trickling_server() -> Iterator[int]:
    """Answers every request with a valid task, one byte every 0.1 s (about 4 s in all)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            body = json.dumps({"id": "t1", "state": "RUNNING"}).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            conn.sendall(head.encode())
            for byte in body:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.1)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def test_trickling_body_ends_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, trickling_server: int
) -> None:
    _set(monkeypatch, host=f"http://127.0.0.1:{trickling_server}/ga4gh/tes/v1", timeout=1)
    start = time.monotonic()
    with (
        TesHook(CONN_ID) as hook,
        pytest.raises(TesRequestTimeoutError, match=r"longer than the timeout \(1s\)"),
    ):
        hook.get_task("t1")
    assert time.monotonic() - start < 1.5


async def test_trickling_body_ends_within_the_timeout_async(
    monkeypatch: pytest.MonkeyPatch, trickling_server: int
) -> None:
    _set(monkeypatch, host=f"http://127.0.0.1:{trickling_server}/ga4gh/tes/v1", timeout=1, retries=1)
    start = time.monotonic()
    async with TesHook(CONN_ID, retry_min_wait=0.01, retry_max_wait=0.01) as hook:
        with pytest.raises(TesRequestTimeoutError):
            await hook.a_get_task("t1")
    assert 2 <= time.monotonic() - start < 2.5  # two tries of 1 s each


def test_a_create_past_its_deadline_is_ambiguous(
    monkeypatch: pytest.MonkeyPatch, trickling_server: int
) -> None:
    from airflow_provider_tes.exceptions import TesAmbiguousCreateError
    from airflow_provider_tes.models import TesExecutor, TesTask

    _set(monkeypatch, host=f"http://127.0.0.1:{trickling_server}/ga4gh/tes/v1", timeout=0.5)
    task = TesTask(executors=[TesExecutor(image="alpine", command=["true"])])  # nameless: raised
    with TesHook(CONN_ID) as hook, pytest.raises(TesAmbiguousCreateError, match="may have reached"):
        hook.create_task(task)

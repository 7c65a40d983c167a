"""Truthful outcomes on any spec-valid server: Funnel itself, Funnel's file:// storage, and the
documented behaviour of other servers as personalities of the proxy in front of Funnel.

Every case runs the real operator (waiting in the worker, the same trigger as deferred) and
asserts what the result or the error says: exit 0 succeeds with ``exit_code: 0``; exit 3 fails
with exit code 3, or fails closed with "exit code unknown" where no source of it can be read;
never a success by default.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from airflow_provider_tes.exceptions import TesTaskFailedError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesState, TesTask
from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.triggers.tes import TesTaskTrigger
from tests.support.airflow_env import aws_connection
from tests.support.inprocess import task_context
from tests.support.tes_proxy import TesProxy

pytestmark = pytest.mark.funnel

PERSONALITIES = [None, "minimal", "tesk", "azure", "tag_blind", "list_forbidden"]


def context(task_id: str) -> Any:
    return task_context("tes_outcomes", task_id)


@pytest.fixture
def connect(funnel_conn: Callable[..., str]) -> Callable[[str, str], str]:
    """``connect(base_url, outputs_url)`` defines a TES connection to it and returns its id."""

    def make(base_url: str, outputs_url: str) -> str:
        return funnel_conn(f"tes_out_{uuid.uuid4().hex[:8]}", outputs_url, base_url, poll_interval=1)

    return make


def run(conn_id: str, command: str | list[str], **kwargs: Any) -> dict[str, Any]:
    op = TesTaskOperator(
        task_id="outcome",
        image="alpine:3.20",
        command=command,
        tes_conn_id=conn_id,
        poll_interval=1,
        deferrable=False,
        **kwargs,
    )
    result: dict[str, Any] = op.execute(context("outcome"))
    return result


def read_url(url: str, s3_client: Any) -> bytes:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(parts.path).read_bytes()
    return bytes(s3_client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read())


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_exit_codes_through_each_personality(
    personality: str | None,
    funnel_proxy: Callable[..., TesProxy],
    connect: Callable[[str, str], str],
    s3_bucket: str,
    s3_client: Any,
) -> None:
    proxy = funnel_proxy(personality)
    conn_id = connect(proxy.base_url, f"s3://{s3_bucket}/outcomes/{personality}/")

    ok = run(conn_id, "echo fine > result.txt; echo to-stdout")
    assert ok["state"] == "COMPLETE"
    assert ok["exit_code"] == 0
    assert ok["outputs_url"].startswith(f"s3://{s3_bucket}/outcomes/{personality}/")
    assert read_url(ok["work_dir_url"] + "result.txt", s3_client) == b"fine\n"
    assert read_url(ok["stdout_url"], s3_client) == b"to-stdout\n"

    with pytest.raises(TesTaskFailedError, match="exit code 3") as failed:
        run(conn_id, "echo oops >&2; exit 3")
    assert "oops" in str(failed.value)

    creates = proxy.seen_calls("create")
    assert len(creates) == 2
    for request in creates:  # every attempt states preemptible, which TES leaves without default
        assert request.json()["resources"]["preemptible"] is False


@pytest.mark.parametrize("personality", ["minimal", "tesk"])
def test_no_readable_source_fails_closed(
    personality: str,
    funnel_proxy: Callable[..., TesProxy],
    connect: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
    s3_bucket: str,
) -> None:
    """The server keeps no executor stdout and the worker cannot read the outputs: unknown, not success."""
    proxy = funnel_proxy(personality)
    conn_id = connect(proxy.base_url, f"s3://{s3_bucket}/outcomes/blind/")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_UNREACHABLE", aws_connection("http://127.0.0.1:9"))
    for command in ("true", "exit 3"):
        with pytest.raises(TesTaskFailedError, match="exit code is unknown") as info:
            run(conn_id, command, aws_conn_id="aws_unreachable")
        assert "exit_code output" in str(info.value)


def test_file_outputs_on_funnel_local_storage(
    funnel: Any, connect: Callable[[str, str], str], s3_client: Any
) -> None:
    folder = Path(funnel.local_storage_dir) / f"outcomes-{uuid.uuid4().hex[:8]}"
    conn_id = connect(funnel.base_url, f"file://{folder}/")
    ok = run(conn_id, "echo local > result.txt; echo out")
    assert ok["exit_code"] == 0
    assert ok["outputs_url"].startswith(f"file://{folder}/")
    assert read_url(ok["work_dir_url"] + "result.txt", s3_client) == b"local\n"
    assert read_url(ok["stdout_url"], s3_client) == b"out\n"
    with pytest.raises(TesTaskFailedError, match="exit code 3"):
        run(conn_id, "exit 3")


def test_argv_without_a_shell(
    funnel: Any, connect: Callable[[str, str], str], s3_bucket: str, s3_client: Any
) -> None:
    conn_id = connect(funnel.base_url, f"s3://{s3_bucket}/outcomes/no-shell/")
    ok = run(conn_id, ["echo", "no", "shell"], shell=None)
    assert ok["exit_code"] == 0
    assert read_url(ok["stdout_url"], s3_client) == b"no shell\n"
    with pytest.raises(TesTaskFailedError, match="exit code 3"):
        run(conn_id, ["sh", "-c", "exit 3"], shell=None)


@pytest.mark.parametrize("personality", ["list_forbidden", "tag_blind"])
def test_fifty_tasks_watched_through_personality(
    personality: str,
    funnel: Any,
    funnel_proxy: Callable[..., TesProxy],
    connect: Callable[[str, str], str],
    s3_bucket: str,
) -> None:
    """50 triggers share one poller; the listing is refused (or lists foreign tasks): all end right."""
    proxy = funnel_proxy(personality)
    conn_id = connect(proxy.base_url, f"s3://{s3_bucket}/outcomes/fifty/")
    expected: dict[str, TesState] = {}
    with TesHook(conn_id) as hook:
        for i in range(50):
            fails = i % 5 == 0
            tes_id = hook.create_task(
                TesTask(
                    name=f"fifty-{personality}-{i}",
                    tags={"dag_id": "tes_outcomes_fifty"},
                    executors=[
                        TesExecutor(image="alpine:3.20", command=["sh", "-c", "exit 3" if fails else "true"])
                    ],
                )
            )
            expected[tes_id] = TesState.EXECUTOR_ERROR if fails else TesState.COMPLETE

    async def watch_all() -> dict[str, Any]:
        async def one(tes_id: str) -> Any:
            async for event in TesTaskTrigger(tes_task_id=tes_id, tes_conn_id=conn_id, poll_interval=1).run():
                return event.payload
            return None

        payloads = await asyncio.wait_for(asyncio.gather(*(one(t) for t in expected)), timeout=240)
        return dict(zip(expected, payloads, strict=True))

    events = asyncio.run(watch_all())
    assert {t: (e["status"], e["state"]) for t, e in events.items()} == {
        t: ("terminal", s.value) for t, s in expected.items()
    }

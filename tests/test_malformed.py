"""Property tests: whatever a TES server answers, the hook raises only ``TesError`` subclasses.

Every answer comes from an ``httpx.MockTransport`` (no network): random bytes, random JSON
values, task-shaped documents with wrong types, unknown states, create answers without an id,
truncated JSON, and a spread of HTTP statuses. ``TesHook.get_task``, ``list_tasks``,
``create_task``, ``get_service_info`` and the async ``a_get_task`` must either return a valid
model or raise a subclass of :class:`airflow_provider_tes.exceptions.TesError` -- never a
``ValueError``, ``KeyError``, ``RecursionError``, pydantic or httpx error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_provider_tes.exceptions import TesError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import (
    TesExecutor,
    TesListTasksResponse,
    TesServiceInfo,
    TesState,
    TesTask,
)
from tests.support.spec import EXAMPLE_SERVICE_INFO

CONN_ID = "tes_malformed"
PASSWORD = "malformed-test-password"
SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(autouse=True)
def _connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "tes",
                "host": "http://tes.invalid/ga4gh/tes/v1",
                "login": "user",
                "password": PASSWORD,
            }
        ),
    )


# -- strategies --------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "COMPLETE", "RUNNING", "/mnt/x", "s3://b/k", "0", "12"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)

VALID_TASK: dict[str, Any] = {
    "id": "task-1",
    "state": "COMPLETE",
    "name": "n",
    "description": "d",
    "inputs": [{"path": "/in", "url": "s3://b/in", "type": "FILE"}],
    "outputs": [{"path": "/out", "url": "s3://b/out", "type": "DIRECTORY"}],
    "resources": {"cpu_cores": 1, "ram_gb": 1.5, "preemptible": False, "zones": ["z"]},
    "executors": [{"image": "alpine", "command": ["echo", "hi"], "env": {"A": "1"}, "workdir": "/w"}],
    "volumes": ["/vol"],
    "tags": {"k": "v"},
    "logs": [
        {
            "logs": [{"exit_code": 0, "stdout": "o", "stderr": "e", "start_time": "t"}],
            "outputs": [{"url": "s3://b/out/f", "path": "/out/f", "size_bytes": "12"}],
            "system_logs": ["s"],
            "metadata": {"m": "1"},
        }
    ],
    "creation_time": "2025-01-01T00:00:00Z",
}

VALID_SERVICE_INFO: dict[str, Any] = {
    **EXAMPLE_SERVICE_INFO,
    "name": "TES",
    "organization": {"name": "o", "url": "https://o"},
    "version": "1.0",
    "storage": ["s3://b"],
}

#: Paths inside a valid task whose value gets replaced by a random JSON value.
TASK_PATHS: list[tuple[Any, ...]] = [
    ("id",),
    ("state",),
    ("name",),
    ("tags",),
    ("tags", "k"),
    ("volumes",),
    ("volumes", 0),
    ("inputs",),
    ("inputs", 0),
    ("inputs", 0, "path"),
    ("inputs", 0, "type"),
    ("outputs", 0, "url"),
    ("resources",),
    ("resources", "cpu_cores"),
    ("resources", "zones"),
    ("executors",),
    ("executors", 0, "command"),
    ("executors", 0, "env"),
    ("logs",),
    ("logs", 0),
    ("logs", 0, "logs", 0, "exit_code"),
    ("logs", 0, "outputs", 0, "size_bytes"),
    ("logs", 0, "system_logs"),
    ("logs", 0, "metadata"),
    ("creation_time",),
]


def _mutate(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@st.composite
def wrong_typed_tasks(draw: st.DrawFn) -> dict[str, Any]:
    doc: Any = VALID_TASK
    for path in draw(st.lists(st.sampled_from(TASK_PATHS), min_size=1, max_size=3, unique=True)):
        value = draw(json_values)
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier mutation removed the parent
            doc = _mutate(doc, path, value)
    if draw(st.booleans()):
        doc = {k: v for k, v in doc.items() if draw(st.booleans())}
    return dict(doc)


unknown_states = st.text(max_size=20).filter(lambda s: s not in TesState.__members__)
tasks_with_unknown_state = unknown_states.map(lambda s: {**VALID_TASK, "state": s})

task_docs = (
    wrong_typed_tasks()
    | tasks_with_unknown_state
    | st.just(VALID_TASK)
    | st.dictionaries(st.sampled_from(list(VALID_TASK)), json_values, max_size=5)
)
list_docs = st.fixed_dictionaries(
    {"tasks": st.lists(task_docs, max_size=3)},
    optional={"next_page_token": json_values | st.text(max_size=8)},
) | st.builds(lambda tasks: {"tasks": tasks}, json_values)
create_docs: st.SearchStrategy[Any] = (
    st.just({})
    | st.builds(lambda v: {"id": v}, json_values)
    | st.dictionaries(st.text(max_size=8).filter(lambda k: k != "id"), json_values, max_size=3)
)
service_info_docs = st.builds(
    _mutate,
    st.just(VALID_SERVICE_INFO),
    st.sampled_from([("id",), ("name",), ("type",), ("type", "group"), ("version",), ("storage",)]),
    json_values,
) | st.just(VALID_SERVICE_INFO)


def _encoded(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """A document as JSON, or the same JSON cut short."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        raw = json.dumps(draw(docs)).encode()
        if draw(st.booleans()):
            return raw
        return raw[: draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))]

    return build()


def bodies(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return (
        _encoded(docs)
        | st.binary(max_size=300)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.sampled_from([b"", b"null", b"[]", b"{}", b"\xff\xfe{", b'{"id": "\\ud800"}', b"NaN", b"1e999"])
    )


statuses = st.sampled_from(
    [200, 200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 409, 429, 500, 503, 504, 599]
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "text/html",
        "application/json; charset=latin-1",
        "application/json; charset=no-such-charset",
    ]
)
#: Answers whose declared charset cannot decode the body.
UNDECODABLE = "application/json; charset=utf-16"


class Answer:
    """A MockTransport handler: the generated answer first, then an empty page for page-token calls."""

    def __init__(self, status: int, body: bytes, content_type: str | None) -> None:
        self.status = status
        self.body = body
        self.headers = {"Content-Type": content_type} if content_type else {}
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        assert self.calls < 50, "the hook keeps calling"
        if "page_token" in request.url.params:
            return httpx.Response(200, json={"tasks": []})
        return httpx.Response(self.status, content=self.body, headers=self.headers)


def _hook(handler: Callable[[httpx.Request], httpx.Response]) -> TesHook:
    transport = httpx.MockTransport(handler)
    return TesHook(CONN_ID, transport=transport, async_transport=transport, retries=0, retry_min_wait=0.001)


def _only_tes_errors(call: Callable[[], Any]) -> Any:
    """The call's result, or the TesError it raised; any other exception fails the test."""
    try:
        return call()
    except TesError as err:
        return _printable(err)


def _printable(err: TesError) -> TesError:
    # the message goes into task logs: it must be a non-empty text
    assert str(err)
    return err


# -- properties --------------------------------------------------------------------------------------


@SETTINGS
@given(status=statuses, body=bodies(task_docs), content_type=content_types)
def test_get_task(status: int, body: bytes, content_type: str | None) -> None:
    with _hook(Answer(status, body, content_type)) as hook:
        result = _only_tes_errors(lambda: hook.get_task("task-1", view="FULL"))
    assert isinstance(result, TesTask | TesError)


@SETTINGS
@given(status=statuses, body=bodies(list_docs), content_type=content_types)
def test_list_tasks(status: int, body: bytes, content_type: str | None) -> None:
    with _hook(Answer(status, body, content_type)) as hook:
        result = _only_tes_errors(lambda: list(hook.list_tasks(view="FULL")))
    if not isinstance(result, TesError):
        assert all(isinstance(t, TesTask) for t in result)


@SETTINGS
@given(status=statuses, body=bodies(create_docs), content_type=content_types, named=st.booleans())
def test_create_task(status: int, body: bytes, content_type: str | None, named: bool) -> None:
    task = TesTask(
        name="malformed-probe-t1" if named else None,
        tags={"k": "v"},
        executors=[TesExecutor(image="alpine", command=["true"])],
    )
    with _hook(Answer(status, body, content_type)) as hook:
        result = _only_tes_errors(lambda: hook.create_task(task))
    if not isinstance(result, TesError):
        assert isinstance(result, str) and result


@SETTINGS
@given(status=statuses, body=bodies(service_info_docs), content_type=content_types)
def test_get_service_info(status: int, body: bytes, content_type: str | None) -> None:
    with _hook(Answer(status, body, content_type)) as hook:
        result = _only_tes_errors(hook.get_service_info)
    assert isinstance(result, TesServiceInfo | TesError)


@SETTINGS
@given(status=statuses, body=bodies(task_docs), content_type=content_types)
def test_a_get_task(status: int, body: bytes, content_type: str | None) -> None:
    async def go() -> Any:
        async with _hook(Answer(status, body, content_type)) as hook:
            try:
                return await hook.a_get_task("task-1", view="FULL")
            except TesError as err:
                return _printable(err)

    assert isinstance(asyncio.run(go()), TesTask | TesError)


def test_valid_answers_parse() -> None:
    """Sanity check of the strategies' base documents: they are what a good server sends."""
    assert TesTask.from_response(VALID_TASK).logs
    assert TesServiceInfo.from_response(VALID_SERVICE_INFO).version == "1.0"
    assert TesListTasksResponse.from_response({"tasks": [VALID_TASK]}).tasks[0].id == "task-1"


# -- answers that once escaped as non-TES errors -------------------------------------------------


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("status", [200, 500])
def test_deeply_nested_json_is_a_tes_error(status: int) -> None:
    with _hook(Answer(status, _deep(100_000), "application/json")) as hook:
        _only_tes_errors(lambda: hook.get_task("task-1"))


@settings(max_examples=150, deadline=None)
@given(value=st.binary(max_size=30).filter(lambda b: not any(c in b for c in b"\r\n\0")))
@example(value=b"\xc2\xb2")
@example(value=b"\xb2")
def test_any_retry_after_header_is_a_tes_error(value: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=[(b"Retry-After", value)], content=b"{}")

    with _hook(handler) as hook:
        _only_tes_errors(lambda: hook.get_task("task-1"))


@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("body", [b"\x00\x00", b'{"id":', b"\x01\x80"])
def test_undecodable_charset_is_a_tes_error(status: int, body: bytes) -> None:
    with _hook(Answer(status, body, UNDECODABLE)) as hook:
        _only_tes_errors(lambda: hook.get_task("task-1"))


def test_repeated_page_token_is_a_tes_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        assert calls < 50, "the hook keeps following the same page token"
        return httpx.Response(200, json={"tasks": [{"id": "a"}], "next_page_token": "same"})

    with _hook(handler) as hook:
        _only_tes_errors(lambda: list(hook.list_tasks()))

"""TesHook against httpx.MockTransport, every request checked against the TES 1.1 spec.

Connections come from ``AIRFLOW_CONN_*`` environment variables (set per test with
monkeypatch), the way a deployment without a metadata database defines them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from airflow_provider_tes.connection import TesConnection
from airflow_provider_tes.exceptions import (
    TesAmbiguousCreateError,
    TesAuthError,
    TesBadRequestError,
    TesConfigurationError,
    TesError,
    TesMalformedResponseError,
    TesNotFoundError,
    TesServerUnavailableError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesInput, TesState, TesTask, TesView
from tests.support.spec import (
    EXAMPLE_SERVICE_INFO,
    AsyncSpecCheckingTransport,
    SpecCheckingTransport,
    validate_response,
)

CONN_ID = "tes_unit"
USER = "alice-user"
PASSWORD = "pw-Sup3r-s3cret"
TOKEN = "tok-V3ry-s3cret"
HOST = "http://tes.test:8000/ga4gh/tes/v1"
BASE = "http://tes.test:8000/ga4gh/tes/v1"

Handler = Callable[[httpx.Request], httpx.Response]


# -- helpers ---------------------------------------------------------------------------------------


def set_conn(monkeypatch: pytest.MonkeyPatch, value: dict[str, Any] | str, conn_id: str = CONN_ID) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}", value if isinstance(value, str) else json.dumps(value)
    )


def json_conn(**overrides: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "conn_type": "tes",
        "host": HOST,
        "login": USER,
        "password": PASSWORD,
        "extra": {},
    }
    conn.update(overrides)
    return conn


@pytest.fixture
def basic_conn(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, json_conn())


def task_doc(task_id: str, state: str = "RUNNING", **fields: Any) -> dict[str, Any]:
    """A spec-valid tesTask as a server returns it."""
    doc = {"id": task_id, "state": state, "executors": [{"image": "alpine", "command": ["true"]}], **fields}
    validate_response("tesTask", doc)
    return doc


def respond(schema: str | None, data: Any, status: int = 200, **kwargs: Any) -> httpx.Response:
    """A JSON response; spec-checked when ``schema`` is given."""
    if schema is not None:
        validate_response(schema, data)
    return httpx.Response(status, json=data, **kwargs)


SERVICE_INFO = EXAMPLE_SERVICE_INFO


class Harness:
    """A hook whose sync and async traffic goes through spec checking into one handler."""

    def __init__(self, handler: Handler, conn_id: str = CONN_ID, base_path: str = "/ga4gh/tes/v1", **kw: Any):
        self.handler = handler
        mock = httpx.MockTransport(handler)
        self.transport = SpecCheckingTransport(mock, base_path=base_path)
        self.async_transport = AsyncSpecCheckingTransport(mock, base_path=base_path)
        kw.setdefault("retry_min_wait", 0.001)
        kw.setdefault("retry_max_wait", 0.01)
        self.hook = TesHook(conn_id, transport=self.transport, async_transport=self.async_transport, **kw)

    @property
    def requests(self) -> list[httpx.Request]:
        return self.transport.requests + self.async_transport.requests

    def count(self, method: str, suffix: str = "") -> int:
        return self.transport.count(method, suffix) + self.async_transport.count(method, suffix)


def scripted(*responses: httpx.Response | Exception | Handler) -> Handler:
    """Answers in order; the last one repeats."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        if isinstance(item, Exception):
            raise item
        return item

    return handler


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        for secret in (PASSWORD, TOKEN):
            assert secret not in str(text), f"secret leaked in {text!r}"
            assert quote(secret) not in str(text)
            assert base64.b64encode(f"{USER}:{secret}".encode()).decode() not in str(text)


# -- base URL and connection forms --------------------------------------------------------------


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        pytest.param(json_conn(), "http://tes.test:8000/ga4gh/tes/v1", id="json-full-url"),
        pytest.param(json_conn(host="tes.test"), "https://tes.test/ga4gh/tes/v1", id="json-no-scheme-https"),
        pytest.param(
            json_conn(host="tes.test", port=8443), "https://tes.test:8443/ga4gh/tes/v1", id="json-port"
        ),
        pytest.param(
            json_conn(host="http://tes.test:8000"), "http://tes.test:8000/ga4gh/tes/v1", id="json-no-path"
        ),
        pytest.param(
            json_conn(host="http://tes.test:8000/"), "http://tes.test:8000/ga4gh/tes/v1", id="json-slash"
        ),
        pytest.param(
            json_conn(host="https://tes.test/custom/api/"), "https://tes.test/custom/api", id="json-path"
        ),
        pytest.param(
            json_conn(host="tes.test", schema="api/tes"), "https://tes.test/api/tes", id="json-schema"
        ),
        pytest.param(
            json_conn(host="tes.test:8000", extra={"protocol": "http"}),
            "http://tes.test:8000/ga4gh/tes/v1",
            id="json-protocol-extra",
        ),
        pytest.param(json_conn(host="http://[::1]:8000"), "http://[::1]:8000/ga4gh/tes/v1", id="ipv6"),
        pytest.param(
            f"tes://{USER}:{PASSWORD}@tes.test:8000/ga4gh/tes/v1?protocol=http",
            "http://tes.test:8000/ga4gh/tes/v1",
            id="uri-full",
        ),
        pytest.param(f"tes://{USER}:{PASSWORD}@tes.test", "https://tes.test/ga4gh/tes/v1", id="uri-defaults"),
        pytest.param(
            f"tes://{USER}:{PASSWORD}@tes.test:9000/custom?protocol=http",
            "http://tes.test:9000/custom",
            id="uri-schema-is-path",
        ),
    ],
)
def test_base_url_rules(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any] | str, expected: str) -> None:
    set_conn(monkeypatch, conn)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return respond("tesServiceInfo", SERVICE_INFO)

    h = Harness(handler, base_path=urlsplit(expected).path)
    assert h.hook.base_url == expected
    assert h.hook.get_service_info().name == "Funnel"
    assert seen == [f"{expected}/service-info"]
    # both forms carry the basic credentials
    assert (
        h.requests[0].headers["Authorization"]
        == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    )


@pytest.mark.parametrize(
    "conn",
    [
        pytest.param(json_conn(host=""), id="no-host"),
        pytest.param(json_conn(host="ftp://tes.test"), id="bad-scheme"),
        pytest.param(json_conn(extra={"auth_type": "kerberos"}), id="bad-auth-type"),
        pytest.param(json_conn(extra={"auth_type": "bearer"}, password=None), id="bearer-without-token"),
        pytest.param(json_conn(login=None, extra={"auth_type": "basic"}), id="basic-without-login"),
        pytest.param(json_conn(extra={"timeout": "soon"}), id="bad-timeout"),
        pytest.param(json_conn(extra={"max_concurrency": 0}), id="bad-concurrency"),
        pytest.param(json_conn(extra={"verify": "maybe"}), id="bad-verify"),
        pytest.param(json_conn(conn_type="http"), id="wrong-conn-type"),
    ],
)
def test_bad_connection_is_configuration_error(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any]) -> None:
    set_conn(monkeypatch, conn)
    h = Harness(scripted(respond("tesServiceInfo", SERVICE_INFO)))
    with pytest.raises(TesConfigurationError) as info:
        h.hook.get_service_info()
    assert CONN_ID in str(info.value) or "connection extra" in str(info.value)
    assert h.requests == []
    assert_no_secret(info.value)


def test_wrong_conn_type_names_the_type(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, json_conn(conn_type="http"))
    with pytest.raises(TesConfigurationError, match=r"'http'.*'tes'"):
        _ = TesHook(CONN_ID).settings


def test_unknown_connection() -> None:
    hook = TesHook("tes_missing_xyz")
    with pytest.raises(TesConfigurationError, match="AIRFLOW_CONN_TES_MISSING_XYZ"):
        hook.get_task("t1")
    ok, msg = TesHook("tes_missing_xyz").test_connection()
    assert not ok
    assert "AIRFLOW_CONN_TES_MISSING_XYZ" in msg


async def test_unknown_connection_async() -> None:
    hook = TesHook("tes_missing_xyz")
    with pytest.raises(TesConfigurationError, match="AIRFLOW_CONN_TES_MISSING_XYZ"):
        await hook.a_get_task("t1")


def _auth_header(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any] | str) -> str | None:
    set_conn(monkeypatch, conn)
    h = Harness(scripted(respond("tesServiceInfo", SERVICE_INFO)))
    h.hook.get_service_info()
    return h.requests[0].headers.get("Authorization")


def test_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert _auth_header(monkeypatch, json_conn()) == expected
    assert (
        _auth_header(monkeypatch, f"tes://{USER}:{PASSWORD}@tes.test:8000/ga4gh/tes/v1?protocol=http")
        == expected
    )


def test_bearer_from_extra_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _auth_header(monkeypatch, json_conn(extra={"token": TOKEN})) == f"Bearer {TOKEN}"
    uri = f"tes://{USER}:{PASSWORD}@tes.test:8000/ga4gh/tes/v1?protocol=http&token={TOKEN}"
    assert _auth_header(monkeypatch, uri) == f"Bearer {TOKEN}"


def test_bearer_from_password(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = json_conn(login=None, password=TOKEN, extra={"auth_type": "bearer"})
    assert _auth_header(monkeypatch, conn) == f"Bearer {TOKEN}"


def test_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _auth_header(monkeypatch, json_conn(login=None, password=None)) is None
    assert _auth_header(monkeypatch, json_conn(extra={"auth_type": "none"})) is None


def test_accept_header_and_no_redirects(basic_conn: None) -> None:
    h = Harness(scripted(httpx.Response(302, headers={"Location": "http://evil.test/"})))
    with pytest.raises(TesBadRequestError):
        h.hook.get_task("t1")
    assert len(h.requests) == 1
    assert h.requests[0].headers["Accept"] == "application/json"


# -- status handling ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_not_retried_and_names_the_user(basic_conn: None, status: int) -> None:
    h = Harness(scripted(respond(None, {"message": "bad credentials"}, status=status)))
    with pytest.raises(TesAuthError) as info:
        h.hook.get_task("t1")
    assert len(h.requests) == 1
    msg = str(info.value)
    assert CONN_ID in msg
    assert USER in msg
    assert "bad credentials" in msg
    assert info.value.http_status == status
    assert_no_secret(msg, repr(info.value))


def test_auth_error_bearer_does_not_leak_token(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, json_conn(extra={"token": TOKEN}))
    h = Harness(scripted(httpx.Response(401, text="")))
    with pytest.raises(TesAuthError, match="bearer token") as info:
        h.hook.get_task("t1")
    assert CONN_ID in str(info.value)
    assert_no_secret(info.value)


def test_not_found(basic_conn: None) -> None:
    h = Harness(scripted(respond(None, {"message": "task not found"}, status=404)))
    with pytest.raises(TesNotFoundError) as info:
        h.hook.get_task("nope")
    assert info.value.http_status == 404
    assert info.value.url == f"{BASE}/tasks/nope"
    assert len(h.requests) == 1


def test_bad_request_includes_server_message(basic_conn: None) -> None:
    h = Harness(scripted(respond(None, {"code": 3, "message": "executor image is required"}, status=400)))
    task = TesTask(name="n", executors=[TesExecutor(image="alpine", command=["true"])])
    with pytest.raises(TesBadRequestError, match="executor image is required") as info:
        h.hook.create_task(task)
    assert info.value.http_status == 400
    assert info.value.method == "POST"
    assert h.count("POST") == 1
    assert h.count("GET") == 0


def test_503_then_200_is_retried(basic_conn: None) -> None:
    h = Harness(scripted(httpx.Response(503), respond("tesTask", task_doc("t1"))))
    assert h.hook.get_task("t1").state is TesState.RUNNING
    assert len(h.requests) == 2


@pytest.mark.parametrize("status", [500, 502, 504])
def test_5xx_on_get_retried(basic_conn: None, status: int) -> None:
    h = Harness(scripted(httpx.Response(status), httpx.Response(status), respond("tesTask", task_doc("t1"))))
    assert h.hook.get_task("t1").id == "t1"
    assert len(h.requests) == 3


@pytest.mark.parametrize("status", [507, 520, 599])
def test_other_5xx_on_get_retried(basic_conn: None, status: int) -> None:
    h = Harness(scripted(httpx.Response(status), respond("tesTask", task_doc("t1"))))
    assert h.hook.get_task("t1").id == "t1"
    assert len(h.requests) == 2


@pytest.mark.parametrize("status", [501, 505])
def test_permanent_5xx_not_retried(basic_conn: None, status: int) -> None:
    h = Harness(scripted(httpx.Response(status, json={"message": "not implemented"})))
    with pytest.raises(TesServerUnavailableError, match="not implemented") as info:
        h.hook.get_task("t1")
    assert info.value.http_status == status
    assert len(h.requests) == 1


def test_connect_error_on_get_retried(basic_conn: None) -> None:
    h = Harness(
        scripted(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), respond("tesTask", task_doc("t1")))
    )
    assert h.hook.get_task("t1").id == "t1"
    assert len(h.requests) == 3


def test_429_retry_after_honoured(basic_conn: None) -> None:
    times: list[float] = []

    def stamp(response: httpx.Response) -> Handler:
        def handler(request: httpx.Request) -> httpx.Response:
            times.append(time.monotonic())
            return response

        return handler

    h = Harness(
        scripted(
            stamp(httpx.Response(429, headers={"Retry-After": "1"})),
            stamp(respond("tesTask", task_doc("t1"))),
        ),
        retry_max_wait=5.0,
    )
    assert h.hook.get_task("t1").id == "t1"
    assert len(times) == 2
    assert times[1] - times[0] >= 0.9, "Retry-After: 1 was not honoured"


def test_429_retry_after_capped_by_max_wait(basic_conn: None) -> None:
    h = Harness(
        scripted(httpx.Response(429, headers={"Retry-After": "3600"}), respond("tesTask", task_doc("t1")))
    )
    start = time.monotonic()
    assert h.hook.get_task("t1").id == "t1"
    assert time.monotonic() - start < 5
    assert len(h.requests) == 2


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_exhausted(basic_conn: None, retries: int) -> None:
    h = Harness(scripted(httpx.Response(503, json={"message": "overloaded"})), retries=retries)
    with pytest.raises(TesServerUnavailableError) as info:
        h.hook.get_task("t1")
    assert not isinstance(info.value, TesAmbiguousCreateError)
    assert len(h.requests) == retries + 1
    assert f"{BASE}/tasks/t1" in str(info.value)
    assert info.value.http_status == 503
    assert "overloaded" in str(info.value)


def test_retries_from_connection_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, json_conn(extra={"retries": 2}))
    h = Harness(scripted(httpx.ConnectError("refused")))
    with pytest.raises(TesServerUnavailableError, match="ConnectError") as info:
        h.hook.get_task("t1")
    assert len(h.requests) == 3
    assert f"{BASE}/tasks/t1" in str(info.value)


def test_task_id_is_quoted(basic_conn: None) -> None:
    h = Harness(scripted(respond("tesTask", task_doc("a?b c#d"))))
    h.hook.get_task("a?b c#d", view=TesView.FULL)
    assert h.requests[0].url.raw_path == b"/ga4gh/tes/v1/tasks/a%3Fb%20c%23d?view=FULL"
    with pytest.raises(TesConfigurationError):
        h.hook.get_task("")


@pytest.mark.parametrize("task_id", ["", ".", "..", "a/b", "/", "../tasks"])
async def test_task_ids_that_address_other_paths_are_refused(basic_conn: None, task_id: str) -> None:
    h = Harness(scripted(respond("tesTask", task_doc("t1"))))
    for call in (h.hook.get_task, h.hook.cancel_task):
        with pytest.raises(TesConfigurationError, match="task_id"):
            call(task_id)
    with pytest.raises(TesConfigurationError, match="task_id"):
        await h.hook.a_get_task(task_id)
    with pytest.raises(TesConfigurationError, match="task_id"):
        await h.hook.a_cancel_task(task_id)
    assert h.requests == []


def test_cancel(basic_conn: None) -> None:
    h = Harness(scripted(httpx.Response(503), respond("tesCancelTaskResponse", {})))
    h.hook.cancel_task("t1")
    assert [r.url.path for r in h.requests] == ["/ga4gh/tes/v1/tasks/t1:cancel"] * 2
    assert all(r.method == "POST" for r in h.requests)


# -- create ---------------------------------------------------------------------------------------

NAME = "airflow-dag1-task1-try1"
TAGS = {"airflow_dag_id": "dag1", "airflow_try": "1"}


def make_task(name: str | None = NAME, **kw: Any) -> TesTask:
    return TesTask(
        name=name, tags=TAGS, executors=[TesExecutor(image="alpine", command=["echo", "hi"])], **kw
    )


class FakeServer:
    """Creates tasks; ``fail_posts`` answers (status or exception) go out after (or instead of) storing."""

    def __init__(self, fail_posts: list[tuple[Any, bool]] | None = None) -> None:
        self.tasks: list[dict[str, Any]] = []
        self.fail_posts = list(fail_posts or [])
        self.list_params: list[list[tuple[str, str]]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path.endswith("/tasks"):
            body = json.loads(request.content)
            failure, stored = self.fail_posts.pop(0) if self.fail_posts else (None, True)
            task_id = f"task-{len(self.tasks) + 1}"
            if stored:
                self.tasks.insert(0, {**body, "id": task_id, "state": "QUEUED"})
            if isinstance(failure, Exception):
                raise failure
            if isinstance(failure, int):
                return httpx.Response(failure, json={"message": "try later"})
            return respond("tesCreateTaskResponse", {"id": task_id})
        if request.method == "GET" and path.endswith("/tasks"):
            params = list(request.url.params.multi_items())
            self.list_params.append(params)
            prefix = request.url.params.get("name_prefix", "")
            view = request.url.params.get("view", "MINIMAL")
            found = [self._view(t, view) for t in self.tasks if t.get("name", "").startswith(prefix)]
            return respond("tesListTasksResponse", {"tasks": found})
        return httpx.Response(404)

    @staticmethod
    def _view(task: dict[str, Any], view: str) -> dict[str, Any]:
        if view == "MINIMAL":
            return {"id": task["id"], "state": task["state"]}
        if view == "BASIC":
            return {
                **task,
                "inputs": [{k: v for k, v in i.items() if k != "content"} for i in task.get("inputs", [])],
            }
        return task


def test_create_sends_the_task(basic_conn: None) -> None:
    server = FakeServer()
    h = Harness(server.handler)
    task = make_task(inputs=[TesInput(url="s3://b/k", path="/data/k")])
    assert h.hook.create_task(task) == "task-1"
    assert h.count("POST") == 1
    assert json.loads(h.requests[0].content) == task.to_request()


def test_create_503_but_created_returns_existing_id(basic_conn: None) -> None:
    server = FakeServer(fail_posts=[(503, True)])
    h = Harness(server.handler)
    assert h.hook.create_task(make_task()) == "task-1"
    assert h.count("POST") == 1
    assert len(server.tasks) == 1
    assert ("name_prefix", NAME) in server.list_params[0]
    assert ("view", "BASIC") in server.list_params[0]


@pytest.mark.parametrize(
    ("failure", "stored", "posts", "gets"),
    [
        pytest.param(503, False, 2, 1, id="503_not_created_resends_once"),
        pytest.param(
            httpx.ConnectError("refused"), False, 2, 0, id="connect_error_is_retried_without_lookup"
        ),
        pytest.param(httpx.ReadTimeout("slow"), True, 1, 1, id="read_timeout_looks_up"),
        pytest.param(507, True, 1, 1, id="other_5xx_on_create_looks_up"),
        # 429 means the server did not process the request: resending is safe.
        pytest.param(429, False, 2, 0, id="429_is_resent"),
    ],
)
def test_create_after_one_failed_post(
    basic_conn: None, failure: int | Exception, stored: bool, posts: int, gets: int
) -> None:
    """Whether the failed POST may have created the task decides between a lookup and a resend;
    either way the task is created once."""
    server = FakeServer(fail_posts=[(failure, stored)])
    h = Harness(server.handler)
    assert h.hook.create_task(make_task()) == "task-1"
    assert h.count("POST") == posts
    assert h.count("GET") == gets
    assert len(server.tasks) == 1


def test_create_lookup_needs_exact_name_and_tags(basic_conn: None) -> None:
    server = FakeServer(fail_posts=[(500, False)])
    # a longer name with the same prefix, and the same name with other tags: neither is ours
    server.tasks = [
        task_doc("other-1", "QUEUED", name=NAME + "0", tags=TAGS),
        task_doc("other-2", "QUEUED", name=NAME, tags={**TAGS, "airflow_try": "2"}),
    ]
    h = Harness(server.handler)
    assert h.hook.create_task(make_task()) == "task-3"
    assert h.count("POST") == 2


def test_create_nameless_ambiguous(basic_conn: None) -> None:
    server = FakeServer(fail_posts=[(503, True)])
    h = Harness(server.handler)
    with pytest.raises(TesAmbiguousCreateError) as info:
        h.hook.create_task(make_task(name=None))
    assert h.count("POST") == 1
    assert h.count("GET") == 0
    assert info.value.method == "POST"
    assert f"{BASE}/tasks" in str(info.value)


def test_create_ambiguous_every_time_gives_up(basic_conn: None) -> None:
    server = FakeServer(fail_posts=[(503, False)] * 10)
    h = Harness(server.handler, retries=2)
    with pytest.raises(TesAmbiguousCreateError):
        h.hook.create_task(make_task())
    assert h.count("POST") == 3
    assert h.count("GET") == 2


def test_create_lookup_of_task_with_inline_content(basic_conn: None) -> None:
    server = FakeServer(fail_posts=[(503, True)])
    h = Harness(server.handler)
    task = make_task(inputs=[TesInput(content="echo hi", path="/scripts/run.sh")])
    assert h.hook.create_task(task) == "task-1"
    assert h.count("POST") == 1


# -- list ---------------------------------------------------------------------------------------


def paged(pages: list[dict[str, Any]]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("page_token")
        index = 0 if token is None else int(token.removeprefix("p"))
        return respond("tesListTasksResponse", pages[index])

    return handler


def test_list_pages_until_no_token(basic_conn: None) -> None:
    pages = [
        {"tasks": [task_doc("a"), task_doc("b")], "next_page_token": "p1"},
        {"tasks": [task_doc("c")], "next_page_token": "p2"},
        {"tasks": [task_doc("d")]},
    ]
    h = Harness(paged(pages))
    assert [t.id for t in h.hook.list_tasks(page_size=2)] == ["a", "b", "c", "d"]
    assert len(h.requests) == 3
    assert [r.url.params.get("page_token") for r in h.requests] == [None, "p1", "p2"]
    assert all(r.url.params.get("page_size") == "2" for r in h.requests)


def test_list_stops_on_empty_token(basic_conn: None) -> None:
    pages = [
        {"tasks": [task_doc("a")], "next_page_token": "p1"},
        {"tasks": [task_doc("b")], "next_page_token": ""},
    ]
    h = Harness(paged(pages))
    assert [t.id for t in h.hook.list_tasks()] == ["a", "b"]
    assert len(h.requests) == 2


def test_list_stops_on_empty_page(basic_conn: None) -> None:
    pages = [
        {"tasks": [task_doc("a")], "next_page_token": "p1"},
        {"tasks": [], "next_page_token": "p2"},
        {"tasks": [task_doc("never")]},
    ]
    h = Harness(paged(pages))
    assert [t.id for t in h.hook.list_tasks()] == ["a"]
    assert len(h.requests) == 2


def test_minimal_answers_are_read_as_minimal(basic_conn: None) -> None:
    """Funnel sends whole tasks (Go zero values included) for a tag-filtered MINIMAL listing."""
    go_style = {"workdir": "", "stdin": "", "stdout": "", "stderr": "", "env": {}}
    full = task_doc(
        "a",
        "QUEUED",
        name="big",
        tags={"dag_id": "d"},
        inputs=[{"path": "/in", "content": "x" * 1000}],
        executors=[{"image": "alpine", "command": ["true"], **go_style}],
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tasks"):
            return respond("tesListTasksResponse", {"tasks": [full], "next_page_token": ""})
        return respond("tesTask", full)

    h = Harness(handler)
    listed = list(h.hook.list_tasks(tags={"dag_id": ""}))
    assert [(t.id, t.state) for t in listed] == [("a", TesState.QUEUED)]
    assert listed[0].name is None and listed[0].executors == [] and listed[0].inputs is None
    got = h.hook.get_task("a")
    assert (got.id, got.state, got.name) == ("a", TesState.QUEUED, None)
    # other views keep what the server sent
    basic = next(iter(h.hook.list_tasks(view="BASIC")))
    assert basic.name == "big" and basic.tags == {"dag_id": "d"}


def test_list_filters(basic_conn: None) -> None:
    h = Harness(scripted(respond("tesListTasksResponse", {"tasks": []})))
    list(
        h.hook.list_tasks(
            name_prefix="run-", state="RUNNING", tags={"k1": "v1", "k2": ""}, view="BASIC", page_size=2047
        )
    )
    params = h.requests[0].url.params
    assert params["view"] == "BASIC"
    assert params["name_prefix"] == "run-"
    assert params["state"] == "RUNNING"
    assert params["page_size"] == "2047"
    # repeated, and zipped by position as the spec says
    assert dict(zip(params.get_list("tag_key"), params.get_list("tag_value"), strict=True)) == {
        "k1": "v1",
        "k2": "",
    }


@pytest.mark.parametrize("page_size", [0, -1, 2048, 10_000])
def test_list_page_size_validated(basic_conn: None, page_size: int) -> None:
    h = Harness(scripted(respond("tesListTasksResponse", {"tasks": []})))
    with pytest.raises(TesConfigurationError, match="page_size"):
        list(h.hook.list_tasks(page_size=page_size))
    assert h.requests == []


# -- malformed answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "response", "match"),
    [
        pytest.param("get", httpx.Response(200, text="<html>oops</html>"), "not JSON", id="non-json"),
        pytest.param("get", httpx.Response(200, json=["a"]), "TesTask", id="json-list"),
        pytest.param("get", httpx.Response(200, json="RUNNING"), "TesTask", id="json-string"),
        pytest.param(
            "get", httpx.Response(200, json={"id": "t1", "state": "DONE"}), "state", id="unknown-state"
        ),
        pytest.param("create", httpx.Response(200, json={}), "id", id="create-no-id"),
        pytest.param("create", httpx.Response(200, json={"id": ""}), "id", id="create-empty-id"),
        pytest.param("create", httpx.Response(200, text="created"), "not JSON", id="create-non-json"),
        pytest.param("list", httpx.Response(200, json={"tasks": "nope"}), "tasks", id="list-tasks-not-list"),
        pytest.param("info", httpx.Response(200, json={"name": "x"}), "TesServiceInfo", id="info-incomplete"),
    ],
)
def test_malformed_responses(basic_conn: None, call: str, response: httpx.Response, match: str) -> None:
    h = Harness(scripted(response))
    actions = {
        "get": lambda: h.hook.get_task("t1"),
        "create": lambda: h.hook.create_task(make_task()),
        "list": lambda: list(h.hook.list_tasks()),
        "info": h.hook.get_service_info,
    }
    with pytest.raises(TesMalformedResponseError, match=match) as info:
        actions[call]()
    assert len(h.requests) == 1  # a malformed answer is not retried (and a create is not resent)
    assert BASE in str(info.value)
    assert_no_secret(info.value)


# -- async --------------------------------------------------------------------------------------


async def test_async_api_shares_one_client(basic_conn: None) -> None:
    pages = {None: {"tasks": [task_doc("a")], "next_page_token": "p1"}, "p1": {"tasks": [task_doc("b")]}}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/service-info"):
            return respond("tesServiceInfo", SERVICE_INFO)
        if path.endswith(":cancel"):
            return respond("tesCancelTaskResponse", {})
        if path.endswith("/tasks"):
            return respond("tesListTasksResponse", pages[request.url.params.get("page_token")])
        return respond("tesTask", task_doc("t1", "COMPLETE"))

    h = Harness(handler)
    client = await h.hook.a_get_conn()
    assert (await h.hook.a_get_service_info()).version == "0.12.2"
    assert (await h.hook.a_get_task("t1", view="BASIC")).state is TesState.COMPLETE
    assert [t.id async for t in h.hook.a_list_tasks(name_prefix="x")] == ["a", "b"]
    await h.hook.a_cancel_task("t1")
    assert await h.hook.a_get_conn() is client
    assert h.hook._async_client is client
    assert len(h.async_transport.requests) == 5
    assert h.transport.requests == []
    assert h.async_transport.count("POST", "/tasks/t1:cancel") == 1
    assert not client.is_closed
    await h.hook.aclose()
    assert client.is_closed


async def test_async_context_manager_closes(basic_conn: None) -> None:
    h = Harness(scripted(respond("tesTask", task_doc("t1"))))
    async with h.hook as hook:
        await hook.a_get_task("t1")
        client = await hook.a_get_conn()
    assert client.is_closed


async def test_async_retry_and_errors(basic_conn: None) -> None:
    h = Harness(
        scripted(httpx.Response(503), httpx.ConnectError("refused"), respond("tesTask", task_doc("t1")))
    )
    assert (await h.hook.a_get_task("t1")).id == "t1"
    assert len(h.async_transport.requests) == 3

    h = Harness(scripted(httpx.Response(401)))
    with pytest.raises(TesAuthError) as info:
        await h.hook.a_get_task("t1")
    assert len(h.async_transport.requests) == 1
    assert_no_secret(info.value)

    h = Harness(scripted(httpx.Response(503)), retries=2)
    with pytest.raises(TesServerUnavailableError, match=f"{BASE}/tasks/t1"):
        await h.hook.a_get_task("t1")
    assert len(h.async_transport.requests) == 3


class InFlight:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.02)
        finally:
            self.now -= 1
        return respond("tesTask", task_doc(request.url.path.rsplit("/", 1)[-1]))


def _concurrency_hook(
    monkeypatch: pytest.MonkeyPatch, flight: InFlight
) -> tuple[TesHook, AsyncSpecCheckingTransport]:
    set_conn(monkeypatch, json_conn(extra={"max_concurrency": 3}))
    transport = AsyncSpecCheckingTransport(httpx.MockTransport(flight.handler))
    return TesHook(CONN_ID, async_transport=transport, retry_min_wait=0.001, retry_max_wait=0.01), transport


async def test_async_concurrency_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    flight = InFlight()
    hook, transport = _concurrency_hook(monkeypatch, flight)
    await hook.a_get_task("warm")  # settings and client made before the burst
    tasks = await asyncio.gather(*(hook.a_get_task(f"t{i}") for i in range(20)))
    assert [t.id for t in tasks] == [f"t{i}" for i in range(20)]
    assert flight.peak == 3
    assert len(transport.requests) == 21
    await hook.aclose()


async def test_async_concurrency_cap_on_a_fresh_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    flight = InFlight()
    hook, _transport = _concurrency_hook(monkeypatch, flight)
    made: list[httpx.AsyncClient] = []
    original = hook.a_get_conn

    async def spy() -> httpx.AsyncClient:
        client = await original()
        if client not in made:
            made.append(client)
        return client

    monkeypatch.setattr(hook, "a_get_conn", spy)
    try:
        await asyncio.gather(*(hook.a_get_task(f"t{i}") for i in range(20)))
        assert len(made) == 1
        assert flight.peak <= 3
    finally:
        for client in made:
            await client.aclose()


# -- test_connection and secrets -------------------------------------------------------------------


def test_test_connection_ok(basic_conn: None) -> None:
    h = Harness(scripted(respond("tesServiceInfo", SERVICE_INFO)))
    ok, msg = h.hook.test_connection()
    assert ok is True
    assert "Funnel" in msg
    assert "0.12.2" in msg
    assert BASE in msg


@pytest.mark.parametrize(
    "response", [httpx.Response(401), httpx.Response(200, json={"bad": 1}), httpx.Response(404)]
)
def test_test_connection_fails(basic_conn: None, response: httpx.Response) -> None:
    h = Harness(scripted(response))
    ok, msg = h.hook.test_connection()
    assert ok is False
    assert msg
    assert_no_secret(msg)


@pytest.mark.parametrize(
    "conn",
    [
        pytest.param(json_conn(), id="basic-json"),
        pytest.param(json_conn(extra={"token": TOKEN}), id="bearer-extra"),
        pytest.param(json_conn(password=TOKEN, extra={"auth_type": "bearer"}), id="bearer-password"),
        pytest.param(f"tes://{USER}:{PASSWORD}@tes.test:8000/ga4gh/tes/v1?protocol=http", id="basic-uri"),
    ],
)
def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any] | str) -> None:
    set_conn(monkeypatch, conn)
    errors: list[TesError] = []
    scenarios: list[tuple[httpx.Response | Exception, Callable[[TesHook], Any]]] = [
        (httpx.Response(401, json={"message": "no"}), lambda hook: hook.get_task("t1")),
        (httpx.Response(403), lambda hook: hook.cancel_task("t1")),
        (httpx.Response(404), lambda hook: hook.get_task("t1")),
        (httpx.Response(400, json={"message": "bad"}), lambda hook: hook.create_task(make_task())),
        (httpx.Response(503), lambda hook: hook.get_task("t1")),
        (httpx.ConnectError("refused"), lambda hook: hook.get_service_info()),
        (httpx.Response(503), lambda hook: hook.create_task(make_task(name=None))),
        (httpx.Response(200, text="nope"), lambda hook: hook.get_task("t1")),
        (httpx.Response(200, json={"id": "t1", "state": "??"}), lambda hook: hook.get_task("t1")),
    ]
    for response, action in scenarios:
        h = Harness(scripted(response), retries=1)
        with pytest.raises(TesError) as info:
            action(h.hook)
        errors.append(info.value)
        assert_no_secret(
            repr(h.hook), repr(h.hook.settings), str(h.hook.settings), repr(h.hook.get_conn().auth)
        )
        h.hook.close()
    assert len(errors) == len(scenarios)
    for err in errors:
        assert_no_secret(str(err), repr(err), err.args, getattr(err, "url", ""))
    ok, msg = Harness(scripted(httpx.Response(401)), retries=0).hook.test_connection()
    assert not ok
    assert_no_secret(msg)


def test_settings_from_connection_object_repr() -> None:
    from airflow.sdk import Connection

    conn = Connection(conn_id="c", conn_type="tes", host="tes.test", login=USER, password=PASSWORD)
    settings = TesConnection.from_airflow(conn)
    assert settings.secret == PASSWORD
    assert settings.auth_type == "basic"
    assert_no_secret(repr(settings), str(settings), settings.describe_credential())


# -- identity lookup: tag filter where the server has it, name prefix where it does not ---------------


@pytest.mark.usefixtures("basic_conn")
@pytest.mark.parametrize("server", ["filters", "refuses_tags", "ignores_filters"])
def test_find_task_by_identity_on_any_server(server: str) -> None:
    tasks = [
        task_doc("a", name="job-t1", tags={"run": "1"}),
        task_doc("b", name="job-t1", tags={"run": "2"}),
        task_doc("c", name="job-t10", tags={"run": "1"}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if "tag_key" in params and server == "refuses_tags":
            return respond(None, {"message": "tag filters are not supported"}, status=400)
        found = tasks
        if server != "ignores_filters":
            found = [t for t in found if t["name"].startswith(params.get("name_prefix", ""))]
            wanted = dict(zip(params.get_list("tag_key"), params.get_list("tag_value"), strict=True))
            found = [t for t in found if all(t["tags"].get(k) == v for k, v in wanted.items())]
        return respond("tesListTasksResponse", {"tasks": found, "next_page_token": ""})

    harness = Harness(handler)
    found = harness.hook.find_task_by_identity("job-t1", {"run": "2"})
    assert found is not None
    assert found.id == "b"
    assert harness.hook.find_task_by_identity("job-t1", {"run": "3"}) is None
    tagged_queries = [r for r in harness.requests if "tag_key" in r.url.params]
    assert tagged_queries, "the tag filter is asked for first"
    expected = 4 if server == "refuses_tags" else 2
    assert len(harness.requests) == expected


@pytest.mark.parametrize(
    ("host", "extra", "expected"),
    [
        ("https://tes.test/ga4gh/tes/v1", {}, True),
        ("https://tes.test/ga4gh/tes/v1", {"ca_bundle": "/etc/tes-ca.pem"}, "/etc/tes-ca.pem"),
        ("https://tes.test/ga4gh/tes/v1", {"verify": False}, False),
        ("http://tes.test/ga4gh/tes/v1", {}, False),
        (
            "http://tes.test/ga4gh/tes/v1",
            {"auth_type": "oauth2", "token_url": "https://idp.test/token"},
            True,
        ),
    ],
)
def test_tls_is_verified_wherever_tls_is_used(
    monkeypatch: pytest.MonkeyPatch, host: str, extra: dict[str, Any], expected: bool | str
) -> None:
    set_conn(monkeypatch, json_conn(host=host, extra=extra))
    assert TesHook(CONN_ID).settings.tls_verify() == expected

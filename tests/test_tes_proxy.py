"""Mechanics of the TES proxy (tests/support/tes_proxy.py): faults, states and the rules of the
loopback core against an in-memory upstream; its server personalities against the real Funnel."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.personalities import PERSONALITIES
from tests.support.rules import TASK_PATH, TASKS_PATH, Rewrite, Rule
from tests.support.spec import validate_response
from tests.support.tes_proxy import FAULT_KINDS, TesProxy
from tests.support.tes_stub import TesStub

AUTH = {"Authorization": "Basic YWRtaW46c2VjcmV0"}
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError)


class StubTes(TesStub):
    """The in-memory TES as the proxy's upstream: tasks t1, t2, ... all RUNNING; marks its answers."""

    def __init__(self) -> None:
        super().__init__(
            initial_state="RUNNING", id_format="t{}", rules=[Rule(Rewrite(headers={"X-Stub": "yes"}))]
        )
        self.start()

    def close(self) -> None:
        self.stop()

    def requests_of(self, method: str, path_end: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"method": r.method, "path": r.target, "headers": r.headers, "body": r.body}
                for r in self.seen
                if r.method == method and r.target.endswith(path_end)
            ]


@pytest.fixture
def stub() -> Iterator[StubTes]:
    s = StubTes()
    yield s
    s.close()


@pytest.fixture
def proxy(stub: StubTes) -> Iterator[TesProxy]:
    with TesProxy(stub.url, seed=7) as p:
        yield p


@pytest.fixture
def client(proxy: TesProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=5) as c:
        yield c


def create(client: httpx.Client, name: str = "task") -> str:
    r = client.post("/tasks", json={"name": name, "executors": [{"image": "alpine", "command": ["true"]}]})
    r.raise_for_status()
    return str(r.json()["id"])


# --- forwarding -----------------------------------------------------------------------------


def test_forwarding_preserves_request_and_response(
    proxy: TesProxy, stub: StubTes, client: httpx.Client
) -> None:
    assert proxy.url.startswith("http://127.0.0.1:")
    assert proxy.base_url == proxy.url + "/ga4gh/tes/v1"
    body = {"name": "hello", "executors": [{"image": "alpine", "command": ["echo", "hi"]}]}
    r = client.post("/tasks", json=body, headers={"X-Custom": "42"})
    assert r.status_code == 200
    assert r.json() == {"id": "t1"}
    assert r.headers["X-Stub"] == "yes"
    seen = stub.requests_of("POST", "/tasks")[0]
    assert seen["path"] == "/ga4gh/tes/v1/tasks"
    assert json.loads(seen["body"]) == body
    assert seen["headers"]["Authorization"] == AUTH["Authorization"]
    assert seen["headers"]["X-Custom"] == "42"

    r = client.get("/tasks/t1", params={"view": "FULL"})
    assert r.json() == {"id": "t1", "state": "RUNNING"}
    assert stub.requests_of("GET")[-1]["path"] == "/ga4gh/tes/v1/tasks/t1?view=FULL"
    assert client.get("/tasks/nope").status_code == 404  # upstream status passed through

    assert proxy.created == [("t1", body)]
    assert proxy.requests == [
        ("POST", "/ga4gh/tes/v1/tasks"),
        ("GET", "/ga4gh/tes/v1/tasks/t1?view=FULL"),
        ("GET", "/ga4gh/tes/v1/tasks/nope"),
    ]
    assert proxy.stats["requests"] == 3
    assert proxy.stats["forwarded"] == 3
    assert proxy.stats["injected_total"] == 0
    assert proxy.stats["connections"] == 1  # keep-alive: one connection for all three


def test_many_concurrent_requests(proxy: TesProxy, stub: StubTes) -> None:
    with httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=10) as c:
        ids = list(ThreadPoolExecutor(max_workers=32).map(lambda i: create(c, f"n{i}"), range(60)))
        assert len(set(ids)) == 60
        codes = ThreadPoolExecutor(max_workers=32).map(lambda t: c.get(f"/tasks/{t}").status_code, ids)
        assert set(codes) == {200}
    assert proxy.stats["forwarded"] == 120
    assert len(proxy.created) == 60


def test_upstream_down_gives_502() -> None:
    with TesProxy("http://127.0.0.1:9", seed=0) as p, httpx.Client(timeout=5) as c:
        r = c.get(p.base_url + "/service-info")
        assert r.status_code == 502
        assert "upstream error" in r.json()["message"]
        assert p.stats["upstream_errors"] == 1
        assert c.get(p.base_url + "/service-info").status_code == 502  # server thread still alive


# --- preemption and state rewriting -----------------------------------------------------------


def test_preempt_cancels_upstream_and_rewrites_state(
    proxy: TesProxy, stub: StubTes, client: httpx.Client
) -> None:
    proxy.preempt(1)
    first, second = create(client), create(client)
    assert proxy.preempted_ids == [first]
    assert proxy.cancelled_ids == [first]
    cancels = stub.requests_of("POST", ":cancel")
    assert [c["path"] for c in cancels] == [f"/ga4gh/tes/v1/tasks/{first}:cancel"]
    assert cancels[0]["headers"]["Authorization"] == AUTH["Authorization"]

    assert client.get(f"/tasks/{first}").json()["state"] == "PREEMPTED"
    assert client.get(f"/tasks/{first}", params={"view": "MINIMAL"}).json()["state"] == "PREEMPTED"
    assert client.get(f"/tasks/{second}").json()["state"] == "RUNNING"
    listed = {t["id"]: t["state"] for t in client.get("/tasks", params={"view": "MINIMAL"}).json()["tasks"]}
    assert listed == {first: "PREEMPTED", second: "RUNNING"}
    assert [i for i, _ in proxy.created] == [first, second]


def test_preempt_name_prefix(proxy: TesProxy, stub: StubTes, client: httpx.Client) -> None:
    proxy.preempt(2, name_prefix="pre-")
    ids = [create(client, n) for n in ("other", "pre-a", "x-pre", "pre-b", "pre-c")]
    assert proxy.preempted_ids == [ids[1], ids[3]]
    assert len(stub.requests_of("POST", ":cancel")) == 2
    states = [client.get(f"/tasks/{i}").json()["state"] for i in ids]
    assert states == ["RUNNING", "PREEMPTED", "RUNNING", "PREEMPTED", "RUNNING"]


def test_rewrite_state(proxy: TesProxy, client: httpx.Client) -> None:
    a, b = create(client), create(client)
    proxy.rewrite_state(b, "SYSTEM_ERROR")
    assert client.get(f"/tasks/{a}").json()["state"] == "RUNNING"
    assert client.get(f"/tasks/{b}").json()["state"] == "SYSTEM_ERROR"
    listed = {t["id"]: t["state"] for t in client.get("/tasks").json()["tasks"]}
    assert listed == {a: "RUNNING", b: "SYSTEM_ERROR"}


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_fault_status_not_forwarded(proxy: TesProxy, stub: StubTes, client: httpx.Client, kind: str) -> None:
    proxy.set_faults(1.0, [kind])
    r = client.post("/tasks", json={"name": "x"})
    assert r.status_code == int(kind)
    assert r.json() == {"message": "injected"}
    assert stub.seen == []
    assert proxy.stats["injected"][kind] == 1
    assert proxy.stats["forwarded"] == 0
    assert proxy.created == []


def test_fault_429_retry_after(proxy: TesProxy, stub: StubTes, client: httpx.Client) -> None:
    proxy.set_faults(1.0, ["429"])
    r = client.get("/tasks/t1")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert stub.seen == []


def test_fault_reset_not_forwarded(proxy: TesProxy, stub: StubTes, client: httpx.Client) -> None:
    proxy.set_faults(1.0, ["reset"])
    with pytest.raises(DROPPED):
        client.post("/tasks", json={"name": "x"})
    assert stub.seen == []
    assert proxy.stats["injected"]["reset"] == 1
    proxy.clear_faults()
    assert client.get("/tasks").status_code == 200  # the client recovers on a new connection


def test_fault_drop_response_is_forwarded(proxy: TesProxy, stub: StubTes, client: httpx.Client) -> None:
    proxy.set_faults(1.0, ["drop_response"], methods=["POST"])
    with pytest.raises(DROPPED):
        client.post("/tasks", json={"name": "ambiguous"})
    assert len(stub.requests_of("POST", "/tasks")) == 1  # the server did create the task
    assert proxy.created == [("t1", {"name": "ambiguous"})]
    assert proxy.stats["forwarded"] == 1
    # GETs are not matched by methods=["POST"]: the task is visible.
    assert client.get("/tasks/t1").json()["state"] == "RUNNING"


def test_fault_truncate(proxy: TesProxy, stub: StubTes, client: httpx.Client) -> None:
    create(client)
    proxy.set_faults(1.0, ["truncate"], path_regex=r"/tasks/[^/]+$")
    with pytest.raises(DROPPED):
        client.get("/tasks/t1")
    assert len(stub.requests_of("GET")) == 1
    assert client.get("/tasks").status_code == 200  # path_regex did not match the list endpoint


def test_fault_delay_times_out_client(proxy: TesProxy, stub: StubTes) -> None:
    proxy.delay_seconds = 1.0
    proxy.set_faults(1.0, ["delay"])
    with httpx.Client(base_url=proxy.base_url, timeout=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            c.post("/tasks", json={"name": "slow"})
        assert time.monotonic() - t0 < 0.9
    assert len(stub.requests_of("POST", "/tasks")) == 1  # forwarded before the delay
    proxy.clear_faults()
    with httpx.Client(base_url=proxy.base_url, timeout=0.3) as c:
        assert c.get("/tasks").status_code == 200


def test_limit_and_clear_faults(proxy: TesProxy, client: httpx.Client) -> None:
    proxy.set_faults(1.0, ["503"], limit=2)
    assert [client.get("/tasks").status_code for _ in range(3)] == [503, 503, 200]
    proxy.set_faults(1.0, ["500"])
    assert client.get("/tasks").status_code == 500
    proxy.clear_faults()
    assert client.get("/tasks").status_code == 200
    assert [k for _, _, k in proxy.fault_log] == ["503", "503", "500"]


def test_invalid_fault_config(proxy: TesProxy) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        proxy.set_faults(0.5, ["boom"])
    with pytest.raises(ValueError, match="rate"):
        proxy.set_faults(1.5, ["500"])


def _outcomes(stub: StubTes, seed: int) -> list[str]:
    with TesProxy(stub.url, seed=seed) as p, httpx.Client(base_url=p.base_url, timeout=5) as c:
        p.set_faults(0.5, ["500", "503", "429"])
        out = [str(c.get("/tasks").status_code) for _ in range(40)]
        assert [k for _, _, k in p.fault_log] == [o for o in out if o != "200"]
        return out


def test_seeded_determinism(stub: StubTes) -> None:
    a, b, c = _outcomes(stub, 1), _outcomes(stub, 1), _outcomes(stub, 2)
    assert a == b
    assert a != c
    assert {"200", "500", "503", "429"} <= set(a)


def test_all_kinds_mixed_under_concurrency(proxy: TesProxy, stub: StubTes) -> None:
    """Every kind at once from many threads: the proxy survives and keeps serving."""
    proxy.delay_seconds = 0.3
    proxy.set_faults(0.7, FAULT_KINDS)

    def one(c: httpx.Client) -> str:
        try:
            return str(c.get("/tasks").status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with httpx.Client(base_url=proxy.base_url, timeout=0.15) as shared:
        results = list(ThreadPoolExecutor(max_workers=16).map(one, [shared] * 60))
    assert "200" in results
    assert len(set(results)) > 3
    proxy.clear_faults()
    with httpx.Client(base_url=proxy.base_url, timeout=5) as c:
        assert c.get("/tasks").status_code == 200
    assert proxy.stats["injected_total"] == sum(proxy.stats["injected"].values())


def test_stop_is_prompt_with_pending_delay(stub: StubTes) -> None:
    p = TesProxy(stub.url).start()
    p.delay_seconds = 30
    p.set_faults(1.0, ["delay"])
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            httpx.get(p.base_url + "/tasks", timeout=60)
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while p.stats["forwarded"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    # An idle keep-alive connection must not hold stop() up either.
    idle = httpx.Client(timeout=5)
    p.clear_faults()
    assert idle.get(p.base_url + "/tasks").status_code == 200
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 2
    t.join(timeout=5)
    assert not t.is_alive()
    assert errors
    with pytest.raises(httpx.HTTPError):
        idle.get(p.base_url + "/tasks")
    idle.close()
    p.stop()  # idempotent


# --- the rules of the loopback core ------------------------------------------------------------


def test_rules_rewrite_requests_answers_and_count_their_uses(proxy: TesProxy, stub: StubTes) -> None:
    with httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=5) as c:
        task_id = create(c)
        proxy.add_rule(
            Rule(
                Rewrite(
                    request=lambda r: r.with_header("X-Seen-By-Backend", "yes"),
                    body=lambda doc, _: {**doc, "extra": True},
                    status=203,
                    headers={"X-Rule": "1"},
                ),
                method="GET",
                path=TASK_PATH,
                query={"view": "FULL"},
                times=1,
            )
        )
        assert c.get(f"/tasks/{task_id}").json() == {"id": task_id, "state": "RUNNING"}  # no view: no match
        r = c.get(f"/tasks/{task_id}", params={"view": "FULL"})
        assert (r.status_code, r.headers["X-Rule"]) == (203, "1")
        assert r.json() == {"id": task_id, "state": "RUNNING", "extra": True}
        assert stub.requests_of("GET")[-1]["headers"]["X-Seen-By-Backend"] == "yes"
        assert "X-Seen-By-Backend" not in proxy.seen[-1].headers  # the record keeps what was sent
        assert c.get(f"/tasks/{task_id}", params={"view": "FULL"}).status_code == 200  # times=1 spent


def test_trickled_answer_arrives_whole_and_slowly(proxy: TesProxy, stub: StubTes) -> None:
    with httpx.Client(base_url=proxy.base_url, headers=AUTH, timeout=5) as c:
        for i in range(3):
            create(c, f"trickle-{i}")
        whole = c.get("/tasks").content
        proxy.add_rule(Rule(Rewrite(trickle=0.02), method="GET", path=TASKS_PATH))
        t0 = time.monotonic()
        assert c.get("/tasks").content == whole
        assert time.monotonic() - t0 >= 0.02 * (len(whole) // 16)


def test_personality_switching_and_unknown_names(proxy: TesProxy, client: httpx.Client) -> None:
    proxy.use("list_forbidden")
    assert client.get("/tasks").status_code == 403
    assert proxy.personality == "list_forbidden"
    proxy.use(None)
    assert client.get("/tasks").status_code == 200
    with pytest.raises(ValueError, match="unknown personality"):
        proxy.use("funnel-but-nicer")
    assert set(PERSONALITIES) == {"minimal", "tesk", "azure", "tag_blind", "list_forbidden"}


# --- personalities, in front of the session's Funnel -------------------------------------------


def _funnel_client(funnel: Any, base_url: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=base_url or funnel.base_url, auth=(funnel.user, funnel.password), timeout=30)


def _task(label: str, command: str = "echo out; echo err >&2", **fields: Any) -> dict[str, Any]:
    return {
        "name": f"personality-{label}-{uuid.uuid4().hex[:8]}",
        "executors": [{"image": "alpine:3.20", "command": ["/bin/sh", "-c", command]}],
        **fields,
    }


def _finished(direct: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = direct.get(f"/tasks/{task_id}", params={"view": "FULL"}).json()
        if task["state"] in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            return task
        assert time.monotonic() < deadline, task["state"]
        time.sleep(0.2)


@pytest.mark.funnel
def test_minimal_answers_carry_no_optional_field(funnel: Any, funnel_proxy: Callable[..., TesProxy]) -> None:
    proxy = funnel_proxy("minimal")
    run = uuid.uuid4().hex
    with _funnel_client(funnel) as direct, _funnel_client(funnel, proxy.base_url) as tes:
        ids = [
            tes.post("/tasks", json=_task("minimal", tags={"personality-run": run})).json()["id"]
            for _ in range(2)
        ]
        assert _finished(direct, ids[0])["logs"][0]["system_logs"]  # Funnel has them ...
        _finished(direct, ids[1])
        for view in ("FULL", "BASIC", "MINIMAL"):
            task = tes.get(f"/tasks/{ids[0]}", params={"view": view}).json()  # ... the personality not
            assert set(task) == ({"id", "state"} if view == "MINIMAL" else {"id", "state", "executors"})
            if view != "MINIMAL":  # (the spec's MINIMAL view leaves out its own required `executors`)
                validate_response("tesTask", task)
                assert task["executors"] == [
                    {"image": "alpine:3.20", "command": _task("")["executors"][0]["command"]}
                ]
        query = {"view": "FULL", "tag_key": "personality-run", "tag_value": run, "page_size": 1}
        pages = [tes.get("/tasks", params=query).json()]
        while "next_page_token" in pages[-1] and len(pages) < 5:
            pages.append(
                tes.get("/tasks", params={**query, "page_token": pages[-1]["next_page_token"]}).json()
            )
    for page in pages:
        validate_response("tesListTasksResponse", page)
        assert page.get("next_page_token", "x")  # more pages: a token; the last: none (it is optional)
        assert all(set(t) == {"id", "state", "executors"} for t in page["tasks"])
    assert len(pages) > 2
    assert "next_page_token" not in pages[-1]
    assert sorted(t["id"] for page in pages for t in page["tasks"]) == sorted(ids)


@pytest.mark.funnel
def test_tesk_honours_cpu_ram_disk_only_and_logs_no_output(
    funnel: Any, funnel_proxy: Callable[..., TesProxy]
) -> None:
    proxy = funnel_proxy("tesk")
    resources = {
        "cpu_cores": 1,
        "ram_gb": 0.5,
        "disk_gb": 1.0,
        "preemptible": True,
        "zones": ["zone-a"],
        "backend_parameters": {"vm_size": "big"},
    }
    body = _task("tesk", resources=resources)
    with _funnel_client(funnel) as direct, _funnel_client(funnel, proxy.base_url) as tes:
        task_id = tes.post("/tasks", json=body).json()["id"]
        stored = _finished(direct, task_id)
        assert stored["logs"][0]["logs"][0]["stdout"] == "out\n"  # Funnel has the output ...
        full = tes.get(f"/tasks/{task_id}", params={"view": "FULL"}).json()
    assert [s.json() for s in proxy.seen_calls("create")] == [body]  # the record: what was sent
    assert proxy.created == [(task_id, body)]
    honoured = {k: v for k, v in stored["resources"].items() if v not in (None, False, [], {})}
    assert honoured == {"cpu_cores": 1, "ram_gb": 0.5, "disk_gb": 1.0}
    assert full["resources"] == stored["resources"]
    executor_logs = full["logs"][0]["logs"]
    assert [log["exit_code"] for log in executor_logs] == [0]
    assert all(log["stdout"] == "" and "stderr" not in log for log in executor_logs)  # ... TESK not


@pytest.mark.funnel
def test_azure_takes_integer_cpus_and_its_backend_parameters_only(
    funnel: Any, funnel_proxy: Callable[..., TesProxy]
) -> None:
    proxy = funnel_proxy("azure")
    with _funnel_client(funnel) as direct, _funnel_client(funnel, proxy.base_url) as tes:
        refused = {
            "fractional": {"cpu_cores": 1.5},
            "zero": {"cpu_cores": 0},
            "strict": {"backend_parameters": {"vm_size": "a", "gpu": "1"}, "backend_parameters_strict": True},
            "duplicate": {"backend_parameters": {"vm_size": "a", "VM_SIZE": "b"}},
        }
        answers = {case: tes.post("/tasks", json=_task(case, resources=r)) for case, r in refused.items()}
        assert {case: r.status_code for case, r in answers.items()} == dict.fromkeys(refused, 400)
        assert all(r.headers["Content-Type"].startswith("text/plain") for r in answers.values())
        assert "1.5 is not a valid integer" in answers["fractional"].text
        assert "unsupported backend_parameters were specified: gpu" in answers["strict"].text
        assert proxy.stats["forwarded"] == 0  # refused before anything reached Funnel

        resources = {"cpu_cores": 2.0, "backend_parameters": {"VM_Size": "Standard_D2", "gpu": "1"}}
        task_id = tes.post("/tasks", json=_task("azure", resources=resources)).json()["id"]
        stored = direct.get(f"/tasks/{task_id}", params={"view": "BASIC"}).json()["resources"]
    assert stored["cpu_cores"] == 2
    assert stored["backend_parameters"] == {"vm_size": "Standard_D2"}
    assert proxy.seen_calls("create")[-1].json()["resources"] == resources


@pytest.mark.funnel
def test_tag_blind_lists_every_task_foreign_ones_included(
    funnel: Any, funnel_proxy: Callable[..., TesProxy]
) -> None:
    proxy = funnel_proxy("tag_blind")
    run = uuid.uuid4().hex
    with _funnel_client(funnel) as direct, _funnel_client(funnel, proxy.base_url) as tes:
        ours = direct.post("/tasks", json=_task("ours", "true", tags={"personality-run": run})).json()["id"]
        foreign = direct.post("/tasks", json=_task("foreign", "true", tags={"dag_id": "elsewhere"})).json()[
            "id"
        ]
        query = {"tag_key": "personality-run", "tag_value": run, "page_size": 2047}
        assert [t["id"] for t in direct.get("/tasks", params=query).json()["tasks"]] == [ours]
        listed = {t["id"] for t in tes.get("/tasks", params=query).json()["tasks"]}
    assert {ours, foreign} <= listed
    assert proxy.seen_calls("list")[-1].query["tag_key"] == ["personality-run"]  # sent, then ignored


@pytest.mark.funnel
@pytest.mark.parametrize("personality_proxy", ["list_forbidden"], indirect=True)
def test_list_forbidden_refuses_listing_only(funnel: Any, personality_proxy: TesProxy) -> None:
    proxy = personality_proxy
    with _funnel_client(funnel, proxy.base_url) as tes:
        task_id = tes.post("/tasks", json=_task("forbidden", "true")).json()["id"]
        assert tes.get("/tasks/" + task_id, params={"view": "MINIMAL"}).json()["id"] == task_id
        for view in ("MINIMAL", "BASIC"):
            assert tes.get("/tasks", params={"view": view, "tag_key": "dag_id"}).status_code == 403
    assert [r.method for r in proxy.seen_calls("list")] == ["GET", "GET"]
    assert proxy.stats["forwarded"] == 2  # the create and the GET; no listing reached Funnel

"""The shared status poller: coalesced listing, per-task fallback, clean leaving.

An in-memory TES behind ``httpx.MockTransport`` makes request counts exact; the trigger
tests run the same poller against Funnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog.contextvars

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesState
from airflow_provider_tes.triggers import polling
from airflow_provider_tes.triggers.polling import (
    BULK_MIN,
    ENDED_STATES,
    LISTED_STATES,
    SharedStatusPoller,
)
from airflow_provider_tes.triggers.tes import TesTaskTrigger

CONN = "tes_polling_unit"


class FakeTes:
    """Tasks by id with state and tags; answers ListTasks filters and GETs; counts calls.

    Server personalities by attribute: ``list_status`` (a gateway or ACL that refuses
    ListTasks with that status while GET works), ``blind`` (ListTasks ignores every filter and
    returns every task, ``foreign`` entries included), ``token`` (bearer token required),
    ``hidden`` (ids answered 404 for now: an eventually consistent server), ``refused_states``
    (listings of these states fail with 500), ``on_listing`` (called with the state filter of
    each listing before it is answered: tasks that change meanwhile). Listings are paged by
    ``page_size``.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.listings: Counter[str | None] = Counter()  # listings by state filter
        self.refuse_listing = False
        self.list_status = 200
        self.blind = False
        self.foreign: list[dict[str, Any]] = []
        self.token: str | None = None
        self.hidden: set[str] = set()
        self.refused_states: set[str] = set()
        self.on_listing: Callable[[str | None], None] | None = None

    def add(self, task_id: str, state: str = "RUNNING", tagged: bool = True, deployment: str = "a") -> None:
        tags = {"dag_id": "d", "deployment": deployment} if tagged else {}
        self.tasks[task_id] = {"id": task_id, "state": state, "tags": tags}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = urlsplit(str(request.url)).path.removeprefix("/ga4gh/tes/v1/")
        query = parse_qs(urlsplit(str(request.url)).query)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.calls["unauthorized"] += 1
            return httpx.Response(401, json={"message": "invalid token"})
        if path == "tasks":
            self.calls["list"] += 1
            if self.refuse_listing:
                return httpx.Response(400, json={"message": "filters not supported"})
            if self.list_status != 200:
                return httpx.Response(self.list_status, json={"message": "listing not available here"})
            state = None if self.blind else query.get("state", [None])[0]
            if self.on_listing is not None:
                self.on_listing(state)
            if state in self.refused_states:
                return httpx.Response(500, json={"message": f"listing {state} tasks failed"})
            keys = [] if self.blind else query.get("tag_key", [])
            values = [] if self.blind else query.get("tag_value", [])
            wanted = list(zip(keys, values + [""] * (len(keys) - len(values)), strict=True))
            tasks: list[dict[str, Any]] = [
                {"id": t["id"], "state": t["state"]}
                for t in self.tasks.values()
                if (state is None or t["state"] == state)
                and all(k in t["tags"] and v in ("", t["tags"][k]) for k, v in wanted)
            ] + self.foreign
            self.listings[state] += 1
            start = int(query.get("page_token", ["0"])[0])
            end = start + int(query.get("page_size", ["1000000"])[0])
            token = str(end) if end < len(tasks) else ""
            return httpx.Response(200, json={"tasks": tasks[start:end], "next_page_token": token})
        task_id = path.removeprefix("tasks/")
        self.calls["get"] += 1
        if task_id not in self.tasks or task_id in self.hidden:
            return httpx.Response(404, json={"message": "no such task"})
        task = self.tasks[task_id]
        return httpx.Response(200, json={"id": task_id, "state": task["state"]})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTes:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "tes", "host": "http://tes.invalid/ga4gh/tes/v1", "extra": {"retries": 0}}),
    )
    return FakeTes()


def _register(fake: FakeTes, interval: float) -> SharedStatusPoller:
    hook = TesHook(CONN, async_transport=httpx.MockTransport(fake))
    poller = SharedStatusPoller(CONN, interval, hook=hook)
    SharedStatusPoller._registry[(id(asyncio.get_running_loop()), CONN, interval, None)] = poller
    return poller


@pytest.fixture
async def poller(fake: FakeTes) -> AsyncIterator[SharedStatusPoller]:
    """A poller whose own rounds happen only when a watcher joins, so counts are exact."""
    yield _register(fake, 3600.0)
    SharedStatusPoller._registry.clear()


async def _settle() -> None:
    await asyncio.sleep(0.2)


async def _next(queue: asyncio.Queue[Any]) -> Any:
    return await asyncio.wait_for(queue.get(), 5)


async def test_one_listing_per_active_state_for_many_tasks(fake: FakeTes, poller: SharedStatusPoller) -> None:
    for i in range(300):
        fake.add(f"t{i}")
    async with contextlib_watch_all(poller, [f"t{i}" for i in range(300)]) as queues:
        first = await asyncio.gather(*(_next(q) for q in queues))
        assert {u.state for u in first} == {TesState.RUNNING}
        await _settle()
        fake.calls.clear()
        rounds = poller.rounds
        await poller.poll_once()
        await poller.poll_once()
        assert poller.rounds - rounds == 2
        # one listing per listed state x 2 rounds, and not one GET for 300 running tasks
        assert fake.calls == Counter({"list": 2 * len(LISTED_STATES)})
        assert all(q.empty() for q in queues), "unchanged states are not delivered again"

        fake.tasks["t7"]["state"] = "COMPLETE"  # leaves the active listings
        fake.calls.clear()
        await poller.poll_once()
        assert fake.calls == Counter({"list": len(LISTED_STATES), "get": 1})
        update = await _next(queues[7])
        assert update.state is TesState.COMPLETE


async def test_the_poller_counts_every_listed_task_watched_or_not(
    fake: FakeTes, poller: SharedStatusPoller
) -> None:
    """Live logs choose between a listing and GETs by these counts (see ``LogReads``)."""
    for i in range(5):
        fake.add(f"w{i}")
    for i in range(7):
        fake.add(f"other{i}")  # running, watched by no one here
    fake.add("q", state="QUEUED")
    assert poller.listed_count(TesState.RUNNING) is None, "nothing listed yet"
    async with contextlib_watch_all(poller, [f"w{i}" for i in range(5)]) as queues:
        await asyncio.gather(*(_next(q) for q in queues))
        assert poller.listed_count(TesState.RUNNING) == 12
        assert poller.listed_count(TesState.QUEUED) == 1
        assert poller.listed_count(TesState.INITIALIZING) == 0
        assert poller.last_state("w0") is TesState.RUNNING
        assert poller.last_state("other0") is None
        fake.refused_states = {"RUNNING"}
        await poller.poll_once()
        assert poller.listed_count(TesState.RUNNING) is None, "a failed listing counts nothing"


async def test_slow_listings_run_side_by_side_and_keep_the_cadence(fake: FakeTes) -> None:
    """A listing that takes a while (thousands of tasks) neither adds up per state nor delays rounds."""
    delay, interval, window = 0.3, 0.4, 2.4
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        if request.url.path.endswith("/tasks"):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(delay)
            in_flight -= 1
        return fake(request)

    fake.add("a")
    hook = TesHook(CONN, async_transport=httpx.MockTransport(slow))
    poller = SharedStatusPoller(CONN, interval, hook=hook)
    async with poller.watch("a") as queue:
        await _next(queue)
        rounds = poller.rounds
        await asyncio.sleep(window)
        done = poller.rounds - rounds
    assert peak == len(LISTED_STATES), "the listed states are listed at the same time"
    # rounds one interval apart: 6 in the window; one interval after the previous round's end
    # would give 3 or 4
    assert done >= 5, done


async def test_untagged_task_is_polled_by_get(fake: FakeTes, poller: SharedStatusPoller) -> None:
    fake.add("foreign", tagged=False)
    async with poller.watch("foreign") as queue:
        assert (await _next(queue)).state is TesState.RUNNING
        await _settle()
        fake.calls.clear()
        await poller.poll_once()
        assert fake.calls == Counter({"list": len(LISTED_STATES), "get": 1})


async def test_server_that_refuses_listing_is_polled_per_task(
    fake: FakeTes, poller: SharedStatusPoller
) -> None:
    fake.refuse_listing = True
    fake.add("a")
    fake.add("b")
    async with poller.watch("a") as qa, poller.watch("b") as qb:
        assert (await _next(qa)).state is TesState.RUNNING
        assert (await _next(qb)).state is TesState.RUNNING
        assert poller.can_list is False
        await _settle()
        fake.calls.clear()
        await poller.poll_once()
        assert fake.calls == Counter({"get": 2})
        # not turned off for good: listed again after a backoff that grows while it is refused
        fake.calls.clear()
        await poller.poll_once()
        assert fake.calls["list"] == len(LISTED_STATES), fake.calls
        assert fake.calls["get"] == 2
        assert poller.listing_failures == 2
        fake.refuse_listing = False
        for _ in range(4):
            await poller.poll_once()
        assert poller.listing_failures == 0 and poller.can_list
        fake.calls.clear()
        await poller.poll_once()
        assert fake.calls == Counter({"list": len(LISTED_STATES)})


async def test_last_watcher_leaving_stops_the_poller(fake: FakeTes, poller: SharedStatusPoller) -> None:
    fake.add("a")
    async with poller.watch("a") as queue:
        await _next(queue)
        client = await poller.hook.a_get_conn()
        background = poller._task
        assert background is not None
    assert background.done()
    assert client.is_closed
    assert poller not in SharedStatusPoller._registry.values()


async def test_triggers_share_one_poller_and_yield_their_own_events(fake: FakeTes) -> None:
    poller = _register(fake, 0.05)
    for i in range(50):
        fake.add(f"t{i}")
    triggers = [TesTaskTrigger(f"t{i}", CONN, poll_interval=0.05) for i in range(50)]

    async def first_event(trigger: TesTaskTrigger) -> Any:
        async for event in trigger.run():
            return event.payload
        return None

    runs = [asyncio.create_task(first_event(t)) for t in triggers]
    await asyncio.sleep(0.3)
    assert len(poller.watches) == 50, "every trigger watches through the one registered poller"
    for i in range(0, 50, 2):
        fake.tasks[f"t{i}"]["state"] = "COMPLETE"
    done = await asyncio.wait_for(asyncio.gather(*runs[::2]), 10)
    assert [e["tes_task_id"] for e in done] == [f"t{i}" for i in range(0, 50, 2)]
    assert {e["state"] for e in done} == {"COMPLETE"}
    assert len(poller.watches) == 25, "finished triggers left the poller"
    for run in runs[1::2]:
        run.cancel()
    await asyncio.gather(*runs[1::2], return_exceptions=True)
    assert poller.watches == {}
    assert SharedStatusPoller._registry == {}


def contextlib_watch_all(poller: SharedStatusPoller, ids: list[str]) -> Any:
    import contextlib

    @contextlib.asynccontextmanager
    async def watch_all() -> AsyncIterator[list[asyncio.Queue[Any]]]:
        async with contextlib.AsyncExitStack() as stack:
            yield [await stack.enter_async_context(poller.watch(i)) for i in ids]

    return watch_all()


# -- a poller that survives anything (issue 10) ----------------------------------------------------


async def _first_event(trigger: TesTaskTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


async def _run_all(triggers: list[TesTaskTrigger], limit: float = 15.0) -> list[dict[str, Any]]:
    return await asyncio.wait_for(asyncio.gather(*(_first_event(t) for t in triggers)), limit)


def _finish_half(fake: FakeTes, ids: list[str]) -> dict[str, str]:
    """Ends every task: even ones COMPLETE, odd ones EXECUTOR_ERROR; the expected states."""
    wanted = {}
    for n, task_id in enumerate(ids):
        wanted[task_id] = "COMPLETE" if n % 2 == 0 else "EXECUTOR_ERROR"
        fake.tasks[task_id]["state"] = wanted[task_id]
    return wanted


async def test_client_that_cannot_be_built_is_a_configuration_error_for_every_waiter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A ``ca_bundle`` missing on the triggerer host: every waiting trigger ends with an error
    naming it within one interval (the poller used to die silently and leave them waiting)."""
    conn_id, interval = "tes_polling_no_ca", 2.0
    missing = tmp_path / "not-on-this-host.pem"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "tes",
                "host": "https://tes.example.invalid/ga4gh/tes/v1",
                "extra": {"token": "t0ken-value", "ca_bundle": str(missing)},
            }
        ),
    )
    triggers = [TesTaskTrigger(f"task-{i}", conn_id, poll_interval=interval) for i in range(5)]
    started = asyncio.get_running_loop().time()
    events = await _run_all(triggers, limit=interval)
    took = asyncio.get_running_loop().time() - started
    assert took < interval, took
    assert {e["status"] for e in events} == {"error"}
    assert {e["error_type"] for e in events} == {"TesConfigurationError"}
    assert all(conn_id in e["message"] and "ca_bundle" in e["message"] for e in events), events[0]
    assert SharedStatusPoller._registry == {}, "the poller left with its last trigger"

    # A trigger that is canceled before its event gets its CancelledError (with the
    # triggerer's message, which is what makes Airflow call on_kill), never the poller's error.
    runner = asyncio.create_task(_first_event(TesTaskTrigger("task-x", conn_id, poll_interval=interval)))
    await asyncio.sleep(0)
    runner.cancel("user action")
    with pytest.raises(asyncio.CancelledError) as caught:
        await runner
    assert caught.value.args == ("user action",)


@pytest.mark.parametrize("status", [400, 403, 404, 501, 503])
async def test_refused_listing_falls_back_to_gets_and_every_task_finishes(fake: FakeTes, status: int) -> None:
    """A gateway that routes only /tasks/{id}, an ACL that forbids listing, a server that does
    not implement it: 50 watched tasks still end with their own states, none with an error."""
    poller = _register(fake, 0.05)
    ids = [f"t{i}" for i in range(50)]
    for task_id in ids:
        fake.add(task_id)
    fake.list_status = status
    runs = asyncio.gather(*(_first_event(TesTaskTrigger(i, CONN, poll_interval=0.05)) for i in ids))
    for _ in range(300):  # every task polled while running (the client is built first: may be slow)
        if fake.calls["get"] >= len(ids):
            break
        await asyncio.sleep(0.05)
    assert len(poller.watches) == 50
    wanted = _finish_half(fake, ids)
    events = await asyncio.wait_for(runs, 15)
    assert {e["tes_task_id"]: (e["status"], e["state"]) for e in events} == {
        i: ("terminal", s) for i, s in wanted.items()
    }
    assert fake.calls["get"] >= 100, fake.calls


async def test_listing_is_tried_again_with_backoff(fake: FakeTes, poller: SharedStatusPoller) -> None:
    fake.add("a")
    fake.list_status = 403
    async with poller.watch("a") as queue:
        assert (await _next(queue)).state is TesState.RUNNING
        await _settle()
        lists_per_round = []
        for _ in range(12):
            fake.calls.clear()
            await poller.poll_once()
            lists_per_round.append(fake.calls["list"] // len(LISTED_STATES))
        assert queue.empty(), "a refused listing is not an error of the task"
    # round 1 (the first, above) failed; then tries 2, 4, 8 rounds after each failure, each
    # try sent twice (a 403 is first taken for a rotated credential: re-read, then sent again)
    assert lists_per_round == [0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0], lists_per_round


async def test_foreign_tasks_in_a_blind_listing_do_not_disturb_watched_tasks(fake: FakeTes) -> None:
    """A server that ignores the tag and state filters lists every task, other deployments'
    included: entries without id, in states this client does not know, in terminal states."""
    poller = _register(fake, 0.05)
    ids = [f"t{i}" for i in range(50)]
    for task_id in ids:
        fake.add(task_id, state="QUEUED")
    for i in range(20):
        fake.add(
            f"other-{i}", state=["RUNNING", "COMPLETE", "SYSTEM_ERROR", "CANCELING"][i % 4], tagged=False
        )
    fake.blind = True
    fake.foreign = [{"state": "RUNNING"}, {"id": "", "state": "QUEUED"}, {"id": "x-1", "state": "SUSPENDED"}]
    runs = asyncio.gather(*(_first_event(TesTaskTrigger(i, CONN, poll_interval=0.05)) for i in ids))
    await asyncio.sleep(0.3)
    for task_id in ids:
        fake.tasks[task_id]["state"] = "RUNNING"
    await asyncio.sleep(0.3)
    wanted = _finish_half(fake, ids)
    events = await asyncio.wait_for(runs, 15)
    assert {e["tes_task_id"]: (e["status"], e["state"]) for e in events} == {
        i: ("terminal", s) for i, s in wanted.items()
    }
    assert poller.watches == {}


async def test_foreign_tasks_in_a_readable_blind_listing_cost_no_requests(
    fake: FakeTes, poller: SharedStatusPoller
) -> None:
    fake.blind = True
    fake.add("mine")
    for i in range(30):
        fake.add(f"other-{i}", state=["QUEUED", "COMPLETE", "EXECUTOR_ERROR"][i % 3], tagged=False)
    fake.foreign = [{"state": "RUNNING"}, {"id": "", "state": "QUEUED"}, {"id": "x-2", "state": "UNKNOWN"}]
    async with poller.watch("mine") as queue:
        assert (await _next(queue)).state is TesState.RUNNING
        await _settle()
        fake.calls.clear()
        await poller.poll_once()
        # every state's listing shows "mine" RUNNING; nothing else is fetched or delivered
        assert fake.calls == Counter({"list": len(LISTED_STATES)})
        assert queue.empty()
        assert poller.listing_failures == 0


async def test_credential_rotation_during_a_wait(monkeypatch: pytest.MonkeyPatch, fake: FakeTes) -> None:
    """The connection is updated with a new token and the server revokes the old one: the
    watched tasks still finish, and a trigger that starts after the rotation too."""

    def set_token(token: str) -> None:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN.upper()}",
            json.dumps(
                {
                    "conn_type": "tes",
                    "host": "http://tes.invalid/ga4gh/tes/v1",
                    "extra": {"retries": 0, "token": token},
                }
            ),
        )

    set_token("old-token-123456")
    fake.token = "old-token-123456"
    poller = _register(fake, 0.05)
    ids = [f"t{i}" for i in range(10)]
    for task_id in ids:
        fake.add(task_id)
    fake.add("t-new")
    runs = [asyncio.create_task(_first_event(TesTaskTrigger(i, CONN, poll_interval=0.05))) for i in ids]
    await asyncio.sleep(0.3)
    set_token("new-token-654321")
    fake.token = "new-token-654321"
    later = asyncio.create_task(_first_event(TesTaskTrigger("t-new", CONN, poll_interval=0.05)))
    await asyncio.sleep(0.3)
    assert not any(run.done() for run in [*runs, later]), "no wait ended on the revoked token"
    wanted = _finish_half(fake, [*ids, "t-new"])
    events = await asyncio.wait_for(asyncio.gather(*runs, later), 15)
    assert {e["tes_task_id"]: (e["status"], e["state"]) for e in events} == {
        i: ("terminal", s) for i, s in wanted.items()
    }
    assert fake.calls["unauthorized"] >= 1
    assert poller._credential_generation >= 1


async def test_a_task_the_server_does_not_know_yet_is_waited_for(fake: FakeTes) -> None:
    """404 counts against the outage budget (eventually consistent servers), with a clear final
    message when it is spent."""
    _register(fake, 0.05)
    fake.add("late")
    fake.hidden = {"late", "never"}
    late = asyncio.create_task(
        _first_event(TesTaskTrigger("late", CONN, poll_interval=0.05, outage_budget=5))
    )
    never = await _first_event(TesTaskTrigger("never", CONN, poll_interval=0.05, outage_budget=0.5))
    assert never["status"] == "error"
    assert never["error_type"] == "TesNotFoundError"
    assert "404" in never["message"] and "gave up" in never["message"], never["message"]
    fake.hidden = set()
    fake.tasks["late"]["state"] = "COMPLETE"
    assert (await asyncio.wait_for(late, 5))["state"] == "COMPLETE"


async def test_rounds_that_fail_unexpectedly_are_delivered_and_retried(fake: FakeTes) -> None:
    """A non-TES exception from the transport (a bug, a broken host) in every request for a
    while: the watchers count it against their budget, the poller lives on."""
    broken = True

    def flaky(request: httpx.Request) -> httpx.Response:
        if broken:
            raise RuntimeError("something odd on this host")
        return fake(request)

    def register() -> SharedStatusPoller:
        hook = TesHook(CONN, async_transport=httpx.MockTransport(flaky))
        poller = SharedStatusPoller(CONN, 0.05, hook=hook)
        SharedStatusPoller._registry[(id(asyncio.get_running_loop()), CONN, 0.05, None)] = poller
        return poller

    fake.add("a")
    poller = register()
    run = asyncio.create_task(_first_event(TesTaskTrigger("a", CONN, poll_interval=0.05, outage_budget=30)))
    await asyncio.sleep(0.5)
    assert not run.done()
    assert poller._task is not None and not poller._task.done(), "the poller is alive"
    broken = False
    fake.tasks["a"]["state"] = "COMPLETE"
    assert (await asyncio.wait_for(run, 5))["state"] == "COMPLETE"

    broken = True
    register()  # the first poller left with its last trigger
    doomed = await asyncio.wait_for(
        _first_event(TesTaskTrigger("a", CONN, poll_interval=0.05, outage_budget=0.3)), 5
    )
    assert doomed["status"] == "error"
    assert "RuntimeError" in doomed["message"] and "something odd" in doomed["message"]


async def test_the_pollers_own_lines_are_the_triggerers_not_the_first_triggers(fake: FakeTes) -> None:
    """The triggerer routes a record to a task log by context variables it binds per trigger
    (structlog's ``trigger_id``); the poller one trigger started serves them all and must not
    write into that one's task log (see ``triggers/shared.py``)."""
    routed: list[Any] = []

    class Routing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            routed.append(structlog.contextvars.get_contextvars().get("trigger_id"))

    async def first_trigger() -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(trigger_id=1)
        return await _first_event(TesTaskTrigger("a", CONN, poll_interval=0.05))

    handler = Routing()
    logging.getLogger(polling.__name__).addHandler(handler)
    fake.refuse_listing = True  # the poller says so in its own log, now and then
    fake.add("a")
    _register(fake, 0.05)
    run = asyncio.create_task(first_trigger())
    try:
        for _ in range(100):
            if routed:
                break
            await asyncio.sleep(0.05)
        fake.tasks["a"]["state"] = "COMPLETE"
        assert (await asyncio.wait_for(run, 5))["state"] == "COMPLETE"
    finally:
        logging.getLogger(polling.__name__).removeHandler(handler)
        SharedStatusPoller._registry.clear()
    assert routed, "the refused listing was said"
    assert set(routed) == {None}, "said in the first trigger's context"


# -- what a watch costs (issue 14) -----------------------------------------------------------------


@pytest.mark.parametrize("arriving", [polling.ARRIVALS_FOR_A_ROUND - 1, polling.ARRIVALS_FOR_A_ROUND, 600])
async def test_a_few_arrivals_cost_a_get_each_a_crowd_one_round(
    fake: FakeTes, poller: SharedStatusPoller, arriving: int
) -> None:
    """New watches between rounds: a few (a trigger deferring) are looked up by GET at once, no
    round; a crowd (another triggerer died and its triggers start here beside this one's own)
    is found by one round started early, a listing per state and no GET."""
    for i in range(arriving + 1):
        fake.add(f"t{i}", state="RUNNING" if i % 2 else "QUEUED")
    async with poller.watch("t0") as own:
        await _next(own)
        await _settle()
        rounds = poller.rounds
        fake.calls.clear()
        async with contextlib_watch_all(poller, [f"t{i}" for i in range(1, arriving + 1)]) as queues:
            updates = await asyncio.gather(*(_next(q) for q in queues))
            assert [u.state for u in updates] == [
                TesState.RUNNING if i % 2 else TesState.QUEUED for i in range(1, arriving + 1)
            ]
            if arriving < polling.ARRIVALS_FOR_A_ROUND:
                assert poller.rounds == rounds and poller.early_rounds == 0
                assert fake.calls == Counter({"get": arriving})
            else:
                assert poller.rounds == rounds + 1 and poller.early_rounds == 1
                # One listing per listed state (600 tasks fit a page).
                assert fake.calls == Counter({"list": len(polling.LISTED_STATES)}), fake.calls


async def test_arrivals_that_keep_coming_start_one_early_round_an_interval(fake: FakeTes) -> None:
    crowd = polling.ARRIVALS_FOR_A_ROUND
    for i in range(3 * crowd + 1):
        fake.add(f"t{i}")
    poller = _register(fake, 3600.0)
    try:
        async with poller.watch("t0") as own:
            await _next(own)
            await _settle()
            fake.calls.clear()
            async with contextlib.AsyncExitStack() as stack:
                for wave in range(3):
                    ids = [f"t{i}" for i in range(1 + wave * crowd, 1 + (wave + 1) * crowd)]
                    queues = [await stack.enter_async_context(poller.watch(i)) for i in ids]
                    await asyncio.gather(*(_next(q) for q in queues))
            # The first crowd: an early round; the next two, within the same interval: GETs.
            assert poller.early_rounds == 1
            assert fake.calls == Counter({"list": len(polling.LISTED_STATES), "get": 2 * crowd})
    finally:
        SharedStatusPoller._registry.clear()


async def test_a_round_does_not_wait_for_its_lookups(fake: FakeTes) -> None:
    """A wave of endings: the GETs run in the background, the next round starts on time and
    does not fetch a task whose GET is still in flight."""
    gate = asyncio.Event()

    async def slow_gets(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/tasks"):
            await gate.wait()
        return fake(request)

    hook = TesHook(CONN, async_transport=httpx.MockTransport(slow_gets))
    poller = SharedStatusPoller(CONN, 3600.0, hook=hook)
    for i in range(30):
        fake.add(f"t{i}")
    async with contextlib_watch_all(poller, [f"t{i}" for i in range(30)]) as queues:
        await asyncio.gather(*(_next(q) for q in queues))
        for i in range(30):
            fake.tasks[f"t{i}"]["state"] = "COMPLETE"
        await asyncio.wait_for(poller.poll_once(wait_for_lookups=False), 1)
        await asyncio.wait_for(poller.poll_once(wait_for_lookups=False), 1)
        assert fake.calls["get"] == 0, "every GET is held at the server"
        gate.set()
        updates = await asyncio.gather(*(_next(q) for q in queues))
        assert {u.state for u in updates} == {TesState.COMPLETE}
        await _settle()
        assert fake.calls["get"] == 30, "each ended task was fetched once"


@contextlib.asynccontextmanager
async def _watching(
    fake: FakeTes, poller: SharedStatusPoller, ids: list[str]
) -> AsyncIterator[list[asyncio.Queue[Any]]]:
    """``ids`` running on the server and watched, their first state delivered."""
    for task_id in ids:
        fake.add(task_id)
    async with contextlib_watch_all(poller, ids) as queues:
        await asyncio.gather(*(_next(q) for q in queues))
        yield queues


def _end(fake: FakeTes, states: dict[str, str]) -> None:
    """The tasks end on the server; what is counted from here is what the poller does about it."""
    for task_id, state in states.items():
        fake.tasks[task_id]["state"] = state
    fake.calls.clear()
    fake.listings.clear()


async def test_a_wave_of_endings_is_resolved_by_listing_the_ended_states(
    fake: FakeTes, poller: SharedStatusPoller
) -> None:
    """Many tasks gone from the active listings at once cost one listing per terminal state,
    not a GET each; every task gets its own terminal state once."""
    ids = [f"t{i}" for i in range(3 * BULK_MIN)]
    async with _watching(fake, poller, ids) as queues:
        ended = {task_id: "COMPLETE" for task_id in ids[: 2 * BULK_MIN]}
        ended |= {task_id: "EXECUTOR_ERROR" for task_id in ids[2 * BULK_MIN : 2 * BULK_MIN + 5]}
        _end(fake, ended)
        await poller.poll_once()
        assert fake.calls["get"] == 0
        assert fake.calls["list"] == len(LISTED_STATES) + len(ENDED_STATES)
        for task_id, queue in zip(ids, queues, strict=True):
            if task_id in ended:
                assert (await _next(queue)).state == TesState(ended[task_id])
            assert queue.empty()


async def test_a_long_history_of_ended_tasks_is_not_read_through(
    fake: FakeTes, poller: SharedStatusPoller
) -> None:
    """A server keeps every task it ever ended: a page of ended tasks that are not watched ends
    that listing after one page, and the watched ones are fetched by GET."""
    for i in range(3000):
        fake.add(f"old{i}", "COMPLETE")
    ids = [f"t{i}" for i in range(2 * BULK_MIN)]
    async with _watching(fake, poller, ids) as queues:
        _end(fake, dict.fromkeys(ids, "COMPLETE"))
        await poller.poll_once()
        assert fake.listings["COMPLETE"] == 1, "one page of someone else's history, then GETs"
        assert fake.calls["get"] == len(ids)
        updates = await asyncio.gather(*(_next(q) for q in queues))
        assert {u.state for u in updates} == {TesState.COMPLETE}
        await _settle()
        assert all(q.empty() for q in queues)


async def test_a_refused_listing_of_ended_tasks_leaves_them_to_gets(
    fake: FakeTes, poller: SharedStatusPoller
) -> None:
    ids = [f"t{i}" for i in range(2 * BULK_MIN)]
    async with _watching(fake, poller, ids) as queues:
        _end(fake, dict.fromkeys(ids, "SYSTEM_ERROR"))
        fake.refused_states = {state.value for state in ENDED_STATES}
        await poller.poll_once()
        updates = await asyncio.gather(*(_next(q) for q in queues))
        assert {u.state for u in updates} == {TesState.SYSTEM_ERROR}
        assert fake.calls["get"] == len(ids)


async def test_while_endings_keep_coming_ended_states_are_listed_beside_the_active_ones(
    fake: FakeTes, poller: SharedStatusPoller
) -> None:
    """Like triggers, each watcher leaves once its task has ended."""
    ids = [f"t{i}" for i in range(6 * BULK_MIN)]
    waves = [ids[: 2 * BULK_MIN], ids[2 * BULK_MIN : 4 * BULK_MIN], [], []]
    async with _watching(fake, poller, ids[4 * BULK_MIN :]):
        seen = []
        for wave in waves:
            async with _watching(fake, poller, wave) as queues:
                _end(fake, dict.fromkeys(wave, "COMPLETE"))
                await poller.poll_once()
                seen.append((fake.listings["COMPLETE"], fake.calls["get"]))
                assert [(await _next(q)).state for q in queues] == [TesState.COMPLETE] * len(wave)
        # 1st wave: found missing, then listed; 2nd: listed beside the active states; then one
        # round more of that (the 2nd wave's round saw endings), then active states only.
        assert seen == [(1, 0), (1, 0), (1, 0), (0, 0)]


async def test_tasks_that_end_while_the_listings_run_are_listed_again_not_fetched(
    fake: FakeTes, poller: SharedStatusPoller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a wave the ended states are listed beside the active ones, page by page; a task that
    ends between the two (after the ended listing's page, before the active one's) is in
    neither, and is found by one more ended listing, not a GET."""
    monkeypatch.setattr(polling, "PAGE_SIZE", BULK_MIN)  # pages interleave, as at thousands
    ids = [f"t{i}" for i in range(5 * BULK_MIN)]
    first, late = ids[: 2 * BULK_MIN], ids[2 * BULK_MIN : 3 * BULK_MIN]
    raced: list[str] = []

    def end_between_the_listings(state: str | None) -> None:
        if state == "RUNNING" and fake.listings["COMPLETE"] and not raced:
            raced.extend(late)  # the ended listing has read its page: they end now
            for task_id in late:
                fake.tasks[task_id]["state"] = "COMPLETE"

    async with _watching(fake, poller, ids[3 * BULK_MIN :]):
        async with _watching(fake, poller, first) as queues:
            _end(fake, dict.fromkeys(first, "EXECUTOR_ERROR"))
            await poller.poll_once()  # a wave starts: the next round lists the ended beside
            assert {(await _next(q)).state for q in queues} == {TesState.EXECUTOR_ERROR}
        async with _watching(fake, poller, late) as queues:
            fake.calls.clear()
            fake.listings.clear()
            fake.on_listing = end_between_the_listings
            await poller.poll_once()
            assert raced, "the tasks ended between the ended and the active listing"
            assert {(await _next(q)).state for q in queues} == {TesState.COMPLETE}
            assert fake.calls["get"] == 0
            assert fake.listings["COMPLETE"] == 2, "the ended listing, then once more after the round"


async def test_a_deployment_lists_only_its_own_tasks(fake: FakeTes) -> None:
    """Triggers that name their deployment share a poller that lists that deployment's tasks
    only: another deployment's thousands of tasks on the same server cost it nothing."""
    for i in range(3000):
        fake.add(f"other{i}", deployment="b")
    fake.add("mine", deployment="a")
    requests: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return fake(request)

    hook = TesHook(CONN, async_transport=httpx.MockTransport(recording))
    poller = SharedStatusPoller(CONN, 3600.0, hook=hook, deployment="a")
    SharedStatusPoller._registry[(id(asyncio.get_running_loop()), CONN, 3600.0, "a")] = poller
    try:
        trigger = TesTaskTrigger("mine", tes_conn_id=CONN, poll_interval=3600.0, deployment="a")
        assert SharedStatusPoller.for_connection(CONN, 3600.0, trigger.deployment) is poller
        async with poller.watch("mine") as updates:
            assert (await _next(updates)).state is TesState.RUNNING
            await _settle()
            requests.clear()
            fake.tasks["mine"]["state"] = "COMPLETE"
            await poller.poll_once()
            assert (await _next(updates)).state is TesState.COMPLETE
        listings = [r for r in requests if r.url.path.endswith("/tasks")]
        assert listings
        for listing in listings:
            assert listing.url.params.get_list("tag_key") == ["deployment"]
            assert listing.url.params.get_list("tag_value") == ["a"]
    finally:
        SharedStatusPoller._registry.clear()

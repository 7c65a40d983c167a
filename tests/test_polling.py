"""The shared status poller: coalesced listing, per-task fallback, clean leaving.

An in-memory TES behind ``httpx.MockTransport`` makes request counts exact; the trigger
tests run the same poller against Funnel.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesState
from airflow_provider_tes.triggers.polling import SharedStatusPoller
from airflow_provider_tes.triggers.tes import TesTaskTrigger

CONN = "tes_polling_unit"


class FakeTes:
    """Tasks by id with state and tags; answers ListTasks filters and GETs; counts calls."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.refuse_listing = False

    def add(self, task_id: str, state: str = "RUNNING", tagged: bool = True) -> None:
        self.tasks[task_id] = {"id": task_id, "state": state, "tags": {"dag_id": "d"} if tagged else {}}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = urlsplit(str(request.url)).path.removeprefix("/ga4gh/tes/v1/")
        query = parse_qs(urlsplit(str(request.url)).query)
        if path == "tasks":
            self.calls["list"] += 1
            if self.refuse_listing:
                return httpx.Response(400, json={"message": "filters not supported"})
            state = query.get("state", [None])[0]
            keys = query.get("tag_key", [])
            tasks = [
                {"id": t["id"], "state": t["state"]}
                for t in self.tasks.values()
                if (state is None or t["state"] == state) and all(k in t["tags"] for k in keys)
            ]
            return httpx.Response(200, json={"tasks": tasks, "next_page_token": ""})
        task_id = path.removeprefix("tasks/")
        self.calls["get"] += 1
        if task_id not in self.tasks:
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
    SharedStatusPoller._registry[(id(asyncio.get_running_loop()), CONN, interval)] = poller
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
        # 4 active states x 2 rounds, and not one GET for 300 running tasks
        assert fake.calls == Counter({"list": 8})
        assert all(q.empty() for q in queues), "unchanged states are not delivered again"

        fake.tasks["t7"]["state"] = "COMPLETE"  # leaves the active listings
        fake.calls.clear()
        await poller.poll_once()
        assert fake.calls == Counter({"list": 4, "get": 1})
        update = await _next(queues[7])
        assert update.state is TesState.COMPLETE


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
    assert peak == 4, "the four active states are listed at the same time"
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
        assert fake.calls == Counter({"list": 4, "get": 1})


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

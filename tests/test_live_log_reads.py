"""How the live logs of many followed tasks are read: one FULL listing where it is cheaper, a GET
per task where it is not, and never fewer lines either way.

Against the loopback stub, whose tasks' stdout grows by a numbered line a second and which
answers FULL views of one task and in listings, as Funnel does (the same path against Funnel is
in ``test_watching.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog.contextvars
import structlog.testing

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesState, TesTask, TesView
from airflow_provider_tes.triggers.progress import LIST_MIN_FOLLOWED, LiveLog, LogReads
from airflow_provider_tes.triggers.tes import TesTaskTrigger
from tests.support.inprocess import lines_on_resume
from tests.support.rules import Rewrite, Rule
from tests.support.tes_stub import TesStub

CONN = "tes_live_reads"
DEPLOYMENT = "dep-live-reads"
#: Long enough for a few log intervals (1 s) while the tasks run.
RUNNING_FOR = 4.6


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[TesStub]:
    with TesStub(funnel_sized=True) as server:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN.upper()}",
            json.dumps({"conn_type": "tes", "host": server.base_url, "extra": {"retries": 0}}),
        )
        yield server


def _create(stub: TesStub, n: int, *, follow: bool = True, state: str = "RUNNING") -> list[str]:
    """``n`` tasks of the deployment in ``state``; followed ones run and print a line a second."""
    ids = []
    for _ in range(n):
        task = {
            "name": "live",
            "tags": {"deployment": DEPLOYMENT, "dag_id": "d"},
            "executors": [{"image": "alpine", "command": ["true"]}],
        }
        task_id = httpx.post(f"{stub.base_url}/tasks", json=task).json()["id"]
        if follow:
            stub.follow(task_id)
        else:
            stub.rewrite_state(task_id, state)
        ids.append(task_id)
    return ids


def _full_calls(stub: TesStub, call: str, state: str | None = None) -> int:
    return sum(
        1
        for r in stub.seen_calls(call)
        if "FULL" in r.query.get("view", []) and (state is None or state in r.query.get("state", []))
    )


async def _follow_all(
    stub: TesStub, ids: list[str], running_for: float = RUNNING_FOR, said: list[Any] | None = None
) -> tuple[list[dict[str, Any]], list[str], int]:
    """Each task followed by its own trigger for a while, then ended; the events, the stdout
    lines logged (``line n``, the same in every task: counted, not told apart) by the triggers
    and then by the worker's last read of each task (from the handover in its event), and the
    FULL GETs the triggers made. Every log entry goes to ``said`` too, if given."""
    triggers = [
        TesTaskTrigger(task_id, CONN, poll_interval=0.5, log_interval=1.0, deployment=DEPLOYMENT)
        for task_id in ids
    ]
    with structlog.testing.capture_logs() as logs:

        async def events_of(trigger: TesTaskTrigger) -> list[Any]:
            return [event async for event in trigger.run()]

        runs = [asyncio.create_task(events_of(t)) for t in triggers]
        await asyncio.sleep(running_for)
        for task_id in ids:
            stub.rewrite_state(task_id, "COMPLETE")
        events = await asyncio.wait_for(asyncio.gather(*runs), 10)
    if said is not None:
        said += logs
    assert all(len(e) == 1 for e in events)
    payloads = [e[0].payload for e in events]
    gets = _full_calls(stub, "get")
    logged = [line for e in logs for line in str(e.get("event", "")).split("\n")]  # a record per read
    async with httpx.AsyncClient(base_url=stub.base_url) as client:
        for payload in payloads:
            full = await client.get(f"/tasks/{payload['tes_task_id']}", params={"view": "FULL"})
            logged += lines_on_resume(payload, TesTask.from_response(full.json()))
    return payloads, [line for line in logged if line.startswith("stdout | ")], gets


def _each_line_once_per_task(payloads: list[dict[str, Any]], lines: list[str], tasks: int) -> None:
    assert all(p["state"] == "COMPLETE" for p in payloads)
    shown = [p["lines_shown"] for p in payloads]
    assert min(shown) >= 3, shown
    assert len(lines) == sum(shown)
    for n in range(1, max(shown) + 1):
        expected = sum(1 for s in shown if s >= n)
        assert lines.count(f"stdout | line {n}") == expected, (n, expected, lines)
    assert len(lines) >= tasks * 3


async def test_followed_running_tasks_are_read_by_one_listing(stub: TesStub) -> None:
    ids = _create(stub, LIST_MIN_FOLLOWED + 2)
    payloads, lines, gets = await _follow_all(stub, ids)
    _each_line_once_per_task(payloads, lines, len(ids))
    # Reads while running come from the shared listings; at most one GET per task at the edges
    # (a read before the poller's first count, or after the task left RUNNING and the listing).
    # The last lines are the worker's: no GET of the triggerer at the end.
    assert _full_calls(stub, "list") >= 2
    assert gets <= len(ids)
    assert not LogReads._registry, "the readers leave with their followers"


async def test_followed_queued_tasks_are_read_by_a_listing_of_their_state(stub: TesStub) -> None:
    """Queued tasks are followed too (the server's system logs say why they wait)."""
    ids = _create(stub, LIST_MIN_FOLLOWED + 2, follow=False, state="QUEUED")
    payloads, lines, gets = await _follow_all(stub, ids, running_for=2.6)
    assert [p["state"] for p in payloads] == ["COMPLETE"] * len(ids)
    assert lines == []
    assert _full_calls(stub, "list", "QUEUED") >= 1
    assert _full_calls(stub, "list", "RUNNING") == 0
    assert gets <= len(ids)


async def test_followed_tasks_among_many_running_are_read_one_by_one(stub: TesStub) -> None:
    ids = _create(stub, LIST_MIN_FOLLOWED)
    _create(stub, 3 * LIST_MIN_FOLLOWED, follow=False)  # running, followed by no one here
    payloads, lines, gets = await _follow_all(stub, ids)
    _each_line_once_per_task(payloads, lines, len(ids))
    # A listing would return four times what is needed: each task is read by its own GET.
    assert _full_calls(stub, "list") == 0
    assert gets >= len(ids) * 3


@pytest.mark.parametrize("server", ["refuses FULL listings", "lists without the FULL view"])
async def test_a_listing_that_does_not_serve_falls_back_to_gets(stub: TesStub, server: str) -> None:
    if server == "refuses FULL listings":
        rewrite = Rewrite(status=500)
    else:  # the tasks' MINIMAL view, whatever was asked

        def minimal(doc: Any, _request: Any) -> Any:
            return {**doc, "tasks": [{"id": t["id"], "state": t["state"]} for t in doc["tasks"]]}

        rewrite = Rewrite(body=minimal)
    stub.add_rule(Rule(rewrite, method="GET", path=r"/tasks$", query={"view": "FULL"}))
    ids = _create(stub, LIST_MIN_FOLLOWED + 2)
    payloads, lines, gets = await _follow_all(stub, ids)
    _each_line_once_per_task(payloads, lines, len(ids))
    # A refusal is tried again after 2, then 4 intervals (it may pass); a server whose listings
    # lack the FULL view will not change: it is left alone for long. GETs read every task meanwhile.
    assert _full_calls(stub, "list") == (2 if server == "refuses FULL listings" else 1)
    assert gets >= len(ids) * 3


async def test_a_read_that_fails_unexpectedly_is_said_once_and_the_logs_go_on(
    stub: TesStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = [RuntimeError("a bug in a read"), RuntimeError("a bug in a read")]
    real_get = TesHook.a_get_task

    async def failing_twice(self: TesHook, task_id: str, view: Any = TesView.MINIMAL) -> Any:
        if view is TesView.FULL and failures:
            raise failures.pop()
        return await real_get(self, task_id, view)

    monkeypatch.setattr(TesHook, "a_get_task", failing_twice)
    ids = _create(stub, 1)
    said: list[Any] = []
    payloads, lines, _ = await _follow_all(stub, ids, running_for=4.6, said=said)
    _each_line_once_per_task(payloads, lines, 1)
    warnings = [e for e in said if "could not read them" in str(e.get("event", ""))]
    assert len(warnings) == 1, warnings
    assert "RuntimeError('a bug in a read')" in str(warnings[0]["event"])
    assert not failures


async def test_a_task_the_listing_stops_showing_is_read_by_get_after_one_skip(stub: TesStub) -> None:
    """A task that left the listing has usually moved on (the poller says so within a round):
    one read is skipped; if the listing goes on leaving it out, its own GETs read it."""
    ids = _create(stub, LIST_MIN_FOLLOWED + 2)
    hidden = ids[0]
    listings = [0]

    def hide_after_the_first(doc: Any, _request: Any) -> Any:
        listings[0] += 1
        if listings[0] == 1:
            return doc
        return {**doc, "tasks": [t for t in doc["tasks"] if t["id"] != hidden]}

    stub.add_rule(
        Rule(Rewrite(body=hide_after_the_first), method="GET", path=r"/tasks$", query={"view": "FULL"})
    )
    payloads, lines, _ = await _follow_all(stub, ids, running_for=4.6)
    _each_line_once_per_task(payloads, lines, len(ids))
    gets = [r for r in stub.seen_calls("get") if "FULL" in r.query.get("view", [])]
    hidden_gets = sum(1 for r in gets if r.path.endswith(hidden))
    # Listed once, skipped once, then read by GET every interval; then the worker's last read
    # (one for every task).
    assert hidden_gets >= 3, hidden_gets
    assert len(gets) - hidden_gets <= 2 * (len(ids) - 1)


class _Poller:
    """As much of a poller as the reads use: every task RUNNING, no counts (so: GETs), and a
    hook whose FULL GET of ``t-<n>`` answers ``line <n>`` once ``gate`` is set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.hook = self

    def last_state(self, task_id: str) -> TesState:
        return TesState.RUNNING

    def listed_count(self, state: TesState) -> int | None:
        return None

    async def a_settings(self) -> Any:
        return type("Settings", (), {"max_concurrency": 4})()

    async def a_get_task(self, task_id: str, view: TesView) -> TesTask:
        await self.gate.wait()
        stdout = f"line {task_id.removeprefix('t-')}\n"
        return TesTask.from_response(
            {"id": task_id, "state": "RUNNING", "logs": [{"logs": [{"stdout": stdout}]}]}
        )


class _Said:
    """A trigger's logger that notes, with each record, the trigger the record is routed to
    (the triggerer routes by the ``trigger_id`` it binds in each trigger's context)."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, str]] = []

    def info(self, msg: str, *args: Any) -> None:
        self.records.append((structlog.contextvars.get_contextvars().get("trigger_id"), msg % args))

    warning = info


def _started(poller: Any, task_id: str, trigger_id: int | None = None, log: Any = None) -> LiveLog:
    """A live log started as a trigger starts it: in the context the triggerer made for it."""
    live = LiveLog(poller, task_id, 1.0, log or _Said())

    def start() -> None:
        if trigger_id is not None:
            structlog.contextvars.bind_contextvars(trigger_id=trigger_id)
        live.start()

    contextvars.copy_context().run(start)
    return live


def _clocks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("tes-live-logs-") and not t.done()]


async def test_the_followers_of_an_interval_share_one_clock_that_leaves_with_the_last() -> None:
    """A follower holds no timer of its own. The reads of its interval, and their clock, are
    made as the first follower joins and dropped as the last one leaves (never held on to for a
    follower to be)."""
    poller: Any = _Poller()
    first = _started(poller, "a")
    reads = LogReads._registry[(id(poller), 1.0)]
    first.stop()
    assert not LogReads._registry, "the last follower took its reads along"
    await asyncio.sleep(0)
    assert not _clocks()
    second, third, again = _started(poller, "b"), _started(poller, "c"), _started(poller, "c")
    shared = LogReads._registry[(id(poller), 1.0)]
    assert shared is not reads
    assert shared.followed == {"b", "c"}
    assert len(_clocks()) == 1
    third.stop()
    assert shared.followed == {"b", "c"}, "another trigger still follows c"
    second.stop()
    again.stop()
    assert not LogReads._registry
    await asyncio.sleep(0)
    assert not _clocks()


async def test_each_followers_lines_are_logged_in_its_own_triggers_context() -> None:
    """One clock reads for every trigger; each record still reaches its own trigger's log."""
    poller: Any = _Poller()
    said = _Said()
    lives = [_started(poller, f"t-{n}", trigger_id=n, log=said) for n in (1, 2, 3)]
    try:
        await LogReads._registry[(id(poller), 1.0)].read_all()
    finally:
        for live in lives:
            live.stop()
    assert sorted(said.records) == [(1, "stdout | line 1"), (2, "stdout | line 2"), (3, "stdout | line 3")]


async def test_a_read_under_way_when_its_follower_hands_over_is_not_shown() -> None:
    """The handover says what was shown: a read that comes after it is dropped (the worker
    shows those lines)."""
    poller: Any = _Poller()
    said = _Said()
    live = _started(poller, "t-1", log=said)
    poller.gate.clear()
    reading = asyncio.create_task(LogReads._registry[(id(poller), 1.0)].read_all())
    await asyncio.sleep(0.05)
    handed = live.handover()
    poller.gate.set()
    await reading
    assert said.records == []
    assert handed["streams"]["stdout"]["shown"] == 0

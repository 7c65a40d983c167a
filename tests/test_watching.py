"""What a running TES task shows and what a stuck one does, against Funnel (and the proxy).

* live logs: new executor-log lines appear in the trigger's log while the task runs, each once;
* startup_timeout: a task held QUEUED is warned about at half the timeout, then canceled on the
  server, and the Airflow side fails naming the state and how long it waited.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import structlog.testing

from airflow_provider_tes.exceptions import TesStartupTimeoutError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import DEPLOYMENT_TAG
from airflow_provider_tes.models import TesExecutor, TesState, TesTask, TesView
from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.triggers.progress import LIST_MIN_FOLLOWED, LogReads
from airflow_provider_tes.triggers.tes import TesTaskTrigger
from tests.support.inprocess import lines_on_resume, task_context
from tests.support.tes_proxy import TesProxy

pytestmark = pytest.mark.funnel

NUMBERED = "i=1; while [ $i -le 8 ]; do echo line-$i; i=$((i+1)); sleep 0.5; done"


@pytest.fixture
def conns(funnel_conn: Callable[..., str], s3_bucket: str) -> str:
    return funnel_conn("tes_watch", f"s3://{s3_bucket}/watch/")


def _events(logs: list[dict[str, Any]]) -> list[str]:
    """The logged lines (live logs log the lines of one read as one record)."""
    return [line for entry in logs for line in str(entry.get("event", "")).split("\n")]


async def test_live_lines_appear_while_running_each_once(conns: str) -> None:
    with TesHook(conns) as hook:
        tes_id = hook.create_task(
            TesTask(
                name=f"live-{uuid.uuid4().hex[:8]}",
                executors=[TesExecutor(image="alpine:3.20", command=["/bin/sh", "-c", NUMBERED])],
            )
        )
    trigger = TesTaskTrigger(tes_id, conns, poll_interval=0.5, log_interval=0.5, started_at=time.time())
    seen_while_running: list[str] = []
    with structlog.testing.capture_logs() as logs:

        async def watch_running() -> None:
            while True:
                await asyncio.sleep(0.25)
                seen_while_running[:] = [e for e in _events(logs) if e.startswith("stdout | line-")]

        watcher = asyncio.create_task(watch_running())
        events = [e async for e in trigger.run()]
        watcher.cancel()
    payload = events[0].payload
    with TesHook(conns) as hook:  # the worker's last read, as on resume
        last = lines_on_resume(payload, hook.get_task(tes_id, view=TesView.FULL))
    lines = [e for e in [*_events(logs), *last] if e.startswith("stdout | ")]
    assert lines == [f"stdout | line-{i}" for i in range(1, 9)], lines  # all, in order, once
    assert len(seen_while_running) >= 3, "lines must appear while the task runs, not only at its end"
    assert payload["state"] == "COMPLETE"
    assert payload["lines_shown"] == 8


async def test_live_lines_of_several_tasks_come_from_funnels_full_listing(
    monkeypatch: pytest.MonkeyPatch, conns: str
) -> None:
    """Followed tasks that are all of their deployment's running ones are read by one FULL
    listing per interval: Funnel's listing carries each executor's stdout as its GET does."""
    deployment = f"watch-{uuid.uuid4().hex[:8]}"
    listed: list[int] = []
    real_list = LogReads._list_followed

    async def counted(self: LogReads, state: TesState) -> dict[str, TesTask]:
        found = await real_list(self, state)
        listed.append(sum(1 for t in found.values() if t.last_log and t.last_log.logs[-1].stdout))
        return found

    monkeypatch.setattr(LogReads, "_list_followed", counted)
    tasks = LIST_MIN_FOLLOWED
    with TesHook(conns) as hook:
        ids = [
            hook.create_task(
                TesTask(
                    name=f"live-{deployment}-{k}",
                    tags={DEPLOYMENT_TAG: deployment},
                    executors=[
                        TesExecutor(
                            image="alpine:3.20",
                            command=["/bin/sh", "-c", NUMBERED.replace("line-", f"t{k}-")],
                        )
                    ],
                )
            )
            for k in range(tasks)
        ]
    triggers = [
        TesTaskTrigger(i, conns, poll_interval=0.5, log_interval=0.5, deployment=deployment) for i in ids
    ]

    async def events_of(trigger: TesTaskTrigger) -> list[Any]:
        return [event async for event in trigger.run()]

    with structlog.testing.capture_logs() as logs:
        events = await asyncio.wait_for(asyncio.gather(*(events_of(t) for t in triggers)), 120)
    assert [e[0].payload["state"] for e in events] == ["COMPLETE"] * tasks
    logged = _events(logs)
    with TesHook(conns) as hook:  # each worker's last read, as on resume
        for tes_id, (event,) in zip(ids, events, strict=True):
            logged += lines_on_resume(event.payload, hook.get_task(tes_id, view=TesView.FULL))
    lines = [e for e in logged if e.startswith("stdout | ")]
    for k in range(tasks):
        assert [e for e in lines if e.startswith(f"stdout | t{k}-")] == [
            f"stdout | t{k}-{i}" for i in range(1, 9)
        ], lines
    assert any(listed), f"no FULL listing carried a followed task's stdout: {listed}"


def _context(task_id: str) -> Any:
    return task_context("tes_watch", task_id)


def test_task_held_queued_past_startup_timeout_is_canceled(
    monkeypatch: pytest.MonkeyPatch, funnel: Any, funnel_conn: Callable[..., str], conns: str, s3_bucket: str
) -> None:
    with TesProxy(funnel.url) as proxy:
        funnel_conn("tes_watch_held", f"s3://{s3_bucket}/watch/", proxy.base_url)
        real_create = TesHook.create_task

        def create_then_hold(self: TesHook, task: TesTask) -> str:
            tes_id = real_create(self, task)
            proxy.rewrite_state(tes_id, "QUEUED")  # the server "never starts" it
            return tes_id

        monkeypatch.setattr(TesHook, "create_task", create_then_hold)
        op = TesTaskOperator(
            task_id="held",
            image="alpine:3.20",
            command="sleep 120",
            tes_conn_id="tes_watch_held",
            poll_interval=0.5,
            startup_timeout=4,
            deferrable=False,
        )
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs, pytest.raises(TesStartupTimeoutError) as info:
            op.execute(_context("held"))
        waited = time.monotonic() - started
    message = str(info.value)
    assert re.search(r"stayed QUEUED for \d+s, past startup_timeout \(4s\), and was canceled", message), (
        message
    )
    assert 4 <= waited < 30
    assert any("it will be canceled after 4s" in e for e in _events(logs)), _events(logs)
    assert op.tes_task_id
    with TesHook(conns) as hook:
        for _ in range(60):
            if hook.get_task(op.tes_task_id).state is TesState.CANCELED:
                break
            time.sleep(0.5)
        assert hook.get_task(op.tes_task_id).state is TesState.CANCELED

"""Marking 200 deferred tasks failed at once, as the triggerer does it, against Funnel.

The triggerer cancels each trigger's run and then awaits its ``on_kill`` in the same event
loop as every other trigger. The cancels reuse the pollers' live client, so the loop is never
blocked for long (a client per cancel would set up TLS on the loop 200 times), and every TES
task ends CANCELED.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesState, TesTask
from airflow_provider_tes.triggers.tes import TesTaskTrigger
from tests.support.airflow_env import tes_connection

pytestmark = pytest.mark.funnel

COUNT = 200


async def _run_like_the_triggerer(trigger: TesTaskTrigger) -> None:
    try:
        async for _event in trigger.run():
            raise AssertionError("the task ended before it was marked failed")
    except asyncio.CancelledError:
        await trigger.on_kill()
        raise


async def test_two_hundred_marked_failed_at_once(monkeypatch: pytest.MonkeyPatch, funnel: Any) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TES_MASS", tes_connection(funnel.base_url, funnel.user, funnel.password))
    batch = uuid.uuid4().hex[:8]
    with TesHook("tes_mass") as hook:
        ids = [
            hook.create_task(
                TesTask(
                    name=f"mass-{batch}-{i}",
                    tags={"dag_id": "tes_mass_cancel"},
                    executors=[TesExecutor(image="alpine:3.20", command=["sleep", "600"])],
                )
            )
            for i in range(COUNT)
        ]
    triggers = [TesTaskTrigger(tes_id, "tes_mass", poll_interval=2) for tes_id in ids]
    runs = [asyncio.create_task(_run_like_the_triggerer(t)) for t in triggers]
    await asyncio.sleep(5)  # every trigger is watching; the poller has run its rounds

    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            lags.append(time.monotonic() - before - 0.05)

    measuring = asyncio.create_task(ticker())
    for run in runs:  # "mark failed" on all of them at once
        run.cancel()
    results = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 120)
    await asyncio.sleep(0.2)
    measuring.cancel()
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert lags and max(lags) < 1.0, f"event loop blocked for {max(lags):.2f}s"

    with TesHook("tes_mass") as hook:
        deadline = time.monotonic() + 180
        while True:
            states = {hook.get_task(tes_id).state for tes_id in ids}
            if states == {TesState.CANCELED} or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    assert states == {TesState.CANCELED}, states
    print(f"\n[mass cancel] {COUNT} tasks canceled; loop lag max {max(lags) * 1000:.0f} ms")

"""Trigger that waits for a TES task in the triggerer, so no worker slot is held meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_tes.connection import DEFAULT_POLL_INTERVAL
from airflow_provider_tes.events import EventStatus, TesTaskEvent
from airflow_provider_tes.exceptions import (
    TesError,
    TesMalformedResponseError,
    TesNotFoundError,
    TesServerUnavailableError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesState, TesView
from airflow_provider_tes.redaction import system_logs as redacted_system_logs
from airflow_provider_tes.triggers.clients import borrowed_hook
from airflow_provider_tes.triggers.ownership import ownership
from airflow_provider_tes.triggers.polling import SharedStatusPoller, StatusUpdate
from airflow_provider_tes.triggers.progress import LiveLog, StartupClock

#: How long polls may keep failing (transport errors, 5xx, garbled bodies) before the wait
#: ends with an error event. Servers restart and proxies hiccup; a task that runs for
#: hours should not fail because its server was away for a minute.
DEFAULT_OUTAGE_BUDGET = 600.0

#: Failed polls that may pass, so they count against the outage budget instead of ending the
#: wait at once. A 404 is among them: eventually consistent servers (a load-balanced TES over a
#: replicated store) answer 404 for a task created a moment ago on another node.
OUTAGE_ERRORS = (TesServerUnavailableError, TesMalformedResponseError, TesNotFoundError)


class TesTaskTrigger(BaseTrigger):
    """Polls one TES task until it reaches a terminal state, then yields one event.

    :param tes_task_id: the TES task to watch.
    :param tes_conn_id: Airflow connection of the TES server.
    :param poll_interval: seconds between polls.
    :param deadline: Unix time after which the TES task is canceled and a ``deadline``
        event is sent (Airflow does not enforce ``execution_timeout`` while deferred).
    :param outage_budget: seconds of consecutive failed polls tolerated.
    :param started_at: Unix time the task was submitted, for elapsed times in the log.
    :param log_interval: seconds between reads of the task's executor log, whose new lines are
        shown in the task log while it runs (``None``: no live logs).
    :param startup_timeout: seconds the task may stay QUEUED/INITIALIZING: a warning at half,
        then the TES task is canceled and a ``startup_timeout`` event sent (``None``: no limit).
    :param deployment: the deployment tag the task was submitted with: the shared poller lists
        only that deployment's tasks (``None``, e.g. a trigger deferred by an older provider
        version: every task carrying the tag all submitted tasks carry).
    """

    def __init__(
        self,
        tes_task_id: str,
        tes_conn_id: str = TesHook.default_conn_name,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        deadline: float | None = None,
        outage_budget: float = DEFAULT_OUTAGE_BUDGET,
        started_at: float | None = None,
        log_interval: float | None = None,
        startup_timeout: float | None = None,
        deployment: str | None = None,
    ) -> None:
        super().__init__()
        # What is watched, and where.
        self.tes_task_id = tes_task_id
        self.tes_conn_id = tes_conn_id
        self.deployment = deployment
        self.started_at = started_at
        # How often and how long, in seconds; None means no limit (or no live logs).
        self.poll_interval = float(poll_interval)
        self.outage_budget = float(outage_budget)
        self.deadline = deadline
        self.log_interval = log_interval
        self.startup_timeout = startup_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "tes_task_id": self.tes_task_id,
                "tes_conn_id": self.tes_conn_id,
                "deployment": self.deployment,
                "started_at": self.started_at,
                "poll_interval": self.poll_interval,
                "outage_budget": self.outage_budget,
                "deadline": self.deadline,
                "log_interval": self.log_interval,
                "startup_timeout": self.startup_timeout,
            },
        )

    def _event(
        self,
        status: EventStatus,
        message: str,
        state: TesState | None = None,
        error: Exception | None = None,
        lines_shown: int = 0,
        live_log: dict[str, Any] | None = None,
    ) -> TriggerEvent:
        return TesTaskEvent(
            status=status,
            tes_task_id=self.tes_task_id,
            message=message,
            state=state,
            error_type=type(error).__name__ if error else None,
            lines_shown=lines_shown,
            live_log=live_log,
        ).to_trigger_event()

    def wait_here(self) -> TesTaskEvent:
        """Wait in the calling thread (``deferrable=False``), by the same rules as in the triggerer:
        the outage budget, the deadline and the shared poller all apply."""

        async def first_event() -> TriggerEvent:
            async with contextlib.aclosing(self.run()) as events:
                async for event in events:
                    return event
            raise TesError(f"the wait for TES task {self.tes_task_id} ended without an event")

        return TesTaskEvent.from_payload(asyncio.run(first_event()).payload)

    def _elapsed(self) -> str:
        return f"{time.time() - self.started_at:.1f}s" if self.started_at else "?"

    async def run(self) -> AsyncGenerator[TriggerEvent, None]:
        poller = SharedStatusPoller.for_connection(self.tes_conn_id, self.poll_interval, self.deployment)
        live = None
        if self.log_interval:
            live = LiveLog(poller, self.tes_task_id, self.log_interval, self.log, ti=self.task_instance)
            live.start()
        try:
            async with (
                poller.watch(self.tes_task_id) as updates,
                contextlib.aclosing(self._wait(poller, updates, live)) as events,
            ):
                async for event in events:
                    yield event
                    return
        finally:
            if live is not None:
                live.stop()

    async def _wait(
        self, poller: SharedStatusPoller, updates: asyncio.Queue[StatusUpdate], live: LiveLog | None
    ) -> AsyncGenerator[TriggerEvent, None]:
        failing_since: float | None = None
        startup = StartupClock(self.startup_timeout)
        state, state_since = None, time.monotonic()
        while True:
            left = self._time_left()
            if left is not None and left <= 0:
                yield await self._cancel_for_deadline(poller.hook)
                return
            now = time.monotonic()
            due = startup.due(now)
            if due == "expired":
                yield await self._cancel_for_startup(poller.hook, state, startup.waited(now))
                return
            if due == "warn":
                self.log.warning(
                    "TES task %s has been %s for %.0fs; it will be canceled after %gs (startup_timeout)",
                    self.tes_task_id,
                    state.value if state else "waiting",
                    startup.waited(now),
                    self.startup_timeout,
                )
            timeouts = [t for t in (left, startup.seconds_to_next_check(now)) if t is not None]
            try:
                # A hanging server cannot push the deadline back: the wait is bounded.
                update = await asyncio.wait_for(updates.get(), timeout=min(timeouts) if timeouts else None)
            except TimeoutError:
                continue
            if update.error is not None:
                err = update.error
                if not isinstance(err, OUTAGE_ERRORS):
                    yield self._event(EventStatus.ERROR, str(err), error=err)
                    return
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= self.outage_budget:
                    message = self._gave_up(now - failing_since, err)
                    yield self._event(EventStatus.ERROR, message, error=err)
                    return
                self.log.warning("Poll of TES task %s failed, will retry: %s", self.tes_task_id, err)
                continue
            failing_since = None
            now = time.monotonic()
            previous = f" ({state.value.lower()} for {now - state_since:.1f}s)" if state else ""
            state, state_since = update.state or TesState.UNKNOWN, now
            startup.observe(state, now)
            self.log.info(
                "TES task %s is %s after %s%s", self.tes_task_id, state.value, self._elapsed(), previous
            )
            if state.is_terminal:
                handover = live.handover() if live is not None else None
                yield self._event(
                    EventStatus.TERMINAL,
                    f"TES task ended {state.value}",
                    state=state,
                    lines_shown=live.follower.lines_shown if live is not None else 0,
                    live_log=handover,
                )
                return

    def _gave_up(self, failing_for: float, err: TesError) -> str:
        if isinstance(err, TesNotFoundError):
            return (
                f"gave up polling TES task {self.tes_task_id}: the server has answered 404 (no such task) "
                f"for {failing_for:.0f}s (outage_budget {self.outage_budget:g}s); the task was deleted, "
                f"never existed on this server, or the server lost it; last: {err}"
            )
        return (
            f"gave up polling TES task {self.tes_task_id} after {failing_for:.0f}s of failures "
            f"(outage_budget {self.outage_budget:g}s); last: {err}"
        )

    def _time_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    async def _cancel_for_deadline(self, hook: TesHook) -> TriggerEvent:
        message = f"TES task {self.tes_task_id} passed its deadline and was canceled"
        try:
            await hook.a_cancel_task(self.tes_task_id)
        except Exception as err:  # the deadline event is sent whatever stopped the cancel
            message = f"TES task {self.tes_task_id} passed its deadline; canceling it failed: {err!r}"
        self.log.warning(message)
        return self._event(EventStatus.DEADLINE, message)

    async def _cancel_for_startup(self, hook: TesHook, state: TesState | None, waited: float) -> TriggerEvent:
        where = f"TES task {self.tes_task_id} stayed {state.value if state else 'queued'} for {waited:.0f}s"
        message = f"{where}, past startup_timeout ({self.startup_timeout:g}s), and was canceled"
        try:
            await hook.a_cancel_task(self.tes_task_id)
            task = await hook.a_get_task(self.tes_task_id, view=TesView.FULL)
        except Exception as err:  # the event is sent whatever stopped the cancel
            message = (
                f"{where}, past startup_timeout ({self.startup_timeout:g}s); canceling it failed: {err!r}"
            )
        else:
            system_logs = "\n".join(redacted_system_logs(task))
            message += (
                f"; the server's system logs: {system_logs}" if system_logs else "; the server gave no reason"
            )
        self.log.warning(message)
        return self._event(EventStatus.STARTUP_TIMEOUT, message)

    async def on_kill(self) -> None:
        """The triggerer stopped this trigger because it is no longer assigned here: cancel the
        TES task if nobody waits for it any more.

        Airflow (>= 3.3) calls this after a user's clear or mark-failed/success, and also on a
        triggerer that stalled past its health-check threshold while another took the trigger
        over (the task instance still deferred). So it asks Airflow what became of the task
        instance first (:mod:`~airflow_provider_tes.triggers.ownership`) and cancels only when no
        try waits for the task; a trigger run outside a triggerer (no task instance) cancels.
        """
        ti = self.task_instance
        if ti is not None:
            verdict = await ownership(ti, self.tes_task_id)
            if verdict.waited_for:
                self.log.info("Not canceling TES task %s: %s", self.tes_task_id, verdict.reason)
                return
            async with borrowed_hook(self.tes_conn_id) as hook:
                if await self._has_ended(hook):
                    return
                self.log.info("Canceling TES task %s: %s", self.tes_task_id, verdict.reason)
                await hook.a_cancel_task(self.tes_task_id)
            return
        self.log.info("Canceling TES task %s on request", self.tes_task_id)
        async with borrowed_hook(self.tes_conn_id) as hook:
            await hook.a_cancel_task(self.tes_task_id)

    async def _has_ended(self, hook: TesHook) -> bool:
        """Whether the TES task has ended already (the task instance is on its way to resume,
        another triggerer saw the end first): then there is nothing to cancel, and servers
        answer an error for a cancel of an ended task."""
        try:
            state = (await hook.a_get_task(self.tes_task_id, view=TesView.MINIMAL)).state
        except TesError:
            return False  # the cancel says what is wrong
        if state is not None and state.is_terminal:
            self.log.info("Not canceling TES task %s: it has ended (%s)", self.tes_task_id, state.value)
            return True
        return False

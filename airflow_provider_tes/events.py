"""The event a TES trigger resumes a task with, checked in one place.

Airflow hands the trigger's payload back to ``execute_complete`` as a plain dict, which may
have been written by an older provider or be missing altogether. The operator and the sensor
both decode it here, so an event either is well formed and says what happened, or becomes an
error that says it is not: a wait never ends in a guessed outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import TriggerEvent

from airflow_provider_tes.exceptions import TesDeadlineExceededError, TesError, TesStartupTimeoutError
from airflow_provider_tes.models import TesState


class EventStatus(enum.StrEnum):
    #: The TES task reached a terminal state (``state`` says which).
    TERMINAL = "terminal"
    #: Waiting failed (the server stayed unreachable, the credential was refused, ...).
    ERROR = "error"
    #: The deadline passed; the trigger canceled the TES task.
    DEADLINE = "deadline"
    #: The task stayed QUEUED/INITIALIZING past ``startup_timeout``; the trigger canceled it.
    STARTUP_TIMEOUT = "startup_timeout"


@dataclass(frozen=True)
class TesTaskEvent:
    """What happened to the TES task a trigger watched."""

    status: EventStatus
    tes_task_id: str
    state: TesState | None = None
    message: str = ""
    error_type: str | None = None
    #: Executor-log lines the trigger already showed in the task log (live logs).
    lines_shown: int = 0
    #: Where the worker's last read of the executor log continues from (live logs; see
    #: :meth:`~airflow_provider_tes.log_follower.LogFollower.handover`).
    live_log: dict[str, Any] | None = None

    def to_trigger_event(self) -> TriggerEvent:
        return TriggerEvent(  # type: ignore[no-untyped-call]
            {
                "status": self.status.value,
                "tes_task_id": self.tes_task_id,
                "state": self.state.value if self.state else None,
                "message": self.message,
                "error_type": self.error_type,
                "lines_shown": self.lines_shown,
                "live_log": self.live_log,
            }
        )

    @classmethod
    def from_payload(cls, payload: Any) -> TesTaskEvent:
        """Decode what Airflow resumed the task with; anything else is an error naming it."""
        if not isinstance(payload, dict) or not payload:
            raise TesError(
                "the TES trigger resumed the task without an event; the TES task's state is unknown"
            )
        try:
            status = EventStatus(payload["status"])
            state = TesState(payload["state"]) if payload.get("state") else None
            tes_task_id = str(payload["tes_task_id"])
        except (KeyError, ValueError) as err:
            raise TesError(f"the TES trigger sent an event this provider cannot read ({err!r})") from None
        if status is EventStatus.TERMINAL and (state is None or not state.is_terminal):
            raise TesError(f"the TES trigger reported an end without a terminal state: {payload!r}")
        return cls(
            status=status,
            tes_task_id=tes_task_id,
            message=str(payload.get("message") or ""),
            state=state,
            error_type=payload.get("error_type"),
            lines_shown=int(payload.get("lines_shown") or 0),
            live_log=live_log if isinstance(live_log := payload.get("live_log"), dict) else None,
        )

    def terminal_state(self) -> TesState:
        """The state the task ended in, or the error that stopped the wait."""
        if self.status is EventStatus.TERMINAL:
            assert self.state is not None
            return self.state
        if self.status is EventStatus.DEADLINE:
            raise TesDeadlineExceededError(self.message or "deadline passed", task_id=self.tes_task_id)
        if self.status is EventStatus.STARTUP_TIMEOUT:
            raise TesStartupTimeoutError(self.message, task_id=self.tes_task_id)
        raise TesError(f"waiting for TES task {self.tes_task_id} failed: {self.message}")

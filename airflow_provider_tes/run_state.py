"""What a TES task instance carries across deferrals: typed, versioned, and nothing secret.

A deferred operator is rebuilt from the DAG when it resumes, possibly by a newer provider
version (an upgrade while tasks are deferred), so what it needs to continue is written down
explicitly and read back through one function that knows every shape ever written.

It holds only what resuming needs: which try made the task, the TES ids of its attempts, the
remaining preemption budget, the output folder and the deadline. The request body (executor
``env`` values, the inline script) is never kept: XCom is served as-is by the API and UI, and
the body is rebuilt from the operator's own arguments whenever a resubmission needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from airflow_provider_tes.exceptions import TesError
from airflow_provider_tes.identity import OutputFolder, TaskIdentity

#: XCom key of the run state.
RUN_STATE_KEY = "tes_run_state"
#: The XCom key of the TES task a try waits for, published before it defers; a trigger asked to
#: stop reads it back to learn whether the try moved on to another task.
TES_TASK_ID_KEY = "tes_task_id"
#: The XCom key where a trigger keeps how far its live log got (a follower's handover, no output),
#: so that a trigger that takes the task over in another triggerer goes on from there.
LIVE_LOG_KEY = "tes_live_log"
#: Shape written by :meth:`RunState.to_xcom`. Version 0 is the untyped dict of provider 0.1.0
#: (keys ``task``, ``identity``, ``out_dir``, ``attempts``, ``next_attempt``,
#: ``preemptible_left``, ``deadline``), still read so tasks deferred before an upgrade resume.
RUN_STATE_VERSION = 1


@dataclass(frozen=True)
class RunState:
    """The TES side of one Airflow task instance try, as far as resuming needs it.

    ``identity`` is the try that made the first attempt: an earlier try when this one
    reattached to its still-running task. ``attempts`` are the TES ids, newest last; a
    preemption adds one. ``next_attempt`` numbers the next submission's name and tags.
    """

    identity: TaskIdentity
    attempts: tuple[str, ...]
    next_attempt: int
    preemptible_left: int
    output_folder: OutputFolder | None = None
    deadline: float | None = None

    @property
    def tes_task_id(self) -> str:
        """The attempt being waited for."""
        if not self.attempts:
            raise TesError("the run state holds no submitted TES task")
        return self.attempts[-1]

    def submitted(self, tes_task_id: str) -> RunState:
        return replace(self, attempts=(*self.attempts, tes_task_id), next_attempt=self.next_attempt + 1)

    def after_preemption(self) -> RunState:
        return replace(self, preemptible_left=self.preemptible_left - 1)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "version": RUN_STATE_VERSION,
            "identity": self.identity.to_dict(),
            "attempts": list(self.attempts),
            "next_attempt": self.next_attempt,
            "preemptible_left": self.preemptible_left,
            "output_folder": self.output_folder.url if self.output_folder else None,
            "deadline": self.deadline,
        }

    @classmethod
    def from_xcom(cls, data: Any) -> RunState:
        """Read any shape this provider has written; a damaged one is an error saying so."""
        if not isinstance(data, Mapping):
            raise TesError(f"the TES run state in XCom {RUN_STATE_KEY!r} is missing or not a mapping")
        version = data.get("version", 0)
        try:
            if version == 0:
                folder = data.get("out_dir")
            elif version == RUN_STATE_VERSION:
                folder = data.get("output_folder")
            else:
                raise ValueError(f"version {version!r} is newer than this provider understands")
            attempts = tuple(str(a) for a in data["attempts"])
            return cls(
                identity=TaskIdentity.from_dict(data["identity"]),
                attempts=attempts,
                next_attempt=int(data.get("next_attempt", len(attempts))),
                preemptible_left=int(data["preemptible_left"]),
                output_folder=OutputFolder(str(folder)) if folder else None,
                deadline=None if data.get("deadline") is None else float(data["deadline"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise TesError(f"the TES run state in XCom {RUN_STATE_KEY!r} cannot be read: {err}") from None

"""Whether a trigger that Airflow stops may cancel its TES task: the rules, state by state.

The triggerer calls ``on_kill`` for user actions and for triggers it lost to another triggerer
alike; the rules (``triggers/ownership.py``) tell them apart by what Airflow says of the task
instance. The deployment suite shows them on a real deployment (a frozen triggerer, a clear).
"""

from __future__ import annotations

import pytest

from airflow_provider_tes.triggers.ownership import decide

OURS = "task-ours"


@pytest.mark.parametrize(
    ("exists", "state", "published", "waited_for"),
    [
        # Still deferred on this task: its trigger moved to another triggerer.
        (True, "deferred", OURS, True),
        (True, "deferred", None, True),
        # Deferred on another task (a new try submitted its own, or a resubmission).
        (True, "deferred", "task-other", False),
        # A try is under way or due that may reattach to a still-running task.
        (True, "running", None, True),
        (True, "running", OURS, True),
        (True, "up_for_retry", OURS, True),
        (True, "restarting", OURS, True),
        (True, "running", "task-other", False),
        # Cleared (no state yet), or on its way to resume after the task ended.
        (True, None, OURS, False),
        (True, "scheduled", OURS, False),
        (True, "queued", OURS, False),
        # Ended, whatever ended it.
        (True, "success", OURS, False),
        (True, "failed", OURS, False),
        (True, "skipped", OURS, False),
        (True, "upstream_failed", OURS, False),
        (True, "removed", OURS, False),
        # The DAG run was deleted.
        (False, None, None, False),
    ],
)
def test_who_still_waits(exists: bool, state: str | None, published: str | None, waited_for: bool) -> None:
    verdict = decide(exists, state, published, OURS)
    assert verdict.waited_for is waited_for, verdict.reason
    assert verdict.reason

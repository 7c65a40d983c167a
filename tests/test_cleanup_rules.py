"""``airflow tes cleanup``: which TES tasks are orphans, task instance state by state.

The command itself runs against Funnel and a real Airflow in ``test_cleanup.py``; these are its
rules (``airflow_provider_tes/cli/cleanup.py``) and filters.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_provider_tes.cli.cleanup import Owner, find, judge, parse_age
from airflow_provider_tes.identity import WAITS_TAG, TaskIdentity, Tenant
from airflow_provider_tes.models import TesTask

OURS = "task-ours"
TRY1 = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": "-1", "try_number": "1"}


def owner(state: str, try_number: int = 1, published: str | None = OURS, run: str = "running") -> Owner:
    return Owner(state=state, try_number=try_number, published=published, run_state=run)


@pytest.mark.parametrize(
    ("tags", "found", "orphan"),
    [
        # The try that submitted it runs, waits or will retry: kept.
        (TRY1, owner("deferred"), False),
        (TRY1, owner("running", published=None), False),  # between create and publish
        (TRY1, owner("up_for_retry"), False),
        (TRY1, owner("queued"), False),
        # A newer try adopted it (published it), or is on its way and may: kept.
        (TRY1, owner("deferred", try_number=2), False),
        (TRY1, owner("none", try_number=2, published=None), False),  # cleared, not run yet
        (TRY1, owner("running", try_number=2, published=None), False),  # starting, may adopt
        # A newer try published another task: an orphan.
        (TRY1, owner("deferred", try_number=2, published="task-new"), True),
        # The task instance ended, or is gone: an orphan.
        (TRY1, owner("failed"), True),
        (TRY1, owner("success"), True),
        (TRY1, owner("skipped"), True),
        (TRY1, None, True),
        # Submit-only: owned by whatever waits in its DAG run, while that run is active.
        ({**TRY1, WAITS_TAG: "false"}, owner("success", run="running"), False),
        ({**TRY1, WAITS_TAG: "false"}, owner("success", run="queued"), False),
        ({**TRY1, WAITS_TAG: "false"}, owner("success", run="success"), True),
        ({**TRY1, WAITS_TAG: "false"}, None, True),
    ],
)
def test_who_owns_a_running_tes_task(tags: dict[str, str], found: Owner | None, orphan: bool) -> None:
    verdict, why = judge(tags, OURS, found)
    assert verdict is orphan, why
    assert why


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), ("90", 90), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400)]
)
def test_older_than_reads_seconds_and_units(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "5w", "-3m", "1h30m"])
def test_older_than_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(SystemExit, match="--older-than must be seconds"):
        parse_age(text)


def _task(tenant: Tenant, task_id: str, created: datetime, **tags: str) -> TesTask:
    identity = TaskIdentity(dag_id=tags.pop("dag_id", "d"), task_id="t", run_id="r")
    signed = {**identity.tags(), **tenant.tags(identity), **tags}
    return TesTask.from_response(
        {"id": task_id, "state": "RUNNING", "tags": signed, "creation_time": created.isoformat()}
    )


def test_only_this_tenants_tasks_within_the_filters_are_judged() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    ours = Tenant(deployment="prod", key=b"k" * 32, source="test")
    theirs = Tenant(deployment="prod", key=b"x" * 32, source="test")  # same name, another secret
    tasks = [
        _task(ours, "old", now - timedelta(hours=2)),
        _task(ours, "young", now - timedelta(minutes=1)),
        _task(ours, "other-dag", now - timedelta(hours=2), dag_id="e"),
        _task(theirs, "foreign", now - timedelta(hours=2)),
        TesTask.from_response({"id": "untagged", "state": "RUNNING"}),
    ]
    asked: list[Any] = []

    def owner_of(tags: Any) -> Owner | None:
        asked.append(tags["dag_id"])
        return None

    found = find(tasks, ours, owner_of, now=now, older_than=parse_age("30m"), dag_id="d")
    assert [(f.tes_task_id, f.orphan, f.age_s) for f in found] == [("old", True, 7200)]
    assert asked == ["d"], "foreign, untagged and filtered tasks are never looked up"

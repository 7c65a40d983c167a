"""Running provider code in the test process, without a task runner or Airflow's secrets backends:
the context an operator is given, the connection ``TesConnection.from_airflow`` reads."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any


def task_context(dag_id: str, task_id: str, *, try_number: int = 1) -> dict[str, Any]:
    """A context whose task instance has a fresh run id and keeps no XCom (what ``execute`` of
    an operator waiting in the worker needs)."""
    ti = SimpleNamespace(
        dag_id=dag_id,
        task_id=task_id,
        run_id=f"{dag_id}-{uuid.uuid4().hex[:8]}",
        map_index=-1,
        try_number=try_number,
        xcom_push=lambda **kw: None,
        xcom_pull=lambda *a, **kw: None,
    )
    return {"ti": ti}


def fake_connection(extra: dict[str, Any] | None = None, **fields: Any) -> SimpleNamespace:
    """The attributes of an Airflow connection that ``TesConnection.from_airflow`` reads, ``extra``
    already parsed: tests of the settings need no connection in the environment or database."""
    defaults: dict[str, Any] = {
        "conn_id": "c",
        "conn_type": "tes",
        "host": "https://tes.test/ga4gh/tes/v1",
        "port": None,
        "schema": None,
        "login": None,
        "password": None,
    }
    return SimpleNamespace(**{**defaults, **fields, "extra_dejson": extra or {}})


def lines_on_resume(payload: dict[str, Any], task: Any) -> list[str]:
    """What the worker shows when a trigger's event resumes it (the operator's manager does
    this with the task's final FULL view): the live-log lines the trigger had not shown. The
    payload's ``lines_shown`` becomes the total."""
    from airflow_provider_tes.log_follower import LogFollower

    follower = LogFollower.taking_over(payload["live_log"])
    lines = follower.update(task, final=True)
    payload["lines_shown"] = follower.lines_shown
    return lines

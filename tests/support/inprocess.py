"""Running an operator in the test process, without a task runner: the context it is given."""

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

"""Extra links shown on TES tasks in the Airflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which the operator stores the link target before it defers.
TES_TASK_LINK_KEY = "tes_task_link"


class TesTaskLink(BaseOperatorLink):
    """Link to the TES task: its FULL view in the TES API, or a dashboard URL template."""

    name = "TES Task"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value: Any = XCom.get_value(key=TES_TASK_LINK_KEY, ti_key=ti_key)
        return str(value) if value else ""


def task_link(base_url: str, task_id: str, template: str | None = None) -> str:
    """The URL users follow to see a TES task."""
    if template:
        return template.format(base_url=base_url.rstrip("/"), task_id=task_id)
    return f"{base_url.rstrip('/')}/tasks/{task_id}?view=FULL"

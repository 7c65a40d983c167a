"""Extra links shown on TES tasks in the Airflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which the operator stores the link target before it defers.
TES_TASK_LINK_KEY = "tes_task_link"
#: XCom key under which the operator stores the outputs folder link before it defers.
TES_OUTPUTS_LINK_KEY = "tes_outputs_link"


class _XComLink(BaseOperatorLink):
    """A link whose URL is computed by the task and stored in XCom, so it shows while deferred.

    Each link class writes its own XCom (:meth:`persist`), as the amazon provider's links do,
    so the key a link is read from and the key it is written to cannot drift apart.
    """

    xcom_key: str = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value: Any = XCom.get_value(key=self.xcom_key, ti_key=ti_key)
        return str(value) if value else ""

    @classmethod
    def _store(cls, context: Context, url: str) -> None:
        context["ti"].xcom_push(key=cls.xcom_key, value=url)


class TesTaskLink(_XComLink):
    """Link to the TES task: its FULL view in the TES API, or a dashboard URL template."""

    name = "TES Task"
    xcom_key = TES_TASK_LINK_KEY

    @classmethod
    def persist(cls, context: Context, *, base_url: str, tes_task_id: str, template: str | None) -> None:
        cls._store(context, task_link(base_url, tes_task_id, template))


class TesOutputsLink(_XComLink):
    """Link to the task's outputs folder: the S3 console for ``s3://``, other URLs as they are."""

    name = "TES Outputs"
    xcom_key = TES_OUTPUTS_LINK_KEY

    @classmethod
    def persist(cls, context: Context, *, outputs_url: str) -> None:
        cls._store(context, outputs_link(outputs_url))


def task_link(base_url: str, task_id: str, template: str | None = None) -> str:
    """The URL users follow to see a TES task; the id is quoted, as servers choose ids freely."""
    task_id = quote(task_id, safe="")
    if template:
        # {origin} lets a template point at a dashboard beside the API (Funnel: {origin}/tasks/{task_id}).
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        return template.format(base_url=base_url.rstrip("/"), origin=origin, task_id=task_id)
    return f"{base_url.rstrip('/')}/tasks/{task_id}?view=FULL"


def outputs_link(outputs_url: str) -> str:
    """The URL users follow to browse a task's outputs folder.

    ``s3://bucket/key/`` becomes the AWS S3 console at that prefix; any other URL is returned as is.
    """
    parts = urlsplit(outputs_url)
    if parts.scheme == "s3" and parts.netloc:
        bucket = quote(parts.netloc, safe="")
        prefix = parts.path.lstrip("/")
        url = f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}"
        return f"{url}?prefix={quote(prefix, safe='/')}" if prefix else url
    return outputs_url

"""What the operator and the sensor share: a TES connection, and waiting for one TES task.

Both wait the same way (a quick look first, then the shared poller in the triggerer, or the
same trigger run in the worker), publish the same "TES Task" link, and resolve the poll
interval from the connection, so that operators and sensors of one connection share one
poller in the triggerer.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import Tenant
from airflow_provider_tes.links import TesTaskLink
from airflow_provider_tes.models import TesState, TesView
from airflow_provider_tes.triggers.tes import TesTaskTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class TesWaitMixin:
    """Mixed into a BaseOperator with ``tes_conn_id`` and ``poll_interval`` attributes."""

    tes_conn_id: str
    poll_interval: float | None

    @cached_property
    def hook(self) -> TesHook:
        return TesHook(self.tes_conn_id)

    def current_state(self, tes_task_id: str) -> TesState:
        return self.hook.get_task(tes_task_id, view=TesView.MINIMAL).state or TesState.UNKNOWN

    def publish_task_link(self, context: Context, tes_task_id: str) -> None:
        settings = self.hook.settings
        TesTaskLink.persist(
            context, base_url=settings.base_url, tes_task_id=tes_task_id, template=settings.task_link_template
        )

    def trigger_for(
        self,
        tes_task_id: str,
        *,
        deadline: float | None,
        log_interval: float | None = None,
        startup_timeout: float | None = None,
    ) -> TesTaskTrigger:
        return TesTaskTrigger(
            tes_task_id=tes_task_id,
            tes_conn_id=self.tes_conn_id,
            poll_interval=self.poll_interval or self.hook.settings.poll_interval,
            deadline=deadline,
            started_at=time.time(),
            log_interval=log_interval,
            startup_timeout=startup_timeout,
            deployment=Tenant.of_connection(self.hook.settings).deployment,
        )

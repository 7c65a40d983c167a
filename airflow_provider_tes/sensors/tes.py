"""Wait for a TES task that was submitted elsewhere (another DAG, a workflow engine, a person)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_tes.container import GUEST_STDOUT_PATH, runs_in_wrapper
from airflow_provider_tes.events import TesTaskEvent
from airflow_provider_tes.exceptions import TesConfigurationError, TesError, TesTaskFailedError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import OutputFolder
from airflow_provider_tes.links import TesTaskLink
from airflow_provider_tes.models import TesState, TesView
from airflow_provider_tes.outcome import TAIL_BYTES, read_outcome
from airflow_provider_tes.storage import read_text_tail, resolve_aws_conn_id
from airflow_provider_tes.waiting import TesWaitMixin

if TYPE_CHECKING:
    from airflow.sdk import Context


class TesTaskSensor(TesWaitMixin, BaseSensorOperator):
    """Succeeds when a TES task reaches one of ``success_states`` (default COMPLETE).

    Any other terminal state fails the sensor (or skips it with ``soft_fail``). Deferrable by
    default with the same trigger as :class:`~airflow_provider_tes.operators.tes.TesTaskOperator`,
    so waiting holds no worker slot.

    :param tes_task_id: the TES task id (templated, e.g. ``{{ ti.xcom_pull('submit') }}``).
    :param success_states: terminal states that count as success.
    :param poll_interval: seconds between polls while deferred (default: the connection's, so
        sensors and operators of one connection share the triggerer's poller);
        ``poke_interval`` applies when not deferrable.
    """

    template_fields: Sequence[str] = ("tes_task_id",)
    operator_extra_links = (TesTaskLink(),)
    ui_color = "#d9ecf2"

    def __init__(
        self,
        *,
        tes_task_id: str,
        tes_conn_id: str = TesHook.default_conn_name,
        success_states: Iterable[TesState | str] = (TesState.COMPLETE,),
        poll_interval: float | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            self.success_states = frozenset(TesState(s) for s in success_states)
        except ValueError as err:
            raise TesConfigurationError(f"TesTaskSensor argument 'success_states': {err}") from None
        if not self.success_states or not all(s.is_terminal for s in self.success_states):
            raise TesConfigurationError(
                "TesTaskSensor argument 'success_states' must be terminal TES states "
                "(COMPLETE, EXECUTOR_ERROR, SYSTEM_ERROR, CANCELED, PREEMPTED)"
            )
        self.tes_task_id = tes_task_id
        self.tes_conn_id = tes_conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable

    def _validate_id(self) -> str:
        if not isinstance(self.tes_task_id, str) or not self.tes_task_id.strip():
            raise TesConfigurationError(
                f"TesTaskSensor argument 'tes_task_id' must be a TES task id, got {self.tes_task_id!r}"
            )
        return self.tes_task_id.strip()

    def execute(self, context: Context) -> Any:
        tes_id = self._validate_id()
        self.publish_task_link(context, tes_id)
        if not self.deferrable:
            return super().execute(context)
        state = self.current_state(tes_id)
        if state.is_terminal:
            return self._decide(tes_id, state)
        self.defer(
            trigger=self.trigger_for(tes_id, deadline=None),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def poke(self, context: Context) -> bool:
        tes_id = self._validate_id()
        state = self.current_state(tes_id)
        self.log.info("TES task %s is %s", tes_id, state.value)
        if not state.is_terminal:
            return False
        self._decide(tes_id, state)
        return True

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        tes_id = self._validate_id()
        try:
            state = TesTaskEvent.from_payload(event).terminal_state()
        except TesError as err:
            return self._fail(err)
        return self._decide(tes_id, state)

    def _command_state(self, tes_id: str, state: TesState) -> TesState:
        """The state of the command itself.

        A task that this provider submitted runs its command in the exit-code wrapper, which
        ends COMPLETE whatever the command did: its exit code is read the way the operator reads
        it, a failed command counts as EXECUTOR_ERROR, and an exit code that cannot be read is
        an error (never a success).
        """
        if state is not TesState.COMPLETE:
            return state
        task = self.hook.get_task(tes_id, view=TesView.FULL)
        if len(task.executors) != 1 or not runs_in_wrapper(task.executors[0]):
            return state
        stdout = next((o.url for o in task.outputs or [] if o.path == GUEST_STDOUT_PATH), None)
        aws_conn_id = resolve_aws_conn_id(None, self.hook.settings.aws_conn_id)
        try:
            read_outcome(
                task,
                state,
                wrapped=True,
                executors=None,
                folder=OutputFolder.of_output(stdout),
                read_tail=lambda url: read_text_tail(url, TAIL_BYTES, aws_conn_id=aws_conn_id),
            )
        except TesTaskFailedError as err:
            if err.state == TesState.EXECUTOR_ERROR.value:
                self.log.info("%s", err)
                return TesState.EXECUTOR_ERROR
            raise
        return state

    def _decide(self, tes_id: str, state: TesState) -> str:
        try:
            state = self._command_state(tes_id, state)
        except TesError as err:
            return str(self._fail(err))
        if state in self.success_states:
            self.log.info("TES task %s ended %s", tes_id, state.value)
            return state.value
        wanted = ", ".join(sorted(s.value for s in self.success_states))
        self._fail(
            TesTaskFailedError(
                f"TES task {tes_id} ended {state.value}, not one of the success states ({wanted})",
                task_id=tes_id,
                state=state.value,
            )
        )
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, error: TesError) -> Any:
        if self.soft_fail:
            raise AirflowSkipException(str(error)) from error
        raise error

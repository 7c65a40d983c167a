"""Run a command in a container on a GA4GH TES server, deferring while it runs.

The operator is Airflow glue: it renders arguments into a :class:`TaskSpec`, hands the TES
side to a :class:`TesTaskManager`, and deals with what only Airflow has (the task
instance, XCom, links, deferral, logs). It submits on the worker and waits in the
triggerer, as the amazon provider's Batch operator does; with ``deferrable=False`` the same
trigger runs in the worker, so both modes wait with the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator, conf
from airflow.sdk.definitions._internal.types import NOTSET, ArgNotSet

from airflow_provider_tes.arguments import argument_error, validate_number, validate_preemptible
from airflow_provider_tes.events import TesTaskEvent
from airflow_provider_tes.exceptions import TesError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import TaskIdentity
from airflow_provider_tes.links import TesOutputsLink, TesTaskLink
from airflow_provider_tes.manager import TesTaskManager
from airflow_provider_tes.models import TesExecutor, TesState
from airflow_provider_tes.run_state import LIVE_LOG_KEY, RUN_STATE_KEY, TES_TASK_ID_KEY, RunState
from airflow_provider_tes.script_file import looks_like_script_file, read_script_file
from airflow_provider_tes.task_spec import TaskSpec
from airflow_provider_tes.triggers.progress import LiveLog
from airflow_provider_tes.waiting import TesWaitMixin

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

#: Extra time given to Airflow's own defer timeout beyond the deadline, so the trigger
#: (which cancels the TES task) is always the one that acts first.
DEADLINE_GRACE = timedelta(minutes=2)


class TesTaskOperator(TesWaitMixin, BaseOperator):
    """Run a container on a GA4GH TES server (Funnel, TESK, Azure TES) and wait for it.

    The command runs as ``<shell> /mnt/task/command`` in ``/mnt/task/work`` when it is a
    string, or as the given argv when it is a list. Local input files are uploaded once,
    content-addressed, to ``inputs_url``; the working directory, stdout and stderr are
    uploaded to ``{outputs_url}/{name}-{timestamp}/``. While the task runs the operator
    defers to :class:`TesTaskTrigger`, holding no worker slot.

    With ``wait_for_completion=False`` it submits (staging, links and the ``tes_task_id`` XCom
    as usual) and returns at once with the state it saw and no exit code, for a
    :class:`~airflow_provider_tes.sensors.tes.TesTaskSensor` to wait on later.

    See the README for every argument with an example.
    """

    template_fields: Sequence[str] = (
        "image",
        "command",
        "inputs",
        "outputs",
        "env",
        "tags",
        "name",
        "inputs_url",
        "outputs_url",
        "workdir",
        "backend_parameters",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "command": "bash",
        "env": "json",
        "inputs": "json",
        "outputs": "json",
    }
    operator_extra_links = (TesTaskLink(), TesOutputsLink())
    ui_color = "#d9ecf2"

    def __init__(
        self,
        *,
        image: str | None = None,
        command: str | Sequence[str] | None = None,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | Sequence[Any] | None = None,
        inputs_url: str | None = None,
        outputs_url: str | None = None,
        env: Mapping[str, Any] | None = None,
        workdir: str | None = None,
        shell: str | None = "/bin/sh",
        cpu_cores: float | None = None,
        ram_gb: float | None = None,
        disk_gb: float | Mapping[str, float] | None = None,
        zones: Sequence[str] | None = None,
        backend_parameters: Mapping[str, Any] | None = None,
        backend_parameters_strict: bool | None = None,
        volumes: Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
        name: str | None = None,
        preemptible: int = 0,
        executors: Sequence[TesExecutor | Mapping[str, Any]] | None = None,
        tes_conn_id: str = TesHook.default_conn_name,
        aws_conn_id: str | None = None,
        allowed_local_roots: Sequence[str] | None = None,
        poll_interval: float | None = None,
        log_interval: float | ArgNotSet | None = NOTSET,
        startup_timeout: float | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.command = command
        self.inputs = inputs
        self.outputs = outputs
        self.inputs_url = inputs_url
        self.outputs_url = outputs_url
        self.env = env
        self.workdir = workdir
        self.shell = shell
        self.cpu_cores = cpu_cores
        self.ram_gb = ram_gb
        self.disk_gb = disk_gb
        self.zones = zones
        self.backend_parameters = backend_parameters
        self.backend_parameters_strict = backend_parameters_strict
        self.volumes = volumes
        self.tags = tags
        self.name = name
        self.preemptible = validate_preemptible(preemptible)
        self.executors = executors
        self.tes_conn_id = tes_conn_id
        self.aws_conn_id = aws_conn_id
        self.allowed_local_roots = allowed_local_roots
        self.poll_interval = poll_interval
        self.log_interval = log_interval
        self.startup_timeout = startup_timeout
        self.deferrable = deferrable
        self.wait_for_completion = _validate_wait_for_completion(wait_for_completion, self.preemptible)
        self.tes_task_id: str | None = None
        # Checks that need no template rendering run here, when the DAG is parsed.
        self._spec().check_unrendered()
        for argument, value in (("poll_interval", poll_interval), ("startup_timeout", startup_timeout)):
            validate_number(argument, value)
        if not isinstance(log_interval, ArgNotSet):
            validate_number("log_interval", log_interval)
        if not isinstance(tes_conn_id, str) or not tes_conn_id:
            raise argument_error("tes_conn_id", "must name an Airflow connection of type 'tes'")

    @cached_property
    def manager(self) -> TesTaskManager:
        return TesTaskManager(
            hook=self.hook,
            spec=self._spec(),
            preemptible=self.preemptible,
            explicit_aws_conn_id=self.aws_conn_id,
            log=self.log,
            waited=self.wait_for_completion,
        )

    # -- templates: a command may name a script file (airflow_provider_tes.script_file) ---------------

    def _do_render_template_fields(
        self,
        parent: Any,
        template_fields: Any,
        context: Context,
        jinja_env: jinja2.Environment,
        seen_oids: set[int],
    ) -> None:
        # The one place both a task and a mapped task's unmapped operator are rendered through.
        # No template_ext is declared, so Airflow itself never takes a string for a file name.
        if parent is self and "command" in template_fields:
            self.command = self._script_or_command(self.command, jinja_env)
        super()._do_render_template_fields(parent, template_fields, context, jinja_env, seen_oids)

    def _script_or_command(self, command: Any, jinja_env: jinja2.Environment) -> Any:
        """The content of the script file ``command`` names, else ``command`` itself."""
        found = read_script_file(command, jinja_env)
        if found is None:
            if looks_like_script_file(command):
                self.log.info("command %r names no file in the template search path: run inline", command)
            return command
        self.log.info("command read from script file %s", found[1])
        return found[0]

    def render_command(self, command: Any, context: Context) -> Any:
        """``command`` as a task's own ``command`` is rendered (for a command known only at run time)."""
        jinja_env = self.get_template_env()
        return self.render_template(self._script_or_command(command, jinja_env), context, jinja_env)

    def _spec(self) -> TaskSpec:
        """The task as the (rendered) arguments ask for it."""
        return TaskSpec.of(self, description=f"Airflow task {self.dag_id}.{self.task_id}")

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        identity = TaskIdentity.from_task_instance(context["ti"], label=self.name)
        deadline = time.time() + self.execution_timeout.total_seconds() if self.execution_timeout else None
        if not self.wait_for_completion:
            deadline = None  # nothing waits here, so nothing cancels the task at a deadline
        run_state = self.manager.start(identity, deadline)
        self._publish(context, run_state)
        if not self.wait_for_completion:
            return self._submitted(run_state)
        return self._wait(context, run_state)

    def _publish(self, context: Context, run_state: RunState) -> None:
        """Store the id and links before deferring, so the UI shows them while the task runs."""
        self.tes_task_id = run_state.tes_task_id
        context["ti"].xcom_push(key=TES_TASK_ID_KEY, value=self.tes_task_id)
        self.publish_task_link(context, self.tes_task_id)
        if run_state.output_folder:
            TesOutputsLink.persist(context, outputs_url=run_state.output_folder.url)

    def _submitted(self, run_state: RunState) -> dict[str, Any]:
        """The result of a submit-only run: what was sent and the state seen just after.

        It has no ``exit_code`` (nor ``outputs``): the command has not ended yet, and nothing
        here reads its outcome. The sensor waits for the task; ``work_dir_url`` and the other
        URLs are where its outputs will be.
        """
        state = self.current_state(run_state.tes_task_id)
        self.log.info(
            "Not waiting for TES task %s (wait_for_completion=False); it is %s",
            run_state.tes_task_id,
            state.value,
        )
        folder = run_state.output_folder
        return {
            "tes_task_id": run_state.tes_task_id,
            "state": state.value,
            "attempts": list(run_state.attempts),
            "outputs_url": folder.url if folder else None,
            "work_dir_url": f"{folder.work}/" if folder else None,
            "stdout_url": folder.stdout if folder else None,
            "stderr_url": folder.stderr if folder else None,
        }

    # -- waiting ------------------------------------------------------------------------------------

    def _wait(self, context: Context, run_state: RunState) -> Any:
        state = self.current_state(run_state.tes_task_id)
        if state.is_terminal:
            return self._finish(context, run_state, state)
        trigger = self.trigger_for(
            run_state.tes_task_id,
            deadline=run_state.deadline,
            log_interval=self.hook.settings.log_interval
            if isinstance(self.log_interval, ArgNotSet)
            else self.log_interval,
            startup_timeout=self.startup_timeout,
        )
        if not self.deferrable:
            event = trigger.wait_here()
            return self._finish(context, run_state, event.terminal_state(), event=event)
        timeout = None
        if run_state.deadline is not None:
            timeout = timedelta(seconds=max(0.0, run_state.deadline - time.time())) + DEADLINE_GRACE
        # The run state travels in XCom rather than in the defer kwargs: `airflow dags test`
        # (3.3) resumes with the event alone, and XCom also shows it in the UI.
        context["ti"].xcom_push(key=RUN_STATE_KEY, value=run_state.to_xcom())
        if trigger.log_interval:
            # Where the live log starts: a trigger that takes over in another triggerer finds
            # the position its predecessor kept here (see LiveLog.resume).
            context["ti"].xcom_push(key=LIVE_LOG_KEY, value=LiveLog.initial_position(run_state.tes_task_id))
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timeout)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        ti = context["ti"]
        decoded = TesTaskEvent.from_payload(event)
        self.tes_task_id = decoded.tes_task_id
        state = decoded.terminal_state()
        stored = ti.xcom_pull(task_ids=ti.task_id, key=RUN_STATE_KEY, map_indexes=ti.map_index)
        if not stored:
            raise TesError(f"TES task {self.tes_task_id} ended {state.value}, but its run state is missing")
        return self._finish(context, RunState.from_xcom(stored), state, event=decoded)

    # -- results ------------------------------------------------------------------------------------

    def _finish(
        self, context: Context, run_state: RunState, state: TesState, *, event: TesTaskEvent | None = None
    ) -> Any:
        live_log = event.live_log if event else None
        if state is TesState.PREEMPTED:
            if live_log is not None:
                self.manager.show_last_lines(self.manager.full_view(run_state.tes_task_id), live_log)
            run_state = self.manager.resubmit_after_preemption(run_state)
            self._publish(context, run_state)
            return self._wait(context, run_state)
        # Kept for OpenLineage, which asks in this process right after execute returns.
        self._result = self.manager.result(
            run_state, state, lines_shown=event.lines_shown if event else 0, live_log=live_log
        )
        return self._result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs and outputs of the TES task as datasets (when the OpenLineage provider is installed)."""
        from airflow_provider_tes.openlineage import lineage_for_task

        finished = self.manager.finished_task
        if finished is None:
            return None
        return lineage_for_task(
            finished.to_request(), getattr(self, "_result", None), tes_base_url=self.hook.base_url
        )

    def on_kill(self) -> None:
        """Cancel the TES task when Airflow kills this worker-side task."""
        if self.tes_task_id:
            self.log.info("Canceling TES task %s", self.tes_task_id)
            try:
                self.manager.cancel(self.tes_task_id)
            except TesError as err:
                self.log.error("Could not cancel TES task %s: %s", self.tes_task_id, err)


def _validate_wait_for_completion(wait: bool, preemptible: int) -> bool:
    if not isinstance(wait, bool):
        raise argument_error("wait_for_completion", f"must be True or False, got {wait!r}")
    if not wait and preemptible:
        raise argument_error(
            "wait_for_completion",
            "False cannot go with 'preemptible': resubmitting after preemption needs the operator "
            "to wait; a sensor on the task sees PREEMPTED and fails",
        )
    return wait

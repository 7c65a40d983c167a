"""Run a command in a container on a GA4GH TES server, deferring while it runs."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from airflow.sdk import BaseOperator

from airflow_provider_tes.connection import TesConnection
from airflow_provider_tes.exceptions import (
    TesConfigurationError,
    TesDeadlineExceededError,
    TesError,
    TesTaskFailedError,
    TesTaskPreemptedError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.links import (
    TES_OUTPUTS_LINK_KEY,
    TES_TASK_LINK_KEY,
    TesOutputsLink,
    TesTaskLink,
    outputs_link,
    task_link,
)
from airflow_provider_tes.models import TesExecutor, TesInput, TesState, TesTask, TesView
from airflow_provider_tes.task_builder import (
    GUEST_COMMAND_PATH,
    GUEST_STDOUT_PATH,
    OUTPUT_SCHEMES,
    STAGING_SCHEMES,
    TaskIdentity,
    TaskPlan,
    build_resources,
    check_unique_paths,
    command_executor,
    disk_volumes,
    exit_code_from_file,
    exit_code_from_log,
    output_directory,
    plan_inputs,
    plan_outputs,
    script_fits_inline,
    standard_outputs,
    validate_base_url,
    validate_command,
    validate_container_path,
    validate_image,
    validate_number,
)
from airflow_provider_tes.triggers.tes import EVENT_DEADLINE, EVENT_TERMINAL, TesTaskTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_tes.staging import StagedInput

#: XCom key of the state carried across deferrals (attempts, budget, output folder, task).
RUN_STATE_KEY = "tes_run_state"
#: How much of an executor's stderr/stdout goes into the task log and error messages.
TAIL_BYTES = 4096
#: Extra time given to Airflow's own defer timeout beyond the deadline, so the trigger
#: (which cancels the TES task) is always the one that acts first.
DEADLINE_GRACE = timedelta(minutes=2)


def _fail(argument: str, problem: str) -> TesConfigurationError:
    return TesConfigurationError(f"TesTaskOperator argument {argument!r}: {problem}")


class TesTaskOperator(BaseOperator):
    """Run a container on a GA4GH TES server (Funnel, TESK, Azure TES) and wait for it.

    The command runs as ``<shell> /mnt/task/command`` in ``/mnt/task/work`` when it is a
    string, or as the given argv when it is a list. Local input files are uploaded once,
    content-addressed, to ``inputs_url``; the working directory, stdout and stderr are
    uploaded to ``{outputs_url}/{name}-{timestamp}/``. While the task runs the operator
    defers to :class:`TesTaskTrigger`, holding no worker slot.

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
        shell: str = "/bin/sh",
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
        poll_interval: float | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Checks that need no template rendering run here, when the DAG is parsed.
        if isinstance(preemptible, bool) or not isinstance(preemptible, int) or preemptible < 0:
            raise _fail(
                "preemptible", f"must be an integer >= 0 (resubmissions allowed), got {preemptible!r}"
            )
        if executors is None and image is None:
            raise _fail("image", "is required (or pass 'executors' for a multi-executor task)")
        if executors is None and command is None:
            raise _fail("command", "is required: a script (str) or an argv (list of str)")
        if executors is not None and (image is not None or command is not None):
            raise _fail("executors", "replaces 'image' and 'command'; pass one or the other")
        if not isinstance(shell, str) or not shell.startswith("/"):
            raise _fail("shell", f"must be an absolute path to a shell in the image, got {shell!r}")
        validate_number("cpu_cores", cpu_cores)
        validate_number("ram_gb", ram_gb)
        if poll_interval is not None:
            validate_number("poll_interval", poll_interval)
        if not isinstance(tes_conn_id, str) or not tes_conn_id:
            raise _fail("tes_conn_id", "must name an Airflow connection of type 'tes'")
        for volume in volumes or []:
            validate_container_path("volumes", volume)
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
        self.preemptible = preemptible
        self.executors = executors
        self.tes_conn_id = tes_conn_id
        self.aws_conn_id = aws_conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.tes_task_id: str | None = None

    @cached_property
    def hook(self) -> TesHook:
        return TesHook(self.tes_conn_id)

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        identity = self._identity(context)
        settings = self.hook.settings
        deadline = time.time() + self.execution_timeout.total_seconds() if self.execution_timeout else None
        run_state = self._reattach(identity) or self._submit_first(identity, settings, deadline)
        run_state["deadline"] = deadline
        self._publish(context, run_state)
        return self._wait(context, run_state)

    def _identity(self, context: Context) -> TaskIdentity:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return TaskIdentity(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=-1 if map_index is None else int(map_index),
            try_number=int(getattr(ti, "try_number", 1) or 1),
            label=self.name,
        )

    def _submit_first(
        self, identity: TaskIdentity, settings: TesConnection, deadline: float | None
    ) -> dict[str, Any]:
        task, out_dir = self._build_task(settings, identity)
        run_state = {
            "task": task.to_request(),
            "identity": identity.__dict__,
            "out_dir": out_dir,
            "attempts": [],
            "preemptible_left": self.preemptible,
        }
        self._submit(run_state)
        return run_state

    def _build_task(
        self, settings: TesConnection, identity: TaskIdentity, out_dir: str | None = None
    ) -> tuple[TesTask, str]:
        """Validate, stage and assemble the task; ``out_dir`` keeps an earlier output folder."""
        plan, outputs_url = self._validate(settings)
        out_dir = out_dir or output_directory(outputs_url, identity.name(), datetime.now(UTC))
        staged = self._stage(plan, settings)
        return self._assemble(plan, staged, out_dir), out_dir

    def _validate(self, settings: TesConnection) -> tuple[TaskPlan, str]:
        """Every check on rendered arguments; runs before anything is uploaded or sent."""
        if self.executors is None:
            self.image = validate_image(self.image)
            self.command = validate_command(self.command)
        if self.workdir is not None:
            validate_container_path("workdir", self.workdir)
        if self.tags is not None and (
            not isinstance(self.tags, Mapping) or not all(isinstance(v, str) for v in self.tags.values())
        ):
            raise _fail("tags", f"must be a mapping of str -> str, got {self.tags!r}")
        plan = plan_inputs(self.inputs)
        plan.outputs = plan_outputs(self.outputs)
        check_unique_paths(plan.inputs, plan.local_inputs, plan.outputs)
        if isinstance(self.command, str) and self.executors is None:
            plan.script = self.command
        needs_staging = bool(plan.local_inputs) or (
            plan.script is not None and not script_fits_inline(plan.script)
        )
        if needs_staging:
            validate_base_url(
                "inputs_url",
                self.inputs_url or settings.inputs_url,
                STAGING_SCHEMES,
                connection_field="inputs_url",
            )
        outputs_url = validate_base_url(
            "outputs_url",
            self.outputs_url or settings.outputs_url,
            OUTPUT_SCHEMES,
            connection_field="outputs_url",
        )
        # Resources are checked now too, so a bad value never follows an upload.
        self._resources(preemptible=self.preemptible > 0)
        return plan, outputs_url

    def _resources(self, *, preemptible: bool) -> Any:
        return build_resources(
            cpu_cores=self.cpu_cores,
            ram_gb=self.ram_gb,
            disk_gb=self.disk_gb,
            preemptible=preemptible,
            zones=self.zones,
            backend_parameters=self.backend_parameters,
            backend_parameters_strict=self.backend_parameters_strict,
        )

    def _stage(self, plan: TaskPlan, settings: TesConnection) -> dict[str, StagedInput]:
        """Upload local inputs (and an oversized script); returns them by container path."""
        large_script = plan.script is not None and not script_fits_inline(plan.script)
        if not plan.local_inputs and not large_script:
            return {}
        from airflow_provider_tes.staging import InputStager

        inputs_url = self.inputs_url or settings.inputs_url
        assert inputs_url
        stager = InputStager(
            inputs_url, aws_conn_id=self.aws_conn_id or settings.aws_conn_id or "aws_default"
        )
        report = stager.stage([item.local_path for item in plan.local_inputs])
        self.log.info("Staging: %s", report.summary())
        by_source = {item.source: item for item in report.staged}
        staged = {item.container_path: by_source[item.local_path] for item in plan.local_inputs}
        if large_script:
            assert plan.script is not None
            staged[GUEST_COMMAND_PATH] = stager.stage_bytes(plan.script.encode())
            self.log.info("Command script is larger than TES inline content allows; staged it")
        return staged

    def _assemble(self, plan: TaskPlan, staged: Mapping[str, StagedInput], out_dir: str) -> TesTask:
        inputs = list(plan.inputs)
        for local in plan.local_inputs:
            item = staged[local.container_path]
            inputs.append(
                TesInput(
                    path=local.container_path, url=item.url, type="DIRECTORY" if item.is_directory else "FILE"
                )
            )
        if plan.script is not None:
            if GUEST_COMMAND_PATH in staged:
                inputs.append(TesInput(path=GUEST_COMMAND_PATH, url=staged[GUEST_COMMAND_PATH].url))
            else:
                inputs.append(TesInput(path=GUEST_COMMAND_PATH, content=plan.script))
        if self.executors is not None:
            executors = [
                TesExecutor.model_validate(e) if isinstance(e, Mapping) else e for e in self.executors
            ]
            outputs = list(plan.outputs)
        else:
            assert self.image is not None
            assert self.command is not None
            executors = [
                command_executor(
                    image=self.image,
                    command=self.command,
                    shell=self.shell,
                    workdir=self.workdir,
                    env=self.env,
                )
            ]
            outputs = [*standard_outputs(out_dir), *plan.outputs]
        volumes = sorted({*(self.volumes or []), *disk_volumes(self.disk_gb)})
        return TesTask(
            description=f"Airflow task {self.dag_id}.{self.task_id}",
            inputs=inputs or None,
            outputs=outputs or None,
            executors=executors,
            volumes=volumes or None,
            resources=self._resources(preemptible=self.preemptible > 0),
        )

    def _submit(self, run_state: dict[str, Any]) -> str:
        """Send the next attempt of the task; the name and tags make it findable and unique."""
        identity = TaskIdentity(**run_state["identity"])
        attempt = int(run_state.get("next_attempt", len(run_state["attempts"])))
        if run_state["task"] is None:
            # Reattached to an earlier try's task: the server's copy lacks inline content
            # (BASIC view), so the body is rebuilt from this operator's own arguments.
            task, run_state["out_dir"] = self._build_task(
                self.hook.settings, identity, run_state.get("out_dir")
            )
            run_state["task"] = task.to_request()
        body = dict(run_state["task"])
        body["name"] = identity.name(attempt)
        body["tags"] = {**(self.tags or {}), **identity.tags(attempt)}
        resources = dict(body.get("resources") or {})
        if run_state["preemptible_left"] > 0:
            resources["preemptible"] = True
        else:
            resources.pop("preemptible", None)
        if resources:
            body["resources"] = resources
        else:
            body.pop("resources", None)
        task = TesTask.model_validate(body)
        tes_id = self.hook.create_task(task)
        run_state["attempts"].append(tes_id)
        run_state["next_attempt"] = attempt + 1
        self.tes_task_id = tes_id
        self.log.info(
            "Submitted TES task %s (%s, attempt %d, preemptible=%s)",
            tes_id,
            body["name"],
            attempt + 1,
            resources.get("preemptible", False),
        )
        return tes_id

    def _reattach(self, identity: TaskIdentity) -> dict[str, Any] | None:
        """Attach to a still-active TES task of an earlier try instead of submitting again.

        A worker that died after submitting, or a lost triggerer, leaves the TES task
        running; a new try must not start a second one. Finished tasks are never reused.
        """
        if identity.try_number <= 1:
            return None
        wanted = identity.instance_tags()
        for candidate in self.hook.list_tasks(name_prefix=identity.instance_prefix, view=TesView.BASIC):
            tags = candidate.tags or {}
            if any(tags.get(k) != v for k, v in wanted.items()):
                continue
            if candidate.state is None or not candidate.state.is_active or not candidate.id:
                continue
            earlier = TaskIdentity(
                **{**identity.__dict__, "try_number": int(tags.get("try_number", "0") or 0)}
            )
            attempt = int(tags.get("attempt", "0") or 0)
            stdout = next((o.url for o in candidate.outputs or [] if o.path == GUEST_STDOUT_PATH), None)
            self.log.info(
                "Reattaching to TES task %s from try %s, still %s",
                candidate.id,
                earlier.try_number,
                candidate.state,
            )
            self.tes_task_id = candidate.id
            return {
                "task": None,
                "identity": earlier.__dict__,
                "out_dir": stdout[: -len("stdout")] if stdout else None,
                "attempts": [candidate.id],
                "next_attempt": attempt + 1,
                "preemptible_left": max(0, self.preemptible - attempt),
            }
        return None

    def _publish(self, context: Context, run_state: dict[str, Any]) -> None:
        """Store the id and links before deferring, so the UI shows them while the task runs."""
        settings = self.hook.settings
        tes_id = run_state["attempts"][-1]
        ti = context["ti"]
        ti.xcom_push(key="tes_task_id", value=tes_id)
        ti.xcom_push(
            key=TES_TASK_LINK_KEY, value=task_link(settings.base_url, tes_id, settings.task_link_template)
        )
        if run_state.get("out_dir"):
            ti.xcom_push(key=TES_OUTPUTS_LINK_KEY, value=outputs_link(run_state["out_dir"]))

    # -- waiting ------------------------------------------------------------------------------------

    def _poll_interval(self) -> float:
        return float(self.poll_interval or self.hook.settings.poll_interval)

    def _wait(self, context: Context, run_state: dict[str, Any]) -> Any:
        tes_id = run_state["attempts"][-1]
        state = self.hook.get_task(tes_id, view=TesView.MINIMAL).state or TesState.UNKNOWN
        if state.is_terminal:
            return self._finish(context, run_state, state)
        deadline = run_state.get("deadline")
        if not self.deferrable:
            return self._poll_in_worker(context, run_state, deadline)
        timeout = None
        if deadline is not None:
            timeout = timedelta(seconds=max(0.0, deadline - time.time())) + DEADLINE_GRACE
        # The run state travels in XCom rather than in the defer kwargs: `airflow dags test`
        # (3.3) resumes with the event alone, and XCom also shows it in the UI.
        context["ti"].xcom_push(key=RUN_STATE_KEY, value=run_state)
        self.defer(
            trigger=TesTaskTrigger(
                tes_task_id=tes_id,
                tes_conn_id=self.tes_conn_id,
                poll_interval=self._poll_interval(),
                deadline=deadline,
                started_at=time.time(),
            ),
            method_name="execute_complete",
            timeout=timeout,
        )

    def _poll_in_worker(self, context: Context, run_state: dict[str, Any], deadline: float | None) -> Any:
        tes_id = run_state["attempts"][-1]
        last: TesState | None = None
        while True:
            if deadline is not None and time.time() >= deadline:
                self.hook.cancel_task(tes_id)
                raise TesDeadlineExceededError(
                    f"TES task {tes_id} passed its deadline (execution_timeout) and was canceled",
                    task_id=tes_id,
                )
            state = self.hook.get_task(tes_id, view=TesView.MINIMAL).state or TesState.UNKNOWN
            if state != last:
                self.log.info("TES task %s is %s", tes_id, state.value)
                last = state
            if state.is_terminal:
                return self._finish(context, run_state, state)
            time.sleep(self._poll_interval())

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        ti = context["ti"]
        run_state = ti.xcom_pull(task_ids=ti.task_id, key=RUN_STATE_KEY, map_indexes=ti.map_index)
        if not event or not run_state:
            raise TesError("the TES trigger resumed the task without an event or run state; state unknown")
        self.tes_task_id = event.get("tes_task_id")
        status = event.get("status")
        if status == EVENT_DEADLINE:
            raise TesDeadlineExceededError(event.get("message", "deadline passed"), task_id=self.tes_task_id)
        if status != EVENT_TERMINAL:
            raise TesError(f"waiting for TES task {self.tes_task_id} failed: {event.get('message')}")
        return self._finish(context, run_state, TesState(event["state"]))

    # -- results ------------------------------------------------------------------------------------

    def _finish(self, context: Context, run_state: dict[str, Any], state: TesState) -> Any:
        tes_id = run_state["attempts"][-1]
        if state is TesState.PREEMPTED:
            return self._resubmit_after_preemption(context, run_state)
        task = self.hook.get_task(tes_id, view=TesView.FULL)
        log = task.last_log
        executor_log = log.logs[-1] if log and log.logs else None
        out_dir = run_state.get("out_dir")
        system_logs = "\n".join(log.system_logs or []) if log else ""
        logged_stdout = executor_log.stdout if executor_log else None
        exit_code: int | None = None
        if self.executors is None:
            # The wrapper's marker (or its exit_code file) holds the command's real exit code;
            # the command's own output is in the uploaded stdout/stderr objects.
            exit_code = exit_code_from_log(logged_stdout)
            if exit_code is None:
                exit_code = exit_code_from_file(self._read_tail(out_dir, "exit_code"))
            stdout_tail = self._read_tail(out_dir, "stdout")
            stderr_tail = self._read_tail(out_dir, "stderr")
        else:
            stdout_tail = logged_stdout
            stderr_tail = executor_log.stderr if executor_log else None
        if exit_code is None and executor_log is not None:
            exit_code = executor_log.exit_code
        if stdout_tail:
            self.log.info("stdout (tail):\n%s", stdout_tail[-TAIL_BYTES:])
        if stderr_tail:
            self.log.info("stderr (tail):\n%s", stderr_tail[-TAIL_BYTES:])
        if system_logs:
            self.log.info("TES system logs:\n%s", system_logs)
        where = f"TES task {tes_id} ({task.name or ''})"
        if state is TesState.COMPLETE and not exit_code:
            return self._result(run_state, task, state, exit_code)
        if state in (TesState.COMPLETE, TesState.EXECUTOR_ERROR):
            tail = (stderr_tail or "")[-TAIL_BYTES:].strip()
            raise TesTaskFailedError(
                f"{where} failed in its executor with exit code {exit_code}"
                + (f"; stderr (tail):\n{tail}" if tail else "; stderr was empty"),
                task_id=tes_id,
                state=TesState.EXECUTOR_ERROR.value,
            )
        if state is TesState.SYSTEM_ERROR:
            raise TesTaskFailedError(
                f"{where} ended SYSTEM_ERROR: {system_logs or 'the server gave no system logs'}",
                task_id=tes_id,
                state=state.value,
            )
        raise TesTaskFailedError(f"{where} ended {state.value}", task_id=tes_id, state=state.value)

    def _resubmit_after_preemption(self, context: Context, run_state: dict[str, Any]) -> Any:
        tes_id = run_state["attempts"][-1]
        left = int(run_state["preemptible_left"])
        if left <= 0:
            raise TesTaskPreemptedError(
                f"TES task {tes_id} was preempted and the preemption budget is spent "
                f"({len(run_state['attempts'])} attempts, preemptible={self.preemptible}); "
                "raise 'preemptible' "
                "to allow more resubmissions",
                task_id=tes_id,
                state=TesState.PREEMPTED.value,
            )
        run_state["preemptible_left"] = left - 1
        self.log.warning("TES task %s was preempted; resubmitting (%d resubmissions left)", tes_id, left - 1)
        self._submit(run_state)
        self._publish(context, run_state)
        return self._wait(context, run_state)

    def _result(
        self, run_state: dict[str, Any], task: TesTask, state: TesState, exit_code: int | None
    ) -> Any:
        out_dir = run_state.get("out_dir")
        log = task.last_log
        result = {
            "tes_task_id": task.id,
            "state": state.value,
            "exit_code": exit_code,
            "attempts": list(run_state["attempts"]),
            "outputs_url": out_dir,
            "work_dir_url": f"{out_dir}work/" if out_dir else None,
            "stdout_url": f"{out_dir}stdout" if out_dir else None,
            "stderr_url": f"{out_dir}stderr" if out_dir else None,
            "outputs": [
                {"url": o.url, "path": o.path, "size_bytes": o.size_bytes}
                for o in (log.outputs if log else [])
            ],
        }
        # Kept for OpenLineage, which asks in this process right after execute returns.
        self._lineage = (run_state.get("task"), result)
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs and outputs of the TES task as datasets (when the OpenLineage provider is installed)."""
        from airflow_provider_tes.openlineage import lineage_for_task

        task_body, result = getattr(self, "_lineage", (None, None))
        if task_body is None:
            return None
        return lineage_for_task(task_body, result, tes_base_url=self.hook.base_url)

    def _read_tail(self, out_dir: str | None, name: str) -> str | None:
        """The end of an uploaded stdout/stderr object, for servers whose logs omit them."""
        if not out_dir or urlsplit(out_dir).scheme != "s3":
            return None
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            parts = urlsplit(out_dir + name)
            client: Any = S3Hook(
                aws_conn_id=self.aws_conn_id or self.hook.settings.aws_conn_id or "aws_default"
            ).get_conn()
            body = client.get_object(
                Bucket=parts.netloc, Key=parts.path.lstrip("/"), Range=f"bytes=-{TAIL_BYTES}"
            )
            return str(body["Body"].read().decode("utf-8", "replace"))
        except Exception as err:  # the tail is a courtesy; its absence must not fail the task
            self.log.debug("Could not read %s%s: %s", out_dir, name, err)
            return None

    def on_kill(self) -> None:
        """Cancel the TES task when Airflow kills this worker-side task."""
        if self.tes_task_id:
            self.log.info("Canceling TES task %s", self.tes_task_id)
            try:
                self.hook.cancel_task(self.tes_task_id)
            except TesError as err:
                self.log.error("Could not cancel TES task %s: %s", self.tes_task_id, err)

"""The lifecycle of the TES task(s) behind one Airflow task instance, owned in one place.

As KubernetesPodOperator leaves its pod to a ``PodManager``, the operator leaves its TES task
to a :class:`TesTaskManager`: the operator deals with Airflow (context, XCom, links,
deferral, logs), the manager with TES (submit, find an earlier try's task again, resubmit
after preemption, read the outcome). Everything the manager decides is recorded in a
:class:`~airflow_provider_tes.run_state.RunState`, so a wait can resume in another process.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_tes.container import (
    GUEST_STDOUT_PATH,
)
from airflow_provider_tes.exceptions import TesTaskFailedError, TesTaskPreemptedError
from airflow_provider_tes.identity import WAITS_TAG, OutputFolder, TaskIdentity, Tenant
from airflow_provider_tes.log_follower import LogFollower
from airflow_provider_tes.models import TesState, TesTask, TesView
from airflow_provider_tes.outcome import TAIL_BYTES, read_outcome
from airflow_provider_tes.redaction import system_logs
from airflow_provider_tes.run_state import RunState
from airflow_provider_tes.storage import read_text_tail, resolve_aws_conn_id
from airflow_provider_tes.task_spec import TaskPlan, TaskSpec, TaskTemplate

if TYPE_CHECKING:
    from airflow_provider_tes.hooks.tes import TesHook


@dataclass
class TesTaskManager:
    """Submits, finds again and reads the TES task(s) of one Airflow task instance.

    :param hook: the TES connection's hook.
    :param spec: the task asked for (the operator's rendered arguments).
    :param preemptible: how many resubmissions after PREEMPTED are allowed.
    :param explicit_aws_conn_id: AWS connection for staging and reading outputs (``None``:
        the TES connection's ``aws_conn_id``, else ``aws_default``).
    :param log: where progress is logged (the operator's task log).
    :param waited: whether an Airflow try waits for the task (``wait_for_completion``).
    """

    hook: TesHook
    spec: TaskSpec
    preemptible: int
    explicit_aws_conn_id: str | None
    log: logging.Logger | Any
    #: Whether an Airflow try waits for the task (``wait_for_completion``); see :data:`WAITS_TAG`.
    waited: bool = True
    _plan: TaskPlan | None = field(default=None, init=False)
    _template: TaskTemplate | None = field(default=None, init=False)
    _tenant: Tenant | None = field(default=None, init=False)
    #: The FULL view of the task the outcome was read from (for lineage).
    finished_task: TesTask | None = field(default=None, init=False)

    @property
    def tenant(self) -> Tenant:
        """Whose tasks this manager submits and adopts (:class:`~airflow_provider_tes.identity.Tenant`)."""
        if self._tenant is None:
            self._tenant = Tenant.of_connection(self.hook.settings)
        return self._tenant

    @property
    def aws_conn_id(self) -> str:
        return resolve_aws_conn_id(self.explicit_aws_conn_id, self.hook.settings.aws_conn_id)

    # -- building ---------------------------------------------------------------------------------

    def plan(self) -> TaskPlan:
        """Check every argument (nothing is sent or uploaded before this passes)."""
        if self._plan is None:
            settings = self.hook.settings
            self._plan = self.spec.plan(
                connection_inputs_url=settings.inputs_url,
                connection_outputs_url=settings.outputs_url,
                connection_allowed_local_roots=settings.allowed_local_roots,
            )
        return self._plan

    def template(self, identity: TaskIdentity, folder: OutputFolder | None = None) -> TaskTemplate:
        """The task every attempt is sent from: staged inputs and output folder in place.

        ``folder`` keeps the output folder of an earlier attempt (preemption, reattach).
        """
        if self._template is None or (folder is not None and folder != self._template.output_folder):
            plan = self.plan()
            folder = folder or OutputFolder.new(plan.outputs_url, identity.name(), datetime.now(UTC))
            staged, staged_script = self._stage(plan)
            self._template = plan.assemble(staged, folder, staged_script)
        return self._template

    def _stage(self, plan: TaskPlan) -> tuple[dict[str, Any], str | None]:
        """Upload local inputs (and an oversized script); returns them by container path."""
        if not plan.needs_staging:
            return {}, None
        from airflow_provider_tes.staging import InputStager

        assert plan.inputs_url is not None
        stager = InputStager(
            plan.inputs_url, aws_conn_id=self.aws_conn_id, allowed_roots=plan.allowed_local_roots
        )
        report = stager.stage([item.local_path for item in plan.local_inputs])
        self.log.info("Staging: %s", report.summary())
        by_source = {item.source: item for item in report.staged}
        staged = {item.container_path: by_source[item.local_path] for item in plan.local_inputs}
        staged_script = None
        if plan.stages_script:
            assert plan.script is not None
            staged_script = stager.stage_bytes(plan.script.encode()).url
            self.log.info("Command script is larger than TES inline content allows; staged it")
        return staged, staged_script

    # -- submitting -------------------------------------------------------------------------------

    def start(self, identity: TaskIdentity, deadline: float | None) -> RunState:
        """Reattach to an earlier try's still-running task, or submit the first attempt."""
        self.plan()
        run_state = self.find_running(identity)
        if run_state is None:
            template = self.template(identity)
            run_state = self.submit(
                RunState(
                    identity=identity,
                    attempts=(),
                    next_attempt=0,
                    preemptible_left=self.preemptible,
                    output_folder=template.output_folder,
                )
            )
        return dataclasses.replace(run_state, deadline=deadline)

    def submit(self, run_state: RunState) -> RunState:
        """Send the next attempt; its name and tags make it findable and unique."""
        template = self.template(run_state.identity, run_state.output_folder)
        attempt = run_state.next_attempt
        preemptible = run_state.preemptible_left > 0
        request = template.request(run_state.identity, attempt, preemptible=preemptible)
        # Signed, so an ambiguous create's look-up (exact tags) finds only this tenant's task.
        signed = {**(request.tags or {}), **self.tenant.tags(run_state.identity, attempt)}
        if not self.waited:
            signed[WAITS_TAG] = "false"
        request = request.model_copy(update={"tags": signed})
        tes_id = self.hook.create_task(request)
        self.log.info(
            "Submitted TES task %s (%s, attempt %d, preemptible=%s)",
            tes_id,
            request.name,
            attempt + 1,
            preemptible,
        )
        return run_state.submitted(tes_id)

    def find_running(self, identity: TaskIdentity) -> RunState | None:
        """The still-active TES task of an earlier try of this task instance, if any.

        A worker that died after submitting, or a lost triggerer, leaves the TES task
        running; a new try must not start a second one. Finished tasks are never reused, and
        only this tenant's tasks are adopted: one whose deployment or identity tag does not
        verify (another deployment's, a planted one, one submitted before tasks were signed)
        is left alone and a new task is submitted.
        """
        if identity.try_number <= 1:
            return None
        tenant = self.tenant
        if not tenant.durable:
            self.log.warning(
                "No tenant secret is configured (extra 'tenant_secret' of the TES connection, or "
                "[tes] tenant_secret): an earlier try's TES task cannot be verified, so none is reattached"
            )
            return None
        candidates = self.hook.list_tasks(name_prefix=identity.instance_prefix, view=TesView.BASIC)
        for candidate in candidates:
            if identity.submission_of(candidate.tags) is None or not candidate.id:
                continue
            if candidate.state is None or not candidate.state.is_active:
                continue
            submission = tenant.adopts(identity, candidate.tags)
            if submission is None:
                self.log.warning(
                    "Not reattaching to TES task %s: it is not signed by deployment %r with the key "
                    "from %s (another deployment's task, one submitted before the key changed, or a forgery)",
                    candidate.id,
                    tenant.deployment,
                    tenant.source,
                )
                continue
            earlier, attempt = submission
            stdout = next((o.url for o in candidate.outputs or [] if o.path == GUEST_STDOUT_PATH), None)
            self.log.info(
                "Reattaching to TES task %s from try %s, still %s",
                candidate.id,
                earlier.try_number,
                candidate.state,
            )
            return RunState(
                identity=earlier,
                attempts=(candidate.id,),
                next_attempt=attempt + 1,
                preemptible_left=max(0, self.preemptible - attempt),
                output_folder=OutputFolder.of_output(stdout),
            )
        return None

    def resubmit_after_preemption(self, run_state: RunState) -> RunState:
        """Submit again within the preemption budget, or fail saying it is spent."""
        tes_id = run_state.tes_task_id
        if run_state.preemptible_left <= 0:
            raise TesTaskPreemptedError(
                f"TES task {tes_id} was preempted and the preemption budget is spent "
                f"({len(run_state.attempts)} attempts, preemptible={self.preemptible}); "
                "raise 'preemptible' to allow more resubmissions",
                task_id=tes_id,
                state=TesState.PREEMPTED.value,
            )
        run_state = run_state.after_preemption()
        self.log.warning(
            "TES task %s was preempted; resubmitting (%d resubmissions left)",
            tes_id,
            run_state.preemptible_left,
        )
        return self.submit(run_state)

    def cancel(self, tes_id: str) -> None:
        self.hook.cancel_task(tes_id)

    # -- the outcome ------------------------------------------------------------------------------

    def result(
        self,
        run_state: RunState,
        state: TesState,
        *,
        lines_shown: int = 0,
        live_log: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The result of a task that ended ``state`` (not PREEMPTED), or the error it ended in.

        ``lines_shown``, ``live_log``: what the live logs showed and where they stopped; the last
        lines are shown here, and the command's output is then in the task log, so its tails are
        not shown again.
        """
        task = self.full_view(run_state.tes_task_id)
        self.finished_task = task
        lines_shown += self.show_last_lines(task, live_log)
        plan = self.plan()
        try:
            outcome = read_outcome(
                task,
                state,
                wrapped=plan.wrapped,
                executors=plan.executors,
                folder=run_state.output_folder,
                read_tail=self._read_tail,
                shell=self.spec.shell,
                known_env=self._env_values(plan),
            )
        except TesTaskFailedError:
            self._log_system_logs(task)
            raise
        if outcome.stdout_tail and not lines_shown:
            self.log.info("stdout (tail):\n%s", outcome.stdout_tail[-TAIL_BYTES:])
        if outcome.stderr_tail and not lines_shown:
            self.log.info("stderr (tail):\n%s", outcome.stderr_tail[-TAIL_BYTES:])
        self._log_system_logs(task)
        return self._result(run_state, task, state, outcome.exit_code)

    def full_view(self, tes_task_id: str) -> TesTask:
        return self.hook.get_task(tes_task_id, view=TesView.FULL)

    def show_last_lines(self, task: TesTask, live_log: Mapping[str, Any] | None) -> int:
        """The executor-log lines the live logs had not shown when the task ended (from the FULL
        view the worker reads anyway: the triggerer makes no GET for them); how many."""
        if live_log is None:
            return 0
        try:
            follower = LogFollower.taking_over(live_log)
        except ValueError as err:
            self.log.warning("The last live-log lines cannot be shown: %s; see the stdout object", err)
            return 0
        before = follower.lines_shown
        if lines := follower.update(task, final=True):
            self.log.info("%s", "\n".join(lines))
        return follower.lines_shown - before

    def _log_system_logs(self, task: TesTask) -> None:
        lines = system_logs(task, self._env_values(self.plan()))
        if lines:
            self.log.info("TES system logs:\n%s", "\n".join(lines))

    @staticmethod
    def _env_values(plan: TaskPlan) -> list[str]:
        """What the task's env holds: never shown, wherever a server quotes it."""
        envs = [plan.env or {}, *(e.env or {} for e in plan.executors)]
        return [value for env in envs for value in env.values()]

    @staticmethod
    def _result(run_state: RunState, task: TesTask, state: TesState, exit_code: int | None) -> dict[str, Any]:
        folder = run_state.output_folder
        log = task.last_log
        return {
            "tes_task_id": task.id,
            "state": state.value,
            "exit_code": exit_code,
            "attempts": list(run_state.attempts),
            "outputs_url": folder.url if folder else None,
            "work_dir_url": f"{folder.work}/" if folder else None,
            "stdout_url": folder.stdout if folder else None,
            "stderr_url": folder.stderr if folder else None,
            "outputs": [
                {"url": o.url, "path": o.path, "size_bytes": o.size_bytes}
                for o in (log.outputs if log else [])
            ],
        }

    def _read_tail(self, url: str) -> str:
        """The end of an uploaded object (stdout, stderr, exit_code); raises when it cannot be read."""
        return read_text_tail(url, TAIL_BYTES, aws_conn_id=self.aws_conn_id)

"""From the operator's rendered arguments to the TES task of each attempt: one owner, three steps.

1. :meth:`TaskSpec.plan` checks every argument and decides what must be staged; nothing has
   been uploaded or sent when it fails, and its error names the argument at fault.
2. :meth:`TaskPlan.assemble` puts the staged inputs and the output folder in, giving the
   :class:`TaskTemplate`: the task as the user asked for it, the same for every attempt.
3. :meth:`TaskTemplate.request` gives the request of attempt *k*: its unique name, its tags,
   and whether it may run on preemptible capacity.

Between 1 and 2 the caller stages the local inputs (:mod:`airflow_provider_tes.staging`),
which is the only step that talks to the outside. The command runs in the layout of
:mod:`airflow_provider_tes.container`, which follows the sprocket WDL engine's TES backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from airflow_provider_tes import arguments as args
from airflow_provider_tes.container import (
    GUEST_COMMAND_PATH,
    command_executor,
    script_fits_inline,
    standard_outputs,
)
from airflow_provider_tes.identity import OutputFolder, TaskIdentity
from airflow_provider_tes.models import TesExecutor, TesFileType, TesInput, TesOutput, TesResources, TesTask

if TYPE_CHECKING:
    from airflow_provider_tes.staging import StagedInput


@dataclass(frozen=True)
class TaskSpec:
    """The task an operator asks for, as its (rendered) arguments state it.

    ``executors`` replaces ``image`` + ``command`` for multi-executor tasks; such a task gets
    no wrapper and no standard outputs, only what the executors and ``outputs`` say.
    """

    image: str | None = None
    command: str | Sequence[str] | None = None
    inputs: Mapping[str, Any] | None = None
    outputs: Mapping[str, Any] | Sequence[Any] | None = None
    inputs_url: str | None = None
    outputs_url: str | None = None
    env: Mapping[str, Any] | None = None
    workdir: str | None = None
    shell: str | None = "/bin/sh"
    cpu_cores: float | None = None
    ram_gb: float | None = None
    disk_gb: float | Mapping[str, float] | None = None
    zones: Sequence[str] | None = None
    backend_parameters: Mapping[str, Any] | None = None
    backend_parameters_strict: bool | None = None
    volumes: Sequence[str] | None = None
    tags: Mapping[str, str] | None = None
    executors: Sequence[TesExecutor | Mapping[str, Any]] | None = None
    allowed_local_roots: Sequence[str] | None = None
    description: str | None = None

    @classmethod
    def of(cls, arguments: object, **overrides: Any) -> TaskSpec:
        """The spec of an object whose attributes carry these names (the operator, once rendered)."""
        names = {f.name for f in fields(cls)} - overrides.keys()
        return cls(**{name: getattr(arguments, name) for name in names}, **overrides)

    def check_unrendered(self) -> None:
        """The checks that need no template rendering: run when the DAG is parsed."""
        if self.executors is None and self.image is None:
            raise args.argument_error("image", "is required (or pass 'executors' for a multi-executor task)")
        if self.executors is None and self.command is None:
            raise args.argument_error("command", "is required: a script (str) or an argv (list of str)")
        if self.executors is not None and (self.image is not None or self.command is not None):
            raise args.argument_error("executors", "replaces 'image' and 'command'; pass one or the other")
        args.validate_shell(self.shell, self.command)
        args.validate_number("cpu_cores", self.cpu_cores)
        args.validate_number("ram_gb", self.ram_gb)
        for volume in self.volumes or []:
            args.validate_container_path("volumes", volume)

    def plan(
        self,
        *,
        connection_inputs_url: str | None,
        connection_outputs_url: str | None,
        connection_allowed_local_roots: Sequence[str] | None = None,
    ) -> TaskPlan:
        """Every check on the rendered arguments; runs before anything is uploaded or sent."""
        self.check_unrendered()
        executors: tuple[TesExecutor, ...] = ()
        image: str | None = None
        command: str | list[str] | None = None
        env = args.validate_env(self.env)
        if self.executors is None:
            image = args.validate_image(self.image)
            command = args.validate_command(self.command)
        else:
            executors = tuple(
                TesExecutor.model_validate(e) if isinstance(e, Mapping) else e for e in self.executors
            )
        if self.workdir is not None:
            args.validate_container_path("workdir", self.workdir)
        tags = args.validate_tags(self.tags)
        allowed_roots = self.allowed_local_roots
        if allowed_roots is None:
            allowed_roots = connection_allowed_local_roots
        remote, local = args.plan_inputs(self.inputs, allowed_local_roots=allowed_roots)
        outputs = args.plan_outputs(self.outputs)
        args.check_unique_paths(remote, local, outputs)
        script = command if isinstance(command, str) else None
        inputs_url: str | None = None
        if local or (script is not None and not script_fits_inline(script)):
            inputs_url = args.validate_base_url(
                "inputs_url",
                self.inputs_url or connection_inputs_url,
                args.STAGING_SCHEMES,
                connection_field="inputs_url",
            )
        outputs_url = args.validate_base_url(
            "outputs_url",
            self.outputs_url or connection_outputs_url,
            args.OUTPUT_SCHEMES,
            connection_field="outputs_url",
        )
        resources = self._resources()
        return TaskPlan(
            spec=self,
            image=image,
            command=command,
            env=env,
            executors=executors,
            remote_inputs=tuple(remote),
            local_inputs=tuple(local),
            outputs=tuple(outputs),
            script=script,
            inputs_url=inputs_url,
            outputs_url=outputs_url,
            resources=resources,
            volumes=tuple(sorted({*(self.volumes or []), *args.disk_volumes(self.disk_gb)})),
            tags=tags,
            allowed_local_roots=allowed_roots,
        )

    def _resources(self) -> TesResources:
        """Resources without ``preemptible``, which each attempt states for itself."""
        cpu = args.validate_number("cpu_cores", self.cpu_cores)
        zones, parameters = self.zones, self.backend_parameters
        if zones is not None and (isinstance(zones, str) or not all(isinstance(z, str) and z for z in zones)):
            raise args.argument_error("zones", f"must be a list of zone names, got {zones!r}")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise args.argument_error(
                "backend_parameters", f"must be a mapping of str -> str, got {parameters!r}"
            )
        return TesResources(
            cpu_cores=math.ceil(cpu) if cpu is not None else None,
            ram_gb=args.validate_number("ram_gb", self.ram_gb),
            disk_gb=args.total_disk_gb(self.disk_gb),
            zones=list(zones) if zones else None,
            backend_parameters={str(k): str(v) for k, v in parameters.items()} if parameters else None,
            backend_parameters_strict=self.backend_parameters_strict,
        )


@dataclass(frozen=True)
class TaskPlan:
    """A checked :class:`TaskSpec`: what to stage, and everything else the task will hold."""

    spec: TaskSpec
    image: str | None
    command: str | list[str] | None
    env: dict[str, str] | None
    executors: tuple[TesExecutor, ...]
    remote_inputs: tuple[TesInput, ...]
    local_inputs: tuple[args.LocalInput, ...]
    outputs: tuple[TesOutput, ...]
    script: str | None
    inputs_url: str | None
    outputs_url: str
    resources: TesResources
    volumes: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)
    allowed_local_roots: Sequence[str] | None = None

    @property
    def stages_script(self) -> bool:
        """Whether the script is too large to send inline and goes to object storage instead."""
        return self.script is not None and not script_fits_inline(self.script)

    @property
    def wrapped(self) -> bool:
        """Whether the command runs in the exit-code wrapper (see :mod:`~airflow_provider_tes.container`)."""
        return not self.executors and self.spec.shell is not None

    @property
    def needs_staging(self) -> bool:
        return bool(self.local_inputs) or self.stages_script

    def assemble(
        self, staged: Mapping[str, StagedInput], folder: OutputFolder, staged_script: str | None = None
    ) -> TaskTemplate:
        """The task with the staged inputs (by container path) and the output folder in place."""
        inputs = list(self.remote_inputs)
        for local in self.local_inputs:
            item = staged[local.container_path]
            kind = TesFileType.DIRECTORY if item.is_directory else TesFileType.FILE
            inputs.append(TesInput(path=local.container_path, url=item.url, type=kind))
        if self.script is not None:
            if self.stages_script:
                assert staged_script is not None, "a large script must be staged before assembly"
                inputs.append(TesInput(path=GUEST_COMMAND_PATH, url=staged_script))
            else:
                inputs.append(TesInput(path=GUEST_COMMAND_PATH, content=self.script))
        outputs: Sequence[TesOutput] = self.outputs
        executors = list(self.executors)
        if not executors:
            assert self.image is not None
            assert self.command is not None
            executors = [
                command_executor(
                    image=self.image,
                    command=self.command,
                    shell=self.spec.shell,
                    workdir=self.spec.workdir,
                    env=self.env,
                )
            ]
            outputs = [*standard_outputs(folder, wrapped=self.wrapped), *self.outputs]
        task = TesTask(
            description=self.spec.description,
            inputs=inputs or None,
            outputs=list(outputs) or None,
            executors=executors,
            volumes=list(self.volumes) or None,
            resources=self.resources,
        )
        return TaskTemplate(task=task, tags=self.tags, output_folder=folder)


@dataclass(frozen=True)
class TaskTemplate:
    """The task as the user asked for it; every attempt is sent from it."""

    task: TesTask
    tags: dict[str, str]
    output_folder: OutputFolder

    def request(self, identity: TaskIdentity, attempt: int, *, preemptible: bool) -> TesTask:
        """The request of submission ``attempt``: unique name, identity tags, and an explicit
        ``preemptible`` (TES defines no default, so leaving it out lets a server choose spot)."""
        resources = (self.task.resources or TesResources()).model_copy(update={"preemptible": preemptible})
        return self.task.model_copy(
            update={
                "name": identity.name(attempt),
                "tags": {**self.tags, **identity.tags(attempt)},
                "resources": resources,
            }
        )

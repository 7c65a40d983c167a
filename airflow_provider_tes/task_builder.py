"""From operator arguments to a TES task, following the sprocket WDL engine's TES backend.

The layout inside the container is fixed so that every task looks the same to users and
to the operator that reads its results::

    /mnt/task/command   the script (inline content, or staged when large)
    /mnt/task/work      working directory, uploaded as a DIRECTORY output
    /mnt/task/stdout    the executor's stdout, uploaded as a FILE output
    /mnt/task/stderr    the executor's stderr, uploaded as a FILE output

and outputs land under ``{outputs_url}/{name}-{UTC %Y%m%d-%H%M%S}/``. Every check here
runs before anything is uploaded or sent, and every message names the argument at fault.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pydantic

from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.models import (
    MAX_INLINE_CONTENT_BYTES,
    TesExecutor,
    TesFileType,
    TesInput,
    TesOutput,
    TesResources,
)

GUEST_COMMAND_PATH = "/mnt/task/command"
GUEST_WORK_DIR = "/mnt/task/work"
GUEST_STDOUT_PATH = "/mnt/task/stdout"
GUEST_STDERR_PATH = "/mnt/task/stderr"
GUEST_EXIT_CODE_PATH = "/mnt/task/exit_code"
RESERVED_PATHS = frozenset(
    {GUEST_COMMAND_PATH, GUEST_WORK_DIR, GUEST_STDOUT_PATH, GUEST_STDERR_PATH, GUEST_EXIT_CODE_PATH}
)

#: Printed by the wrapper on the executor's own stdout, which servers keep in the task log.
EXIT_CODE_MARKER = "airflow-provider-tes exit code: "

# The command runs under a small wrapper that keeps its output in the task's files and
# always exits 0. TES asks servers to upload outputs after a failed executor when
# `ignore_error` is set, but not all do (Funnel v0.12 stops at EXECUTOR_ERROR and uploads
# nothing), so the wrapper makes stdout, stderr and the work directory arrive on every
# server. The real exit code travels in the log marker and in /mnt/task/exit_code.
_WRAPPER = (
    f'"$@" >{GUEST_STDOUT_PATH} 2>{GUEST_STDERR_PATH}; rc=$?; '
    f'echo "$rc" >{GUEST_EXIT_CODE_PATH}; echo "{EXIT_CODE_MARKER}$rc"; exit 0'
)

#: URL schemes a TES server may fetch inputs from; anything else must be a local path.
REMOTE_INPUT_SCHEMES = frozenset({"s3", "gs", "http", "https", "ftp", "drs", "az", "abfs"})
#: URL schemes TES servers write outputs to (http(s) uploads are not part of TES practice).
OUTPUT_SCHEMES = frozenset({"s3", "gs", "ftp", "az", "abfs", "file"})
#: Where ``inputs_url`` may point: staging goes through the amazon provider's S3Hook.
STAGING_SCHEMES = frozenset({"s3"})

GIB_IN_GB = 1024**3 / 1000**3
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def _fail(argument: str, problem: str) -> TesConfigurationError:
    return TesConfigurationError(f"TesTaskOperator argument {argument!r}: {problem}")


@dataclass(frozen=True)
class TaskIdentity:
    """Who a TES task belongs to in Airflow; the source of its unique name and its tags.

    The name is ``<label>-<digest of dag/task/run/map index>-t<try>[-p<k>]``: readable at a
    glance, unique per task instance try (the digest covers run ids that do not survive
    slugging), and with a prefix shared by every try so a new try can find earlier ones.
    """

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    try_number: int = 1
    label: str | None = None

    @property
    def instance_prefix(self) -> str:
        key = "\0".join([self.dag_id, self.task_id, self.run_id, str(self.map_index)])
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        label = _SLUG.sub("_", self.label or f"{self.dag_id}.{self.task_id}")[:80].strip("_") or "task"
        if self.map_index >= 0 and not self.label:
            label = f"{label}.{self.map_index}"
        return f"{label}-{digest}-t"

    def name(self, attempt: int = 0) -> str:
        """Name of the ``attempt``-th submission (0 first, then one per preemption)."""
        return f"{self.instance_prefix}{self.try_number}" + (f"-p{attempt}" if attempt else "")

    def instance_tags(self) -> dict[str, str]:
        """Tags shared by every try of this task instance."""
        return {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "map_index": str(self.map_index),
        }

    def tags(self, attempt: int = 0) -> dict[str, str]:
        return {**self.instance_tags(), "try_number": str(self.try_number), "attempt": str(attempt)}


@dataclass(frozen=True)
class LocalInput:
    """An input that lives on the worker and has to be staged before the task is sent."""

    container_path: str
    local_path: str
    is_directory: bool


@dataclass
class TaskPlan:
    """Everything decided before staging: what to stage and what the task will look like."""

    inputs: list[TesInput] = field(default_factory=list)
    local_inputs: list[LocalInput] = field(default_factory=list)
    outputs: list[TesOutput] = field(default_factory=list)
    script: str | None = None


def validate_image(value: Any) -> str:
    """Accept registry references; reject local image files and unknown schemes like sprocket."""
    if not isinstance(value, str) or not value.strip():
        raise _fail("image", "must be a non-empty container image reference, e.g. 'ubuntu:24.04'")
    image: str = value.strip()
    lowered = image.lower()
    for prefix in ("docker://", "library://", "oras://"):
        if lowered.startswith(prefix):
            rest = image[len(prefix) :]
            if not rest:
                raise _fail("image", f"{image!r} names no image after {prefix!r}")
            return rest if prefix == "docker://" else image
    if lowered.endswith(".sif") or image.startswith(("/", "./", "../", "file:")):
        raise _fail(
            "image",
            f"{image!r} is a local image file, which a TES server cannot read: "
            "push it to a registry and use a registry image such as 'ghcr.io/org/tool:1.0'",
        )
    if "://" in image:
        raise _fail(
            "image",
            f"{image!r} has an unsupported scheme: use a registry image reference "
            "('repo/name:tag', 'docker://...', 'library://...' or 'oras://...')",
        )
    if any(ch.isspace() for ch in image):
        raise _fail("image", f"{image!r} contains whitespace; it must be one image reference")
    return image


def validate_container_path(argument: str, path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise _fail(argument, f"container path {path!r} must be a non-empty string")
    if not path.startswith("/"):
        raise _fail(argument, f"container path {path!r} must be absolute, e.g. '/data/{path.lstrip('./')}'")
    if posixpath.normpath(path) != path.rstrip("/") and path != "/":
        raise _fail(argument, f"container path {path!r} must be normalised (no '.', '..' or '//')")
    if path.rstrip("/") in RESERVED_PATHS:
        raise _fail(argument, f"container path {path!r} is used by the operator itself; pick another path")
    return path


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower() if "://" in url else ""


def validate_base_url(argument: str, url: Any, schemes: frozenset[str], *, connection_field: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise _fail(
            argument,
            f"is needed here: pass it to the operator or set '{connection_field}' "
            "in the TES connection's extra",
        )
    scheme = _scheme(url)
    if scheme not in schemes:
        raise _fail(argument, f"{url!r} must be a URL with scheme {' or '.join(sorted(schemes))}://")
    if not urlsplit(url).netloc and scheme != "file":
        raise _fail(argument, f"{url!r} names no bucket or host")
    return url if url.endswith("/") else url + "/"


def plan_inputs(inputs: Mapping[str, Any] | None) -> TaskPlan:
    """Sort inputs into pass-through TES inputs and local files/directories to stage."""
    plan = TaskPlan()
    if inputs is None:
        return plan
    if not isinstance(inputs, Mapping):
        raise _fail("inputs", "must be a mapping of container path -> source (local path, URL or TesInput)")
    for container_path, source in inputs.items():
        path = validate_container_path("inputs", container_path)
        if isinstance(source, TesInput | dict):
            plan.inputs.append(_explicit_input(path, source))
            continue
        if not isinstance(source, str | os.PathLike) or not str(source):
            raise _fail(
                "inputs", f"source for {path!r} must be a local path, a URL or a TesInput, got {source!r}"
            )
        text = os.fspath(source)
        scheme = _scheme(text)
        if scheme == "file":
            text = urlsplit(text).path
            scheme = ""
        if scheme in REMOTE_INPUT_SCHEMES:
            is_dir = text.endswith("/") or path.endswith("/")
            plan.inputs.append(
                TesInput(
                    path=path.rstrip("/") or "/",
                    url=text,
                    type=TesFileType.DIRECTORY if is_dir else TesFileType.FILE,
                )
            )
        elif scheme:
            raise _fail(
                "inputs",
                f"source {text!r} for {path!r} has unsupported scheme {scheme!r}: use a local path or one of "
                f"{', '.join(sorted(REMOTE_INPUT_SCHEMES))}",
            )
        else:
            if not os.path.isabs(text):
                raise _fail(
                    "inputs", f"local source {text!r} for {path!r} must be an absolute path on the worker"
                )
            if not os.path.exists(text):
                raise _fail("inputs", f"local source {text!r} for {path!r} does not exist on this worker")
            plan.local_inputs.append(LocalInput(path.rstrip("/") or "/", text, os.path.isdir(text)))
    return plan


def _explicit_input(path: str, source: TesInput | dict[str, Any]) -> TesInput:
    try:
        data = source.model_dump(exclude_none=True) if isinstance(source, TesInput) else dict(source)
        data.setdefault("path", path)
        item = TesInput.model_validate(data)
    except pydantic.ValidationError as err:
        raise _fail("inputs", f"input for {path!r} is invalid: {err.errors()[0]['msg']}") from None
    if item.path != path:
        raise _fail("inputs", f"the key {path!r} and the TesInput path {item.path!r} differ")
    return item


def plan_outputs(outputs: Mapping[str, Any] | Sequence[Any] | None) -> list[TesOutput]:
    if outputs is None:
        return []
    items: list[tuple[str | None, Any]]
    if isinstance(outputs, Mapping):
        items = list(outputs.items())
    elif isinstance(outputs, Sequence) and not isinstance(outputs, str):
        items = [(None, o) for o in outputs]
    else:
        raise _fail("outputs", "must be a mapping of container path -> URL, or a list of TesOutput")
    result: list[TesOutput] = []
    for container_path, target in items:
        if isinstance(target, TesOutput | dict):
            try:
                data = target.model_dump(exclude_none=True) if isinstance(target, TesOutput) else dict(target)
                if container_path is not None:
                    data.setdefault("path", container_path)
                result.append(TesOutput.model_validate(data))
            except pydantic.ValidationError as err:
                raise _fail(
                    "outputs", f"output {container_path or target!r} is invalid: {err.errors()[0]['msg']}"
                ) from None
            continue
        if container_path is None:
            raise _fail("outputs", f"a list of outputs must hold TesOutput objects, got {target!r}")
        path = validate_container_path("outputs", container_path)
        if not isinstance(target, str) or not target:
            raise _fail("outputs", f"target for {path!r} must be a URL string, got {target!r}")
        if _scheme(target) not in OUTPUT_SCHEMES:
            raise _fail(
                "outputs",
                f"target {target!r} for {path!r} must be a URL with scheme "
                f"{', '.join(sorted(OUTPUT_SCHEMES))}",
            )
        is_dir = path.endswith("/") or target.endswith("/")
        result.append(
            TesOutput(
                path=path.rstrip("/"),
                url=target.rstrip("/") if is_dir else target,
                type=TesFileType.DIRECTORY if is_dir else TesFileType.FILE,
            )
        )
    return result


def check_unique_paths(
    inputs: Sequence[TesInput], local: Sequence[LocalInput], outputs: Sequence[TesOutput]
) -> None:
    seen: dict[str, str] = {}
    for kind, path in [
        *(("inputs", i.path) for i in inputs),
        *(("inputs", i.container_path) for i in local),
        *(("outputs", o.path) for o in outputs),
    ]:
        if path in seen:
            raise _fail(kind, f"container path {path!r} appears more than once (also in {seen[path]!r})")
        seen[path] = kind


def validate_number(argument: str, value: Any, *, minimum: float = 0.0, strict: bool = True) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(argument, f"must be a number, got {value!r}")
    if not math.isfinite(value) or (value <= minimum if strict else value < minimum):
        raise _fail(argument, f"must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def total_disk_gb(disk_gb: Any) -> float | None:
    """TES has one disk size: requested disks are summed, plus 1 GiB for ``/`` when it is not given.

    A plain number is the size of the whole task disk, as in TES itself.
    """
    if disk_gb is None:
        return None
    if isinstance(disk_gb, Mapping):
        if not disk_gb:
            raise _fail("disk_gb", "an empty mapping requests no disk; pass None or a size")
        total = 0.0
        for mount, size in disk_gb.items():
            validate_container_path("disk_gb", mount) if mount != "/" else None
            total += validate_number(f"disk_gb[{mount!r}]", size) or 0.0
        if "/" not in disk_gb:
            total += GIB_IN_GB
        return round(total, 3)
    return validate_number("disk_gb", disk_gb)


def disk_volumes(disk_gb: Any) -> list[str]:
    """Every non-root mount point of a per-mount ``disk_gb`` becomes a TES volume."""
    if isinstance(disk_gb, Mapping):
        return sorted(m for m in disk_gb if m != "/")
    return []


def build_resources(
    *,
    cpu_cores: Any,
    ram_gb: Any,
    disk_gb: Any,
    preemptible: bool,
    zones: Sequence[str] | None,
    backend_parameters: Mapping[str, Any] | None,
    backend_parameters_strict: bool | None,
) -> TesResources | None:
    cpu = validate_number("cpu_cores", cpu_cores)
    ram = validate_number("ram_gb", ram_gb)
    disk = total_disk_gb(disk_gb)
    if zones is not None and (isinstance(zones, str) or not all(isinstance(z, str) and z for z in zones)):
        raise _fail("zones", f"must be a list of zone names, got {zones!r}")
    if backend_parameters is not None and not isinstance(backend_parameters, Mapping):
        raise _fail("backend_parameters", f"must be a mapping of str -> str, got {backend_parameters!r}")
    resources = TesResources(
        cpu_cores=math.ceil(cpu) if cpu is not None else None,
        ram_gb=ram,
        disk_gb=disk,
        preemptible=True if preemptible else None,
        zones=list(zones) if zones else None,
        backend_parameters={str(k): str(v) for k, v in backend_parameters.items()}
        if backend_parameters
        else None,
        backend_parameters_strict=backend_parameters_strict,
    )
    return resources if resources.to_request() else None


def output_directory(outputs_url: str, name: str, when: datetime) -> str:
    """``{outputs_url}/{name}-{UTC %Y%m%d-%H%M%S}/``, fixed at the first submission."""
    return f"{outputs_url.rstrip('/')}/{name}-{when.strftime('%Y%m%d-%H%M%S')}/"


def standard_outputs(out_dir: str) -> list[TesOutput]:
    return [
        TesOutput(path=GUEST_WORK_DIR, url=out_dir + "work", type=TesFileType.DIRECTORY),
        TesOutput(path=GUEST_STDOUT_PATH, url=out_dir + "stdout", type=TesFileType.FILE),
        TesOutput(path=GUEST_STDERR_PATH, url=out_dir + "stderr", type=TesFileType.FILE),
        TesOutput(path=GUEST_EXIT_CODE_PATH, url=out_dir + "exit_code", type=TesFileType.FILE),
    ]


def exit_code_from_file(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def exit_code_from_log(stdout: str | None) -> int | None:
    """The exit code the wrapper printed, if the server kept the executor's stdout."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(EXIT_CODE_MARKER):
            return exit_code_from_file(line[len(EXIT_CODE_MARKER) :])
    return None


def script_fits_inline(script: str) -> bool:
    return len(script.encode()) <= MAX_INLINE_CONTENT_BYTES


def command_executor(
    *,
    image: str,
    command: str | Sequence[str],
    shell: str,
    workdir: str | None,
    env: Mapping[str, Any] | None,
) -> TesExecutor:
    """The one executor the operator builds: a script run by ``shell``, or an argv as is,
    inside the exit-code wrapper (``shell -c WRAPPER airflow-tes ARGV...``)."""
    inner = [shell, GUEST_COMMAND_PATH] if isinstance(command, str) else list(command)
    argv = [shell, "-c", _WRAPPER, "airflow-tes", *inner]
    if env is not None and not isinstance(env, Mapping):
        raise _fail("env", f"must be a mapping of variable name -> value, got {env!r}")
    for key in env or {}:
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise _fail("env", f"variable name {key!r} is not a valid environment variable name")
    return TesExecutor(
        image=image,
        command=argv,
        workdir=workdir or GUEST_WORK_DIR,
        env={k: str(v) for k, v in env.items()} if env else None,
        ignore_error=True,
    )


def validate_command(command: Any) -> str | list[str]:
    if isinstance(command, str):
        if not command.strip():
            raise _fail("command", "is empty; give a shell script (str) or an argv (list of str)")
        return command
    if isinstance(command, Sequence) and command and all(isinstance(a, str) for a in command):
        if not command[0]:
            raise _fail("command", "argv[0] is empty; name the program to run")
        return list(command)
    raise _fail("command", f"must be a script (str) or a non-empty argv (list of str), got {command!r}")

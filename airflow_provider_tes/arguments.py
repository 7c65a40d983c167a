"""Checks of the operator's arguments, each failing with a message that names the argument.

Every check here runs before anything is uploaded or sent: on the arguments that need no
rendering when the DAG is parsed, on the rest when the task starts. What passes comes out
as TES models (inputs, outputs, resources), so nothing downstream re-checks a value.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pydantic

from airflow_provider_tes._local_inputs import check_local_input
from airflow_provider_tes.container import (
    GUEST_TASK_DIR,
    GUEST_WORK_DIR,
    RESERVED_PATHS,
    reserved_by_operator,
)
from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.models import TesFileType, TesInput, TesOutput

#: URL schemes a TES server may fetch inputs from; anything else must be a local path.
REMOTE_INPUT_SCHEMES = frozenset({"s3", "gs", "http", "https", "ftp", "drs", "az", "abfs"})
#: URL schemes TES servers write outputs to (http(s) uploads are not part of TES practice).
OUTPUT_SCHEMES = frozenset({"s3", "gs", "ftp", "az", "abfs", "file"})
#: Where ``inputs_url`` may point: the object stores every TES server can fetch from.
STAGING_SCHEMES = frozenset({"s3"})

#: Arguments whose container paths are mounted or uploaded: none may touch the operator's files.
MOUNT_ARGUMENTS = frozenset({"inputs", "outputs", "volumes", "disk_gb"})

GIB_IN_GB = 1024**3 / 1000**3
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def argument_error(argument: str, problem: str) -> TesConfigurationError:
    """The one shape of a bad-argument error: it names the argument, then what is expected."""
    return TesConfigurationError(f"TesTaskOperator argument {argument!r}: {problem}")


@dataclass(frozen=True)
class LocalInput:
    """An input that lives on the worker and has to be staged before the task is sent."""

    container_path: str
    local_path: str
    is_directory: bool


def validate_image(value: Any) -> str:
    """Accept registry references; reject local image files and unknown schemes like sprocket."""
    if not isinstance(value, str) or not value.strip():
        raise argument_error("image", "must be a non-empty container image reference, e.g. 'ubuntu:24.04'")
    image: str = value.strip()
    lowered = image.lower()
    for prefix in ("docker://", "library://", "oras://"):
        if lowered.startswith(prefix):
            rest = image[len(prefix) :]
            if not rest:
                raise argument_error("image", f"{image!r} names no image after {prefix!r}")
            return rest if prefix == "docker://" else image
    if lowered.endswith(".sif") or image.startswith(("/", "./", "../", "file:")):
        raise argument_error(
            "image",
            f"{image!r} is a local image file, which a TES server cannot read: "
            "push it to a registry and use a registry image such as 'ghcr.io/org/tool:1.0'",
        )
    if "://" in image:
        raise argument_error(
            "image",
            f"{image!r} has an unsupported scheme: use a registry image reference "
            "('repo/name:tag', 'docker://...', 'library://...' or 'oras://...')",
        )
    if any(ch.isspace() for ch in image):
        raise argument_error("image", f"{image!r} contains whitespace; it must be one image reference")
    return image


def validate_container_path(argument: str, path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise argument_error(argument, f"container path {path!r} must be a non-empty string")
    if not path.startswith("/"):
        raise argument_error(
            argument, f"container path {path!r} must be absolute, e.g. '/data/{path.lstrip('./')}'"
        )
    if posixpath.normpath(path) != path.rstrip("/") and path != "/":
        raise argument_error(argument, f"container path {path!r} must be normalised (no '.', '..' or '//')")
    if argument in MOUNT_ARGUMENTS:
        check_not_reserved(argument, path)
    elif path.rstrip("/") in RESERVED_PATHS:
        raise argument_error(
            argument, f"container path {path!r} is used by the operator itself; pick another path"
        )
    return path


def check_not_reserved(argument: str, path: str) -> None:
    """Refuse a mount or upload that would touch the operator's files (see ``reserved_by_operator``)."""
    if reserved_by_operator(path):
        raise argument_error(
            argument,
            f"container path {path!r} is used by the operator itself: {GUEST_TASK_DIR} holds the command "
            f"script, its stdout, stderr and exit code and the work directory, so nothing may be placed "
            f"at, above or inside it; use another path such as '/data/...', or a path inside "
            f"'{GUEST_WORK_DIR}/' for files the command reads or writes in its working directory",
        )


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower() if "://" in url else ""


def validate_base_url(argument: str, url: Any, schemes: frozenset[str], *, connection_field: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise argument_error(
            argument,
            f"is needed here: pass it to the operator or set '{connection_field}' "
            "in the TES connection's extra",
        )
    scheme = _scheme(url)
    if scheme not in schemes:
        raise argument_error(argument, f"{url!r} must be a URL with scheme {' or '.join(sorted(schemes))}://")
    if not urlsplit(url).netloc and scheme != "file":
        raise argument_error(argument, f"{url!r} names no bucket or host")
    return url if url.endswith("/") else url + "/"


def plan_inputs(
    inputs: Mapping[str, Any] | None, *, allowed_local_roots: Sequence[str] | None = None
) -> tuple[list[TesInput], list[LocalInput]]:
    """Sort inputs into pass-through TES inputs and local files/directories to stage.

    A local path is checked here, before anything is uploaded: system files are never staged,
    and with ``allowed_local_roots`` nothing outside those directories is.
    """
    remote: list[TesInput] = []
    local: list[LocalInput] = []
    if inputs is None:
        return remote, local
    if not isinstance(inputs, Mapping):
        raise argument_error(
            "inputs", "must be a mapping of container path -> source (local path, URL or TesInput)"
        )
    for container_path, source in inputs.items():
        path = validate_container_path("inputs", container_path)
        if isinstance(source, TesInput | dict):
            remote.append(_explicit_input(path, source))
            continue
        if not isinstance(source, str | os.PathLike) or not str(source):
            raise argument_error(
                "inputs", f"source for {path!r} must be a local path, a URL or a TesInput, got {source!r}"
            )
        text = os.fspath(source)
        scheme = _scheme(text)
        if scheme == "file":
            text = unquote(urlsplit(text).path)
            scheme = ""
        if scheme in REMOTE_INPUT_SCHEMES:
            is_dir = text.endswith("/") or path.endswith("/")
            remote.append(
                TesInput(
                    path=path.rstrip("/") or "/",
                    url=text,
                    type=TesFileType.DIRECTORY if is_dir else TesFileType.FILE,
                )
            )
        elif scheme:
            raise argument_error(
                "inputs",
                f"source {text!r} for {path!r} has unsupported scheme {scheme!r}: use a local path or one of "
                f"{', '.join(sorted(REMOTE_INPUT_SCHEMES))}",
            )
        else:
            if not os.path.isabs(text):
                raise argument_error(
                    "inputs", f"local source {text!r} for {path!r} must be an absolute path on the worker"
                )
            if not os.path.exists(text):
                raise argument_error(
                    "inputs", f"local source {text!r} for {path!r} does not exist on this worker"
                )
            check_local_input(text, allowed_roots=allowed_local_roots)
            local.append(LocalInput(path.rstrip("/") or "/", text, os.path.isdir(text)))
    return remote, local


def _explicit_input(path: str, source: TesInput | dict[str, Any]) -> TesInput:
    try:
        data = source.model_dump(exclude_none=True) if isinstance(source, TesInput) else dict(source)
        data.setdefault("path", path)
        item = TesInput.model_validate(data)
    except pydantic.ValidationError as err:
        raise argument_error("inputs", f"input for {path!r} is invalid: {err.errors()[0]['msg']}") from None
    if item.path != path:
        raise argument_error("inputs", f"the key {path!r} and the TesInput path {item.path!r} differ")
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
        raise argument_error("outputs", "must be a mapping of container path -> URL, or a list of TesOutput")
    result: list[TesOutput] = []
    for container_path, target in items:
        if isinstance(target, TesOutput | dict):
            try:
                data = target.model_dump(exclude_none=True) if isinstance(target, TesOutput) else dict(target)
                if container_path is not None:
                    data.setdefault("path", container_path)
                result.append(TesOutput.model_validate(data))
                check_not_reserved("outputs", result[-1].path)
            except pydantic.ValidationError as err:
                raise argument_error(
                    "outputs", f"output {container_path or target!r} is invalid: {err.errors()[0]['msg']}"
                ) from None
            continue
        if container_path is None:
            raise argument_error("outputs", f"a list of outputs must hold TesOutput objects, got {target!r}")
        if any(c in str(container_path) for c in "*?["):
            raise argument_error(
                "outputs",
                f"{container_path!r} has wildcards, which the mapping form cannot express: pass outputs as a "
                "list with 'path_prefix', e.g. [{'path': '/mnt/task/work/*.txt', "
                "'path_prefix': '/mnt/task/work/', 'url': 's3://bucket/out/'}]",
            )
        path = validate_container_path("outputs", container_path)
        if not isinstance(target, str) or not target:
            raise argument_error("outputs", f"target for {path!r} must be a URL string, got {target!r}")
        if _scheme(target) not in OUTPUT_SCHEMES:
            raise argument_error(
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
            raise argument_error(
                kind, f"container path {path!r} appears more than once (also in {seen[path]!r})"
            )
        seen[path] = kind


def validate_number(argument: str, value: Any, *, minimum: float = 0.0, strict: bool = True) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise argument_error(argument, f"must be a number, got {value!r}")
    if not math.isfinite(value) or (value <= minimum if strict else value < minimum):
        raise argument_error(argument, f"must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def total_disk_gb(disk_gb: Any) -> float | None:
    """TES has one disk size: requested disks are summed, plus 1 GiB for ``/`` when it is not given.

    A plain number is the size of the whole task disk, as in TES itself.
    """
    if disk_gb is None:
        return None
    if isinstance(disk_gb, Mapping):
        if not disk_gb:
            raise argument_error("disk_gb", "an empty mapping requests no disk; pass None or a size")
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


def validate_command(command: Any) -> str | list[str]:
    if isinstance(command, str):
        if not command.strip():
            raise argument_error("command", "is empty; give a shell script (str) or an argv (list of str)")
        return command
    if isinstance(command, Sequence) and command and all(isinstance(a, str) for a in command):
        if not command[0]:
            raise argument_error("command", "argv[0] is empty; name the program to run")
        return list(command)
    raise argument_error(
        "command", f"must be a script (str) or a non-empty argv (list of str), got {command!r}"
    )


def validate_env(env: Any) -> dict[str, str] | None:
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise argument_error("env", f"must be a mapping of variable name -> value, got {env!r}")
    for key in env:
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise argument_error("env", f"variable name {key!r} is not a valid environment variable name")
    return {k: str(v) for k, v in env.items()} or None


def validate_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(isinstance(v, str) for v in tags.values()):
        raise argument_error("tags", f"must be a mapping of str -> str, got {tags!r}")
    return {str(k): v for k, v in tags.items()}


def validate_preemptible(preemptible: Any) -> int:
    if isinstance(preemptible, bool) or not isinstance(preemptible, int) or preemptible < 0:
        raise argument_error(
            "preemptible", f"must be an integer >= 0 (resubmissions allowed), got {preemptible!r}"
        )
    return preemptible


def validate_shell(shell: Any, command: Any) -> str | None:
    """``None`` runs an argv without a shell (and without the exit-code wrapper)."""
    if shell is None:
        if isinstance(command, str):
            raise argument_error(
                "shell", "None runs an argv (list) without a shell; a script (str) needs a shell to run it"
            )
        return None
    if not isinstance(shell, str) or not shell.startswith("/"):
        raise argument_error(
            "shell", f"must be an absolute path to a POSIX shell in the image, or None, got {shell!r}"
        )
    return shell

"""The layout inside every task's container, following the sprocket WDL engine's TES backend.

Every task looks the same to users and to the code that reads its results::

    /mnt/task/command    the script (inline content, or staged when large)
    /mnt/task/work       working directory, uploaded as a DIRECTORY output
    /mnt/task/stdout     the command's stdout, uploaded as a FILE output
    /mnt/task/stderr     the command's stderr, uploaded as a FILE output
    /mnt/task/exit_code  the command's exit code, written by the wrapper below

This module is the one home of those paths, of the wrapper that fills them, of which paths
users may therefore not mount or upload (:func:`reserved_by_operator`), and of reading the
exit code back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from airflow_provider_tes.identity import OutputFolder
from airflow_provider_tes.models import MAX_INLINE_CONTENT_BYTES, TesExecutor, TesFileType, TesOutput

GUEST_TASK_DIR = "/mnt/task"
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

# By default the command runs under a small POSIX-shell wrapper that keeps its output in
# the task's files and always exits 0. TES asks servers to upload outputs after a failed
# executor when `ignore_error` is set, but not all do (Funnel v0.12 uploads only when every
# executor succeeded, worker/worker.go), so the wrapper makes stdout, stderr and the work
# directory arrive on every server. The command's real exit code travels twice: as the last
# line of the executor's stdout (servers keep it in the task log, which TES makes optional)
# and as the exit_code output file; the result reads one of them or fails, never guesses.
# The command's output also goes to the executor's own stdout/stderr while it runs (through
# two fifos and `tee`), so TES dashboards, the server's logs and the live logs in Airflow see
# it; an image without mktemp/mkfifo/tee gets it copied there once the command has ended.
_WRAPPER = (
    'if d=$(mktemp -d 2>/dev/null) && mkfifo "$d/o" "$d/e" 2>/dev/null; then '
    f'tee {GUEST_STDOUT_PATH} <"$d/o" & tee {GUEST_STDERR_PATH} <"$d/e" >&2 & '
    '"$@" >"$d/o" 2>"$d/e"; rc=$?; wait; rm -rf "$d"; '
    f'else "$@" >{GUEST_STDOUT_PATH} 2>{GUEST_STDERR_PATH}; rc=$?; '
    f"cat {GUEST_STDOUT_PATH}; cat {GUEST_STDERR_PATH} >&2; fi; "
    f'echo "$rc" >{GUEST_EXIT_CODE_PATH}; '
    f"printf '\\n{EXIT_CODE_MARKER}%s\\n' \"$rc\"; exit 0"
)


def reserved_by_operator(path: str) -> bool:
    """Whether an input, output or volume at ``path`` would touch what the operator places.

    :data:`GUEST_TASK_DIR` belongs to the operator: a mount at it or above it (``/``, ``/mnt``)
    hides the command script and the work directory, one inside it replaces the script or an
    output, and an output there uploads the script (and any secret in it). Only paths strictly
    inside the work directory are the user's: the command writes its files there, and inputs
    placed there are found by relative path. A glob (``*``, ``?``, ``[``) counts as every path
    it may match, i.e. anything below its fixed directory part.
    """
    glob = next((i for i, char in enumerate(path) if char in "*?["), None)
    below_only = glob is not None  # a glob matches only paths below its fixed directory
    if glob is not None:
        path = path[:glob].rsplit("/", 1)[0]
    path = path.rstrip("/") or "/"
    inside_work = path.startswith(GUEST_WORK_DIR + "/") or (below_only and path == GUEST_WORK_DIR)
    if inside_work:
        return False
    if path == "/" or path == GUEST_TASK_DIR or GUEST_TASK_DIR.startswith(path + "/"):
        return True
    return path.startswith(GUEST_TASK_DIR + "/")


def script_fits_inline(script: str) -> bool:
    return len(script.encode()) <= MAX_INLINE_CONTENT_BYTES


def standard_outputs(folder: OutputFolder, *, wrapped: bool = True) -> list[TesOutput]:
    """The work directory, stdout and stderr; and the wrapper's exit_code file when it runs."""
    outputs = [
        TesOutput(path=GUEST_WORK_DIR, url=folder.work, type=TesFileType.DIRECTORY),
        TesOutput(path=GUEST_STDOUT_PATH, url=folder.stdout, type=TesFileType.FILE),
        TesOutput(path=GUEST_STDERR_PATH, url=folder.stderr, type=TesFileType.FILE),
    ]
    if wrapped:
        outputs.append(TesOutput(path=GUEST_EXIT_CODE_PATH, url=folder.exit_code, type=TesFileType.FILE))
    return outputs


def command_executor(
    *,
    image: str,
    command: str | Sequence[str],
    shell: str | None,
    workdir: str | None,
    env: Mapping[str, str] | None,
) -> TesExecutor:
    """The one executor the operator builds.

    With a ``shell``: a script run by it, or an argv, inside the exit-code wrapper
    (``shell -c WRAPPER airflow-tes ARGV...``). Without one (``shell=None``, an argv only): the
    argv as is, its output sent to the standard files by the server (the executor's
    ``stdout``/``stderr``); its exit code then comes from the server's executor log alone.
    """
    if shell is None:
        assert not isinstance(command, str), "a script needs a shell"
        return TesExecutor(
            image=image,
            command=list(command),
            workdir=workdir or GUEST_WORK_DIR,
            stdout=GUEST_STDOUT_PATH,
            stderr=GUEST_STDERR_PATH,
            env=dict(env) if env else None,
            ignore_error=True,
        )
    inner = [shell, GUEST_COMMAND_PATH] if isinstance(command, str) else list(command)
    return TesExecutor(
        image=image,
        command=[shell, "-c", _WRAPPER, "airflow-tes", *inner],
        workdir=workdir or GUEST_WORK_DIR,
        env=dict(env) if env else None,
        ignore_error=True,
    )


def runs_in_wrapper(executor: TesExecutor) -> bool:
    """Whether a (server's copy of an) executor runs its command in this provider's wrapper,
    whose own exit status says nothing about the command's."""
    command = executor.command
    return len(command) >= 4 and command[1] == "-c" and EXIT_CODE_MARKER in command[2]


def exit_code_from_file(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def exit_code_from_log(stdout: str | None) -> int | None:
    """The exit code the wrapper printed, if the server kept the executor's stdout."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(EXIT_CODE_MARKER):
            return exit_code_from_file(line[len(EXIT_CODE_MARKER) :])
    return None

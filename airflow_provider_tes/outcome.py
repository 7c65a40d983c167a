"""What a finished TES task says about its command, reported only when it is known.

A TES server's answer does not always hold the command's exit code: executor logs are
optional, servers truncate or omit their stdout, and the wrapper (see
:mod:`~airflow_provider_tes.container`) always exits 0 itself. So every exit code here comes
from a named source that cannot silently default, in this order:

* wrapped command: the wrapper's last stdout line in the executor log, else the ``exit_code``
  output file read through the object store;
* argv run without a shell, and ``executors=`` tasks: the executor log's ``exit_code``.

When none can be read, the task fails with "exit code unknown" and what was tried: a result
is never a success by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from airflow_provider_tes.container import EXIT_CODE_MARKER, exit_code_from_file, exit_code_from_log
from airflow_provider_tes.exceptions import TesError, TesTaskFailedError
from airflow_provider_tes.identity import OutputFolder
from airflow_provider_tes.models import TesExecutor, TesExecutorLog, TesState, TesTask
from airflow_provider_tes.redaction import system_logs as redacted_system_logs

#: How much of an executor's stderr/stdout goes into the task log and error messages.
TAIL_BYTES = 4096
#: Exit codes of a shell that could not run what it was given (POSIX: 126 not executable, 127 not found).
_SHELL_FAILURES = frozenset({126, 127})

#: Reads the end of an object by URL; raises :class:`TesError` when it cannot.
TailReader = Callable[[str], str]


@dataclass(frozen=True)
class Outcome:
    """A finished task's command: its exit code (``None`` only where the state alone decides,
    for ``executors=`` tasks whose server kept no logs) and the tails shown in the task log."""

    exit_code: int | None
    stdout_tail: str | None = None
    stderr_tail: str | None = None
    system_logs: str = ""
    notes: list[str] = field(default_factory=list)


def read_outcome(
    task: TesTask,
    state: TesState,
    *,
    wrapped: bool,
    executors: Sequence[TesExecutor] | None,
    folder: OutputFolder | None,
    read_tail: TailReader,
    shell: str | None = None,
    known_env: Sequence[str] = (),
) -> Outcome:
    """Judge a task that ended ``state`` (not PREEMPTED); raises :class:`TesTaskFailedError`
    unless the command is known to have succeeded."""
    log = task.last_log
    executor_logs = list(log.logs) if log else []
    system_logs = "\n".join(redacted_system_logs(task, known_env))
    where = f"TES task {task.id} ({task.name or ''})"
    if state is TesState.SYSTEM_ERROR:
        raise _failed(
            f"{where} ended SYSTEM_ERROR: {system_logs or 'the server gave no system logs'}", task, state
        )
    if state not in (TesState.COMPLETE, TesState.EXECUTOR_ERROR):
        raise _failed(f"{where} ended {state.value}", task, state)
    if executors:
        return _judge_executors(task, state, executors, executor_logs, system_logs, where)
    logged = executor_logs[-1] if executor_logs else None
    stdout_tail = _tail(folder.stdout, read_tail) if folder else None
    stderr_tail = _tail(folder.stderr, read_tail) if folder else None
    if stdout_tail is None and logged and logged.stdout:
        stdout_tail = "\n".join(
            line for line in logged.stdout.splitlines() if not line.startswith(EXIT_CODE_MARKER)
        )
    if stderr_tail is None and logged:
        stderr_tail = logged.stderr
    tried: list[str] = []
    exit_code = (
        _wrapped_exit_code(logged, folder, read_tail, tried) if wrapped else _logged_exit_code(logged, tried)
    )
    outcome = Outcome(exit_code, stdout_tail, stderr_tail, system_logs)
    if exit_code is None:
        hint = ""
        if wrapped and state is TesState.EXECUTOR_ERROR:
            hint = (
                f"; the executor itself failed, which happens when the image has no POSIX shell at {shell}: "
                "use an image with one, or pass shell=None with a list command to run it without a shell"
            )
        raise _failed(
            f"{where} ended {state.value}, but its exit code is unknown: tried {'; '.join(tried)}{hint}",
            task,
            state,
        )
    if state is TesState.COMPLETE and exit_code == 0:
        return outcome
    tail = (stderr_tail or "")[-TAIL_BYTES:].strip()
    detail = f"; stderr (tail):\n{tail}" if tail else "; stderr was empty"
    if exit_code == 0:
        raise _failed(f"{where} ended {state.value} although its command exited 0{detail}", task, state)
    if wrapped and exit_code in _SHELL_FAILURES and not tail:
        detail += f" (the command, or the shell {shell}, was not found or not executable in the image)"
    raise _failed(
        f"{where} failed in its executor with exit code {exit_code}{detail}", task, TesState.EXECUTOR_ERROR
    )


def _wrapped_exit_code(
    logged: TesExecutorLog | None, folder: OutputFolder | None, read_tail: TailReader, tried: list[str]
) -> int | None:
    code = exit_code_from_log(logged.stdout if logged else None)
    if code is not None:
        return code
    if logged is None:
        tried.append("the executor log (the server sent none)")
    elif not logged.stdout:
        tried.append("the executor log's stdout (the server kept none)")
    else:
        tried.append("the executor log's stdout (no exit-code line: truncated?)")
    if folder is None:
        tried.append("the exit_code output (the task's output folder is not known)")
        return None
    try:
        text = read_tail(folder.exit_code)
    except TesError as err:
        tried.append(f"the exit_code output {folder.exit_code} ({err})")
        return None
    code = exit_code_from_file(text)
    if code is None:
        tried.append(f"the exit_code output {folder.exit_code} (it holds {text[:40]!r}, not a number)")
    return code


def _logged_exit_code(logged: TesExecutorLog | None, tried: list[str]) -> int | None:
    if logged is None:
        tried.append("the executor log (the server sent none)")
        return None
    if logged.exit_code is None:
        tried.append("the executor log's exit_code (missing)")
    return logged.exit_code


def _judge_executors(
    task: TesTask,
    state: TesState,
    executors: Sequence[TesExecutor],
    logs: Sequence[TesExecutorLog],
    system_logs: str,
    where: str,
) -> Outcome:
    """``executors=`` tasks: the TES state decides, as the spec defines it (an executor without
    ``ignore_error`` that fails ends the task EXECUTOR_ERROR); the logs name which one."""
    failed = [
        f"executor {i} ({executors[i].image}) exited {entry.exit_code}"
        for i, entry in enumerate(logs[: len(executors)])
        if entry.exit_code not in (0, None) and not executors[i].ignore_error
    ]
    last = logs[-1].exit_code if logs else None
    if state is TesState.COMPLETE and not failed:
        return Outcome(
            last, logs[-1].stdout if logs else None, logs[-1].stderr if logs else None, system_logs
        )
    if failed:
        reason = "; ".join(failed)
    elif logs:
        reason = "no executor without ignore_error reported a failure"
    else:
        reason = "the server sent no executor logs to say which executor"
    raise _failed(f"{where} ended {state.value}: {reason}", task, TesState.EXECUTOR_ERROR)


def _tail(url: str, read_tail: TailReader) -> str | None:
    try:
        return read_tail(url)
    except TesError:
        return None


def _failed(message: str, task: TesTask, state: TesState) -> TesTaskFailedError:
    return TesTaskFailedError(message, task_id=task.id, state=state.value)

"""Judging a finished task: the exit code comes from a named source or the task fails saying so.

These cases are answers a real server can give but Funnel does not (no logs, truncated logs,
outputs the worker cannot read); the same rules run against Funnel in test_outcomes_funnel.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.exceptions import TesConfigurationError, TesError, TesTaskFailedError
from airflow_provider_tes.identity import OutputFolder
from airflow_provider_tes.models import TesExecutor, TesState, TesTask
from airflow_provider_tes.outcome import read_outcome

FOLDER = OutputFolder("s3://bucket/out/t-1/")


def task(*logs: dict[str, Any], system_logs: list[str] | None = None, with_log: bool = True) -> TesTask:
    body: dict[str, Any] = {"id": "t1", "name": "t"}
    if with_log:
        body["logs"] = [{"logs": list(logs), "system_logs": system_logs}]
    return TesTask.from_response(body)


def objects(**content: str) -> Any:
    """A tail reader over a few objects of FOLDER; any other URL cannot be read."""

    def read(url: str) -> str:
        name = url.removeprefix(FOLDER.url)
        if name in content:
            return content[name]
        raise TesError(f"cannot read {url}")

    return read


def judge(t: TesTask, state: str = "COMPLETE", **kwargs: Any) -> Any:
    kwargs.setdefault("wrapped", True)
    kwargs.setdefault("executors", None)
    kwargs.setdefault("folder", FOLDER)
    kwargs.setdefault("read_tail", objects())
    return read_outcome(t, TesState(state), shell="/bin/sh", **kwargs)


def test_marker_in_the_log_is_the_exit_code() -> None:
    outcome = judge(task({"exit_code": 0, "stdout": f"hello\n\n{EXIT_CODE_MARKER}0\n"}))
    assert outcome.exit_code == 0
    assert outcome.stdout_tail == "hello\n"  # from the log, without the marker line


def test_marker_with_a_failing_code_fails_with_it() -> None:
    with pytest.raises(TesTaskFailedError, match="exit code 3"):
        judge(task({"exit_code": 0, "stdout": f"{EXIT_CODE_MARKER}3"}))


def test_exit_code_file_when_the_log_has_no_stdout() -> None:
    outcome = judge(task({"exit_code": 0}), read_tail=objects(exit_code="0\n", stdout="hi\n"))
    assert outcome.exit_code == 0
    assert outcome.stdout_tail == "hi\n"
    with pytest.raises(TesTaskFailedError, match="exit code 7"):
        judge(task({"exit_code": 0}), read_tail=objects(exit_code="7\n"))


@pytest.mark.parametrize(
    ("t", "reader", "said"),
    [
        (task(with_log=False), objects(), "the server sent none"),
        (task({"exit_code": 0}), objects(), "cannot read s3://bucket/out/t-1/exit_code"),
        (task({"exit_code": 0, "stdout": "cut off"}), objects(), "no exit-code line"),
        (task({"exit_code": 0}), objects(exit_code="garbage"), "not a number"),
    ],
)
def test_no_readable_exit_code_fails_closed(t: TesTask, reader: Any, said: str) -> None:
    with pytest.raises(TesTaskFailedError, match="exit code is unknown") as info:
        judge(t, read_tail=reader)
    assert said in str(info.value)


def test_unreadable_scheme_fails_closed() -> None:
    def gs(url: str) -> str:
        raise TesConfigurationError("no object store for gs://")

    with pytest.raises(TesTaskFailedError, match=r"exit code is unknown.*no object store for gs://"):
        judge(task({"exit_code": 0}), folder=OutputFolder("gs://b/out/t-1/"), read_tail=gs)


def test_wrapper_that_could_not_start_names_the_shell() -> None:
    with pytest.raises(TesTaskFailedError, match=r"no POSIX shell at /bin/sh.*shell=None"):
        judge(task({"exit_code": 127}), state="EXECUTOR_ERROR")


def test_unwrapped_argv_uses_the_executor_log() -> None:
    assert judge(task({"exit_code": 0}), wrapped=False).exit_code == 0
    with pytest.raises(TesTaskFailedError, match="exit code 3"):
        judge(task({"exit_code": 3}), wrapped=False)
    with pytest.raises(TesTaskFailedError, match="exit code is unknown"):
        judge(task(with_log=False), wrapped=False)


def test_system_error_and_canceled_fail_with_their_state() -> None:
    with pytest.raises(TesTaskFailedError, match="SYSTEM_ERROR: disk full"):
        judge(task(system_logs=["disk full"]), state="SYSTEM_ERROR")
    with pytest.raises(TesTaskFailedError, match="ended CANCELED"):
        judge(task(), state="CANCELED")


EXECUTORS = [
    TesExecutor(image="prep:1", command=["prep"]),
    TesExecutor(image="lint:1", command=["lint"], ignore_error=True),
    TesExecutor(image="main:1", command=["main"]),
]


def test_multi_executor_fails_naming_the_executor_that_failed() -> None:
    logs = [{"exit_code": 2}, {"exit_code": 0}, {"exit_code": 0}]
    with pytest.raises(TesTaskFailedError, match=r"executor 0 \(prep:1\) exited 2"):
        judge(task(*logs), state="EXECUTOR_ERROR", executors=EXECUTORS)
    # a server that says COMPLETE although a non-ignored executor failed is not believed
    with pytest.raises(TesTaskFailedError, match=r"executor 0 \(prep:1\) exited 2"):
        judge(task(*logs), executors=EXECUTORS)


def test_multi_executor_ignored_failure_is_fine() -> None:
    outcome = judge(task({"exit_code": 0}, {"exit_code": 1}, {"exit_code": 0}), executors=EXECUTORS)
    assert outcome.exit_code == 0


def test_multi_executor_without_logs_is_decided_by_the_state() -> None:
    assert judge(task(with_log=False), executors=EXECUTORS).exit_code is None
    with pytest.raises(TesTaskFailedError, match="no executor logs"):
        judge(task(with_log=False), state="EXECUTOR_ERROR", executors=EXECUTORS)


def test_system_logs_never_show_env_values() -> None:
    """Funnel quotes the container command, env included, in the system logs."""
    secret = "sk-live-" + "0123456789abcdef" * 2
    t = TesTask.from_response(
        {
            "id": "t1",
            "executors": [{"image": "a", "command": ["b"], "env": {"API_KEY": secret}}],
            "logs": [
                {"logs": [], "system_logs": [f"Running command: docker run --env-enc API_KEY={secret} a b"]}
            ],
        }
    )
    with pytest.raises(TesTaskFailedError) as info:
        judge(t, state="SYSTEM_ERROR")
    assert secret not in str(info.value)
    assert "API_KEY=***" in str(info.value)
    # a value the caller sent, on a server whose FULL view leaves env out
    bare = TesTask.from_response({"id": "t1", "logs": [{"system_logs": [f"env {secret}"]}]})
    with pytest.raises(TesTaskFailedError) as info:
        judge(bare, state="SYSTEM_ERROR", known_env=[secret])
    assert secret not in str(info.value)

"""The live-log follower: each line of a running task's executor log shown once, bounded per poll."""

from __future__ import annotations

from typing import Any

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.models import TesTask
from airflow_provider_tes.triggers.progress import LogFollower


def task(
    stdout: str | None = None, stderr: str | None = None, system_logs: list[str] | None = None
) -> TesTask:
    log: dict[str, Any] = {"logs": [{"stdout": stdout, "stderr": stderr, "exit_code": 0}]}
    if system_logs:
        log["system_logs"] = system_logs
    return TesTask.from_response({"id": "t", "logs": [log]})


def test_growing_log_shows_each_whole_line_once() -> None:
    follower = LogFollower()
    assert follower.update(task("1\n2\n3")) == ["stdout | 1", "stdout | 2"]  # "3" is unfinished
    assert follower.update(task("1\n2\n3\n4\n")) == ["stdout | 3", "stdout | 4"]
    assert follower.update(task("1\n2\n3\n4\n")) == []
    assert follower.update(task(f"1\n2\n3\n4\n5\n\n{EXIT_CODE_MARKER}0\n"), final=True) == ["stdout | 5"]
    assert follower.lines_shown == 5


def test_a_window_of_the_tail_is_followed_by_its_overlap() -> None:
    follower = LogFollower()
    follower.update(task("a\nb\nc\n"))
    # the server now keeps only the last lines
    assert follower.update(task("c\nd\ne\n")) == ["stdout | d", "stdout | e"]


def test_lost_lines_are_said() -> None:
    follower = LogFollower()
    follower.update(task("a\nb\n"))
    out = follower.update(task("x\ny\n"))
    assert out[0].startswith("stdout | (the server's log dropped lines")
    assert out[1:] == ["stdout | x", "stdout | y"]


def test_volume_per_poll_is_bounded_and_said() -> None:
    follower = LogFollower(max_lines=3)
    out = follower.update(task("".join(f"{i}\n" for i in range(10))))
    assert out == ["stdout | (7 lines skipped; the whole output is in the task's stdout object)"] + [
        f"stdout | {i}" for i in (7, 8, 9)
    ]


def test_stderr_and_system_logs_as_they_appear() -> None:
    follower = LogFollower()
    assert follower.update(task(stderr="warn\n", system_logs=["pulled image"])) == [
        "system | pulled image",
        "stderr | warn",
    ]
    assert follower.update(task(stderr="warn\n", system_logs=["pulled image", "started"])) == [
        "system | started"
    ]


def test_no_logs_no_lines() -> None:
    assert LogFollower().update(TesTask.from_response({"id": "t"})) == []


def test_startup_clock_warns_at_half_then_expires() -> None:
    from airflow_provider_tes.models import TesState
    from airflow_provider_tes.triggers.progress import StartupClock

    clock = StartupClock(timeout=10)
    clock.observe(TesState.QUEUED, now=100)
    assert clock.due(104) is None
    assert clock.seconds_to_next_check(104) == 1
    assert clock.due(105) == "warn"
    assert clock.due(106) is None  # warned once
    clock.observe(TesState.INITIALIZING, now=107)  # still not started: the clock keeps running
    assert clock.due(110) == "expired"
    clock.observe(TesState.RUNNING, now=111)
    assert clock.due(200) is None
    assert StartupClock(timeout=None).due(1e9) is None

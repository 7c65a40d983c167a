"""The live-log follower: each line of a running task's executor log shown once, bounded per poll,
and handed over to the worker at the end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.events import EventStatus, TesTaskEvent
from airflow_provider_tes.log_follower import LogFollower
from airflow_provider_tes.models import TesState, TesTask


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


def _handed_over(follower: LogFollower) -> LogFollower:
    """Across processes, as in a trigger event: through JSON."""
    return LogFollower.taking_over(json.loads(json.dumps(follower.handover())))


def test_the_worker_takes_over_where_the_trigger_stopped() -> None:
    trigger_side = LogFollower()
    assert trigger_side.update(task("1\n2\n3", stderr="e1\n", system_logs=["started"])) == [
        "system | started",
        "stdout | 1",
        "stdout | 2",
        "stderr | e1",
    ]
    worker_side = _handed_over(trigger_side)
    final = task(f"1\n2\n3\n4\n\n{EXIT_CODE_MARKER}0\n", stderr="e1\ne2\n", system_logs=["started"])
    assert worker_side.update(final, final=True) == ["stdout | 3", "stdout | 4", "stderr | e2"]
    assert worker_side.lines_shown == 6


def test_the_handover_holds_no_output_and_continues_exactly() -> None:
    lines = [f"line {i:05d}" for i in range(3000)]
    trigger_side = LogFollower(max_lines=10_000)
    trigger_side.update(task("\n".join(lines[:2000]) + "\nline 02", stderr="secret-ish\n"))
    handed = json.dumps(trigger_side.handover())
    assert "line" not in handed and "secret" not in handed, handed
    assert len(handed) < 500, "a few numbers and digests per stream: the event stays small"
    rest = [f"stdout | {line}" for line in lines[2000:]]
    # A server that keeps the whole text...
    worker_side = LogFollower.taking_over(json.loads(handed))
    worker_side.max_lines = 10_000
    assert worker_side.update(task("\n".join(lines) + "\n", stderr="secret-ish\n"), final=True) == rest
    # ...or only a window of its end.
    worker_side = LogFollower.taking_over(json.loads(handed))
    worker_side.max_lines = 10_000
    assert worker_side.update(task("\n".join(lines[1500:]) + "\n"), final=True) == rest
    # Where the window moved past what was read, that is said and the whole window shown.
    worker_side = LogFollower.taking_over(json.loads(handed))
    shown = worker_side.update(task("\n".join(lines[2500:]) + "\n"), final=True)
    assert shown[0] == "stdout | (the server's log dropped lines between two polls)"
    assert shown[1:] == [f"stdout | {line}" for line in lines[2500:]]


@pytest.mark.parametrize("handed", [{}, {"streams": {}, "system_logs_shown": 0}, {"streams": 1}, []])
def test_a_handover_that_does_not_read_is_an_error(handed: Any) -> None:
    with pytest.raises(ValueError, match="not a live-log handover"):
        LogFollower.taking_over(handed)


def test_the_event_carries_the_handover_and_drops_one_it_cannot_use() -> None:
    handed = LogFollower().handover()
    event = TesTaskEvent(EventStatus.TERMINAL, "t", state=TesState.COMPLETE, lines_shown=3, live_log=handed)
    payload = json.loads(json.dumps(event.to_trigger_event().payload))
    assert TesTaskEvent.from_payload(payload).live_log == handed
    assert TesTaskEvent.from_payload({**payload, "live_log": "?"}).live_log is None
    assert TesTaskEvent.from_payload({**payload, "live_log": None}).lines_shown == 3


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


# -- across triggerers: the position kept in XCom ----------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: Any) -> None:
        self.lines += (msg % args).splitlines()

    warning = info


async def test_a_trigger_that_takes_over_goes_on_from_the_kept_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A triggerer dies after showing lines 1-3; the trigger that takes the task over in another
    one reads the whole log again, and shows only what follows."""
    import asyncio
    from types import SimpleNamespace

    from airflow_provider_tes.run_state import LIVE_LOG_KEY
    from airflow_provider_tes.triggers import progress, task_sdk

    xcom: dict[str, Any] = {LIVE_LOG_KEY: progress.LiveLog.initial_position("t")}
    monkeypatch.setattr(task_sdk, "_get_xcom", lambda ti, key: json.loads(json.dumps(xcom.get(key))))
    monkeypatch.setattr(task_sdk, "_set_xcom", lambda ti, key, value: xcom.__setitem__(key, value))
    monkeypatch.setattr(progress, "POSITION_SAVE_DELAY", 0.0)
    monkeypatch.setattr(progress.LogReads, "join", classmethod(lambda cls, live: None))
    ti = SimpleNamespace(dag_id="d", task_id="x", run_id="r", map_index=-1)

    async def trigger(text: str) -> list[str]:
        recorder = _Recorder()
        live = progress.LiveLog(None, "t", 1.0, recorder, ti=ti)  # type: ignore[arg-type]
        live.start()
        assert live._resuming is not None
        await live._resuming
        live.show(task(text))
        await asyncio.sleep(0.05)  # the position is kept in the background
        return [line for line in recorder.lines if line.startswith("stdout")]

    assert await trigger("1\n2\n3\n") == ["stdout | 1", "stdout | 2", "stdout | 3"]
    assert xcom[LIVE_LOG_KEY]["position"]["streams"]["stdout"]["shown"] == 3
    # The first triggerer is gone; another starts the trigger again and reads the log.
    assert await trigger("1\n2\n3\n4\n5\n") == ["stdout | 4", "stdout | 5"]
    # A position of another TES task (before a resubmission) is not taken over.
    xcom[LIVE_LOG_KEY] = {**xcom[LIVE_LOG_KEY], "tes_task_id": "other"}
    assert len(await trigger("1\n2\n")) == 2

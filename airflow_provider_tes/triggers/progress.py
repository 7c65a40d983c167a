"""What a trigger shows and enforces while a task runs: live logs and the startup timeout.

Live logs: the new lines of a running TES task's executor log, each shown once.

TES servers keep an executor's stdout/stderr in the task's FULL view while it runs (Funnel
updates them as they come), but only as a whole text, often only its tail, and TES says
nothing about how they grow. So each poll is compared with the previous one: text appended
is new; when the server kept only a window, the overlap of the old end and the new start is
found and only what follows it is new; when nothing overlaps, lines were lost between polls
and the log says so. Only whole lines are shown (a line still being written waits for its
newline, or for the end of the task), and each poll shows at most ``max_lines`` per stream,
saying how many it skipped, so a chatty task cannot flood the task log or the triggerer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.exceptions import TesError
from airflow_provider_tes.models import TesState, TesTask, TesView
from airflow_provider_tes.redaction import system_logs

if TYPE_CHECKING:
    from airflow_provider_tes.hooks.tes import TesHook

#: Lines shown per stream and poll at most; the rest is counted and said to be skipped.
DEFAULT_MAX_LINES = 500
STREAMS = ("stdout", "stderr")


@dataclass
class _Stream:
    text: str = ""  # what the server showed last time
    pending: str = ""  # an unfinished last line, shown once it ends
    shown: int = 0


@dataclass
class LogFollower:
    """Follows the executor log (and system logs) of one TES task across polls."""

    max_lines: int = DEFAULT_MAX_LINES
    streams: dict[str, _Stream] = field(default_factory=lambda: {name: _Stream() for name in STREAMS})
    system_logs_shown: int = 0

    @property
    def lines_shown(self) -> int:
        return sum(stream.shown for stream in self.streams.values())

    def update(self, task: TesTask, *, final: bool = False) -> list[str]:
        """What to print for this poll of ``task`` (FULL view): new lines, prefixed by their stream."""
        log = task.last_log
        executor = log.logs[-1] if log and log.logs else None
        out: list[str] = []
        lines = system_logs(task)
        if len(lines) > self.system_logs_shown:
            out += [f"system | {entry}" for entry in lines[self.system_logs_shown :]]
            self.system_logs_shown = len(lines)
        for name in STREAMS:
            text = getattr(executor, name, None) if executor else None
            if text is not None:
                out += self._follow(name, text, final)
        return out

    def _follow(self, name: str, text: str, final: bool) -> list[str]:
        stream = self.streams[name]
        added, lost = _appended(stream.text, text)
        stream.text = text
        chunk = stream.pending + added
        lines = chunk.split("\n")
        stream.pending = "" if final else lines.pop()
        lines = _without_marker(lines)
        if final and lines and lines[-1] == "":
            lines.pop()
        out = [f"{name} | (the server's log dropped lines between two polls)"] if lost else []
        if len(lines) > self.max_lines:
            skipped = len(lines) - self.max_lines
            out.append(f"{name} | ({skipped} lines skipped; the whole output is in the task's {name} object)")
            lines = lines[-self.max_lines :]
        stream.shown += len(lines)
        return out + [f"{name} | {line}" for line in lines]


def _appended(old: str, new: str) -> tuple[str, bool]:
    """The text ``new`` adds to ``old``, and whether some was lost in between."""
    if new.startswith(old):
        return new[len(old) :], False
    if old.endswith(new):
        return "", False
    # The server keeps a window: find the longest run of whole lines at the start of ``new``
    # that the old text ended with (line ends only: O(lines x size), not O(size^2)).
    cuts: list[int] = []
    at = new.find("\n")
    while at >= 0:
        cuts.append(at + 1)
        at = new.find("\n", at + 1)
    for size in reversed(cuts):
        if old.endswith(new[:size]):
            return new[size:], False
    return new, bool(old)


def _without_marker(lines: list[str]) -> list[str]:
    """The wrapper's exit-code line (and the blank line it starts with) is not the command's output."""
    for i, line in enumerate(lines):
        if line.startswith(EXIT_CODE_MARKER):
            start = i - 1 if i > 0 and lines[i - 1] == "" else i
            return lines[:start] + lines[i + 1 :]
    return lines


class LiveLog:
    """A trigger's side task: every ``interval`` seconds, one FULL GET of its task, new lines logged.

    Only tasks with live logs on pay for it (one GET per interval each); the coalesced status
    polling of every other task is untouched. A failed read is said once and tried again.
    """

    def __init__(self, hook: TesHook, tes_task_id: str, interval: float, log: logging.Logger | Any) -> None:
        self.hook = hook
        self.tes_task_id = tes_task_id
        self.interval = interval
        self.log = log
        self.follower = LogFollower()
        self._failing = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.read()

    async def read(self, *, final: bool = False) -> None:
        try:
            task = await self.hook.a_get_task(self.tes_task_id, view=TesView.FULL)
        except TesError as err:
            if not self._failing:
                self.log.warning("Live logs of TES task %s: could not read them (%s)", self.tes_task_id, err)
            self._failing = True
            return
        self._failing = False
        for line in self.follower.update(task, final=final):
            self.log.info("%s", line)


@dataclass
class StartupClock:
    """How long a task has been waiting to start (QUEUED/INITIALIZING), against ``startup_timeout``.

    TES servers leave a task queued without saying why (no quota, no matching node, an image
    that cannot be pulled); a warning at half the timeout and a cancel at the timeout turn
    that silence into an error the DAG can act on.
    """

    timeout: float | None
    since: float | None = None
    warned: bool = False

    def observe(self, state: TesState, now: float) -> None:
        if state in (TesState.QUEUED, TesState.INITIALIZING):
            self.since = self.since if self.since is not None else now
        else:
            self.since = None

    def waited(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since

    def seconds_to_next_check(self, now: float) -> float | None:
        if self.timeout is None or self.since is None:
            return None
        due = self.since + (self.timeout if self.warned else self.timeout / 2)
        return max(0.0, due - now)

    def due(self, now: float) -> str | None:
        """``"warn"`` once at half the timeout, ``"expired"`` at the timeout, else ``None``."""
        if self.timeout is None or self.since is None:
            return None
        waited = now - self.since
        if waited >= self.timeout:
            return "expired"
        if waited >= self.timeout / 2 and not self.warned:
            self.warned = True
            return "warn"
        return None

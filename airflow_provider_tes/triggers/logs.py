"""Live logs: the new lines of a running TES task's executor log, each shown once.

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

from dataclasses import dataclass, field

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.models import TesTask

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
        if log and log.system_logs and len(log.system_logs) > self.system_logs_shown:
            out += [f"system | {entry}" for entry in log.system_logs[self.system_logs_shown :]]
            self.system_logs_shown = len(log.system_logs)
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

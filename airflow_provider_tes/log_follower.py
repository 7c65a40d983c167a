"""The new lines of a running TES task's executor log, each shown once, across reads.

TES servers keep an executor's stdout/stderr in the task's FULL view while it runs (Funnel
updates them as they come), but only as a whole text, often only its tail, and TES says
nothing about how they grow. So each read is compared with the previous one: text appended
is new; when the server kept only a window, the overlap of the old end and the new start is
found and only what follows it is new; when nothing overlaps, lines were lost between reads
and the log says so. Only whole lines are shown (a line still being written waits for its
newline, or for the end of the task), and each read shows at most ``max_lines`` per stream,
saying how many it skipped, so a chatty task cannot flood the task log or the triggerer.

Two processes follow one task: the triggerer while it runs
(:class:`~airflow_provider_tes.triggers.progress.LiveLog`), then the worker that resumes the
task, which reads its FULL view anyway (for the exit code) and shows the rest. The trigger hands
over where it stands (:meth:`LogFollower.handover`: a few numbers and a digest in the event, no
output), so a wave of endings costs the triggerer no GET per followed task.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.models import TesTask
from airflow_provider_tes.redaction import system_logs

#: Lines shown per stream and poll at most; the rest is counted and said to be skipped.
DEFAULT_MAX_LINES = 500
STREAMS = ("stdout", "stderr")
#: A handover marks where a stream was read to by a digest of this many characters before it.
ANCHOR_CHARS = 256


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class _Anchor:
    """Where a follower stopped in a stream, without its text (which would otherwise travel in
    the trigger event and sit in the metadata DB): the length of the server's text then, a
    digest of its last ``size`` characters, its last character (to narrow the search) and the
    length of its unfinished last line."""

    end: int
    size: int
    digest: str
    last: str
    pending: int

    @classmethod
    def of(cls, stream: _Stream) -> _Anchor:
        tail = stream.text[-ANCHOR_CHARS:]
        return cls(len(stream.text), len(tail), _digest(tail), tail[-1:], len(stream.pending))

    def find(self, text: str) -> int | None:
        """Where the text read before ends in ``text`` (the server's text now): at the same
        length if the text only grew, else the last place it matches (a server that keeps a
        window); ``None`` when nowhere (lines were lost)."""
        if self.size == 0:
            return 0
        if self._ends_at(text, self.end):
            return self.end
        at = len(text)
        while (at := text.rfind(self.last, 0, at)) >= 0:
            if self._ends_at(text, at + 1):
                return at + 1
        return None

    def _ends_at(self, text: str, end: int) -> bool:
        return self.size <= end <= len(text) and _digest(text[end - self.size : end]) == self.digest


@dataclass
class _Stream:
    text: str = ""  # what the server showed last time
    pending: str = ""  # an unfinished last line, shown once it ends
    shown: int = 0
    anchor: _Anchor | None = None  # where a handover says the text read before ends


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

    def handover(self) -> dict[str, Any]:
        """Where this follower stands, as small plain JSON holding no output (see
        :class:`_Anchor`), for :meth:`taking_over` in another process."""
        streams = {}
        for name, stream in self.streams.items():
            anchor = stream.anchor or _Anchor.of(stream)
            streams[name] = {**dataclasses.asdict(anchor), "shown": stream.shown}
        return {"streams": streams, "system_logs_shown": self.system_logs_shown}

    @classmethod
    def taking_over(cls, handed: Mapping[str, Any]) -> LogFollower:
        """The follower a :meth:`handover` describes; :class:`ValueError` when it does not read."""
        try:
            follower = cls(system_logs_shown=int(handed["system_logs_shown"]))
            for name in STREAMS:
                given = handed["streams"][name]
                anchor = _Anchor(
                    end=int(given["end"]),
                    size=int(given["size"]),
                    digest=str(given["digest"]),
                    last=str(given["last"]),
                    pending=int(given["pending"]),
                )
                follower.streams[name] = _Stream(shown=int(given["shown"]), anchor=anchor)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a live-log handover ({err!r})") from None
        return follower

    def _follow(self, name: str, text: str, final: bool) -> list[str]:
        stream = self.streams[name]
        if stream.anchor is None:
            pending = stream.pending
            added, lost = _appended(stream.text, text)
        else:
            at = stream.anchor.find(text)
            pending = "" if at is None else text[max(0, at - stream.anchor.pending) : at]
            added, lost = (text, True) if at is None else (text[at:], False)
            stream.anchor = None
        stream.text = text
        chunk = pending + added
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

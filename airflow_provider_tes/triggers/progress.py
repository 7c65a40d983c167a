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

The last read, after the task has ended, is not the triggerer's: the worker that resumes the
task reads the task's FULL view anyway (for its exit code), so the trigger hands over where it
stands (:meth:`LogFollower.handover`: a few numbers and a digest in the event, no output) and
the worker shows the rest. A wave of endings then costs the triggerer no GET per followed task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.exceptions import TesError, TesMalformedResponseError
from airflow_provider_tes.models import TesState, TesTask, TesView
from airflow_provider_tes.redaction import system_logs
from airflow_provider_tes.triggers.shared import shared_task

if TYPE_CHECKING:
    from airflow_provider_tes.triggers.polling import SharedStatusPoller

log = logging.getLogger(__name__)

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


class LiveLog:
    """A trigger's live log: the new lines of its task, logged every ``interval`` seconds.

    The trigger does not read them itself: its :class:`LogReads` reads every task followed at
    that interval on one clock (one listing can serve them all) and hands each its read. A
    follower holds no timer or task of its own: 100 followers sleeping on their own timers
    left hundreds of objects a round to the garbage collector's oldest generation (they live
    for an interval), and its full collections came that much sooner (profiled in benchmark
    B1). The lines are logged in the trigger's context, captured at :meth:`start`: the
    triggerer routes a record to an Airflow task's log by the context variables it binds to
    each trigger. A failed read is said once and tried again. At the task's end it hands over
    (see the module's docstring).
    """

    def __init__(
        self, poller: SharedStatusPoller, tes_task_id: str, interval: float, log: logging.Logger | Any
    ) -> None:
        self.poller = poller
        self.tes_task_id = tes_task_id
        self.interval = float(interval)
        self.log = log
        self.follower = LogFollower()
        self._failing = False
        self._context: contextvars.Context | None = None
        self._reads: LogReads | None = None

    def start(self) -> None:
        """Follow from the next tick of the interval's clock on."""
        self._context = contextvars.copy_context()
        self._reads = LogReads.join(self)

    def stop(self) -> None:
        """Stop following, at once: a read under way is not shown."""
        if self._reads is not None:
            self._reads.leave(self)
            self._reads = None

    def handover(self) -> dict[str, Any]:
        """The task has ended: stop, and say where the worker's last read continues from."""
        self.stop()
        return self.follower.handover()

    def show(self, read: TesTask | Exception | None) -> None:
        """Log what ``read`` (this interval's FULL view, a failed read, or nothing) adds."""
        if self._context is None:
            self._show(read)
        else:
            self._context.run(self._show, read)

    def _show(self, read: TesTask | Exception | None) -> None:
        lines: list[str] = []
        if isinstance(read, TesTask):
            try:
                lines = self.follower.update(read)
            except Exception as err:  # live logs are a view: a bug in one must not end them
                read = err
        if isinstance(read, Exception):
            if not self._failing:
                reason = str(read) if isinstance(read, TesError) else repr(read)
                self.log.warning(
                    "Live logs of TES task %s: could not read them (%s)", self.tes_task_id, reason
                )
            self._failing = True
            return
        if read is not None:
            self._failing = False
        if lines:
            # One record per read, its lines joined: they were all read at this moment, and the
            # triggerer's logging costs per record, so a chatty task costs what a quiet one does.
            self.log.info("%s", "\n".join(lines))


#: States whose followed tasks may be read by one FULL listing of the state (queued tasks too:
#: the server's system logs say why they wait)...
LISTED_FOR_LOGS = (TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING)
#: ...from this many followed tasks in the state on...
LIST_MIN_FOLLOWED = 4
#: ...when they are at least this share of the tasks the listing would return.
LIST_MIN_SHARE = 0.5
#: After the k-th failed listing in a row, the next is ``2**k`` intervals later, at most ``2**5``.
MAX_BACKOFF_EXPONENT = 5
#: Tasks per page of that listing: FULL answers are large, pages stay well under
#: ``max_response_bytes`` at Funnel's 10 KiB stdout tails.
FULL_PAGE_SIZE = 64


class _NotFull(TesMalformedResponseError):
    """A listing asked for the FULL view answered with less."""


class LogReads:
    """The FULL views of the tasks followed at one interval on one poller, read on one clock
    and as cheaply as the server allows.

    A FULL GET per followed task and interval costs about 1 ms of the triggerer's CPU, most of it
    the HTTP exchange itself; 100 followed tasks at 10 s would cost more than the coalesced status
    polling of 10,000. When the followed tasks in a state are most of the deployment's tasks in
    it (the usual case: live logs are on by default), one FULL listing of that state (the
    deployment's tag filter; the poller's counts) returns them all in a few requests. Otherwise,
    and for a task the listing does not show (just moved on, or on a server that lists without
    the FULL view), its own GET. A listing that fails is not tried again for a while; the GETs
    cover it.

    The clock is a task of its own (see :mod:`~airflow_provider_tes.triggers.shared`); it runs
    while anyone follows.
    """

    _registry: dict[tuple[int, float], LogReads] = {}  # noqa: RUF012 - process-wide on purpose

    def __init__(self, poller: SharedStatusPoller, interval: float) -> None:
        self.poller = poller
        self.interval = interval
        #: Who follows which task (two triggers may follow one task).
        self.followers: dict[str, list[LiveLog]] = {}
        #: Followed tasks the last listing of their state showed: one missing from the next has
        #: moved on (see :meth:`_read_state`).
        self._listed_before: set[str] = set()
        self.listings = 0
        self._failures = 0
        self._list_from = -math.inf
        self._clock: asyncio.Task[None] | None = None
        #: The reads of one tick come at once: their GETs take at most half of the connection's
        #: request slots, so the status rounds never queue behind them.
        self._gets: asyncio.Semaphore | None = None

    @property
    def followed(self) -> set[str]:
        return set(self.followers)

    @classmethod
    def join(cls, live: LiveLog) -> LogReads:
        """Add ``live`` to the reads of its poller and interval (made, and their clock started,
        as the first follower joins; dropped as the last one leaves)."""
        key = (id(live.poller), live.interval)
        reads = cls._registry.get(key)
        if reads is None or reads.poller is not live.poller:
            reads = cls._registry[key] = cls(live.poller, live.interval)
        reads.followers.setdefault(live.tes_task_id, []).append(live)
        if reads._clock is None:
            name = f"tes-live-logs-{live.interval:g}s"
            reads._clock = shared_task(reads._run(), name=name)
        return reads

    def leave(self, live: LiveLog) -> None:
        lives = self.followers.get(live.tes_task_id, [])
        if live in lives:
            lives.remove(live)
        if not lives:
            self.followers.pop(live.tes_task_id, None)
            self._listed_before.discard(live.tes_task_id)
        if not self.followers:
            if self._clock is not None:
                self._clock.cancel()
                self._clock = None
            key = (id(self.poller), self.interval)
            if self._registry.get(key) is self:
                del self._registry[key]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # On the interval's clock, not a trigger's start: every follower is read at the same
            # moment, which lets one listing serve them all.
            await asyncio.sleep(self.interval - loop.time() % self.interval)
            try:
                await self.read_all()
            except Exception:  # whatever went wrong, the next tick reads again
                log.exception("Live logs: a round of reads failed; reading again in %gs", self.interval)

    async def read_all(self) -> None:
        """One tick: every followed task read (by its state's listing or its own GET) and its
        read shown to its followers as it comes."""
        by_state: dict[TesState | None, list[str]] = {}
        for task_id in self.followers:
            by_state.setdefault(self.poller.last_state(task_id), []).append(task_id)
        listed = self._states_to_list(by_state)
        await asyncio.gather(
            *(self._read_state(state, ids, listed=state in listed) for state, ids in by_state.items())
        )

    def _states_to_list(self, by_state: Mapping[TesState | None, list[str]]) -> set[TesState | None]:
        if asyncio.get_running_loop().time() < self._list_from:
            return set()
        chosen: set[TesState | None] = set()
        for state in LISTED_FOR_LOGS:
            total = self.poller.listed_count(state)
            if total is not None and len(by_state.get(state, ())) >= max(
                LIST_MIN_FOLLOWED, LIST_MIN_SHARE * total
            ):
                chosen.add(state)
        return chosen

    async def _read_state(self, state: TesState | None, ids: list[str], *, listed: bool) -> None:
        if listed and state is not None:
            try:
                found = await self._list_followed(state)
            except Exception as err:  # whatever failed, the tasks' own GETs still may not
                self._listing_failed(err)
            else:
                unlisted = []
                for task_id in ids:
                    task = found.pop(task_id, None)
                    if task is not None:
                        self._listed_before.add(task_id)
                        self._show(task_id, task)
                    elif task_id in self._listed_before:
                        # Once: a task still missing next time is read by GET (a server's
                        # listing may leave it out for good; its lines are not to wait for its
                        # end). Usually it is ending: the poller says so within a round, and the
                        # worker's last read shows the rest.
                        self._listed_before.discard(task_id)
                    else:
                        unlisted.append(task_id)
                ids = unlisted
        await asyncio.gather(*(self._get(task_id) for task_id in ids))

    async def _get(self, task_id: str) -> None:
        read: TesTask | Exception
        try:
            if self._gets is None:
                settings = await self.poller.hook.a_settings()
                self._gets = asyncio.Semaphore(max(1, settings.max_concurrency // 2))
            async with self._gets:
                read = await self.poller.hook.a_get_task(task_id, view=TesView.FULL)
        except Exception as err:  # said by each follower, once
            read = err
        self._show(task_id, read)

    def _show(self, task_id: str, read: TesTask | Exception) -> None:
        # Only to who still follows: a follower that handed over has shown its last line.
        for live in list(self.followers.get(task_id, ())):
            live.show(read)

    async def _list_followed(self, state: TesState) -> dict[str, TesTask]:
        self.listings += 1
        found: dict[str, TesTask] = {}
        not_full = 0
        pages = self.poller.hook.a_list_task_logs(
            state=state, tags=self.poller.listing_tags, page_size=FULL_PAGE_SIZE
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                found.update(
                    (task.id, task)
                    for task in page.tasks
                    if task.id and task.id in self.followers and task.state is state
                )
                not_full += sum(1 for task_id in page.partial if task_id in self.followers)
        if not_full and not found:
            raise _NotFull(
                f"the server lists tasks without their FULL view ({not_full} followed ones lack executors)"
            )
        self._failures = 0
        return found

    def _listing_failed(self, err: Exception) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._list_from:
            return  # another listing of the same tick has said so
        # A refusal may pass (tried again after 2, 4, ... intervals); a server that lists without
        # the FULL view will not change (tried again after the longest wait).
        self._failures = MAX_BACKOFF_EXPONENT if isinstance(err, _NotFull) else self._failures + 1
        backoff = 2 ** min(self._failures, MAX_BACKOFF_EXPONENT) * self.interval
        self._list_from = now + backoff
        log.info("FULL listing for live logs failed (%r); each task is read by GET for %.0fs", err, backoff)


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

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
import collections
import contextlib
import dataclasses
import hashlib
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_tes.container import EXIT_CODE_MARKER
from airflow_provider_tes.exceptions import TesError, TesMalformedResponseError
from airflow_provider_tes.models import TesState, TesTask, TesView
from airflow_provider_tes.redaction import system_logs

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
    """A trigger's side task: every ``interval`` seconds, its task's FULL view, new lines logged.

    The read goes through the poller's :class:`LogReads`, so the tasks followed at one interval
    share a listing where that is cheaper; the lines are logged here, in the trigger's own task
    (where the triggerer routes them to the Airflow task's log), one record per read. A failed
    read is said once and tried again. At the task's end it hands over (see the module's
    docstring).
    """

    def __init__(
        self, poller: SharedStatusPoller, tes_task_id: str, interval: float, log: logging.Logger | Any
    ) -> None:
        self.poller = poller
        self.tes_task_id = tes_task_id
        self.interval = interval
        self.log = log
        self.follower = LogFollower()
        self._failing = False
        self._reading: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Read every interval, in a task of its own, until :meth:`stop`."""
        self._reading = asyncio.create_task(self.run(), name=f"tes-live-log-{self.tes_task_id}")

    async def stop(self) -> None:
        """Stop reading, and following (at once, not at some later turn of the loop)."""
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.wait([self._reading])

    async def handover(self) -> dict[str, Any]:
        """The task has ended: stop, and say where the worker's last read continues from (a read
        still under way is canceled, so the handover is what was shown)."""
        await self.stop()
        return self.follower.handover()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        with LogReads.following(self.poller, self.interval, self.tes_task_id) as reads:
            while True:
                # On the interval's clock, not the trigger's start: the tasks followed at one
                # interval are read at the same moment, which lets one listing serve them all.
                await asyncio.sleep(self.interval - loop.time() % self.interval)
                await self.read(reads)

    async def read(self, reads: LogReads) -> None:
        try:
            task = await reads.read(self.tes_task_id)
            if task is None:
                return
        except Exception as err:  # live logs are a view: whatever stops a read must not end them
            if not self._failing:
                reason = str(err) if isinstance(err, TesError) else repr(err)
                self.log.warning(
                    "Live logs of TES task %s: could not read them (%s)", self.tes_task_id, reason
                )
            self._failing = True
            return
        self._failing = False
        if lines := self.follower.update(task):
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

_Listing = asyncio.Task[dict[str, TesTask]]


class _NotFull(TesMalformedResponseError):
    """A listing asked for the FULL view answered with less."""


class LogReads:
    """The FULL views of the tasks followed at one interval on one poller, read as cheaply as
    the server allows.

    A FULL GET per followed task and interval costs about 1 ms of the triggerer's CPU, most of it
    the HTTP exchange itself; 100 followed tasks at 10 s would cost more than the coalesced status
    polling of 10,000. When the followed tasks in a state are most of the deployment's tasks in
    it (the usual case: live logs are on by default), one FULL listing of that state (the
    deployment's tag filter; the poller's counts) returns them all in a few requests. Otherwise,
    and for a task the listing does not show (just moved on, or on a server that lists without
    the FULL view), its own GET. A listing that fails is not tried again for a while; the GETs
    cover it.
    """

    _registry: dict[tuple[int, float], LogReads] = {}  # noqa: RUF012 - process-wide on purpose

    def __init__(self, poller: SharedStatusPoller, interval: float) -> None:
        self.poller = poller
        self.interval = interval
        self.followed: collections.Counter[str] = collections.Counter()
        #: Followed tasks the last listing of their state showed: one missing from the next has
        #: moved on (see :meth:`read`).
        self._listed_before: set[str] = set()
        self.listings = 0
        #: This moment's listing of each state worth listing, and when the choice was made.
        self._listings: dict[TesState, _Listing | None] = {}
        self._chosen_at = -math.inf
        self._failures = 0
        self._list_from = -math.inf
        #: The readers of one interval come at once: their GETs take at most half of the
        #: connection's request slots, so the status rounds never queue behind them.
        self._gets: asyncio.Semaphore | None = None

    @classmethod
    def of(cls, poller: SharedStatusPoller, interval: float) -> LogReads:
        """The reads of the tasks followed now on ``poller`` at ``interval``, or new ones."""
        reads = cls._registry.get((id(poller), float(interval)))
        return reads if reads is not None and reads.poller is poller else cls(poller, interval)

    @classmethod
    @contextlib.contextmanager
    def following(cls, poller: SharedStatusPoller, interval: float, task_id: str) -> Iterator[LogReads]:
        """Follow ``task_id`` with the others followed at this interval: registered here, as the
        follower joins, and dropped as the last one leaves (never held by a follower to be)."""
        key = (id(poller), float(interval))
        reads = cls._registry[key] = cls.of(poller, interval)
        reads.followed[task_id] += 1
        try:
            yield reads
        finally:
            reads.followed[task_id] -= 1
            if reads.followed[task_id] <= 0:
                del reads.followed[task_id]
                reads._listed_before.discard(task_id)
            if not reads.followed and cls._registry.get(key) is reads:
                del cls._registry[key]

    async def read(self, task_id: str) -> TesTask | None:
        """The FULL view of ``task_id``: from this interval's shared listing, or by its own GET;
        ``None`` when a task that listings showed before has just left the listed state (it is
        ending: the poller says so within a round, and the worker's last read shows the rest)."""
        state = self.poller.last_state(task_id)
        listing = None if state is None else self._listing_of(state)
        if listing is not None:
            try:
                # Taken, not copied: a listing holds each task until its reader has it.
                task = (await asyncio.shield(listing)).pop(task_id, None)
            except Exception as err:  # whatever failed, the task's own GET still may not
                task = None
                self._listing_failed(listing, err)
            if task is not None:
                self._listed_before.add(task_id)
                return task
            if task_id in self._listed_before and listing.done() and not listing.exception():
                # Once: a task still missing next time is read by GET (a server's listing may
                # leave it out for good; its lines are not to wait for its end).
                self._listed_before.discard(task_id)
                return None
        if self._gets is None:
            settings = await self.poller.hook.a_settings()
            self._gets = asyncio.Semaphore(max(1, settings.max_concurrency // 2))
        async with self._gets:
            return await self.poller.hook.a_get_task(task_id, view=TesView.FULL)

    def _listing_of(self, state: TesState) -> _Listing | None:
        """This moment's listing of ``state`` if one is worth it: the choice is made once per
        interval (the readers of one interval come together), the listing started by the first
        reader that needs it."""
        now = asyncio.get_running_loop().time()
        if now < self._list_from:
            return None
        if now - self._chosen_at >= self.interval / 2:
            self._chosen_at = now
            in_state = collections.Counter(self.poller.last_state(task_id) for task_id in self.followed)
            self._listings = {}
            for listed in LISTED_FOR_LOGS:
                total = self.poller.listed_count(listed)
                if total is not None and in_state[listed] >= max(LIST_MIN_FOLLOWED, LIST_MIN_SHARE * total):
                    self._listings[listed] = None
        if state not in self._listings:
            return None
        listing = self._listings[state]
        if listing is None:
            listing = self._listings[state] = asyncio.create_task(self._list_followed(state))
        return listing

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
                    if task.id and task.id in self.followed and task.state is state
                )
                not_full += sum(1 for task_id in page.partial if task_id in self.followed)
        if not_full and not found:
            raise _NotFull(
                f"the server lists tasks without their FULL view ({not_full} followed ones lack executors)"
            )
        self._failures = 0
        return found

    def _listing_failed(self, listing: _Listing, err: Exception) -> None:
        if listing not in self._listings.values():
            return  # another reader of the same listing has said so
        self._listings = {}
        # A refusal may pass (tried again after 2, 4, ... intervals); a server that lists without
        # the FULL view will not change (tried again after the longest wait).
        self._failures = MAX_BACKOFF_EXPONENT if isinstance(err, _NotFull) else self._failures + 1
        backoff = 2 ** min(self._failures, MAX_BACKOFF_EXPONENT) * self.interval
        self._list_from = asyncio.get_running_loop().time() + backoff
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

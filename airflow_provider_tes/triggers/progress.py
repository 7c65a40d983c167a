"""What a trigger shows and enforces while a task runs: live logs and the startup timeout.

Live logs: every ``log_interval``, the new lines of each followed task's executor log
(:mod:`airflow_provider_tes.log_follower` says how a read is compared with the one before),
read for all followers at once (:class:`LogReads`) and logged in each trigger's own context.
The last read, after the task has ended, is the worker's (see that module).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_tes.exceptions import TesError, TesMalformedResponseError
from airflow_provider_tes.log_follower import LogFollower
from airflow_provider_tes.models import TesState, TesTask, TesView
from airflow_provider_tes.run_state import LIVE_LOG_KEY
from airflow_provider_tes.triggers.shared import shared_task
from airflow_provider_tes.triggers.task_sdk import get_xcom, set_xcom

if TYPE_CHECKING:
    from airflow_provider_tes.triggers.polling import SharedStatusPoller

log = logging.getLogger(__name__)


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
    (see :mod:`airflow_provider_tes.log_follower`).
    """

    def __init__(
        self,
        poller: SharedStatusPoller,
        tes_task_id: str,
        interval: float,
        log: logging.Logger | Any,
        ti: Any = None,
    ) -> None:
        self.poller = poller
        self.tes_task_id = tes_task_id
        self.interval = float(interval)
        self.log = log
        self.follower = LogFollower()
        self._failing = False
        self._context: contextvars.Context | None = None
        self._reads: LogReads | None = None
        #: The trigger's task instance (in a triggerer): where the position is kept across
        #: triggerers (see :meth:`resume`).
        self._ti = ti
        self._saving: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._unsaved = False

    def start(self) -> None:
        """Follow from the next tick of the interval's clock on (in a triggerer, from where an
        earlier trigger of the task stopped: see :meth:`resume`)."""
        self._context = contextvars.copy_context()
        if self._ti is not None:
            # Asked in the background: the trigger's first poll must not wait for Airflow.
            self._resuming = asyncio.get_running_loop().create_task(self.resume())
        self._reads = LogReads.join(self)

    async def resume(self) -> None:
        """Go on where a trigger of the same task stopped in another triggerer, if one did.

        Triggers move between triggerers (one dies or stalls, another takes its triggers over),
        and the new trigger knows nothing of the lines the old one showed. So each read that
        shows lines keeps the follower's position (its handover: lengths and a digest, no
        output) in the task instance's XCom :data:`LIVE_LOG_KEY`, and a trigger starting on a
        task that has one goes on from it instead of showing every line again. A position that
        cannot be read starts from the beginning (lines shown twice rather than lost).
        """
        if self._ti is None:
            return
        try:
            kept = await get_xcom(self._ti, LIVE_LOG_KEY)
            if not isinstance(kept, Mapping) or kept.get("tes_task_id") != self.tes_task_id:
                return
            if kept.get("position") is None:  # as the operator deferred: nothing shown yet
                return
            self.follower = LogFollower.taking_over(kept["position"])
        except Exception as err:  # a view: without the position, lines show again
            self.log.warning(
                "Live logs of TES task %s: where an earlier trigger stopped is unknown (%r); "
                "lines it showed may be shown again",
                self.tes_task_id,
                err,
            )
            return
        self.log.info(
            "Live logs of TES task %s go on after line %d (shown by an earlier trigger)",
            self.tes_task_id,
            self.follower.lines_shown,
        )

    @staticmethod
    def initial_position(tes_task_id: str) -> dict[str, Any]:
        """What the operator stores in :data:`LIVE_LOG_KEY` as it defers: nothing shown yet (so
        the first trigger finds the key, and Airflow logs no miss)."""
        return {"tes_task_id": tes_task_id, "position": None}

    def _keep_position(self) -> None:
        """Keep the position after this read's lines (one write at a time; the latest wins)."""
        if self._ti is None:
            return
        self._unsaved = True
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._save_position())

    async def _save_position(self) -> None:
        # The lines go to the task log through the triggerer's supervisor, the position on
        # another channel: a moment's wait keeps the position from overtaking its lines, so a
        # triggerer killed in between shows them again after the takeover, never loses them.
        await asyncio.sleep(POSITION_SAVE_DELAY)
        while self._unsaved:
            self._unsaved = False
            position = {"tes_task_id": self.tes_task_id, "position": self.follower.handover()}
            try:
                await set_xcom(self._ti, LIVE_LOG_KEY, position)
            except Exception as err:  # a view: a later trigger may show these lines again
                self.log.warning(
                    "Live logs of TES task %s: could not keep their position (%r); another triggerer "
                    "taking the task over would show these lines again",
                    self.tes_task_id,
                    err,
                )
                self._ti = None  # said once; nothing more is kept
                return

    def stop(self) -> None:
        """Stop following, at once: a read under way is not shown."""
        if self._resuming is not None:
            self._resuming.cancel()
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
        if self._resuming is not None and not self._resuming.done():
            return  # where to go on from is not known yet; the next read shows these lines
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
            self._keep_position()


#: Seconds between showing a read's lines and keeping the position after them.
POSITION_SAVE_DELAY = 0.1
#: A clock tick this many seconds late (or an interval, if longer) means the process stood
#: still; live logs then pause as long (see :meth:`LogReads._run`).
STALL_SECONDS = 5.0
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
        paused_until = -math.inf
        while True:
            # On the interval's clock, not a trigger's start: every follower is read at the same
            # moment, which lets one listing serve them all.
            tick = loop.time() + self.interval - loop.time() % self.interval
            await asyncio.sleep(tick - loop.time())
            if loop.time() - tick > max(self.interval, STALL_SECONDS):
                # This process stood still (frozen, starved): another triggerer may have taken
                # its triggers over and shown their lines meanwhile. Airflow stops the moved
                # triggers here within a loop or two; reading before that would show lines twice.
                paused_until = loop.time() + STALL_SECONDS
                log.info("Live logs: this triggerer stood still; reading again in %gs", STALL_SECONDS)
            if loop.time() < paused_until:
                continue
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

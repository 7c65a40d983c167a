"""One status poller per TES server and interval, shared by every trigger in a triggerer.

A triggerer may watch thousands of TES tasks. Polling each with its own GET every
interval overloads TES servers (crankshaft dropped per-task polling for that reason), and
a client per trigger wastes sockets and memory. Here the triggers of one connection share
one hook (one connection pool) and, once per interval, one *round*:

* one ListTasks per listed state (:data:`LISTED_STATES`), MINIMAL view, filtered by the
  deployment tag of the watched tasks (a triggerer lists what its own watches need, not every
  Airflow task on a shared server; a poller per deployment), or by the tag every submitted
  task carries (:data:`~airflow_provider_tes.identity.COALESCE_TAG`) for watches that do not
  say, paged, the states side by side; every watched task found there is still in that state;
* when many watched tasks left those listings at once (a mapped stage ending), the same
  listing of the terminal states (:data:`ENDED_STATES`), read only while its pages hold them:
  a page of 2,047 ended tasks costs about what 30 GETs cost, but a server keeps every task it
  ever ended, so a page that holds few of them ends that state's listing (listed beside the
  active states while endings keep coming, and once more for those that ended meanwhile);
* a GET (a *lookup*) for each watched task still unaccounted for: it has just finished (or was
  never tagged, e.g. a sensor on a foreign task, or its state's listing failed), and the GET
  tells its exact state. Lookups run in the background at bounded concurrency, so endings
  neither hold up the next round nor flood the event loop.

A newly watched task is looked up once at once; it does not start a round, so rounds stay one
per interval however fast triggers arrive. The steady cost is a handful of requests per
interval however many tasks are watched, plus one GET per task when it starts and ends.

The poller must outlive anything a server or a host does to it, because every trigger of the
connection waits on it: a round that fails in an unexpected way becomes an error delivered
to the watchers (which then count it against their outage budget), a client that cannot be
built is a configuration error delivered to all of them at once, a refused listing (any
status, or a page the hook cannot read) falls back to lookups for that round and is tried
again a few rounds later, and a refused credential makes the poller re-read the connection
once (a rotation) before anything fails. State lives in the triggerer's event loop only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from airflow_provider_tes.exceptions import (
    TesAuthError,
    TesConfigurationError,
    TesError,
    TesServerUnavailableError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import COALESCE_TAG, DEPLOYMENT_TAG
from airflow_provider_tes.models import MAX_PAGE_SIZE, TesState, TesView
from airflow_provider_tes.triggers.clients import acquire_hook, release_hook
from airflow_provider_tes.triggers.shared import shared_task

log = logging.getLogger(__name__)

#: States listed each round. CANCELING is not active (it settles into CANCELED) but a task
#: stays in it for a while, and a listing costs less than a GET per such task per round.
LISTED_STATES = (
    TesState.QUEUED,
    TesState.INITIALIZING,
    TesState.RUNNING,
    TesState.PAUSED,
    TesState.CANCELING,
)
#: Terminal states: a task found in one of their listings has ended, whenever it was listed.
ENDED_STATES = tuple(state for state in TesState if state.is_terminal)
#: From this many watched tasks gone from the active listings in one round, they are looked for
#: in the listings of :data:`ENDED_STATES` before any is looked up by GET...
BULK_MIN = 64
#: ...page by page, while a page still holds at least this many of them.
BULK_MIN_HITS_PER_PAGE = 32
#: After the k-th refused listing in a row the next try is ``2**k`` rounds later, at most this
#: many: a server that never lists costs one listing per few minutes, one that lists again
#: (a gateway fixed, a transient error) is listed again soon.
MAX_LISTING_BACKOFF_ROUNDS = 32
#: Watches that start within this many seconds of the one before arrive together (a triggerer that
#: takes another's triggers over, or starts up, starts hundreds of watches at once)...
ARRIVAL_WINDOW = 0.25
#: ...and from this many on they are found by the next round, started early (once an interval
#: at most), instead of a GET each: a round costs a listing per listed state (five).
ARRIVALS_FOR_A_ROUND = 8
#: Event-loop fairness: long loops over tasks yield to the loop every this many tasks.
CHUNK = 2000
#: Tasks per listing page: the most TES allows.
PAGE_SIZE = MAX_PAGE_SIZE - 1

T = TypeVar("T")


@dataclass
class StatusUpdate:
    """What a watcher receives: a state, or the error that made this round's poll fail."""

    state: TesState | None = None
    error: TesError | None = None


@dataclass
class _Watch:
    queue: asyncio.Queue[StatusUpdate] = field(default_factory=asyncio.Queue)
    #: Last thing delivered; a state repeats only after an error (so the outage visibly ends).
    last: TesState | TesError | None = None


def _unexpected(err: BaseException, what: str) -> TesServerUnavailableError:
    """An unexpected failure as an error a watcher counts against its outage budget."""
    return TesServerUnavailableError(f"{what} failed unexpectedly ({type(err).__name__}: {err})")


class SharedStatusPoller:
    """Polls the states of all watched tasks of one connection at one interval."""

    _registry: dict[tuple[int, str, float, str | None], SharedStatusPoller] = {}  # noqa: RUF012 - process-wide on purpose

    def __init__(
        self, tes_conn_id: str, interval: float, hook: TesHook | None = None, deployment: str | None = None
    ) -> None:
        self.tes_conn_id = tes_conn_id
        self.interval = interval
        #: The tag filter of every listing.
        self.listing_tags = {DEPLOYMENT_TAG: deployment} if deployment else {COALESCE_TAG: ""}
        self._shares_hook = hook is None
        self.hook = hook or acquire_hook(tes_conn_id)
        self.watches: dict[str, list[_Watch]] = {}
        self.rounds = 0
        #: Refused listings in a row, and the first round that lists again.
        self.listing_failures = 0
        self._list_from_round = 1
        #: Tasks (watched or not) in each state's last complete listing; see :meth:`listed_count`.
        self._listed_counts: dict[TesState, int] = {}
        #: Watched tasks the last round's active listings did not show (see :meth:`poll_once`).
        self._left_last_round = 0
        #: Lookups (GETs) waiting, and those in flight; see :meth:`_look_up`.
        self._lookup_queue: collections.deque[str] = collections.deque()
        self._lookup_pending: set[str] = set()
        self._lookup_workers: set[asyncio.Task[None]] = set()
        self._lookup_concurrency = 1
        #: Bumped by each re-read of the connection; see :meth:`_with_fresh_credential`.
        self._credential_generation = 0
        self._reload_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: Watches started within the arrival window, and the task that settles them; see
        #: :meth:`_arrive`. ``_wake`` starts the next round now; rounds started so, and when.
        self._arrivals: set[str] = set()
        self._arrivals_task: asyncio.Task[None] | None = None
        self._last_arrival = -math.inf
        self._wake = asyncio.Event()
        self.early_rounds = 0
        self._early_round_at = -math.inf

    @property
    def can_list(self) -> bool:
        """Whether the next round lists (``False`` while a refused listing is backed off)."""
        return self.rounds + 1 >= self._list_from_round

    def listed_count(self, state: TesState) -> int | None:
        """How many tasks of this poller's deployment the last listing of ``state`` showed
        (``None``: not listed, or that listing failed)."""
        return self._listed_counts.get(state)

    def last_state(self, task_id: str) -> TesState | None:
        """The last state delivered for a watched task (``None``: none yet, or an error)."""
        last = next((entry.last for entry in self.watches.get(task_id, [])), None)
        return last if isinstance(last, TesState) else None

    # -- sharing ------------------------------------------------------------------------------------

    @classmethod
    def for_connection(
        cls, tes_conn_id: str, interval: float, deployment: str | None = None
    ) -> SharedStatusPoller:
        key = (id(asyncio.get_running_loop()), tes_conn_id, float(interval), deployment)
        poller = cls._registry.get(key)
        if poller is None:
            poller = cls._registry[key] = cls(tes_conn_id, interval, deployment=deployment)
        return poller

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Queue[StatusUpdate]]:
        """Updates of one task's state (on change), for as long as the context is open."""
        entry = _Watch()
        newcomer = task_id not in self.watches
        self.watches.setdefault(task_id, []).append(entry)
        if self._task is None or self._task.done():
            self._task = shared_task(self._run(), name=f"tes-poller-{self.tes_conn_id}")
        elif newcomer and self.rounds:
            self._arrive(task_id)
        try:
            yield entry.queue
        finally:
            watchers = self.watches.get(task_id, [])
            if entry in watchers:
                watchers.remove(entry)
            if not watchers:
                self.watches.pop(task_id, None)
            if not self.watches:
                await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop polling and let go of the client (the last poller of a connection closes it);
        never raises (it runs while a trigger is canceled, and must not replace the
        cancellation with a dead round's error)."""
        for key, poller in list(self._registry.items()):
            if poller is self:
                del self._registry[key]
        tasks = [t for t in (self._task, self._arrivals_task, *self._lookup_workers) if t is not None]
        self._task = self._arrivals_task = None
        self._arrivals.clear()
        self._lookup_workers.clear()
        self._lookup_queue.clear()
        self._lookup_pending.clear()
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.warning("TES poller task of %s had failed: %r", self.tes_conn_id, task.exception())
        try:
            if self._shares_hook:
                await release_hook(self.tes_conn_id)
            else:
                await self.hook.aclose()
        except Exception as err:
            log.warning("Closing the TES client of %s failed: %r", self.tes_conn_id, err)

    # -- polling ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.watches:
            started = loop.time()
            try:
                await self.poll_once(wait_for_lookups=False)
            except Exception as err:  # a bug must not silently end every wait of the connection
                log.exception("A TES status round of %s failed", self.tes_conn_id)
                self._deliver_all(set(self.watches), StatusUpdate(error=_unexpected(err, "a status round")))
            # Rounds start one interval apart however long a round takes (a listing of
            # thousands of tasks takes a while), so a state change is seen within an interval
            # plus one round, not an interval plus two; a crowd of arrivals starts one early.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, started + self.interval - loop.time()))
            self._wake.clear()

    def _arrive(self, task_id: str) -> None:
        """A watch started between rounds: its first state is wanted now, not at the next round.

        One arrival costs one GET. A crowd (a takeover moves hundreds of triggers into this
        triggerer at once) is found by one round started early instead, a listing per state
        for all of them; early rounds are one an interval at most, so arrivals that keep coming
        cost no more than twice the rounds.
        """
        self._arrivals.add(task_id)
        self._last_arrival = asyncio.get_running_loop().time()
        if self._arrivals_task is None or self._arrivals_task.done():
            name = f"tes-arrivals-{self.tes_conn_id}"
            self._arrivals_task = shared_task(self._settle_arrivals(), name=name)

    async def _settle_arrivals(self) -> None:
        loop = asyncio.get_running_loop()
        first = loop.time()
        # Until a window passes without one (triggers start one by one, each asking Airflow
        # something first), for a few windows at most.
        while True:
            await asyncio.sleep(ARRIVAL_WINDOW)
            now = loop.time()
            if now - self._last_arrival >= ARRIVAL_WINDOW or now - first >= 4 * ARRIVAL_WINDOW:
                break
        arrived = {task_id for task_id in self._arrivals if task_id in self.watches}
        self._arrivals.clear()
        crowd = len(arrived) >= ARRIVALS_FOR_A_ROUND and self.can_list
        if crowd and now - self._early_round_at >= self.interval:
            self._early_round_at = now
            self.early_rounds += 1
            self._wake.set()
        else:
            self._look_up(arrived)

    async def poll_once(self, *, wait_for_lookups: bool = True) -> None:
        """One round: the coalesced listing, then lookups of watched tasks it did not show.

        The background loop does not wait for the lookups (the next round skips tasks still
        being looked up); a direct caller does, unless told otherwise.
        """
        self.rounds += 1
        watched = set(self.watches)
        if not watched:
            return
        try:
            await self._connect()
        except TesConfigurationError as err:
            self._deliver_all(watched, StatusUpdate(error=err))
            return
        listed: dict[str, TesState] = {}
        unlisted = watched
        complete = False
        ended: asyncio.Task[dict[str, TesState]] | None = None
        if self.rounds >= self._list_from_round:
            if self._left_last_round >= BULK_MIN:
                # Endings keep coming (a wave, a busy hour): the ended states are listed beside
                # the active ones, so a round takes as long as the slower, not both.
                ended = asyncio.create_task(self._list_ended(watched))
            try:
                listed, complete = await self._list_active(watched)
                unlisted = watched - listed.keys()
                if complete:
                    self.listing_failures = 0
                elif not await self._listing_alone_failed(unlisted):
                    return
            finally:
                if ended is not None and not complete:
                    ended.cancel()
        for n, (task_id, state) in enumerate(listed.items(), 1):
            self._deliver(task_id, StatusUpdate(state=state))
            if n % CHUNK == 0:
                await asyncio.sleep(0)
        unlisted -= self._lookup_pending  # already on their way
        self._left_last_round = len(unlisted) if complete else 0
        if complete and (ended is not None or len(unlisted) >= BULK_MIN):
            found = await ended if ended is not None else await self._list_ended(unlisted)
            if ended is not None and len(missed := unlisted - found.keys()) >= BULK_MIN:
                # Ended while both listings ran (after the ended listing read their page, before
                # the active one reached theirs): one more listing costs less than their GETs.
                found |= await self._list_ended(missed)
            # Ended is final: a task listed active a moment before it ended is ended.
            for n, (task_id, state) in enumerate(found.items(), 1):
                self._deliver(task_id, StatusUpdate(state=state))
                unlisted.discard(task_id)
                if n % CHUNK == 0:
                    await asyncio.sleep(0)
        self._look_up(unlisted)
        if wait_for_lookups:
            await self._lookups_done()

    async def _list_active(self, watched: set[str]) -> tuple[dict[str, TesState], bool]:
        """The listed states of watched tasks; whether every state's listing succeeded.

        Entries are judged one by one: an entry without id, of an unwatched task (another
        DAG or deployment, a foreign task on a server that ignores the tag filter) or without
        a usable state is skipped; a watched task skipped so is looked up directly.
        """

        async def listed(state: TesState) -> dict[str, TesState]:
            found: dict[str, TesState] = {}
            count = 0
            pages = self.hook.a_list_task_states(state=state, tags=self.listing_tags, page_size=PAGE_SIZE)
            try:
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        count += len(page)
                        found.update(
                            (task_id, listed)
                            for task_id, listed in page.items()
                            if task_id in watched and listed not in (None, TesState.UNKNOWN)
                        )
                        await asyncio.sleep(0)  # a page is a few ms of work; the loop has its turn
            except BaseException:
                self._listed_counts.pop(state, None)  # the last count stands while a listing runs
                raise
            self._listed_counts[state] = count
            return found

        parts = await asyncio.gather(
            *(self._with_fresh_credential(functools.partial(listed, state)) for state in LISTED_STATES),
            return_exceptions=True,
        )
        found: dict[str, TesState] = {}
        failures: list[BaseException] = []
        for part in parts:
            if isinstance(part, BaseException):
                if isinstance(part, asyncio.CancelledError):
                    raise part
                failures.append(part)
            else:
                found.update(part)
        if failures:
            log.warning(
                "TES ListTasks of %s failed (%s); the tasks it would have shown are looked up one by one",
                self.tes_conn_id,
                "; ".join(f"{type(f).__name__}: {f}" for f in failures[:2]),
            )
        return found, not failures

    async def _list_ended(self, wanted: set[str]) -> dict[str, TesState]:
        """The terminal states of those of ``wanted`` that the terminal states' listings show.

        Each state's listing stops at a page holding fewer than :data:`BULK_MIN_HITS_PER_PAGE`
        of them, or once all are found; a listing that fails is left to the lookups (no
        backoff: it is tried only in rounds that see many endings).
        """
        remaining = set(wanted)

        async def listed(state: TesState) -> dict[str, TesState]:
            found: dict[str, TesState] = {}
            pages = self.hook.a_list_task_states(state=state, tags=self.listing_tags, page_size=PAGE_SIZE)
            async with contextlib.aclosing(pages):
                async for page in pages:
                    # The entry's own state decides (a server may ignore the state filter).
                    hits = {
                        task_id: ended
                        for task_id, ended in page.items()
                        if task_id in remaining and ended is not None and ended.is_terminal
                    }
                    found.update(hits)
                    remaining.difference_update(hits)
                    if not remaining or len(hits) < BULK_MIN_HITS_PER_PAGE:
                        break
                    await asyncio.sleep(0)
            return found

        parts = await asyncio.gather(
            *(self._with_fresh_credential(functools.partial(listed, state)) for state in ENDED_STATES),
            return_exceptions=True,
        )
        found: dict[str, TesState] = {}
        for part in parts:
            if isinstance(part, asyncio.CancelledError):
                raise part
            if isinstance(part, BaseException):
                log.info("Listing ended TES tasks of %s failed (%r); GETs cover it", self.tes_conn_id, part)
            else:
                found.update(part)
        return found

    async def _listing_alone_failed(self, unlisted: set[str]) -> bool:
        """After a failed listing: whether the server still answers GETs (then the listing
        backs off and lookups cover it), or is down altogether (then the watchers get the
        error now, instead of thousands of lookups that would fail the same way)."""
        probe = next(iter(unlisted), None)  # taken out of ``unlisted``: answered here
        if probe is None:
            return True
        update = await self._get_state(probe)
        if isinstance(update.error, TesServerUnavailableError | TesAuthError | TesConfigurationError):
            self._deliver_all(set(self.watches), update)
            return False
        self._deliver(probe, update)
        self.listing_failures += 1
        backoff = min(2**self.listing_failures, MAX_LISTING_BACKOFF_ROUNDS)
        self._list_from_round = self.rounds + backoff
        log.warning("TES ListTasks of %s is tried again in %d rounds", self.tes_conn_id, backoff)
        unlisted.discard(probe)
        return True

    # -- lookups ------------------------------------------------------------------------------------

    def _look_up(self, task_ids: Iterable[str]) -> None:
        """Queue GETs of these tasks (skipping those already queued or in flight) and make
        sure enough workers drain the queue."""
        for task_id in task_ids:
            if task_id not in self._lookup_pending:
                self._lookup_pending.add(task_id)
                self._lookup_queue.append(task_id)
        while self._lookup_queue and len(self._lookup_workers) < self._lookup_concurrency:
            worker = shared_task(self._lookup_worker(), name=f"tes-lookup-{self.tes_conn_id}")
            self._lookup_workers.add(worker)
            worker.add_done_callback(self._lookup_workers.discard)

    async def _lookup_worker(self) -> None:
        while self._lookup_queue:
            task_id = self._lookup_queue.popleft()
            try:
                if task_id in self.watches:
                    self._deliver(task_id, await self._get_state(task_id))
            finally:
                self._lookup_pending.discard(task_id)

    async def _lookups_done(self) -> None:
        while self._lookup_workers:
            await asyncio.wait(list(self._lookup_workers))

    async def _get_state(self, task_id: str) -> StatusUpdate:
        """One task's state by GET, or the error that kept it unknown; never raises."""
        try:
            await self._connect()
            task = await self._with_fresh_credential(
                lambda: self.hook.a_get_task(task_id, view=TesView.MINIMAL)
            )
        except TesError as err:
            return StatusUpdate(error=err)
        except Exception as err:
            log.warning("GET of TES task %s failed unexpectedly: %r", task_id, err)
            return StatusUpdate(error=_unexpected(err, f"the status poll of TES task {task_id}"))
        return StatusUpdate(state=task.state or TesState.UNKNOWN)

    # -- the connection -----------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Build the client if needed; whatever stops that is a :class:`TesConfigurationError`
        (a ``ca_bundle`` missing on this host, a port that does not parse, ...)."""
        try:
            await self.hook.a_get_conn()
            settings = await self.hook.a_settings()
        except TesConfigurationError:
            raise
        except Exception as err:
            raise TesConfigurationError(
                f"connection {self.tes_conn_id!r}: the TES client cannot be built on this host "
                f"({type(err).__name__}: {err}); check its host, port and ca_bundle"
            ) from None
        # Lookups leave room at the hook's concurrency gate for the round's listings.
        self._lookup_concurrency = max(1, settings.max_concurrency - len(LISTED_STATES))

    async def _with_fresh_credential(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried once more after a refused credential (the connection is re-read:
        a rotation) or after another coroutine re-read it while this call was in flight."""
        generation = self._credential_generation
        try:
            return await call()
        except TesAuthError:
            await self._reload(generation)
        except Exception:
            if self._credential_generation == generation:
                raise
        return await call()

    async def _reload(self, generation: int) -> None:
        async with self._reload_lock:
            if self._credential_generation != generation:
                return  # another call re-read it meanwhile
            log.warning("TES server refused the credential of %s; reading it again", self.tes_conn_id)
            try:
                await self.hook.a_reload()
            except TesError:
                raise
            except Exception as err:
                raise TesConfigurationError(
                    f"connection {self.tes_conn_id!r} could not be read again ({type(err).__name__}: {err})"
                ) from None
            finally:
                self._credential_generation += 1
            await self._connect()

    # -- delivery -----------------------------------------------------------------------------------

    def _deliver(self, task_id: str, update: StatusUpdate) -> None:
        for entry in self.watches.get(task_id, []):
            if update.error is None and update.state == entry.last:
                continue
            entry.last = update.error or update.state
            entry.queue.put_nowait(update)

    def _deliver_all(self, task_ids: set[str], update: StatusUpdate) -> None:
        for task_id in task_ids:
            self._deliver(task_id, update)

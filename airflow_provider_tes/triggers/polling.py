"""One status poller per TES server and interval, shared by every trigger in a triggerer.

A triggerer may watch thousands of TES tasks. Polling each with its own GET every
interval overloads TES servers (crankshaft dropped per-task polling for that reason), and
a client per trigger wastes sockets and memory. Here the triggers of one connection share
one hook (one connection pool) and, per interval:

* one ListTasks per active state (QUEUED, INITIALIZING, RUNNING, PAUSED), MINIMAL view,
  filtered by the ``dag_id`` tag the operator puts on every task, paged; every watched
  task found there is still active;
* one GET only for each watched task that is *not* in those lists: it has just finished
  (or was never tagged, e.g. a sensor on a foreign task, or the server cannot filter),
  and the GET tells its exact state.

So the steady cost is a handful of requests per interval however many tasks are watched,
plus one GET per task when it ends. A server that refuses the listing is remembered and
polled per task from then on. State lives in the triggerer's event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from airflow_provider_tes.exceptions import TesBadRequestError, TesError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import COALESCE_TAG
from airflow_provider_tes.models import MAX_PAGE_SIZE, TesState, TesView

log = logging.getLogger(__name__)

ACTIVE_STATES = (TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING, TesState.PAUSED)


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


class SharedStatusPoller:
    """Polls the states of all watched tasks of one connection at one interval."""

    _registry: dict[tuple[int, str, float], SharedStatusPoller] = {}  # noqa: RUF012 - process-wide on purpose

    def __init__(self, tes_conn_id: str, interval: float, hook: TesHook | None = None) -> None:
        self.tes_conn_id = tes_conn_id
        self.interval = interval
        self.hook = hook or TesHook(tes_conn_id)
        self.watches: dict[str, list[_Watch]] = {}
        self.can_list = True
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

    # -- sharing ------------------------------------------------------------------------------------

    @classmethod
    def for_connection(cls, tes_conn_id: str, interval: float) -> SharedStatusPoller:
        key = (id(asyncio.get_running_loop()), tes_conn_id, float(interval))
        poller = cls._registry.get(key)
        if poller is None:
            poller = cls._registry[key] = cls(tes_conn_id, interval)
        return poller

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[asyncio.Queue[StatusUpdate]]:
        """Updates of one task's state (on change), for as long as the context is open."""
        entry = _Watch()
        self.watches.setdefault(task_id, []).append(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"tes-poller-{self.tes_conn_id}")
        self._wakeup.set()  # a new task is polled at once, not after a full interval
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
        for key, poller in list(self._registry.items()):
            if poller is self:
                del self._registry[key]
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.hook.aclose()

    # -- polling ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.watches:
            self._wakeup.clear()
            started = loop.time()
            await self.poll_once()
            # Rounds start one interval apart however long a round takes (a listing of
            # thousands of tasks takes a while), so a state change is seen within an interval
            # plus one round, not an interval plus two.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wakeup.wait(), timeout=max(0.0, started + self.interval - loop.time())
                )

    async def poll_once(self) -> None:
        """One round: the coalesced listing, then GETs for watched tasks it did not show."""
        self.rounds += 1
        watched = set(self.watches)
        if not watched:
            return
        active: dict[str, TesState] = {}
        if self.can_list:
            try:
                active = await self._list_active()
            except TesBadRequestError as err:
                log.warning("TES server refused filtered ListTasks (%s); polling per task from now on", err)
                self.can_list = False
            except TesError as err:
                self._deliver_all(watched, StatusUpdate(error=err))
                return
        for task_id in watched & active.keys():
            self._deliver(task_id, StatusUpdate(state=active[task_id]))
        missing = watched - active.keys()
        if missing:
            await asyncio.gather(*(self._get_one(task_id) for task_id in missing))

    async def _list_active(self) -> dict[str, TesState]:
        async def listed(state: TesState) -> dict[str, TesState]:
            return {
                task.id: task.state
                async for task in self.hook.a_list_tasks(
                    state=state, tags={COALESCE_TAG: ""}, view=TesView.MINIMAL, page_size=MAX_PAGE_SIZE - 1
                )
                if task.id and task.state
            }

        # The states are listed side by side, so a round lasts as long as the longest listing;
        # every listing is awaited to its end before a failure of one is raised.
        parts = await asyncio.gather(*(listed(state) for state in ACTIVE_STATES), return_exceptions=True)
        found: dict[str, TesState] = {}
        for part in parts:
            if isinstance(part, BaseException):
                raise part
            found.update(part)
        return found

    async def _get_one(self, task_id: str) -> None:
        try:
            task = await self.hook.a_get_task(task_id, view=TesView.MINIMAL)
        except TesError as err:
            self._deliver(task_id, StatusUpdate(error=err))
        else:
            self._deliver(task_id, StatusUpdate(state=task.state or TesState.UNKNOWN))

    def _deliver(self, task_id: str, update: StatusUpdate) -> None:
        for entry in self.watches.get(task_id, []):
            if update.error is None and update.state == entry.last:
                continue
            entry.last = update.error or update.state
            entry.queue.put_nowait(update)

    def _deliver_all(self, task_ids: set[str], update: StatusUpdate) -> None:
        for task_id in task_ids:
            self._deliver(task_id, update)

"""What the TES view shows: this deployment's TES tasks, read with one listing, as rows.

One ``ListTasks`` walk per page view (filtered on the server by this deployment's tag, and by
DAG when asked), never a ``GetTask`` per row, so a page costs the TES server what one poll
of the shared poller costs. Which tasks are this deployment's is decided as reattach decides
it (:class:`~airflow_provider_tes.identity.Tenant`): a task is shown only when its identity tag
verifies, so a task planted with this deployment's name on a shared server is not listed as
ours. Only identity tags, state and creation time are read; a task's command, environment and
inputs are never copied into a row.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice

from airflow_provider_tes.exceptions import TesBadRequestError
from airflow_provider_tes.hooks._requests import has_tags
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import DEPLOYMENT_TAG, Tenant
from airflow_provider_tes.models import TesState, TesTask, TesView

#: Rows are ordered by state in this order (what may still need attention first), then newest first.
STATE_ORDER: tuple[TesState, ...] = (
    TesState.RUNNING,
    TesState.INITIALIZING,
    TesState.QUEUED,
    TesState.PAUSED,
    TesState.CANCELING,
    TesState.EXECUTOR_ERROR,
    TesState.SYSTEM_ERROR,
    TesState.PREEMPTED,
    TesState.CANCELED,
    TesState.COMPLETE,
    TesState.UNKNOWN,
)
#: How many tasks one page view reads at most (the server's listing order decides which).
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000

_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class TesTaskRow:
    """One TES task as the view shows it: its Airflow identity, state and age, nothing else."""

    tes_task_id: str
    state: TesState
    created: datetime | None
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: str
    attempt: str

    @classmethod
    def of(cls, task: TesTask) -> TesTaskRow:
        tags = {k: str(v) for k, v in (task.tags or {}).items()}
        try:
            map_index = int(tags.get("map_index", "-1"))
        except ValueError:
            map_index = -1
        return cls(
            tes_task_id=task.id or "",
            state=task.state or TesState.UNKNOWN,
            created=parse_time(task.creation_time),
            dag_id=tags.get("dag_id", ""),
            task_id=tags.get("task_id", ""),
            run_id=tags.get("run_id", ""),
            map_index=map_index,
            try_number=tags.get("try_number", ""),
            attempt=tags.get("attempt", "0"),
        )

    def age(self, now: datetime) -> float | None:
        """Seconds since the server created the task (``None`` when it did not say)."""
        return None if self.created is None else max(0.0, (now - self.created).total_seconds())


@dataclass
class TesListing:
    """The page's data: rows after the state filter, and counts per state before it."""

    deployment: str
    #: Whether the rows' identity tags were verified (False: no tenant secret is configured).
    verified: bool
    rows: list[TesTaskRow] = field(default_factory=list)
    counts: Counter[TesState] = field(default_factory=Counter)
    #: Tasks read from the server (at most the limit).
    read: int = 0
    #: Whether the limit stopped the listing before its end.
    truncated: bool = False
    #: Tasks with this deployment's name whose identity tag does not verify (not shown).
    unverified: int = 0
    #: Tasks of DAGs the Airflow user may not read (not shown, not counted).
    not_permitted: int = 0

    @property
    def shown_total(self) -> int:
        return sum(self.counts.values())


def list_deployment_tasks(
    hook: TesHook,
    *,
    dag_id: str | None = None,
    state: TesState | None = None,
    limit: int = DEFAULT_LIMIT,
    permitted_dags: Callable[[set[str]], set[str]] = lambda dag_ids: dag_ids,
) -> TesListing:
    """The TES tasks this deployment submitted through ``hook``'s connection.

    :param dag_id: only this DAG's tasks (filtered by the server's tag filter).
    :param state: only rows in this state; the counts still cover every state.
    :param limit: read at most this many tasks.
    :param permitted_dags: which of these DAG ids the Airflow user may read (asked once).
    """
    tenant = Tenant.of_connection(hook.settings)
    wanted = {DEPLOYMENT_TAG: tenant.deployment}
    if dag_id:
        wanted["dag_id"] = dag_id
    listing = TesListing(deployment=tenant.deployment, verified=tenant.durable)
    tasks = list(islice(_listed(hook, wanted), limit + 1))
    listing.truncated = len(tasks) > limit
    tasks = tasks[:limit]
    listing.read = len(tasks)
    ours = []
    for task in tasks:
        if not has_tags(task, wanted) or not task.id:
            continue  # a server that ignores the tag filter
        if tenant.durable and not tenant.owns(task.tags):
            listing.unverified += 1
            continue
        ours.append(TesTaskRow.of(task))
    permitted = permitted_dags({row.dag_id for row in ours})
    rows = []
    for row in ours:
        if row.dag_id not in permitted:
            listing.not_permitted += 1
            continue
        listing.counts[row.state] += 1
        if state is None or row.state is state:
            rows.append(row)
    listing.rows = sort_rows(rows)
    return listing


def _listed(hook: TesHook, tags: Mapping[str, str]) -> Iterator[TesTask]:
    """One listing with the server's tag filter; a server that refuses it (400) is listed whole."""
    try:
        yield from hook.list_tasks(tags=tags, view=TesView.BASIC)
    except TesBadRequestError:
        yield from hook.list_tasks(view=TesView.BASIC)


def sort_rows(rows: Iterable[TesTaskRow]) -> list[TesTaskRow]:
    order = {s: i for i, s in enumerate(STATE_ORDER)}
    oldest = datetime.min.replace(tzinfo=UTC)
    newest_first = sorted(rows, key=lambda r: r.created or oldest, reverse=True)
    return sorted(newest_first, key=lambda r: order.get(r.state, len(order)))


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time as servers write it (Funnel: nanoseconds), in UTC; ``None`` if unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

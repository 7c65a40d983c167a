"""The TES 1.1 calls as typed :class:`~airflow_provider_tes.hooks._http.Request` values.

Built here once for the hook's sync and async twins: paths, query parameters, which calls are
safe to resend, and the paging rules of ListTasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import quote

from airflow_provider_tes.connection import TesConnection
from airflow_provider_tes.exceptions import TesConfigurationError, TesListingTooLongError
from airflow_provider_tes.hooks._http import Params, Request
from airflow_provider_tes.models import (
    MAX_PAGE_SIZE,
    TesCancelTaskResponse,
    TesCreateTaskResponse,
    TesListTasksResponse,
    TesServiceInfo,
    TesState,
    TesTask,
    TesTaskLogsPage,
    TesTaskStatesPage,
    TesView,
)


def service_info() -> Request[TesServiceInfo]:
    return Request("GET", "service-info", TesServiceInfo)


def get_task(task_id: str, view: TesView | str) -> Request[TesTask]:
    return Request("GET", _task_path(task_id), TesTask, params=(("view", _enum(TesView, view, "view")),))


def cancel_task(task_id: str) -> Request[TesCancelTaskResponse]:
    # Canceling twice is harmless, so the cancel call is retried like a read.
    return Request("POST", _task_path(task_id, ":cancel"), TesCancelTaskResponse, body={})


def create_task(task: TesTask) -> Request[TesCreateTaskResponse]:
    # Not idempotent: a resend may make a second task (see TesHook.create_task).
    return Request("POST", "tasks", TesCreateTaskResponse, body=task.to_request(), idempotent=False)


class TaskFilter(TypedDict, total=False):
    """What a ListTasks call selects (TES 1.1): the arguments of ``list_tasks``/``a_list_tasks``."""

    name_prefix: str | None
    state: TesState | str | None
    tags: Mapping[str, str] | None
    view: TesView | str
    page_size: int | None


def list_params(
    *,
    name_prefix: str | None = None,
    state: TesState | str | None = None,
    tags: Mapping[str, str] | None = None,
    view: TesView | str = TesView.MINIMAL,
    page_size: int | None = None,
) -> Params:
    """The query of a ListTasks call, without its page token."""
    if page_size is not None and not 0 < page_size < MAX_PAGE_SIZE:
        raise TesConfigurationError(f"page_size must be between 1 and {MAX_PAGE_SIZE - 1}, got {page_size}")
    params: list[tuple[str, str]] = [("view", _enum(TesView, view, "view"))]
    if name_prefix:
        params.append(("name_prefix", name_prefix))
    if state:
        params.append(("state", _enum(TesState, state, "state")))
    for key, value in (tags or {}).items():
        params.append(("tag_key", key))
        params.append(("tag_value", value))
    if page_size:
        params.append(("page_size", str(page_size)))
    return tuple(params)


Page = TypeVar("Page", TesListTasksResponse, TesTaskStatesPage, TesTaskLogsPage)


def task_pager(conn: TesConnection, **select: Unpack[TaskFilter]) -> Pager[TesListTasksResponse]:
    """A listing of whole tasks (in the view asked for)."""
    return Pager(list_params(**select), conn, TesListTasksResponse)


def state_pager(
    conn: TesConnection, *, state: TesState, tags: Mapping[str, str], page_size: int | None
) -> Pager[TesTaskStatesPage]:
    """A MINIMAL listing read as states by id (see :class:`TesTaskStatesPage`)."""
    params = list_params(state=state, tags=tags, view=TesView.MINIMAL, page_size=page_size)
    return Pager(params, conn, TesTaskStatesPage)


def logs_pager(
    conn: TesConnection, *, state: TesState, tags: Mapping[str, str], page_size: int | None
) -> Pager[TesTaskLogsPage]:
    """A FULL listing read as ids, states and logs (see :class:`TesTaskLogsPage`)."""
    params = list_params(state=state, tags=tags, view=TesView.FULL, page_size=page_size)
    return Pager(params, conn, TesTaskLogsPage)


@dataclass
class Pager(Generic[Page]):
    """Where a listing is: the request for the next page, what is new on a page, and when to stop.

    The listing ends on an empty token or an empty page. It is bounded: a token seen before, a
    page that brings no task not listed already (a server ignoring ``page_token``), or more
    than the connection's ``max_pages`` pages raise :class:`TesListingTooLongError`. Pages are
    read as ``model``: whole tasks, (:class:`TesTaskStatesPage`) states by id, or
    (:class:`TesTaskLogsPage`) ids, states and logs.
    """

    params: Params
    conn: TesConnection
    model: type[Page]
    token: str | None = None
    pages: int = 0
    seen_tokens: set[str] = field(default_factory=set)
    seen_ids: set[str] = field(default_factory=set)

    def request(self) -> Request[Page]:
        params = (*self.params, ("page_token", self.token)) if self.token else self.params
        return Request("GET", "tasks", self.model, params=params)

    def fresh(self, page: TesListTasksResponse | TesTaskLogsPage, req: Request[Any]) -> list[TesTask]:
        """The tasks of ``page`` not listed before (a task moved across a page edge is listed once)."""
        new = [task for task in page.tasks if task.id is None or task.id not in self.seen_ids]
        self._admit([task.id for task in new if task.id is not None], bool(new), bool(page.tasks), req)
        return new

    def fresh_states(self, page: TesTaskStatesPage, req: Request[Any]) -> dict[str, TesState | None]:
        """:meth:`fresh` for a page of states."""
        new = {task_id: state for task_id, state in page.tasks.items() if task_id not in self.seen_ids}
        self._admit(new, bool(new), bool(page.tasks), req)
        return new

    def _admit(self, new_ids: Iterable[str], any_new: bool, listed_any: bool, req: Request[Any]) -> None:
        self.pages += 1
        if self.pages > 1 and listed_any and not any_new:
            raise self._too_long(req, "the server sent a page of tasks it had listed already")
        self.seen_ids.update(new_ids)

    def advance(self, page: Page, req: Request[Any]) -> bool:
        """Take ``page``'s token; whether there is a next page."""
        token = page.next_page_token
        if not token or not page.tasks:
            return False
        if token in self.seen_tokens:
            raise self._too_long(req, f"the server repeated page token {token[:100]!r}")
        if self.pages >= self.conn.max_pages:
            raise self._too_long(
                req, f"the listing has more than the connection's max_pages ({self.conn.max_pages}) pages"
            )
        self.seen_tokens.add(token)
        self.token = token
        return True

    def _too_long(self, req: Request[Any], problem: str) -> TesListingTooLongError:
        return req.error(TesListingTooLongError, f"{req.where(self.conn)}: {problem}", self.conn)


def has_tags(task: TesTask, tags: Mapping[str, str] | None) -> bool:
    have = task.tags or {}
    return all(have.get(k) == v for k, v in (tags or {}).items())


def _task_path(task_id: str, suffix: str = "") -> str:
    """``tasks/{id}``, for an id that cannot address anything but one task.

    ``.`` and ``..`` survive quoting and are resolved as dot segments (``get_task('.')`` would
    call ListTasks); a quoted ``/`` is decoded back by many gateways. Neither is a TES id.
    """
    if not task_id or task_id in (".", "..") or "/" in task_id:
        raise TesConfigurationError(
            f"task_id must be a TES task id (non-empty, not '.' or '..', no '/'), got {task_id!r}"
        )
    return f"tasks/{quote(task_id, safe='')}{suffix}"


def _enum(kind: type[TesView] | type[TesState], value: Any, argument: str) -> str:
    try:
        return str(kind(value).value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise TesConfigurationError(f"{argument} must be one of {choices}, got {value!r}") from None

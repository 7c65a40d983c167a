"""Pydantic models of the GA4GH TES 1.1 API.

Written from the TES 1.1 OpenAPI document. Two directions, two attitudes:

* Requests (what the provider sends) are strict: unknown fields are rejected when a
  model is built in Python, and :meth:`TesModel.to_request` drops every ``None`` so the
  server never sees a ``null`` (Funnel decodes request bodies strictly, and a null or
  unknown field can be a 400).
* Responses (what servers send back) are lenient: unknown fields are kept and optional
  ones may be missing, because servers add extensions and omit empty lists. Use
  :meth:`TesModel.from_response` for those.

The same classes serve both directions; the leniency is chosen by the entry point, not
by a second copy of every model.
"""

from __future__ import annotations

import contextlib
import enum
import json
import posixpath
from typing import Any, ClassVar, Generic, Self, TypeVar

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict

#: Largest inline ``content`` TES 1.1 requires servers to accept for an input.
MAX_INLINE_CONTENT_BYTES = 128 * 1024

#: ``page_size`` must be less than this (TES 1.1 ListTasks).
MAX_PAGE_SIZE = 2048


class TesState(enum.StrEnum):
    """Task states of TES 1.1."""

    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELED = "CANCELED"
    PREEMPTED = "PREEMPTED"
    CANCELING = "CANCELING"

    @property
    def is_terminal(self) -> bool:
        """Whether the server will never change this state again.

        PREEMPTED is terminal for the TES task (a new task must be submitted to retry);
        CANCELING is not (it settles into CANCELED).
        """
        return self in _TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        """Whether the task may still run, i.e. is worth attaching to or canceling."""
        return self in _ACTIVE_STATES


_TERMINAL_STATES = frozenset(
    {
        TesState.COMPLETE,
        TesState.EXECUTOR_ERROR,
        TesState.SYSTEM_ERROR,
        TesState.CANCELED,
        TesState.PREEMPTED,
    }
)
_ACTIVE_STATES = frozenset({TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING, TesState.PAUSED})


class TesFileType(enum.StrEnum):
    FILE = "FILE"
    DIRECTORY = "DIRECTORY"


class TesView(enum.StrEnum):
    MINIMAL = "MINIMAL"
    BASIC = "BASIC"
    FULL = "FULL"


def _is_lenient(info: ValidationInfo) -> bool:
    """True while parsing a server's answer: request-only rules are not applied to it."""
    return bool(info.context and info.context.get("lenient"))


def _check_container_path(value: str, what: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{what} {value!r} must be an absolute path inside the container (start with '/')")
    if value.startswith("//") or (posixpath.normpath(value) != value.rstrip("/") and value != "/"):
        raise ValueError(f"{what} {value!r} must be a normalised path (no '.', '..' or '//')")
    return value


def _string_map(value: Any, info: ValidationInfo) -> Any:
    """On the response path, a map the spec types as strings may hold other JSON values
    (the spec's own example has ``slurmm_id: 123456``): they are kept as their JSON text."""
    if not _is_lenient(info) or not isinstance(value, dict):
        return value
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


class TesModel(BaseModel):
    """Base of every TES model: strict when built in Python, lenient when parsed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=False)

    def to_request(self) -> dict[str, Any]:
        """The JSON body to send: no ``None`` anywhere, enums as strings."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_response(cls, data: Any) -> Self:
        """Parse a server answer, keeping unknown fields instead of rejecting them."""
        return cls.model_validate(data, context={"lenient": True})

    @model_validator(mode="wrap")
    @classmethod
    def _lenient_extras(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        # Servers add fields the spec does not have; dropping them is better than
        # failing a poll. Only on the response path (context lenient=True).
        # Go servers (Funnel) also render unset optional strings as "".
        if _is_lenient(info) and isinstance(data, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            data = {k: v for k, v in data.items() if k in known and v != ""}
        return handler(data)


class TesInput(TesModel):
    name: str | None = None
    description: str | None = None
    url: str | None = None
    path: str
    type: TesFileType = TesFileType.FILE
    content: str | None = None
    streamable: bool | None = None

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str, info: ValidationInfo) -> str:
        return v if _is_lenient(info) else _check_container_path(v, "input path")

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> Self:
        # The BASIC view omits inline content, so a server's answer may have neither.
        if _is_lenient(info):
            return self
        if (self.url is None) == (self.content is None):
            raise ValueError(
                f"input {self.path!r} needs exactly one of 'url' (where the server fetches it) "
                "or 'content' (the literal text)"
            )
        if self.content is not None:
            size = len(self.content.encode())
            if size > MAX_INLINE_CONTENT_BYTES:
                raise ValueError(
                    f"input {self.path!r} has {size} bytes of inline content; TES servers need only accept "
                    f"{MAX_INLINE_CONTENT_BYTES} bytes: stage it as a file and pass a 'url' instead"
                )
            if self.type is TesFileType.DIRECTORY:
                raise ValueError(f"input {self.path!r}: inline 'content' can only be a FILE")
        return self


class TesOutput(TesModel):
    name: str | None = None
    description: str | None = None
    url: str
    path: str
    path_prefix: str | None = None
    type: TesFileType = TesFileType.FILE

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str, info: ValidationInfo) -> str:
        if _is_lenient(info) or any(c in v for c in "*?["):
            return v
        return _check_container_path(v, "output path")

    @field_validator("path_prefix")
    @classmethod
    def _check_prefix(cls, v: str | None, info: ValidationInfo) -> str | None:
        return v if v is None or _is_lenient(info) else _check_container_path(v, "output path_prefix")

    @model_validator(mode="after")
    def _wildcards_need_prefix(self, info: ValidationInfo) -> Self:
        if _is_lenient(info):
            return self
        if any(c in self.path for c in "*?[") and self.path_prefix is None:
            raise ValueError(
                f"output path {self.path!r} has wildcards: set 'path_prefix' to the part of the path "
                "that is stripped before the rest is appended to 'url'"
            )
        if not self.path.startswith("/"):
            raise ValueError(f"output path {self.path!r} must be absolute (start with '/')")
        return self


class TesResources(TesModel):
    #: Whole cores in a request; an answer may report a fraction (a server's accounting).
    cpu_cores: int | float | None = None
    preemptible: bool | None = None
    ram_gb: float | None = Field(default=None, allow_inf_nan=False)
    disk_gb: float | None = Field(default=None, allow_inf_nan=False)
    zones: list[str] | None = None
    backend_parameters: dict[str, str] | None = None
    backend_parameters_strict: bool | None = None

    _strings = field_validator("backend_parameters", mode="before")(_string_map)

    @model_validator(mode="after")
    def _positive(self, info: ValidationInfo) -> Self:
        # Go servers report unset sizes as 0, so this is a request-only rule.
        if _is_lenient(info):
            return self
        if isinstance(self.cpu_cores, float):
            raise ValueError(f"cpu_cores must be a whole number, got {self.cpu_cores!r}")
        for name in ("cpu_cores", "ram_gb", "disk_gb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        return self


class TesExecutor(TesModel):
    image: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    workdir: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    env: dict[str, str] | None = None
    ignore_error: bool | None = None

    _strings = field_validator("env", mode="before")(_string_map)

    @field_validator("workdir", "stdin", "stdout", "stderr")
    @classmethod
    def _absolute(cls, v: str | None, info: ValidationInfo) -> str | None:
        return v if v is None or _is_lenient(info) else _check_container_path(v, "executor path")


class TesExecutorLog(TesModel):
    start_time: str | None = None
    end_time: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int | None = None


class TesOutputFileLog(TesModel):
    url: str
    path: str
    #: Required by the spec, but an answer without it still says where the output went.
    size_bytes: int | None = None

    @field_validator("size_bytes", mode="before")
    @classmethod
    def _parse_size(cls, v: Any) -> Any:
        # The spec carries int64 as a string so JavaScript clients keep precision.
        if isinstance(v, str):
            return int(v.strip())
        return v


class TesTaskLog(TesModel):
    logs: list[TesExecutorLog] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    _strings = field_validator("metadata", mode="before")(_string_map)
    start_time: str | None = None
    end_time: str | None = None
    outputs: list[TesOutputFileLog] = Field(default_factory=list)
    system_logs: list[str] | None = None


class TesTask(TesModel):
    """A TES task. Server-owned fields (id, state, logs, creation_time) are never sent."""

    SERVER_FIELDS: ClassVar[frozenset[str]] = frozenset({"id", "state", "logs", "creation_time"})

    id: str | None = None
    state: TesState | None = None
    name: str | None = None
    description: str | None = None
    inputs: list[TesInput] | None = None
    outputs: list[TesOutput] | None = None
    resources: TesResources | None = None
    executors: list[TesExecutor] = Field(default_factory=list)
    volumes: list[str] | None = None
    tags: dict[str, str] | None = None
    logs: list[TesTaskLog] | None = None
    _strings = field_validator("tags", mode="before")(_string_map)
    creation_time: str | None = None

    @field_validator("volumes")
    @classmethod
    def _absolute_volumes(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        for path in [] if _is_lenient(info) else v or []:
            _check_container_path(path, "volume")
        return v

    @field_validator("state", mode="before")
    @classmethod
    def _known_state(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and v in TesState.__members__):
            raise ValueError(f"unknown TES state {v!r}")
        return v

    @model_validator(mode="after")
    def _request_rules(self, info: ValidationInfo) -> Self:
        # A MINIMAL or BASIC view legitimately omits executors; only a task we are
        # about to send must have one.
        if _is_lenient(info):
            return self
        if not self.executors:
            raise ValueError("a TES task needs at least one executor")
        seen: set[str] = set()
        for item in self.inputs or []:
            if item.path in seen:
                raise ValueError(f"container path {item.path!r} is given to more than one input")
            seen.add(item.path)
        return self

    def to_request(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude=set(self.SERVER_FIELDS))

    @property
    def last_log(self) -> TesTaskLog | None:
        """The newest attempt's log: servers may retry internally and append logs."""
        return self.logs[-1] if self.logs else None


class TesCreateTaskResponse(TesModel):
    id: str = Field(min_length=1)


class TesCancelTaskResponse(TesModel):
    """The answer to CancelTask: an empty object."""


class TesListTasksResponse(TesModel):
    tasks: list[TesTask] = Field(default_factory=list)
    next_page_token: str | None = None


class TesTaskStatesPage(TesModel):
    """A page of a MINIMAL listing as the shared poller reads it: each task's state by id.

    Not a list of :class:`TesTask`: a triggerer lists thousands of tasks every round, and model
    objects alive while a page is read get promoted by Python's garbage collector, bringing on
    full collections of the whole triggerer (0.4-1 s pauses of its event loop at 10,000
    triggers, measured with benchmark B1). One dict of strings and enum members per page is
    one object for the collector. Entries are judged as in :func:`from_minimal_json`.
    """

    tasks: dict[str, TesState | None]
    next_page_token: str | None = None


class _MinimalTask(TypedDict, total=False):
    """What the MINIMAL view holds; the rest of what a server sends is skipped unread.

    Funnel v0.12.2 answers a tag-filtered MINIMAL listing with whole tasks (~850 bytes each):
    decoding all of that into Python objects cost the triggerer a second per 10,000 tasks.
    Read into plain dicts (no model objects); the values are checked by :class:`TesTask` as
    usual, so the rules stay in one place.
    """

    id: Any
    state: Any


_Entry = TypeVar("_Entry", bound=_MinimalTask)


class _Page(TypedDict, Generic[_Entry], total=False):
    tasks: list[_Entry]
    next_page_token: Any


_MINIMAL_TASK = TypeAdapter(_MinimalTask)
_MINIMAL_PAGE = TypeAdapter(_Page[_MinimalTask])
_Minimal = TypeVar("_Minimal", TesTask, TesListTasksResponse, TesTaskStatesPage)


def from_minimal_json(model: type[_Minimal], body: bytes) -> _Minimal:
    """Parse the JSON answer to a MINIMAL request into ``model`` (a task or a page of them).

    Raises :class:`pydantic.ValidationError` for a body that is not JSON or not such an answer.
    A page is judged entry by entry: one entry with an unknown state (a foreign task on a server
    that ignores the tag filter) keeps its id with no state, and one without a string id is
    left out, instead of failing the whole page; the caller looks such tasks up if it needs them.
    """
    if model is TesTask:
        return model.from_response(dict(_MINIMAL_TASK.validate_json(body)))
    page = _MINIMAL_PAGE.validate_json(body)
    entries = [entry for entry in map(_readable_entry, page.get("tasks") or []) if entry is not None]
    if model is TesTaskStatesPage:
        states = {entry["id"]: entry["state"] and TesState(entry["state"]) for entry in entries}
        return model.from_response({"tasks": states, "next_page_token": page.get("next_page_token")})
    return model.from_response({**page, "tasks": entries})


def _readable_entry(entry: _MinimalTask | _LogsTask) -> dict[str, Any] | None:
    task_id, state = entry.get("id"), entry.get("state")
    if not isinstance(task_id, str) or not task_id:
        return None
    known = isinstance(state, str) and state in TesState.__members__
    return {"id": task_id, "state": state if known else None}


class TesTaskLogsPage(TesModel):
    """A page of a FULL listing as live logs read it: each task's id, state and logs only.

    Live logs list the FULL view of the tasks they follow every interval; a FULL task is ~1 KiB
    of inputs, outputs, executors and resources besides its logs, and reading all of it into
    models was most of what following 100 tasks cost the triggerer (profiled). The rest is
    skipped unread. ``partial`` holds the ids of entries without executors: the server did not
    send the FULL view (a MINIMAL entry), so their logs are not there either.
    """

    tasks: list[TesTask]
    partial: list[str] = Field(default_factory=list)
    next_page_token: str | None = None


class _LogsTask(_MinimalTask, total=False):
    executors: Any
    logs: Any


_LOGS_PAGE = TypeAdapter(_Page[_LogsTask])


def from_logs_json(body: bytes) -> TesTaskLogsPage:
    """Parse a FULL listing into a :class:`TesTaskLogsPage`, entry by entry as
    :func:`from_minimal_json` does: an entry that is not a readable task is left out (its task
    is read by GET if it is followed)."""
    page = _LOGS_PAGE.validate_json(body)
    tasks: list[TesTask] = []
    partial: list[str] = []
    for entry in page.get("tasks") or []:
        readable = _readable_entry(entry)
        if readable is None:
            continue
        if not entry.get("executors"):
            partial.append(readable["id"])
            continue
        with contextlib.suppress(pydantic.ValidationError):
            tasks.append(TesTask.from_response({**readable, "logs": entry.get("logs")}))
    # The tasks were checked one by one above (leniently, as every answer is); the rest here.
    rest = TesTaskLogsPage.from_response(
        {"tasks": [], "partial": partial, "next_page_token": page.get("next_page_token")}
    )
    return rest.model_copy(update={"tasks": tasks})


class TesServiceType(TesModel):
    group: str
    artifact: str
    version: str


class TesOrganization(TesModel):
    name: str
    url: str


class TesServiceInfo(TesModel):
    id: str
    name: str
    #: Required by the spec; optional here so that a server omitting it still connects.
    type: TesServiceType | None = None
    description: str | None = None
    organization: TesOrganization | None = None
    contact_url: str | None = Field(None, alias="contactUrl")
    documentation_url: str | None = Field(None, alias="documentationUrl")
    created_at: str | None = Field(None, alias="createdAt")
    updated_at: str | None = Field(None, alias="updatedAt")
    environment: str | None = None
    version: str | None = None
    storage: list[str] | None = None
    tesResources_backend_parameters: list[str] | None = None

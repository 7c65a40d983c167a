"""The one way the loopback servers change what passes through them: rules of rewrites.

Why a vocabulary of its own: the fault proxy, the OIDC gateway, the in-memory TES and the server
personalities all say what they do to a request or an answer in these terms -- a :class:`Rule`
matches (method, path, query) and applies a :class:`Rewrite` (answer here, or change what the
backend sees; then change status, headers or JSON body, delay, trickle, truncate, drop or reset).
The servers that apply them are in :mod:`tests.support.loopback`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

TES_PREFIX = "/ga4gh/tes/v1"
#: Path patterns of the TES calls, for :attr:`Rule.path` (any prefix): ListTasks and CreateTask,
#: GetTask, and both reads.
TASKS_PATH = r"/tasks/?$"
TASK_PATH = r"/tasks/[^/:]+$"
TASK_READS_PATH = r"/tasks(/[^/:]+)?/?$"


@dataclass(frozen=True)
class Request:
    """A request as a server here received it (or as a rule rewrote it for the backend)."""

    method: str
    target: str  # path and query, as sent
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @functools.cached_property
    def query(self) -> dict[str, list[str]]:
        params: dict[str, list[str]] = {}
        for key, value in parse_qsl(urlsplit(self.target).query, keep_blank_values=True):
            params.setdefault(key, []).append(value)
        return params

    def json(self) -> Any:
        """The body parsed as JSON; None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def with_json(self, doc: Any) -> Request:
        return replace(self, body=json.dumps(doc).encode())

    def with_header(self, name: str, value: str) -> Request:
        headers = httpx.Headers(self.headers)
        headers[name] = value
        return replace(self, headers=headers)

    def without_query(self, *names: str) -> Request:
        kept = [
            (k, v)
            for k, v in parse_qsl(urlsplit(self.target).query, keep_blank_values=True)
            if k not in names
        ]
        return replace(self, target=self.path + (f"?{urlencode(kept)}" if kept else ""))


@dataclass
class Answer:
    """A response: status, headers (in order, repeats allowed) and the whole body."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()] + [(name, value)]


def json_answer(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(
        status, json.dumps(doc).encode(), [("Content-Type", "application/json"), *(headers or {}).items()]
    )


#: How an answer leaves: ``whole``; ``reset``: the connection is aborted with a TCP RST as soon as
#: the request is read (the backend never sees it); ``drop``: the backend does its work, then the
#: connection is closed without an answer (the ambiguous create); ``truncate``: half the body
#: under the full Content-Length, then close.
Delivery = Literal["whole", "reset", "drop", "truncate"]


@dataclass(frozen=True)
class Rewrite:
    """What a matching rule does: to the request, to the answer, to the delivery."""

    #: Answer here; the backend never sees the request.
    answer: Answer | Callable[[Request], Answer] | None = None
    #: The backend sees this request instead (other query, body, headers).
    request: Callable[[Request], Request] | None = None
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Rewrites a 2xx JSON answer (before ``status``): ``body(doc, request)`` returns the new document.
    body: Callable[[Any, Request], Any] | None = None
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Seconds between the body's chunks (16 bytes each) when > 0.
    trickle: float = 0.0
    delivery: Delivery = "whole"


@dataclass
class Rule:
    """When a request matches, apply ``rewrite`` (or what a callable ``rewrite`` returns for it).

    ``path`` is a regular expression searched in the path (no query); ``query`` names parameters
    that must be present (with that value, unless None). ``times`` caps how often it applies.
    """

    rewrite: Rewrite | Callable[[Request], Rewrite | None]
    method: str | None = None
    path: str | None = None
    query: Mapping[str, str | None] = field(default_factory=dict)
    times: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self._path_re = re.compile(self.path) if self.path is not None else None

    def matches(self, request: Request) -> bool:
        if self.method is not None and request.method != self.method.upper():
            return False
        if self._path_re is not None and not self._path_re.search(request.path):
            return False
        return all(
            key in request.query and (value is None or value in request.query[key])
            for key, value in self.query.items()
        )

    def pick(self, request: Request) -> Rewrite | None:
        """The rewrite for ``request``, counting it against ``times`` (call under the server's lock)."""
        if (self.times is not None and self.times <= 0) or not self.matches(request):
            return None
        rewrite = self.rewrite(request) if callable(self.rewrite) else self.rewrite
        if rewrite is not None and self.times is not None:
            self.times -= 1
        return rewrite


def tes_call(method: str, path: str) -> str:
    """The TES call a request is: ``create``, ``list``, ``get``, ``cancel`` or ``other``."""
    rest = path.split(TES_PREFIX, 1)[-1].strip("/")
    if rest == "tasks":
        return "create" if method == "POST" else "list"
    if rest.startswith("tasks/"):
        return "cancel" if rest.endswith(":cancel") else "get"
    return "other"

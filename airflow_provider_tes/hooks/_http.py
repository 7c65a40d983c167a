"""The request path under :class:`~airflow_provider_tes.hooks.tes.TesHook`, shared by sync and async.

A :class:`Request` knows the model its answer must parse into, so a call returns that model or
raises a :class:`~airflow_provider_tes.exceptions.TesError`; nothing in between is untyped.
Everything here is free of I/O: the hook's sync and async twins send, this module decides what
the answer means (:func:`interpret`), which failures are worth another try
(:class:`Retryable`, :func:`transport_failure`) and how long to wait (:func:`retry_policy`).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import httpx
import pydantic
import tenacity

from airflow_provider_tes.connection import TesConnection
from airflow_provider_tes.exceptions import (
    TesAmbiguousCreateError,
    TesAuthError,
    TesBadRequestError,
    TesMalformedResponseError,
    TesNotFoundError,
    TesRequestError,
    TesRequestTimeoutError,
    TesResponseTooLargeError,
    TesServerUnavailableError,
)
from airflow_provider_tes.models import (
    TesListTasksResponse,
    TesModel,
    TesTask,
    TesTaskLogsPage,
    TesTaskStatesPage,
    TesView,
    from_logs_json,
    from_minimal_json,
)

M = TypeVar("M", bound=TesModel)
E = TypeVar("E", bound=TesRequestError)
Params = tuple[tuple[str, str], ...]

#: Failures where the request certainly never reached the server: always safe to resend.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
#: 5xx answers that will not change on a resend: 501 (the server does not implement the call:
#: a gateway that routes only some TES paths says so) and 505 (HTTP version refused). Every
#: other 5xx (507 out of storage, 508, 520-530 of CDNs, ...) is an outage like 503.
PERMANENT_5XX = frozenset({501, 505})


def is_transient(status: int) -> bool:
    """Whether an answer with ``status`` may differ on a resend: 429 and 5xx but 501/505."""
    return status == 429 or (500 <= status < 600 and status not in PERMANENT_5XX)


@dataclass(frozen=True)
class Request(Generic[M]):
    """One TES call and the model of its answer; ``idempotent``: resending can never do harm."""

    method: str
    path: str
    model: type[M]
    params: Params = ()
    body: dict[str, Any] | None = None
    idempotent: bool = True

    @property
    def minimal(self) -> bool:
        """Whether the answer is read as id and state only (see ``models.from_minimal_json``)."""
        return ("view", TesView.MINIMAL.value) in self.params and issubclass(
            self.model, TesTask | TesListTasksResponse | TesTaskStatesPage
        )

    def where(self, conn: TesConnection) -> str:
        return f"{self.method} {self.url(conn)}"

    def url(self, conn: TesConnection) -> str:
        return f"{conn.base_url}/{self.path}"

    def error(self, cls: type[E], message: str, conn: TesConnection, status: int | None = None) -> E:
        """A ``cls`` error about this request."""
        return cls(message, method=self.method, url=self.url(conn), status_code=status)


class Retryable(Exception):
    """A failure worth another try; ``error`` is what to raise when tries run out."""

    def __init__(self, error: TesRequestError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta or HTTP date); ``None`` when unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff(min_wait: float, max_wait: float) -> tenacity.wait_exponential_jitter:
    """The one backoff of the hook: exponential from ``min_wait``, jittered, capped at ``max_wait``."""
    return tenacity.wait_exponential_jitter(multiplier=min_wait, max=max_wait, jitter=min_wait)


class _Log(Protocol):
    def warning(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...


def retry_policy(
    retries: int, min_wait: float, max_wait: float, log: _Log, scrub: Callable[[str], str]
) -> dict[str, Any]:
    """Keyword arguments of ``tenacity.Retrying``/``AsyncRetrying`` for one request.

    Retries :class:`Retryable` failures only, waits the backoff or the server's Retry-After
    (capped at ``max_wait``), and reraises the last :class:`Retryable` when tries run out.
    The warning before each retry passes ``scrub``.
    """
    wait_backoff = backoff(min_wait, max_wait)

    def wait(state: tenacity.RetryCallState) -> float:
        delay = wait_backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, max_wait))
        return float(delay)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "TES request failed (%s); retry %d of %d in %.1fs",
            scrub(str(exc)),
            state.attempt_number,
            retries,
            state.next_action.sleep if state.next_action else 0.0,
        )

    return {
        "stop": tenacity.stop_after_attempt(retries + 1),
        "wait": wait,
        "retry": tenacity.retry_if_exception_type(Retryable),
        "before_sleep": before_sleep,
        "reraise": True,
    }


#: What a transport failure means, by type. httpx's own text is not used: h11 quotes the header
#: it refuses (``Illegal header value b'Bearer ...'``), so it may carry a credential.
#: Timeouts first: what did not happen within the timeout.
_TIMEOUT_SUMMARIES: dict[type[httpx.HTTPError], str] = {
    httpx.ConnectTimeout: "no connection",
    httpx.PoolTimeout: "no free connection",
    httpx.ReadTimeout: "no answer",
    httpx.WriteTimeout: "the request could not be sent",
}
_TRANSPORT_SUMMARIES: dict[type[httpx.HTTPError], str] = {
    httpx.ConnectError: "could not connect",
    httpx.ProxyError: "the proxy refused the request",
    httpx.UnsupportedProtocol: "the URL's scheme is not supported",
    httpx.LocalProtocolError: "httpx refused to send the request (an invalid header or body)",
    httpx.RemoteProtocolError: "the server broke the HTTP protocol or closed the connection",
    httpx.ReadError: "the connection broke while the answer was read",
    httpx.WriteError: "the connection broke while the request was sent",
    httpx.DecodingError: "the answer's content encoding could not be decoded",
}


def describe_transport_failure(err: httpx.HTTPError) -> str:
    """``Type: safe summary`` of a transport error; never the error's own text (see above).

    A connect error keeps its text (refused, unknown host, certificate problems): no request
    header exists before the connection does.
    """
    kind = type(err).__name__
    summary = next(
        (f"{text} within the timeout" for cls, text in _TIMEOUT_SUMMARIES.items() if isinstance(err, cls)),
        next((text for cls, text in _TRANSPORT_SUMMARIES.items() if isinstance(err, cls)), "transport error"),
    )
    if isinstance(err, httpx.ConnectError) and str(err):
        summary = f"{summary}: {str(err)[:300]}"
    return f"{kind}: {summary}"


def transport_failure(req: Request[Any], err: httpx.HTTPError, conn: TesConnection) -> Exception:
    """What a transport error means: retry, or an ambiguous create (the body may have arrived)."""
    what = describe_transport_failure(err)
    if isinstance(err, NOT_SENT) or req.idempotent:
        return Retryable(req.error(TesServerUnavailableError, f"{req.where(conn)} failed: {what}", conn))
    return req.error(
        TesAmbiguousCreateError,
        f"{req.where(conn)} failed after the request may have reached the server ({what})",
        conn,
    )


def scrubbed(err: E, scrub: Callable[[str], str]) -> E:
    """``err`` with its message and URL passed through ``scrub`` (a new error of the same type)."""
    message = scrub(str(err))
    if message == str(err) and scrub(err.url) == err.url:
        return err
    return type(err)(message, method=err.method, url=scrub(err.url), status_code=err.http_status)


class Body:
    """An answer's body read within the request's bounds: its deadline and ``max_response_bytes``.

    The deadline covers the whole exchange, not each read: httpx's ``timeout`` applies per
    socket operation, so a body trickling in a byte at a time would otherwise never time out.
    The sync twin checks the deadline between chunks (a stalled read still ends at ``timeout``);
    the async twin also runs the exchange under ``asyncio.timeout``.
    """

    def __init__(
        self, req: Request[Any], conn: TesConnection, response: httpx.Response, deadline: float
    ) -> None:
        self._req = req
        self._conn = conn
        self._deadline = deadline
        self._chunks: list[bytes] = []
        self._size = 0
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > conn.max_response_bytes:
            raise self._too_large(response.status_code, f"announces {int(declared)} bytes")
        self._status = response.status_code

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._conn.max_response_bytes:
            raise self._too_large(self._status, f"has more than {self._size - len(chunk)} bytes")
        self._chunks.append(chunk)
        if time.monotonic() > self._deadline:
            raise TimeoutError

    @property
    def content(self) -> bytes:
        return b"".join(self._chunks)

    def _too_large(self, status: int, what: str) -> TesResponseTooLargeError:
        return self._req.error(
            TesResponseTooLargeError,
            f"{self._req.where(self._conn)} -> HTTP {status}: the answer {what}, over the "
            f"connection's max_response_bytes ({self._conn.max_response_bytes})",
            self._conn,
            status,
        )


def deadline_failure(req: Request[Any], conn: TesConnection) -> Exception:
    """What a request past its deadline means: retry, or an ambiguous create."""
    if not req.idempotent:
        return req.error(
            TesAmbiguousCreateError,
            f"{req.where(conn)} took longer than the timeout ({conn.timeout:g}s) after the request "
            "may have reached the server",
            conn,
        )
    return Retryable(
        req.error(
            TesRequestTimeoutError,
            f"{req.where(conn)} failed: the whole request took longer than the timeout ({conn.timeout:g}s)",
            conn,
        )
    )


def interpret(req: Request[M], response: httpx.Response, body: bytes, conn: TesConnection) -> M:
    """The answer as ``req.model``, or the right error: the one place for status handling."""
    status = response.status_code
    where = f"{req.where(conn)} -> HTTP {status}"
    if 200 <= status < 300:
        return _parse(req, body, conn, status)
    detail = _server_message(body)
    if status in (401, 403):
        raise req.error(
            TesAuthError,
            f"{where}: the TES server rejected {conn.describe_credential()}"
            + (f": {detail}" if detail else ""),
            conn,
            status,
        )
    if status == 404:
        raise req.error(TesNotFoundError, f"{where}: not found {detail}".rstrip(), conn, status)
    if is_transient(status):
        if status != 429 and not req.idempotent:
            raise req.error(
                TesAmbiguousCreateError,
                f"{where}: the server may or may not have made the task {detail}".rstrip(),
                conn,
                status,
            )
        raise Retryable(
            req.error(TesServerUnavailableError, f"{where} {detail}".rstrip(), conn, status),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500:
        raise req.error(TesServerUnavailableError, f"{where} {detail}".rstrip(), conn, status)
    raise req.error(
        TesBadRequestError,
        f"{where}: the server refused the request: {detail or response.reason_phrase}",
        conn,
        status,
    )


def _parse(req: Request[M], body: bytes, conn: TesConnection, status: int) -> M:
    """One parse path; a MINIMAL answer takes only id and state out of the body, a page for live
    logs only ids, states and logs (fast paths)."""
    try:
        if req.minimal:
            return cast(M, from_minimal_json(cast(Any, req.model), body))
        if req.model is TesTaskLogsPage:
            return cast(M, from_logs_json(body))
        data = json.loads(body)
    except (ValueError, RecursionError) as err:
        json_error = not isinstance(err, pydantic.ValidationError) or _is_json_error(err)
        problem = (
            f"the body is not JSON: {_preview(body)!r}"
            if json_error
            else f"the answer is not a valid TES {req.model.__name__}: {_short(err)}"
        )
        raise req.error(TesMalformedResponseError, f"{req.where(conn)}: {problem}", conn, status) from None
    try:
        return req.model.from_response(data)
    except (pydantic.ValidationError, TypeError, ValueError) as err:
        problem = f"the answer is not a valid TES {req.model.__name__}: {_short(err)}"
        raise req.error(TesMalformedResponseError, f"{req.where(conn)}: {problem}", conn, status) from None


def _is_json_error(err: pydantic.ValidationError) -> bool:
    return err.errors()[0]["type"] == "json_invalid"


def _preview(body: bytes, size: int = 200) -> str:
    """The start of a body for a message, whatever charset the server claimed."""
    return body[:size].decode("utf-8", "replace")


def _server_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return _preview(body, 500).strip()
    if isinstance(data, dict):
        for key in ("message", "msg", "error", "detail"):
            if data.get(key):
                return str(data[key])[:500]
    return str(data)[:500]


def _short(err: Exception) -> str:
    if isinstance(err, pydantic.ValidationError):
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"{loc or 'body'}: {first.get('msg')}{more}"
    return str(err)

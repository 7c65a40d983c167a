"""Hook for GA4GH TES servers: one httpx client per hook, sync for workers, async for triggers."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar, cast
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pydantic
import tenacity
from airflow.sdk import BaseHook

from airflow_provider_tes.exceptions import (
    TesAmbiguousCreateError,
    TesAuthError,
    TesBadRequestError,
    TesConfigurationError,
    TesError,
    TesMalformedResponseError,
    TesNotFoundError,
    TesRequestError,
    TesServerUnavailableError,
)
from airflow_provider_tes.models import (
    MAX_PAGE_SIZE,
    TesCreateTaskResponse,
    TesListTasksResponse,
    TesModel,
    TesServiceInfo,
    TesState,
    TesTask,
    TesView,
    from_minimal_json,
)

DEFAULT_API_PATH = "/ga4gh/tes/v1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 5
DEFAULT_MAX_CONCURRENCY = 10
DEFAULT_POLL_INTERVAL = 5.0
#: Longest single backoff sleep, and the longest Retry-After the hook will honour.
DEFAULT_RETRY_MAX_WAIT = 30.0

_M = TypeVar("_M", bound=TesModel)


class _BearerAuth(httpx.Auth):
    """Static bearer token; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(token=***)"


def _as_bool(value: Any, name: str, conn_id: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise TesConfigurationError(
        f"connection {conn_id!r}: extra {name!r} must be true or false, got {value!r}"
    )


def _as_number(value: Any, name: str, conn_id: str, *, integer: bool = False, minimum: float = 0) -> Any:
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise TesConfigurationError(
            f"connection {conn_id!r}: extra {name!r} must be {kind}, got {value!r}"
        ) from None
    if number < minimum:
        raise TesConfigurationError(
            f"connection {conn_id!r}: extra {name!r} must be >= {minimum}, got {value!r}"
        )
    return number


@dataclass(frozen=True)
class TesConnectionSettings:
    """Everything the hook needs from an Airflow connection, validated once.

    ``host`` is the TES base URL. A host without scheme means https (``protocol`` extra
    overrides, for the URI form of a connection), a URL without path means
    ``/ga4gh/tes/v1``; in the URI form the path arrives as ``schema``.
    """

    conn_id: str
    base_url: str
    auth_type: str
    login: str | None = field(default=None)
    secret: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    verify: bool | str = True
    poll_interval: float = DEFAULT_POLL_INTERVAL
    inputs_url: str | None = None
    outputs_url: str | None = None
    aws_conn_id: str | None = None
    task_link_template: str | None = None
    token_url: str | None = None
    scope: str | None = None

    @classmethod
    def from_connection(cls, conn: Any) -> Self:
        conn_id = conn.conn_id
        if conn.conn_type and conn.conn_type != "tes":
            raise TesConfigurationError(
                f"connection {conn_id!r} has type {conn.conn_type!r}; "
                "TesHook needs a connection of type 'tes'"
            )
        extra: Mapping[str, Any] = conn.extra_dejson or {}
        base_url = cls._base_url(conn, extra)
        token = extra.get("token") or None
        auth_type = (extra.get("auth_type") or "").strip().lower()
        if auth_type in ("", "auto"):
            auth_type = "bearer" if token else ("basic" if conn.login else "none")
        if auth_type not in {"none", "basic", "bearer", "oauth2"}:
            raise TesConfigurationError(
                f"connection {conn_id!r}: auth_type must be one of none, basic, bearer, oauth2 "
                f"(got {auth_type!r})"
            )
        secret: str | None = None
        if auth_type == "basic":
            if not conn.login:
                raise TesConfigurationError(f"connection {conn_id!r}: basic auth needs a login (username)")
            secret = conn.password or ""
        elif auth_type == "bearer":
            secret = token or conn.password
            if not secret:
                raise TesConfigurationError(
                    f"connection {conn_id!r}: bearer auth needs a token (extra 'token' or the password field)"
                )
        elif auth_type == "oauth2":
            if not (extra.get("token_url") and conn.login and conn.password):
                raise TesConfigurationError(
                    f"connection {conn_id!r}: oauth2 needs extra 'token_url', the client id as login "
                    "and the client secret as password"
                )
            secret = conn.password
        if secret:
            _mask(secret)
        verify: bool | str = _as_bool(extra.get("verify", True), "verify", conn_id)
        if extra.get("ca_bundle"):
            verify = str(extra["ca_bundle"])
        return cls(
            conn_id=conn_id,
            base_url=base_url,
            auth_type=auth_type,
            login=conn.login if auth_type in ("basic", "oauth2") else None,
            secret=secret,
            timeout=_as_number(extra.get("timeout", DEFAULT_TIMEOUT), "timeout", conn_id, minimum=0.001),
            retries=_as_number(extra.get("retries", DEFAULT_RETRIES), "retries", conn_id, integer=True),
            max_concurrency=_as_number(
                extra.get("max_concurrency", DEFAULT_MAX_CONCURRENCY),
                "max_concurrency",
                conn_id,
                integer=True,
                minimum=1,
            ),
            verify=verify,
            poll_interval=_as_number(
                extra.get("poll_interval", DEFAULT_POLL_INTERVAL), "poll_interval", conn_id, minimum=0.001
            ),
            inputs_url=extra.get("inputs_url") or None,
            outputs_url=extra.get("outputs_url") or None,
            aws_conn_id=extra.get("aws_conn_id") or None,
            task_link_template=extra.get("task_link_template") or None,
            token_url=extra.get("token_url") or None,
            scope=extra.get("scope") or None,
        )

    @staticmethod
    def _base_url(conn: Any, extra: Mapping[str, Any]) -> str:
        host = (conn.host or "").strip()
        if not host:
            raise TesConfigurationError(
                f"connection {conn.conn_id!r} has no host: set it to the TES base URL, "
                "e.g. https://tes.example.org/ga4gh/tes/v1"
            )
        if "://" not in host:
            host = f"{extra.get('protocol') or 'https'}://{host}"
        parts = urlsplit(host)
        if parts.scheme not in {"http", "https"}:
            raise TesConfigurationError(
                f"connection {conn.conn_id!r}: the TES URL must be http or https, got {parts.scheme!r}"
            )
        netloc = parts.hostname or ""
        if ":" in netloc:  # IPv6 literal
            netloc = f"[{netloc}]"
        port = parts.port or conn.port
        if port:
            netloc = f"{netloc}:{port}"
        path = parts.path.rstrip("/")
        if not path and conn.schema:
            path = "/" + conn.schema.strip("/")
        if not path:
            path = DEFAULT_API_PATH
        # userinfo is dropped on purpose: credentials live in login/password only, so
        # the URL can appear in every message and log line.
        return urlunsplit((parts.scheme, netloc, path, "", ""))

    def tls_verify(self) -> bool | str:
        """What httpx should verify; nothing when no URL the client talks to is https.

        Building a verifying SSL context costs tens of milliseconds per client, most of a
        plain-HTTP submit, so it is skipped when no request can use TLS (redirects are off).
        """
        urls = [self.base_url, self.token_url if self.auth_type == "oauth2" else None]
        if not any(url and url.lower().startswith("https:") for url in urls):
            return False
        return self.verify

    def httpx_auth(self) -> httpx.Auth | None:
        if self.auth_type == "basic":
            return httpx.BasicAuth(self.login or "", self.secret or "")
        if self.auth_type == "bearer":
            return _BearerAuth(self.secret or "")
        if self.auth_type == "oauth2":
            from airflow_provider_tes.auth import OAuth2ClientCredentials

            return OAuth2ClientCredentials(
                token_url=self.token_url or "",
                client_id=self.login or "",
                client_secret=self.secret or "",
                scope=self.scope,
            )
        return None

    def describe_credential(self) -> str:
        if self.auth_type == "basic":
            return f"the login/password (user {self.login!r}) of connection {self.conn_id!r}"
        if self.auth_type == "bearer":
            return f"the bearer token of connection {self.conn_id!r}"
        if self.auth_type == "oauth2":
            return (
                f"the OAuth2 client {self.login!r} (token from {self.token_url}) "
                f"of connection {self.conn_id!r}"
            )
        return f"connection {self.conn_id!r}, which sends no credentials (set a login/password or token)"


def _mask(secret: str) -> None:
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except ImportError:  # pragma: no cover - Airflow always has it; masking is best effort
        pass


@dataclass(frozen=True)
class _Request:
    """One TES call; ``idempotent`` says whether resending it can never do harm."""

    method: str
    path: str
    params: list[tuple[str, str | int | float | bool | None]] | None = None
    body: dict[str, Any] | None = None
    idempotent: bool = True


class _Retryable(Exception):
    """A failure worth another try; ``error`` is what to raise when tries run out."""

    def __init__(self, error: TesRequestError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
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


# Failures where the request certainly never reached the server: always safe to resend.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class TesHook(BaseHook):
    """Talks to one TES server, named by an Airflow connection of type ``tes``.

    Sync methods are for the worker (operator), ``a_``-prefixed ones for the triggerer.
    Each side keeps one pooled httpx client for the life of the hook; close it with
    :meth:`close` / :meth:`aclose` or use the hook as a (async) context manager.

    Retries: transport errors, timeouts, 429 (Retry-After honoured) and 500/502/503/504 are
    retried with jittered exponential backoff when resending cannot do harm. A create that
    may have reached the server is never blindly resent, see :meth:`create_task`.
    """

    conn_name_attr = "tes_conn_id"
    default_conn_name = "tes_default"
    conn_type = "tes"
    hook_name = "GA4GH TES"

    def __init__(
        self,
        tes_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        max_concurrency: int | None = None,
        retry_max_wait: float = DEFAULT_RETRY_MAX_WAIT,
        retry_min_wait: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.tes_conn_id = tes_conn_id
        self._overrides = {"timeout": timeout, "retries": retries, "max_concurrency": max_concurrency}
        self.retry_max_wait = retry_max_wait
        self.retry_min_wait = retry_min_wait
        self._transport = transport
        self._async_transport = async_transport
        self._settings: TesConnectionSettings | None = None
        self._client: httpx.Client | None = None
        self._gate: threading.BoundedSemaphore | None = None
        self._async_client: httpx.AsyncClient | None = None
        self._async_gate: asyncio.Semaphore | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TesHook(tes_conn_id={self.tes_conn_id!r})"

    # -- settings -------------------------------------------------------------------------------

    def _apply_overrides(self, settings: TesConnectionSettings) -> TesConnectionSettings:
        changes = {k: v for k, v in self._overrides.items() if v is not None}
        if not changes:
            return settings
        import dataclasses

        return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]

    @property
    def settings(self) -> TesConnectionSettings:
        """Connection settings, read once (sync; the triggerer uses :meth:`a_settings`)."""
        if self._settings is None:
            self._settings = self._apply_overrides(
                TesConnectionSettings.from_connection(self._lookup_connection(self.tes_conn_id))
            )
        return self._settings

    async def a_settings(self) -> TesConnectionSettings:
        if self._settings is None:
            try:
                conn = await self.aget_connection(self.tes_conn_id)
            except Exception as err:
                raise self._unknown_connection(err) from err
            self._settings = self._apply_overrides(TesConnectionSettings.from_connection(conn))
        return self._settings

    def _lookup_connection(self, conn_id: str) -> Any:
        try:
            return self.get_connection(conn_id)
        except Exception as err:
            raise self._unknown_connection(err) from err

    def _unknown_connection(self, err: Exception) -> TesConfigurationError:
        if isinstance(err, TesConfigurationError):
            return err
        return TesConfigurationError(
            f"connection {self.tes_conn_id!r} could not be loaded ({type(err).__name__}): define it in the "
            f"Airflow UI, or as AIRFLOW_CONN_{self.tes_conn_id.upper()} (JSON or tes:// URI)"
        )

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    # -- clients --------------------------------------------------------------------------------

    def _client_kwargs(self, settings: TesConnectionSettings) -> dict[str, Any]:
        return {
            "base_url": settings.base_url + "/",
            "auth": settings.httpx_auth(),
            "timeout": httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            "verify": settings.tls_verify(),
            "limits": httpx.Limits(
                max_connections=settings.max_concurrency, max_keepalive_connections=settings.max_concurrency
            ),
            "headers": {"Accept": "application/json"},
            "follow_redirects": False,
        }

    def get_conn(self) -> httpx.Client:
        """The pooled sync client (created on first use)."""
        with self._lock:
            if self._client is None:
                settings = self.settings
                self._client = httpx.Client(transport=self._transport, **self._client_kwargs(settings))
                self._gate = threading.BoundedSemaphore(settings.max_concurrency)
            return self._client

    async def a_get_conn(self) -> httpx.AsyncClient:
        """The pooled async client, bound to the running event loop's lifetime of this hook."""
        if self._async_client is None:
            settings = await self.a_settings()
            if self._async_client is not None:  # another coroutine made it while we awaited
                return self._async_client
            self._async_client = httpx.AsyncClient(
                transport=self._async_transport, **self._client_kwargs(settings)
            )
            self._async_gate = asyncio.Semaphore(settings.max_concurrency)
        return self._async_client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        if self._async_client is not None:
            client, self._async_client = self._async_client, None
            await client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the one request path -------------------------------------------------------------------

    def _backoff(self) -> tenacity.wait_exponential_jitter:
        return tenacity.wait_exponential_jitter(
            multiplier=self.retry_min_wait, max=self.retry_max_wait, jitter=self.retry_min_wait
        )

    def _retry_policy(self, retries: int) -> dict[str, Any]:
        backoff = self._backoff()

        def wait(state: tenacity.RetryCallState) -> float:
            delay = backoff(state)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, self.retry_max_wait))
            return float(delay)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "TES request failed (%s); retry %d of %d in %.1fs",
                exc,
                state.attempt_number,
                retries,
                state.next_action.sleep if state.next_action else 0.0,
            )

        return {
            "stop": tenacity.stop_after_attempt(retries + 1),
            "wait": wait,
            "retry": tenacity.retry_if_exception_type(_Retryable),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def _describe(self, req: _Request, settings: TesConnectionSettings) -> str:
        return f"{req.method} {settings.base_url}/{req.path}"

    def _transport_failure(
        self, req: _Request, err: httpx.HTTPError, settings: TesConnectionSettings
    ) -> Exception:
        where = self._describe(req, settings)
        url = f"{settings.base_url}/{req.path}"
        kind = type(err).__name__
        if isinstance(err, _NOT_SENT) or req.idempotent:
            return _Retryable(
                TesServerUnavailableError(f"{where} failed: {kind}: {err}", method=req.method, url=url)
            )
        return TesAmbiguousCreateError(
            f"{where} failed after the request may have reached the server ({kind}: {err})",
            method=req.method,
            url=url,
        )

    def _interpret(self, req: _Request, response: httpx.Response, settings: TesConnectionSettings) -> Any:
        """Turn a response into parsed JSON or the right error; one place for status handling."""
        status = response.status_code
        url = f"{settings.base_url}/{req.path}"
        where = f"{self._describe(req, settings)} -> HTTP {status}"
        if 200 <= status < 300:
            if _asks_minimal(req):
                return response.content  # _parse takes only id and state out of it
            try:
                return response.json()
            except (ValueError, RecursionError):
                raise TesMalformedResponseError(
                    f"{where}: the body is not JSON: {_preview(response)!r}",
                    method=req.method,
                    url=url,
                    status_code=status,
                ) from None
        detail = _server_message(response)
        if status in (401, 403):
            raise TesAuthError(
                f"{where}: the TES server rejected {settings.describe_credential()}"
                + (f": {detail}" if detail else ""),
                method=req.method,
                url=url,
                status_code=status,
            )
        if status == 404:
            raise TesNotFoundError(
                f"{where}: not found {detail}".rstrip(), method=req.method, url=url, status_code=status
            )
        if status in _RETRY_STATUSES:
            error_cls = TesServerUnavailableError
            if status != 429 and not req.idempotent:
                raise TesAmbiguousCreateError(
                    f"{where}: the server may or may not have made the task {detail}".rstrip(),
                    method=req.method,
                    url=url,
                    status_code=status,
                )
            raise _Retryable(
                error_cls(f"{where} {detail}".rstrip(), method=req.method, url=url, status_code=status),
                retry_after=_parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            raise TesServerUnavailableError(
                f"{where} {detail}".rstrip(), method=req.method, url=url, status_code=status
            )
        raise TesBadRequestError(
            f"{where}: the server refused the request: {detail or response.reason_phrase}",
            method=req.method,
            url=url,
            status_code=status,
        )

    def _call(self, req: _Request) -> Any:
        client = self.get_conn()
        settings = self.settings
        assert self._gate is not None
        try:
            for attempt in tenacity.Retrying(**self._retry_policy(settings.retries)):
                with attempt:
                    with self._gate:
                        try:
                            response = client.request(req.method, req.path, params=req.params, json=req.body)
                        except httpx.HTTPError as err:
                            raise self._transport_failure(req, err, settings) from err
                    return self._interpret(req, response, settings)
        except _Retryable as final:
            raise final.error from final
        raise AssertionError("unreachable")  # pragma: no cover

    async def _a_call(self, req: _Request) -> Any:
        client = await self.a_get_conn()
        settings = await self.a_settings()
        assert self._async_gate is not None
        try:
            async for attempt in tenacity.AsyncRetrying(**self._retry_policy(settings.retries)):
                with attempt:
                    async with self._async_gate:
                        try:
                            response = await client.request(
                                req.method, req.path, params=req.params, json=req.body
                            )
                        except httpx.HTTPError as err:
                            raise self._transport_failure(req, err, settings) from err
                    return self._interpret(req, response, settings)
        except _Retryable as final:
            raise final.error from final
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(self, model: type[_M], data: Any, req: _Request) -> _M:
        url = f"{self._settings.base_url if self._settings else ''}/{req.path}"
        try:
            if _asks_minimal(req) and issubclass(model, TesTask | TesListTasksResponse):
                return cast(_M, from_minimal_json(cast(Any, model), data))
            return model.from_response(data)
        except (pydantic.ValidationError, TypeError, ValueError) as err:
            not_json = isinstance(err, pydantic.ValidationError) and err.errors()[0]["type"] == "json_invalid"
            if _asks_minimal(req) and not_json:
                problem = f"the body is not JSON: {bytes(data[:200]).decode('utf-8', 'replace')!r}"
            else:
                problem = f"the answer is not a valid TES {model.__name__}: {_short(err)}"
            raise TesMalformedResponseError(
                f"{req.method} {url}: {problem}", method=req.method, url=url
            ) from None

    # -- request builders (shared by sync and async) ----------------------------------------------

    @staticmethod
    def _task_path(task_id: str, suffix: str = "") -> str:
        if not task_id:
            raise TesConfigurationError("task_id must be a non-empty TES task id")
        return f"tasks/{quote(task_id, safe='')}{suffix}"

    def _get_task_request(self, task_id: str, view: TesView | str) -> _Request:
        return _Request("GET", self._task_path(task_id), params=[("view", _enum(TesView, view, "view"))])

    def _cancel_request(self, task_id: str) -> _Request:
        # Canceling twice is harmless, so the cancel call is retried like a read.
        return _Request("POST", self._task_path(task_id, ":cancel"), body={})

    @staticmethod
    def _list_params(
        name_prefix: str | None,
        state: TesState | str | None,
        tags: Mapping[str, str] | None,
        view: TesView | str,
        page_size: int | None,
    ) -> list[tuple[str, str | int | float | bool | None]]:
        if page_size is not None and not 0 < page_size < MAX_PAGE_SIZE:
            raise TesConfigurationError(
                f"page_size must be between 1 and {MAX_PAGE_SIZE - 1}, got {page_size}"
            )
        params: list[tuple[str, str | int | float | bool | None]] = [("view", _enum(TesView, view, "view"))]
        if name_prefix:
            params.append(("name_prefix", name_prefix))
        if state:
            params.append(("state", _enum(TesState, state, "state")))
        for key, value in (tags or {}).items():
            params.append(("tag_key", key))
            params.append(("tag_value", value))
        if page_size:
            params.append(("page_size", str(page_size)))
        return params

    def _next_token(self, page: TesListTasksResponse, seen: set[str], req: _Request) -> str | None:
        """The token of the next page; ``None`` at the end (empty token or empty page).

        A token seen before would page forever, so it is a malformed answer.
        """
        token = page.next_page_token
        if not token or not page.tasks:
            return None
        if token in seen:
            raise TesMalformedResponseError(
                f"{req.method} {self.base_url}/{req.path}: the server repeated page token {token!r}",
                method=req.method,
                url=f"{self.base_url}/{req.path}",
            )
        seen.add(token)
        return token

    @staticmethod
    def _page_request(
        params: list[tuple[str, str | int | float | bool | None]], token: str | None
    ) -> _Request:
        return _Request("GET", "tasks", params=[*params, ("page_token", token)] if token else params)

    # -- sync API -----------------------------------------------------------------------------------

    def get_service_info(self) -> TesServiceInfo:
        req = _Request("GET", "service-info")
        return self._parse(TesServiceInfo, self._call(req), req)

    def get_task(self, task_id: str, view: TesView | str = TesView.MINIMAL) -> TesTask:
        req = self._get_task_request(task_id, view)
        return self._parse(TesTask, self._call(req), req)

    def cancel_task(self, task_id: str) -> None:
        self._call(self._cancel_request(task_id))

    def list_tasks(
        self,
        name_prefix: str | None = None,
        state: TesState | str | None = None,
        tags: Mapping[str, str] | None = None,
        view: TesView | str = TesView.MINIMAL,
        page_size: int | None = None,
    ) -> Iterator[TesTask]:
        """Every matching task, following page tokens until an empty token or empty page."""
        params = self._list_params(name_prefix, state, tags, view, page_size)
        token: str | None = None
        seen: set[str] = set()
        while True:
            req = self._page_request(params, token)
            page = self._parse(TesListTasksResponse, self._call(req), req)
            yield from page.tasks
            token = self._next_token(page, seen, req)
            if token is None:
                return

    def create_task(self, task: TesTask) -> str:
        """Submit ``task`` and return its id, never making two tasks for one call.

        An ambiguous failure (timeout or 5xx after the body may have reached the server)
        is resolved by looking the task up by its name (and tags) before anything is resent:
        if the server has it, its id is returned; if not, the create is sent again. The
        operator gives every task a name unique to the Airflow try, which is what makes the
        lookup exact. A nameless task cannot be looked up, so its ambiguous failure is raised.
        """
        body = task.to_request()
        req = _Request("POST", "tasks", body=body, idempotent=False)
        settings = self.settings
        backoff = self._backoff()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._parse(TesCreateTaskResponse, self._call(req), req).id
            except TesAmbiguousCreateError as err:
                if not task.name or attempt > settings.retries:
                    raise
                self.log.warning("%s; looking the task up by name before resending", err)
                time.sleep(backoff(cast(tenacity.RetryCallState, _Attempt(attempt))))
                found = self.find_task_by_identity(task.name, task.tags)
                if found is not None:
                    self.log.info("The server had made the task after all: %s", found.id)
                    assert found.id
                    return found.id

    def find_task_by_identity(self, name: str, tags: Mapping[str, str] | None = None) -> TesTask | None:
        """The newest task with exactly this name and (at least) these tags, if any.

        Asks the server to filter by name prefix and TES 1.1 tags; a server that refuses the
        tag filter (400) is asked by name prefix alone. Name and tags are checked here too,
        so the answer is right on servers that ignore either filter.
        """
        try:
            candidates = list(self.list_tasks(name_prefix=name, tags=tags, view=TesView.BASIC))
        except TesBadRequestError:
            if not tags:
                raise
            candidates = list(self.list_tasks(name_prefix=name, view=TesView.BASIC))
        for candidate in candidates:
            if candidate.name == name and _has_tags(candidate, tags):
                return candidate
        return None

    def test_connection(self) -> tuple[bool, str]:
        try:
            info = self.get_service_info()
        except TesError as err:
            return False, str(err)
        return True, f"Connected to {info.name} {info.version} ({info.id}) at {self.settings.base_url}"

    # -- async API ----------------------------------------------------------------------------------

    async def a_get_service_info(self) -> TesServiceInfo:
        req = _Request("GET", "service-info")
        return self._parse(TesServiceInfo, await self._a_call(req), req)

    async def a_get_task(self, task_id: str, view: TesView | str = TesView.MINIMAL) -> TesTask:
        req = self._get_task_request(task_id, view)
        return self._parse(TesTask, await self._a_call(req), req)

    async def a_cancel_task(self, task_id: str) -> None:
        await self._a_call(self._cancel_request(task_id))

    async def a_list_tasks(
        self,
        name_prefix: str | None = None,
        state: TesState | str | None = None,
        tags: Mapping[str, str] | None = None,
        view: TesView | str = TesView.MINIMAL,
        page_size: int | None = None,
    ) -> AsyncIterator[TesTask]:
        params = self._list_params(name_prefix, state, tags, view, page_size)
        token: str | None = None
        seen: set[str] = set()
        while True:
            req = self._page_request(params, token)
            page = self._parse(TesListTasksResponse, await self._a_call(req), req)
            for task in page.tasks:
                yield task
            token = self._next_token(page, seen, req)
            if token is None:
                return


@dataclass
class _Attempt:
    """Enough of tenacity's RetryCallState for its wait strategies."""

    attempt_number: int


def _enum(kind: type[TesView] | type[TesState], value: Any, argument: str) -> str:
    try:
        return str(kind(value).value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise TesConfigurationError(f"{argument} must be one of {choices}, got {value!r}") from None


def _has_tags(task: TesTask, tags: Mapping[str, str] | None) -> bool:
    have = task.tags or {}
    return all(have.get(k) == v for k, v in (tags or {}).items())


def _asks_minimal(req: _Request) -> bool:
    return ("view", TesView.MINIMAL.value) in (req.params or [])


def _preview(response: httpx.Response, size: int = 200) -> str:
    """The start of a body for a message, whatever charset the server claimed."""
    return response.content[:size].decode("utf-8", "replace")


def _server_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except (ValueError, RecursionError):
        return _preview(response, 500).strip()
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

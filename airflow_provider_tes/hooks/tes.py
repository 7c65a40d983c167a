"""Hook for GA4GH TES servers: one httpx client per hook, sync for workers, async for triggers.

The hook is a pair of thin twins over one request path: each public call builds a typed
request (``hooks/_requests.py``), sends it through ``_call`` (sync) or ``_a_call`` (async), and
``hooks/_http.py`` turns the answer into the request's model or a
:class:`~airflow_provider_tes.exceptions.TesError`. The twins differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any, Self, Unpack

import httpx
import tenacity
from airflow.sdk import BaseHook

from airflow_provider_tes.connection import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RETRY_MAX_WAIT,
    DEFAULT_RETRY_MIN_WAIT,
    TesConnection,
)
from airflow_provider_tes.exceptions import (
    TesAmbiguousCreateError,
    TesBadRequestError,
    TesConfigurationError,
    TesError,
    TesRequestError,
)
from airflow_provider_tes.hooks import _requests
from airflow_provider_tes.hooks._http import (
    Body,
    M,
    Request,
    Retryable,
    backoff,
    deadline_failure,
    interpret,
    retry_policy,
    scrubbed,
    transport_failure,
)
from airflow_provider_tes.hooks._requests import Page, TaskFilter
from airflow_provider_tes.models import TesServiceInfo, TesState, TesTask, TesTaskLogsPage, TesView
from airflow_provider_tes.redaction import Scrubber


class TesHook(BaseHook):
    """Talks to one TES server, named by an Airflow connection of type ``tes``.

    Sync methods are for the worker (operator), ``a_``-prefixed ones for the triggerer.
    Each side keeps one pooled httpx client for the life of the hook; close it with
    :meth:`close` / :meth:`aclose` or use the hook as a (async) context manager.

    Retries: transport errors, timeouts, 429 (Retry-After honoured) and 5xx but 501/505 are
    retried with jittered exponential backoff when resending cannot do harm. A create that
    may have reached the server is never blindly resent, see :meth:`create_task`.

    Concurrency: at most ``max_concurrency`` requests of one client are in flight; the rest
    wait at a semaphore (the *gate*) in front of httpx's pool, with no time limit. Each request's
    deadline (``timeout``, the whole exchange) starts when it passes the gate, so a burst larger
    than the cap queues instead of spending its deadline in httpx's pool queue. Measured
    (``tests/test_hook_concurrency.py``: 16 requests, cap 2, 0.3 s answers, timeout 1 s): with
    the gate all succeed in 2.5 s; with httpx's ``Limits`` alone 10 of 16 fail with
    :class:`~airflow_provider_tes.exceptions.TesRequestTimeoutError` after 1 s. (httpcore 1.0's
    own pool timeout does not fire in that burst, so the pool alone queues without a bound.)
    The gate also caps transports that have no pool, such as ``httpx.MockTransport``.
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
        retry_min_wait: float = DEFAULT_RETRY_MIN_WAIT,
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
        self._settings: TesConnection | None = None
        self._client: httpx.Client | None = None
        self._gate: threading.BoundedSemaphore | None = None
        self._async_client: httpx.AsyncClient | None = None
        self._async_gate: asyncio.Semaphore | None = None
        self._retired_async_clients: list[httpx.AsyncClient] = []
        self._lock = threading.Lock()
        #: Knows every credential this hook has read or been issued; see :meth:`_call`.
        self._scrub = Scrubber()

    def __repr__(self) -> str:
        return f"TesHook(tes_conn_id={self.tes_conn_id!r})"

    # -- the connection ---------------------------------------------------------------------------

    def _read(self, conn: Any) -> TesConnection:
        changes = {k: v for k, v in self._overrides.items() if v is not None}
        settings = TesConnection.from_airflow(conn)
        self._scrub.add(settings.secret, login=settings.login if settings.auth_type == "basic" else None)
        return settings.model_copy(update=changes) if changes else settings

    @property
    def settings(self) -> TesConnection:
        """The connection, read once (sync; the triggerer uses :meth:`a_settings`)."""
        if self._settings is None:
            self._settings = self._read(self._lookup_connection(self.tes_conn_id))
        return self._settings

    async def a_settings(self) -> TesConnection:
        if self._settings is None:
            try:
                conn = await self.aget_connection(self.tes_conn_id)
            except Exception as err:
                raise self._unknown_connection(err) from err
            self._settings = self._read(conn)
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

    def reload(self) -> TesConnection:
        """Read the connection again and rebuild the sync client with it (on its next use).

        For a long-lived caller after a credential rotation: the old client is closed, so call
        it between requests. The async side has :meth:`a_reload`; each side rebuilds only its
        own client, and both then read the new connection.
        """
        settings = self._read(self._lookup_connection(self.tes_conn_id))
        with self._lock:
            old, self._client = self._client, None
            self._settings = settings
        if old is not None:
            old.close()
        return settings

    async def a_reload(self) -> TesConnection:
        """Read the connection again and rebuild the async client with it (see :meth:`reload`)."""
        try:
            conn = await self.aget_connection(self.tes_conn_id)
        except Exception as err:
            raise self._unknown_connection(err) from err
        settings = self._read(conn)
        old, self._async_client = self._async_client, None
        self._settings = settings
        if old is not None:
            # Requests may still be in flight on it (a poller's other lookups): it is retired,
            # not closed under them, and closed with the hook.
            self._retired_async_clients.append(old)
        return settings

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    # -- clients ----------------------------------------------------------------------------------

    def _client_kwargs(self, settings: TesConnection) -> dict[str, Any]:
        return {
            "base_url": settings.base_url + "/",
            "auth": settings.httpx_auth(on_token=self._scrub.add),
            "timeout": httpx.Timeout(
                settings.timeout, connect=min(settings.timeout, DEFAULT_CONNECT_TIMEOUT)
            ),
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
            if self._async_gate is None:  # kept across a reload: its slots may be held
                self._async_gate = asyncio.Semaphore(settings.max_concurrency)
        return self._async_client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        clients, self._retired_async_clients = self._retired_async_clients, []
        if self._async_client is not None:
            clients.append(self._async_client)
            self._async_client = None
        for client in clients:
            await client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the one request path, twice ----------------------------------------------------------------

    def _retrying(self, settings: TesConnection) -> dict[str, Any]:
        return retry_policy(settings.retries, self.retry_min_wait, self.retry_max_wait, self.log, self._scrub)

    @contextlib.contextmanager
    def _scrubbed_errors(self) -> Iterator[None]:
        """What leaves the request path: the final typed error, with every known secret scrubbed."""
        try:
            yield
        except Retryable as final:
            raise scrubbed(final.error, self._scrub) from None
        except TesRequestError as err:
            raise scrubbed(err, self._scrub) from None

    def _call(self, req: Request[M]) -> M:
        client = self.get_conn()
        settings = self.settings
        assert self._gate is not None
        with self._scrubbed_errors():
            for attempt in tenacity.Retrying(**self._retrying(settings)):
                with attempt:
                    with self._gate, _typed_failures(req, settings):
                        response, body = self._exchange(client, req, settings)
                    return interpret(req, response, body, settings)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _a_call(self, req: Request[M]) -> M:
        settings = await self.a_settings()
        with self._scrubbed_errors():
            async for attempt in tenacity.AsyncRetrying(**self._retrying(settings)):
                with attempt:
                    # Fetched per try: a reload between tries brings a new client and credential.
                    client = await self.a_get_conn()
                    assert self._async_gate is not None
                    async with self._async_gate:
                        with _typed_failures(req, settings):
                            async with asyncio.timeout(settings.timeout):
                                response, body = await self._a_exchange(client, req, settings)
                    return interpret(req, response, body, settings)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _exchange(
        client: httpx.Client, req: Request[M], settings: TesConnection
    ) -> tuple[httpx.Response, bytes]:
        """Send ``req`` and read its answer within the bounds (see ``_http.Body``)."""
        deadline = time.monotonic() + settings.timeout
        request = client.build_request(req.method, req.path, params=req.params, json=req.body)
        response = client.send(request, stream=True)
        try:
            body = Body(req, settings, response, deadline)
            for chunk in response.iter_bytes():
                body.feed(chunk)
            return response, body.content
        finally:
            response.close()

    @staticmethod
    async def _a_exchange(
        client: httpx.AsyncClient, req: Request[M], settings: TesConnection
    ) -> tuple[httpx.Response, bytes]:
        deadline = time.monotonic() + settings.timeout
        request = client.build_request(req.method, req.path, params=req.params, json=req.body)
        response = await client.send(request, stream=True)
        try:
            body = Body(req, settings, response, deadline)
            async for chunk in response.aiter_bytes():
                body.feed(chunk)
            return response, body.content
        finally:
            await response.aclose()

    # -- sync API -----------------------------------------------------------------------------------

    def get_service_info(self) -> TesServiceInfo:
        return self._call(_requests.service_info())

    def get_task(self, task_id: str, view: TesView | str = TesView.MINIMAL) -> TesTask:
        return self._call(_requests.get_task(task_id, view))

    def cancel_task(self, task_id: str) -> None:
        self._call(_requests.cancel_task(task_id))

    def list_tasks(self, **select: Unpack[TaskFilter]) -> Iterator[TesTask]:
        """Every matching task (name prefix, state, tags, view, page size), following page tokens
        until an empty token or empty page."""
        pager = _requests.task_pager(self.settings, **select)
        while True:
            req = pager.request()
            page = self._call(req)
            yield from pager.fresh(page, req)
            if not pager.advance(page, req):
                return

    def create_task(self, task: TesTask) -> str:
        """Submit ``task`` and return its id, never making two tasks for one call.

        An ambiguous failure (timeout or 5xx after the body may have reached the server)
        is resolved by looking the task up by its name (and tags) before anything is resent:
        if the server has it, its id is returned; if not, the create is sent again. The
        operator gives every task a name unique to the Airflow try, which is what makes the
        lookup exact. A nameless task cannot be looked up, so its ambiguous failure is raised.

        Only a task with every tag of ``task`` is taken for it. The operator's tasks carry their
        deployment and an identity tag signed with the tenant secret
        (:class:`~airflow_provider_tes.identity.Tenant`), so another deployment's task, or one
        planted with the same name, is never taken for this one: the create is sent again.
        """
        req = _requests.create_task(task)
        for attempt in tenacity.Retrying(**self._create_policy(task)):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    assert task.name
                    found = self.find_task_by_identity(task.name, task.tags)
                    if found is not None:
                        self.log.info("The server had made the task after all: %s", found.id)
                        assert found.id
                        return found.id
                return self._call(req).id
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_policy(self, task: TesTask) -> dict[str, Any]:
        """Tries of a create: only ambiguous failures, and only for a task that can be looked up."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            self.log.warning("%s; looking the task up by name before resending", err)

        return {
            "retry": tenacity.retry_if_exception_type(TesAmbiguousCreateError),
            "stop": tenacity.stop_after_attempt(self.settings.retries + 1 if task.name else 1),
            "wait": backoff(self.retry_min_wait, self.retry_max_wait),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def find_task_by_identity(self, name: str, tags: Mapping[str, str] | None = None) -> TesTask | None:
        """The newest task with exactly this name and (at least) these tags, if any.

        Asks the server to filter by name prefix and TES 1.1 tags; a server that refuses the
        tag filter (400) is asked by name prefix alone. Name and tags are checked here too,
        so the answer is right on servers that ignore either filter. Tags are compared
        exactly, so a signed tag in ``tags`` (see :meth:`create_task`) is verified by the match.
        """
        try:
            candidates = list(self.list_tasks(name_prefix=name, tags=tags, view=TesView.BASIC))
        except TesBadRequestError:
            if not tags:
                raise
            candidates = list(self.list_tasks(name_prefix=name, view=TesView.BASIC))
        for candidate in candidates:
            if candidate.name == name and _requests.has_tags(candidate, tags):
                return candidate
        return None

    def test_connection(self) -> tuple[bool, str]:
        try:
            info = self.get_service_info()
        except TesError as err:
            return False, str(err)
        version = info.version or "(no version given)"
        return True, f"Connected to {info.name} {version} ({info.id}) at {self.settings.base_url}"

    # -- async API ----------------------------------------------------------------------------------

    async def a_get_service_info(self) -> TesServiceInfo:
        return await self._a_call(_requests.service_info())

    async def a_get_task(self, task_id: str, view: TesView | str = TesView.MINIMAL) -> TesTask:
        return await self._a_call(_requests.get_task(task_id, view))

    async def a_cancel_task(self, task_id: str) -> None:
        await self._a_call(_requests.cancel_task(task_id))

    async def a_list_tasks(self, **select: Unpack[TaskFilter]) -> AsyncGenerator[TesTask, None]:
        pager = _requests.task_pager(await self.a_settings(), **select)
        async with contextlib.aclosing(self._a_pages(pager)) as pages:
            async for page, req in pages:
                for task in pager.fresh(page, req):
                    yield task

    async def a_list_task_states(
        self, *, state: TesState, tags: Mapping[str, str], page_size: int | None = None
    ) -> AsyncGenerator[dict[str, TesState | None], None]:
        """The states by id of the tasks in ``state`` with ``tags`` (MINIMAL view), a page at a
        time: what the shared poller reads every round, kept light for the garbage collector
        (see :class:`~airflow_provider_tes.models.TesTaskStatesPage`); the caller may stop
        after any page. A state that is not a TES state is ``None``.
        """
        pager = _requests.state_pager(await self.a_settings(), state=state, tags=tags, page_size=page_size)
        async with contextlib.aclosing(self._a_pages(pager)) as pages:
            async for page, req in pages:
                yield pager.fresh_states(page, req)

    async def a_list_task_logs(
        self, *, state: TesState, tags: Mapping[str, str], page_size: int | None = None
    ) -> AsyncGenerator[TesTaskLogsPage, None]:
        """The tasks in ``state`` with ``tags`` (FULL view) read as ids, states and logs, a page at a
        time (see :class:`~airflow_provider_tes.models.TesTaskLogsPage`): what live logs read."""
        pager = _requests.logs_pager(await self.a_settings(), state=state, tags=tags, page_size=page_size)
        async with contextlib.aclosing(self._a_pages(pager)) as pages:
            async for page, req in pages:
                yield page.model_copy(update={"tasks": pager.fresh(page, req)})

    async def _a_pages(
        self, pager: _requests.Pager[Page]
    ) -> AsyncGenerator[tuple[Page, Request[Page]], None]:
        """A listing's pages, each with its request; the caller takes a page's new entries
        (``pager.fresh*``) before asking for the next, which the pager then checks and bounds."""
        while True:
            req = pager.request()
            page = await self._a_call(req)
            yield page, req
            if not pager.advance(page, req):
                return


@contextlib.contextmanager
def _typed_failures(req: Request[Any], settings: TesConnection) -> Iterator[None]:
    """One exchange's failures as the hook's errors; not chained, as httpx's text may quote a header."""
    try:
        yield
    except httpx.HTTPError as err:
        raise transport_failure(req, err, settings) from None
    except TimeoutError:
        raise deadline_failure(req, settings) from None

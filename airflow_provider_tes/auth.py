"""Bearer authentication for httpx, sync and async: a static token, or OAuth2 client credentials.

:class:`BearerToken` sends a fixed token. :class:`OAuth2ClientCredentials` is an
:class:`httpx.Auth`: give it to an ``httpx.Client`` or ``httpx.AsyncClient`` and every request
carries ``Authorization: Bearer <access token>``, the token coming from an OAuth2 token
endpoint (RFC 6749 4.4, the client-credentials grant).

* The token request is sent *through the auth flow* (yielded like any request), so it uses the
  same client, transport, TLS settings, proxies and timeout as the request it precedes, and
  no second client is ever made.
* A token is reused until ``leeway`` seconds (default 60, never more than half its lifetime)
  before its ``expires_in`` runs out, then fetched again. A token without ``expires_in`` is
  kept until the server rejects it.
* A 401 from the server makes one refresh and one retry of the request; a second 401 is
  returned as is (the caller turns it into its own error).
* Concurrent sync requests (threads) share one refresh: a lock is held around it. Async
  requests take no lock; concurrent coroutines may both refresh, which is harmless.
* Errors from the token endpoint name its URL and the client id, never the client secret or a
  token: HTTP 4xx and unusable answers raise :class:`~airflow_provider_tes.exceptions.TesAuthError`,
  429 and 5xx raise :class:`~airflow_provider_tes.exceptions.TesServerUnavailableError` (a
  transient outage of the identity provider, which a trigger tolerates like one of the TES
  server). Transport errors (connection refused, timeouts) surface as the httpx exception.
* The client secret and every fetched token are registered with Airflow's secrets masker;
  the repr shows neither.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from airflow_provider_tes.exceptions import TesAuthError, TesConfigurationError, TesServerUnavailableError
from airflow_provider_tes.redaction import display_url, mask

log = logging.getLogger(__name__)

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]
DEFAULT_LEEWAY = 60.0


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    #: ``time.monotonic()`` after which the token is fetched again (``inf``: only on a 401).
    refresh_at: float


def _lifetime(value: Any) -> float | None:
    """``expires_in`` as positive finite seconds, or None when absent or unusable."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


class BearerToken(httpx.Auth):
    """A static bearer token; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "BearerToken(token=***)"


class OAuth2ClientCredentials(httpx.Auth):
    """Bearer tokens from an OAuth2 client-credentials grant, refreshed before they expire.

    :param token_url: the token endpoint (``http`` or ``https``).
    :param client_id: the OAuth2 client id.
    :param client_secret: the client secret; never shown in messages or the repr.
    :param scope: requested scope, a space-separated string or a list of scopes (optional).
    :param audience: ``audience`` form parameter, which Auth0, Okta and others use to pick
        the API the token is for (optional).
    :param leeway: seconds before expiry at which the token is renewed (capped at half the
        token's lifetime).
    :param client_auth: ``client_secret_basic`` (HTTP Basic, RFC 6749 2.3.1, the default) or
        ``client_secret_post`` (``client_id``/``client_secret`` form fields).
    :param on_token: called with each access token as it is issued (the hook's scrubber
        learns it there).
    """

    # The request body is read up front so a request can be resent after a 401.
    requires_request_body = True

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | Sequence[str] | None = None,
        audience: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
        client_auth: ClientAuthMethod = "client_secret_basic",
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        token_url = (token_url or "").strip()
        parts = urlsplit(token_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise TesConfigurationError(
                f"OAuth2 token_url must be an absolute http(s) URL, got {display_url(token_url)!r}"
            )
        if not client_id:
            raise TesConfigurationError(
                f"OAuth2 client credentials for {display_url(token_url)} need a client id"
            )
        if not client_secret:
            raise TesConfigurationError(
                f"OAuth2 client {client_id!r} at {display_url(token_url)} needs a client secret"
            )
        if not (isinstance(leeway, int | float) and math.isfinite(leeway) and leeway >= 0):
            raise TesConfigurationError(f"OAuth2 leeway must be a number of seconds >= 0, got {leeway!r}")
        if client_auth not in ("client_secret_basic", "client_secret_post"):
            raise TesConfigurationError(
                f"OAuth2 client_auth must be client_secret_basic or client_secret_post, got {client_auth!r}"
            )
        if scope is not None and not isinstance(scope, str):
            scope = " ".join(scope)
        self._token_url = token_url
        self._display_token_url = display_url(token_url)
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope or None
        self._audience = audience or None
        self._leeway = float(leeway)
        self._client_auth: ClientAuthMethod = client_auth
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self._on_token = on_token
        mask(client_secret)

    # -- read-only view ---------------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self._token_url

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def scope(self) -> str | None:
        return self._scope

    @property
    def audience(self) -> str | None:
        return self._audience

    @property
    def leeway(self) -> float:
        return self._leeway

    def __repr__(self) -> str:
        extras = "".join(
            f", {name}={value!r}"
            for name, value in (("scope", self._scope), ("audience", self._audience))
            if value
        )
        return (
            f"OAuth2ClientCredentials(token_url={self._display_token_url!r}, "
            f"client_id={self._client_id!r}, client_secret=***{extras})"
        )

    def invalidate(self) -> None:
        """Forget the current token: the next request fetches a new one."""
        self._token = None

    # -- httpx entry points -----------------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow without locking; token responses must arrive read (see the two wrappers)."""
        return self._flow(request, None)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        flow = self._flow(request, self._lock)
        try:
            outgoing = next(flow)
            while True:
                response = yield outgoing
                if outgoing is not request:  # a token request: its body is needed here
                    response.read()
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()  # releases the refresh lock if the client gave up mid-refresh

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self._flow(request, None)  # a thread lock held across an await would block the loop
        try:
            outgoing = next(flow)
            while True:
                response = yield outgoing
                if outgoing is not request:
                    await response.aread()
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    # -- the flow ---------------------------------------------------------------------------------

    def _flow(
        self, request: httpx.Request, lock: threading.Lock | None
    ) -> Generator[httpx.Request, httpx.Response, None]:
        current = self._token
        if current is not None and time.monotonic() < current.refresh_at:
            token = current.value
        else:
            token = yield from self._refresh(request, lock, rejected=None)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        log.info(
            "%s %s -> HTTP 401 with an OAuth2 token of client %r; fetching a new token and retrying once",
            request.method,
            request.url.copy_with(query=None),
            self._client_id,
        )
        token = yield from self._refresh(request, lock, rejected=token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _refresh(
        self, request: httpx.Request, lock: threading.Lock | None, rejected: str | None
    ) -> Generator[httpx.Request, httpx.Response, str]:
        """A usable token: one another caller fetched meanwhile, else a new one."""
        if lock is not None:
            lock.acquire()
        try:
            current = self._token
            if current is not None and current.value != rejected and time.monotonic() < current.refresh_at:
                return current.value
            started = time.monotonic()
            response = yield self._token_request(request)
            token = self._parse(response, started)
            self._token = token
            return token.value
        finally:
            if lock is not None:
                lock.release()

    def _token_request(self, request: httpx.Request) -> httpx.Request:
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        if self._audience:
            data["audience"] = self._audience
        headers = {"Accept": "application/json"}
        if self._client_auth == "client_secret_basic":
            # RFC 6749 2.3.1: form-encode id and secret, then Basic.
            pair = f"{quote(self._client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            data["client_id"] = self._client_id
            data["client_secret"] = self._client_secret
        # Requests made in an auth flow get no client defaults: carry the caller's timeout over.
        extensions = {key: request.extensions[key] for key in ("timeout",) if key in request.extensions}
        return httpx.Request("POST", self._token_url, data=data, headers=headers, extensions=extensions)

    def _parse(self, response: httpx.Response, started: float) -> _Token:
        status = response.status_code
        where = f"OAuth2 token request to {self._display_token_url} for client {self._client_id!r}"
        error_kwargs: dict[str, Any] = {
            "method": "POST",
            "url": self._display_token_url,
            "status_code": status,
        }
        if 200 <= status < 300:
            try:
                data = response.json()
            except ValueError:
                data = None
            value = data.get("access_token") if isinstance(data, dict) else None
            if not isinstance(value, str) or not value:
                raise TesAuthError(
                    f"{where} -> HTTP {status}: the answer has no access_token "
                    f"(is token_url the OAuth2 token endpoint?)",
                    **error_kwargs,
                )
            mask(value)
            if self._on_token is not None:
                self._on_token(value)
            assert isinstance(data, dict)
            lifetime = _lifetime(data.get("expires_in"))
            if lifetime is None:
                refresh_at = math.inf
            else:
                refresh_at = started + lifetime - min(self._leeway, lifetime / 2)
            log.debug(
                "Fetched an OAuth2 token for client %r from %s (expires in %s s)",
                self._client_id,
                self._display_token_url,
                "?" if lifetime is None else f"{lifetime:g}",
            )
            return _Token(value, refresh_at)
        detail = self._error_detail(response)
        message = f"{where} -> HTTP {status}" + (f": {detail}" if detail else "")
        if status == 429 or status >= 500:
            raise TesServerUnavailableError(message, **error_kwargs)
        if status in (400, 401, 403):
            message += " (check the client id, client secret, scope and token_url)"
        raise TesAuthError(message, **error_kwargs)

    def _error_detail(self, response: httpx.Response) -> str:
        """RFC 6749 5.2 ``error: error_description``, or the start of the body; secret-free."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("error"):
            detail = str(data["error"])
            if data.get("error_description"):
                detail += f": {data['error_description']}"
        else:
            detail = response.text.strip()
        detail = detail[:300]
        return detail.replace(self._client_secret, "***") if self._client_secret else detail

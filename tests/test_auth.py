"""OAuth2 client-credentials auth (``airflow_provider_tes.auth``).

Unit tests drive :class:`OAuth2ClientCredentials` through ``httpx.MockTransport`` (one handler
plays both the token endpoint and a TES server that accepts only live tokens), with a fake
clock for expiry.

Integration tests (``funnel``) run a real Funnel behind :class:`oidc.JwtGateway`, which admits
only JWTs signed by :class:`oidc.OidcProvider` (3 s tokens): Funnel v0.12.2's own OIDC mode
panics at start-up (``test_funnel_v0_12_2_oidc_mode_panics`` pins that down), so the gateway
does the JWT check Funnel would do and forwards to Funnel with basic auth.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

import airflow_provider_tes.auth as auth_module
from airflow_provider_tes.auth import OAuth2ClientCredentials
from airflow_provider_tes.connection import TesConnection
from airflow_provider_tes.exceptions import (
    TesAuthError,
    TesConfigurationError,
    TesRequestError,
    TesServerUnavailableError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesState, TesTask
from tests.support.oidc import JwtGateway, OidcProvider
from tests.support.spec import EXAMPLE_SERVICE_INFO
from tests.support.stack import FunnelServer

TOKEN_URL = "https://idp.test/oauth2/token"
CLIENT_ID = "tes-client-id"
SECRET = "cl1ent-S3cret+/=value"
TES = "https://tes.test/ga4gh/tes/v1"
SERVICE_INFO = EXAMPLE_SERVICE_INFO


# -- a fake identity provider + TES in one MockTransport handler ----------------------------------


class World:
    """Token endpoint at ``TOKEN_URL``; everything else is a TES accepting only issued tokens."""

    def __init__(self, expires_in: Any = 3600, token_delay: float = 0.0) -> None:
        self.expires_in = expires_in
        self.token_delay = token_delay
        self.token_requests: list[httpx.Request] = []
        self.tes_requests: list[httpx.Request] = []
        self.tes_bearers: list[str] = []  # as sent (a retried request object is reused)
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.token_answer: httpx.Response | None = None  # overrides the token endpoint's answer
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "idp.test":
            with self.lock:
                self.token_requests.append(request)
            if self.token_delay:
                time.sleep(self.token_delay)
            if self.token_answer is not None:
                return self.token_answer
            token = f"access-{len(self.token_requests)}-{uuid.uuid4().hex}"
            with self.lock:
                self.issued.append(token)
                self.valid.add(token)
            body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
            if self.expires_in is not None:
                body["expires_in"] = self.expires_in
            return httpx.Response(200, json=body)
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with self.lock:
            self.tes_requests.append(request)
            self.tes_bearers.append(bearer)
        if bearer not in self.valid:
            return httpx.Response(401, json={"message": "Bearer authorization token not accepted"})
        if request.url.path.endswith("/service-info"):
            return httpx.Response(200, json=SERVICE_INFO)
        return httpx.Response(200, json={"id": "task-1", "state": "COMPLETE"})

    def revoke(self) -> None:
        self.valid.clear()

    def bearers(self) -> list[str]:
        return list(self.tes_bearers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(auth_module, "time", c)
    return c


def make_auth(**kw: Any) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(token_url=TOKEN_URL, client_id=CLIENT_ID, client_secret=SECRET, **kw)


def client(world: World, auth: httpx.Auth, **kw: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(world), auth=auth, base_url=TES + "/", **kw)


def assert_no_secret(*texts: Any, tokens: list[str] | None = None) -> None:
    for text in texts:
        for secret in [SECRET, *(tokens or [])]:
            assert secret not in str(text)


# -- unit: sync ---------------------------------------------------------------------------------------


def test_token_fetched_once_and_reused(clock: Clock) -> None:
    world = World()
    with client(world, make_auth(scope=["tes:read", "tes:write"], audience="https://tes.test")) as c:
        for _ in range(5):
            assert c.get("tasks/x").status_code == 200
            clock.now += 10
    assert len(world.token_requests) == 1
    assert world.bearers() == [world.issued[0]] * 5
    token_req = world.token_requests[0]
    assert token_req.method == "POST"
    assert token_req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(token_req.content.decode()).items()}
    assert form == {
        "grant_type": "client_credentials",
        "scope": "tes:read tes:write",
        "audience": "https://tes.test",
    }
    kind, _, value = token_req.headers["Authorization"].partition(" ")
    user, _, password = base64.b64decode(value).decode().partition(":")
    assert (kind, unquote(user), unquote(password)) == ("Basic", CLIENT_ID, SECRET)


def test_client_secret_post_sends_form_fields(clock: Clock) -> None:
    world = World()
    with client(world, make_auth(client_auth="client_secret_post")) as c:
        assert c.get("tasks/x").status_code == 200
    token_req = world.token_requests[0]
    assert "Authorization" not in token_req.headers
    form = {k: v[0] for k, v in parse_qs(token_req.content.decode()).items()}
    assert form == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}


@pytest.mark.parametrize(
    ("expires_in", "leeway", "reuse_until", "refresh_at"),
    [
        (300, 60.0, 239.0, 240.0),  # refreshed leeway seconds before expiry
        (10, 60.0, 4.9, 5.0),  # leeway capped at half the lifetime
        ("10", 2.0, 7.9, 8.0),  # a numeric string works too
        (300, 0.0, 299.9, 300.0),
    ],
)
def test_refreshed_near_expiry(
    clock: Clock, expires_in: Any, leeway: float, reuse_until: float, refresh_at: float
) -> None:
    world = World(expires_in=expires_in)
    start = clock.now
    with client(world, make_auth(leeway=leeway)) as c:
        c.get("tasks/x")
        clock.now = start + reuse_until
        c.get("tasks/x")
        assert len(world.token_requests) == 1
        clock.now = start + refresh_at
        c.get("tasks/x")
        assert len(world.token_requests) == 2
    assert world.bearers() == [world.issued[0], world.issued[0], world.issued[1]]


def test_token_without_expires_in_is_kept_until_rejected(clock: Clock) -> None:
    world = World(expires_in=None)
    with client(world, make_auth()) as c:
        c.get("tasks/x")
        clock.now += 10**7
        assert c.get("tasks/x").status_code == 200
        assert len(world.token_requests) == 1
        world.revoke()
        assert c.get("tasks/x").status_code == 200
    assert len(world.token_requests) == 2


def test_401_refreshes_once_and_retries_with_the_body(clock: Clock) -> None:
    world = World()
    with client(world, make_auth()) as c:
        c.get("tasks/x")
        world.revoke()  # the server no longer takes the cached (unexpired) token
        response = c.post("tasks", json={"name": "n", "executors": []})
    assert response.status_code == 200
    assert len(world.token_requests) == 2
    assert [r.method for r in world.tes_requests] == ["GET", "POST", "POST"]
    assert world.tes_requests[1].content == world.tes_requests[2].content == b'{"name":"n","executors":[]}'
    assert world.bearers()[1:] == [world.issued[0], world.issued[1]]


def test_second_401_stands(clock: Clock) -> None:
    world = World()
    world_call = world.__call__

    def always_401(request: httpx.Request) -> httpx.Response:
        response = world_call(request)
        if request.url.host != "idp.test":
            return httpx.Response(401, json={"message": "no"})
        return response

    with httpx.Client(transport=httpx.MockTransport(always_401), auth=make_auth()) as c:
        response = c.get(f"{TES}/tasks/x")
        assert response.status_code == 401
        assert len(world.token_requests) == 2  # the first fetch and exactly one refresh
        assert len(world.tes_requests) == 2
        # the next request starts over: the (unexpired) second token, one refresh on its 401
        assert c.get(f"{TES}/tasks/x").status_code == 401
        assert len(world.token_requests) == 3
        assert len(world.tes_requests) == 4


@pytest.mark.parametrize(
    ("status", "body", "error", "detail"),
    [
        (401, {"error": "invalid_client", "error_description": "bad secret"}, TesAuthError, "invalid_client"),
        (400, {"error": "invalid_scope"}, TesAuthError, "invalid_scope"),
        (403, "forbidden", TesAuthError, "forbidden"),
        (
            400,
            {"error": "invalid_client", "error_description": f"secret {SECRET} is wrong"},
            TesAuthError,
            "***",
        ),
        (200, {"token_type": "Bearer"}, TesAuthError, "no access_token"),
        (200, "<html>login page</html>", TesAuthError, "no access_token"),
        (503, {"error": "temporarily_unavailable"}, TesServerUnavailableError, "temporarily_unavailable"),
        (429, None, TesServerUnavailableError, "HTTP 429"),
    ],
)
def test_token_endpoint_errors(
    clock: Clock, status: int, body: Any, error: type[TesRequestError], detail: str
) -> None:
    world = World()
    if isinstance(body, dict):
        world.token_answer = httpx.Response(status, json=body)
    else:
        world.token_answer = httpx.Response(status, text=body or "")
    with client(world, make_auth()) as c, pytest.raises(error) as info:
        c.get("tasks/x")
    err = info.value
    assert type(err) is error
    assert TOKEN_URL in str(err)
    assert repr(CLIENT_ID) in str(err)
    assert detail in str(err)
    assert err.http_status == status
    assert err.url == TOKEN_URL
    assert_no_secret(str(err), repr(err), err.args)
    assert world.tes_requests == []  # nothing reached the TES server


def test_token_request_carries_the_client_timeout(clock: Clock) -> None:
    world = World()
    with client(world, make_auth(), timeout=httpx.Timeout(7.0, connect=3.0)) as c:
        c.get("tasks/x")
    timeout = world.token_requests[0].extensions["timeout"]
    assert timeout["read"] == 7.0
    assert timeout["connect"] == 3.0


def test_repr_and_masking(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    masked: list[Any] = []
    import airflow.sdk.log

    monkeypatch.setattr(airflow.sdk.log, "mask_secret", lambda value, name=None: masked.append(value))
    auth = OAuth2ClientCredentials(
        token_url="https://user:pw@idp.test/oauth2/token?x=1", client_id=CLIENT_ID, client_secret=SECRET
    )
    world = World()
    with httpx.Client(transport=httpx.MockTransport(world), auth=auth) as c:
        c.get(f"{TES}/tasks/x")
    assert SECRET in masked
    assert world.issued[0] in masked
    text = repr(auth)
    assert text == (
        "OAuth2ClientCredentials(token_url='https://idp.test/oauth2/token', "
        "client_id='tes-client-id', client_secret=***)"
    )
    assert_no_secret(text, str(auth), tokens=world.issued)
    assert auth.token_url.startswith("https://user:pw@")  # the real URL is still used
    assert (auth.client_id, auth.scope, auth.audience, auth.leeway) == (CLIENT_ID, None, None, 60.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token_url": "idp.test/token"}, "absolute http(s) URL"),
        ({"token_url": "ftp://idp.test/token"}, "absolute http(s) URL"),
        ({"client_id": ""}, "client id"),
        ({"client_secret": ""}, "client secret"),
        ({"leeway": -1}, "leeway"),
        ({"client_auth": "private_key_jwt"}, "client_auth"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"token_url": TOKEN_URL, "client_id": CLIENT_ID, "client_secret": SECRET, **kwargs}
    with pytest.raises(TesConfigurationError, match=re.escape(message)) as info:
        OAuth2ClientCredentials(**args)
    assert_no_secret(str(info.value))


def run_in_threads(call: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=call) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


def test_concurrent_sync_requests_share_one_refresh() -> None:
    world = World(token_delay=0.3)
    auth = make_auth()
    with client(world, auth, limits=httpx.Limits(max_connections=20)) as c:
        barrier = threading.Barrier(12)
        statuses: list[int] = []

        def call() -> None:
            barrier.wait()
            statuses.append(c.get("tasks/x").status_code)

        run_in_threads(call, 12)
        assert statuses == [200] * 12
        assert len(world.token_requests) == 1
        # a revoked token: concurrent 401s lead to one refresh, not one each
        world.revoke()
        barrier.reset()
        statuses.clear()
        run_in_threads(call, 12)
        assert statuses == [200] * 12
        assert len(world.token_requests) == 2


def test_client_closing_mid_refresh_releases_the_lock(clock: Clock) -> None:
    """A transport error on the token request must not leave the refresh lock held."""
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return world(request)

    world = World()
    auth = make_auth()
    with httpx.Client(transport=httpx.MockTransport(flaky), auth=auth) as c:
        with pytest.raises(httpx.ConnectError):
            c.get(f"{TES}/tasks/x")
        assert not auth._lock.locked()
        assert c.get(f"{TES}/tasks/x").status_code == 200


# -- unit: async --------------------------------------------------------------------------------------


async def test_async_reuse_refresh_and_401(clock: Clock) -> None:
    world = World(expires_in=100)
    auth = make_auth(leeway=10)
    async with httpx.AsyncClient(transport=httpx.MockTransport(world), auth=auth, base_url=TES + "/") as c:
        results = await asyncio.gather(*(c.get("tasks/x") for _ in range(3)))
        assert [r.status_code for r in results] == [200] * 3
        assert 1 <= len(world.token_requests) <= 3  # concurrent coroutines may each refresh
        first = len(world.token_requests)
        clock.now += 89
        assert (await c.get("tasks/x")).status_code == 200
        assert len(world.token_requests) == first
        clock.now += 1
        assert (await c.get("tasks/x")).status_code == 200
        assert len(world.token_requests) == first + 1
        world.revoke()
        assert (await c.post("tasks", json={"a": 1})).status_code == 200
        assert len(world.token_requests) == first + 2
        assert world.tes_requests[-1].content == b'{"a":1}'


async def test_async_token_endpoint_error(clock: Clock) -> None:
    world = World()
    world.token_answer = httpx.Response(401, json={"error": "invalid_client"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(world), auth=make_auth()) as c:
        with pytest.raises(TesAuthError, match="invalid_client") as info:
            await c.get(f"{TES}/tasks/x")
    assert TOKEN_URL in str(info.value)
    assert_no_secret(str(info.value), repr(info.value))


# -- the hook with a connection of auth_type oauth2 ------------------------------------------------


def _oauth2_connection(
    host: str, token_url: str, client_id: str, secret: str, **extra: Any
) -> dict[str, Any]:
    return {
        "conn_type": "tes",
        "host": host,
        "login": client_id,
        "password": secret,
        "extra": {"auth_type": "oauth2", "token_url": token_url, "retries": 2, **extra},
    }


def _oauth2_wired() -> bool:
    """Whether TesConnection understands ``auth_type: oauth2`` yet."""
    from airflow.sdk import Connection

    conn = Connection(
        conn_id="oauth2_probe",
        conn_type="tes",
        host="http://tes.test",
        login="probe-client",
        password="probe-secret",
        extra=json.dumps({"auth_type": "oauth2", "token_url": "http://idp.test/token"}),
    )
    try:
        return isinstance(TesConnection.from_airflow(conn).httpx_auth(), OAuth2ClientCredentials)
    except TesConfigurationError:
        return False


def use_oauth2_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn: dict[str, Any]) -> None:
    """Define ``conn_id`` as ``conn`` (auth_type oauth2, through the real connection wiring)."""
    assert _oauth2_wired(), "TesConnection must build OAuth2ClientCredentials for auth_type oauth2"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_connection_auth_type_oauth2_builds_client_credentials() -> None:
    """The connection form: login = client id, password = client secret, extras token_url, scope."""
    from airflow.sdk import Connection

    conn = Connection(
        conn_id="tes_oauth2",
        conn_type="tes",
        host="https://tes.test/ga4gh/tes/v1",
        login=CLIENT_ID,
        password=SECRET,
        extra=json.dumps({"auth_type": "oauth2", "token_url": TOKEN_URL, "scope": "tes"}),
    )
    settings = TesConnection.from_airflow(conn)
    auth = settings.httpx_auth()
    assert isinstance(auth, OAuth2ClientCredentials)
    assert (auth.token_url, auth.client_id, auth.scope) == (TOKEN_URL, CLIENT_ID, "tes")
    assert_no_secret(repr(settings), str(settings), repr(auth), settings.describe_credential())


def test_hook_with_oauth2_connection(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    world = World()
    use_oauth2_connection(
        monkeypatch, "tes_oauth2_unit", _oauth2_connection(TES, TOKEN_URL, CLIENT_ID, SECRET)
    )
    mock = httpx.MockTransport(world)
    with TesHook("tes_oauth2_unit", transport=mock, async_transport=mock, retry_min_wait=0.01) as hook:
        assert hook.get_service_info().name == "Funnel"
        assert hook.get_task("task-1").state == TesState.COMPLETE

        async def poll() -> TesState | None:
            try:
                return (await hook.a_get_task("task-1")).state
            finally:
                await hook.aclose()

        assert asyncio.run(poll()) == TesState.COMPLETE
    assert len(world.tes_requests) == 3
    assert 1 <= len(world.token_requests) <= 2  # the sync and the async client each hold their own


def test_hook_token_endpoint_rejection_is_not_retried(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    world = World()
    world.token_answer = httpx.Response(401, json={"error": "invalid_client"})
    use_oauth2_connection(
        monkeypatch, "tes_oauth2_unit", _oauth2_connection(TES, TOKEN_URL, CLIENT_ID, SECRET)
    )
    with TesHook("tes_oauth2_unit", transport=httpx.MockTransport(world), retry_min_wait=0.01) as hook:
        with pytest.raises(TesAuthError) as info:
            hook.get_task("task-1")
        ok, message = hook.test_connection()
    assert not ok
    assert len(world.token_requests) == 2  # one per call: a rejected credential is not retried
    assert TOKEN_URL in str(info.value)
    assert_no_secret(str(info.value), message)


# -- integration: a real Funnel behind a JWT-checking gateway ---------------------------------------


LIFETIME = 3.0  # seconds a token lives
LONG_TASK_SECONDS = 8


def _require_root() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.fail("the Funnel stack runs executors in Linux namespaces and needs root")


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    with OidcProvider(
        client_id="airflow-tes", client_secret=secrets.token_urlsafe(18), lifetime=LIFETIME
    ) as provider:
        yield provider


@pytest.fixture(scope="module")
def oauth_funnel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, funnel_binary: str
) -> Iterator[FunnelServer]:
    """A Funnel of this module's own (basic auth only, no S3), reached through the gateway."""
    _require_root()
    server = FunnelServer(
        funnel_binary, tmp_path_factory.mktemp("funnel-oauth2"), None, "admin", secrets.token_urlsafe(18)
    )
    with server.serving(request, "funnel-oauth2"):
        yield server


@pytest.fixture(scope="module")
def gateway(oauth_funnel: FunnelServer, idp: OidcProvider) -> Iterator[JwtGateway]:
    with JwtGateway(oauth_funnel.base_url, idp, (oauth_funnel.user, oauth_funnel.password)) as gw:
        yield gw


@pytest.fixture
def oauth_hook(monkeypatch: pytest.MonkeyPatch, idp: OidcProvider, gateway: JwtGateway) -> Iterator[TesHook]:
    use_oauth2_connection(
        monkeypatch,
        "tes_oauth2",
        _oauth2_connection(gateway.base_url, idp.token_url, idp.client_id, idp.client_secret),
    )
    idp.reset_counts()
    gateway.reset_counts()
    with TesHook("tes_oauth2", retry_min_wait=0.05) as hook:
        yield hook


def _long_task(label: str) -> TesTask:
    return TesTask(
        name=f"oauth2-{label}-{uuid.uuid4().hex[:8]}",
        executors=[
            TesExecutor(
                image="alpine:3.20", command=["/bin/sh", "-c", f"sleep {LONG_TASK_SECONDS}; echo done"]
            )
        ],
    )


def _assert_renewed_mid_task(idp: OidcProvider, gateway: JwtGateway, issued_before: int) -> None:
    assert gateway.rejected == 0, gateway.rejections
    # tokens live 3 s and are renewed 1.5 s before expiry: a task of 8 s needs several
    assert idp.tokens_issued - issued_before >= 3, idp.requests
    assert len(set(gateway.token_ids)) >= 3
    assert all(r["auth"] == "basic" and r["outcome"] == "issued" for r in idp.requests)


@pytest.mark.funnel
def test_funnel_v0_12_2_oidc_mode_panics(tmp_path: Path, funnel_binary: str, idp: OidcProvider) -> None:
    """Why the integration tests use a gateway: Funnel v0.12.2 cannot start with Server.OidcAuth.

    ``initConfig`` assigns ``c.oauth2.ClientID`` on a never-allocated ``*oauth2.Config``. When
    this test fails, Funnel's OIDC mode starts: point the integration tests at it directly.
    """
    server = FunnelServer(
        funnel_binary,
        tmp_path / "funnel-oidc",
        None,
        "admin",
        secrets.token_urlsafe(12),
        start_timeout=30,
        oidc={
            "ServiceConfigURL": idp.config_url,
            "ClientId": idp.client_id,
            "ClientSecret": idp.client_secret,
            "RedirectURL": "http://127.0.0.1/login",
        },
    )
    with pytest.raises(RuntimeError, match="exited with status"):
        server.start()
    server.stop()
    logs = server.read_logs()
    assert "panic: runtime error: invalid memory address or nil pointer dereference" in logs
    assert "server.(*OidcConfig).initConfig" in logs
    assert "auth_oidc.go:80" in logs
    assert (
        idp.client_secret not in server.copy_logs(tmp_path / "logs").joinpath("funnel-config.yml").read_text()
    )


@pytest.mark.funnel
def test_long_task_outlives_its_tokens_sync(
    oauth_hook: TesHook, idp: OidcProvider, gateway: JwtGateway
) -> None:
    info = oauth_hook.get_service_info()
    assert info.name
    task_id = oauth_hook.create_task(_long_task("sync"))
    issued_before = idp.tokens_issued
    started = time.monotonic()
    while True:
        state = oauth_hook.get_task(task_id).state
        assert state is not None
        if state.is_terminal:
            break
        assert time.monotonic() - started < 120, "task did not finish"
        time.sleep(0.5)
    assert state == TesState.COMPLETE
    assert time.monotonic() - started >= LONG_TASK_SECONDS - 1
    _assert_renewed_mid_task(idp, gateway, issued_before)


@pytest.mark.funnel
async def test_long_task_outlives_its_tokens_async(
    oauth_hook: TesHook, idp: OidcProvider, gateway: JwtGateway
) -> None:
    task_id = await asyncio.to_thread(oauth_hook.create_task, _long_task("async"))
    issued_before = idp.tokens_issued
    started = time.monotonic()
    while True:
        state = (await oauth_hook.a_get_task(task_id)).state
        assert state is not None
        if state.is_terminal:
            break
        assert time.monotonic() - started < 120, "task did not finish"
        await asyncio.sleep(0.5)
    await oauth_hook.aclose()
    assert state == TesState.COMPLETE
    assert time.monotonic() - started >= LONG_TASK_SECONDS - 1
    _assert_renewed_mid_task(idp, gateway, issued_before)


@pytest.mark.funnel
def test_wrong_client_secret_names_the_token_url(
    monkeypatch: pytest.MonkeyPatch, idp: OidcProvider, gateway: JwtGateway
) -> None:
    wrong = "not-the-" + secrets.token_urlsafe(8)
    use_oauth2_connection(
        monkeypatch,
        "tes_oauth2_wrong",
        _oauth2_connection(gateway.base_url, idp.token_url, idp.client_id, wrong),
    )
    gateway.reset_counts()
    with TesHook("tes_oauth2_wrong", retry_min_wait=0.05) as hook, pytest.raises(TesAuthError) as info:
        hook.get_service_info()
    message = str(info.value)
    assert idp.token_url in message
    assert repr(idp.client_id) in message
    assert "invalid_client" in message
    assert wrong not in message and wrong not in repr(info.value)
    assert gateway.accepted == gateway.rejected == 0  # the TES side never saw a request

    with (
        httpx.Client(
            auth=OAuth2ClientCredentials(
                token_url=idp.token_url, client_id=idp.client_id, client_secret=wrong
            )
        ) as c,
        pytest.raises(TesAuthError, match="HTTP 401"),
    ):
        c.get(f"{gateway.base_url}/service-info")


@pytest.mark.funnel
def test_plain_httpx_client_renews_tokens_against_funnel(idp: OidcProvider, gateway: JwtGateway) -> None:
    """The auth on its own, in a plain httpx.Client (no hook), over two token lifetimes."""
    idp.reset_counts()
    gateway.reset_counts()
    auth = OAuth2ClientCredentials(
        token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret
    )
    deadline = time.monotonic() + 2 * LIFETIME + 0.5
    with httpx.Client(auth=auth, timeout=10) as c:
        while time.monotonic() < deadline:
            response = c.get(f"{gateway.base_url}/tasks", params={"view": "MINIMAL"})
            assert response.status_code == 200, response.text
            time.sleep(0.25)
    assert gateway.rejected == 0, gateway.rejections
    assert idp.tokens_issued >= 3


@pytest.mark.funnel
def test_expired_token_401_is_refreshed_once_against_funnel(oauth_funnel: FunnelServer) -> None:
    """``expires_in`` claims an hour, the JWT lives 1-2 s: the gateway's 401 makes one refresh."""
    with (
        OidcProvider(client_secret=secrets.token_urlsafe(12), lifetime=2.0, advertised_lifetime=3600) as liar,
        JwtGateway(oauth_funnel.base_url, liar, (oauth_funnel.user, oauth_funnel.password)) as gw,
    ):
        auth = OAuth2ClientCredentials(
            token_url=liar.token_url, client_id=liar.client_id, client_secret=liar.client_secret
        )
        with httpx.Client(auth=auth, timeout=10) as c:
            assert c.get(f"{gw.base_url}/service-info").status_code == 200
            time.sleep(2.2)
            response = c.get(f"{gw.base_url}/service-info")
        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [401, 200]  # the TES 401, the token
        assert gw.rejected == 1 and "ExpiredSignatureError" in gw.rejections[0]
        assert liar.tokens_issued == 2

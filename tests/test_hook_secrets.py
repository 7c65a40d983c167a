"""No credential in any message of the hook: transport errors by type, a scrubber on every message."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from airflow_provider_tes.exceptions import (
    TesAuthError,
    TesBadRequestError,
    TesConfigurationError,
    TesError,
    TesServerUnavailableError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.redaction import Scrubber

CONN_ID = "tes_secrets"
TOKEN = "tok-Sup3r-S3cret-value"
PASSWORD = "pw/with@and:colon"
ISSUED = "issued-access-token-7f3a"
HOST = "http://tes.test/ga4gh/tes/v1"


def _set(monkeypatch: pytest.MonkeyPatch, **conn: Any) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "tes", "host": HOST, **conn})
    )


def _hook(handler: Any, retries: int = 1) -> TesHook:
    mock = httpx.MockTransport(handler)
    return TesHook(
        CONN_ID,
        transport=mock,
        async_transport=mock,
        retries=retries,
        retry_min_wait=0.001,
        retry_max_wait=0.01,
    )


def _leaks(text: str, *secrets: str) -> list[str]:
    found = []
    for secret in secrets:
        forms = {secret, quote(secret, safe=""), repr(secret)[1:-1]}
        found += [form for form in forms if form in text]
    return found


def test_transport_error_text_never_reaches_messages_or_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _set(monkeypatch, extra={"token": TOKEN})

    def handler(request: httpx.Request) -> httpx.Response:
        # what h11 says about a header it refuses to send
        raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {TOKEN}\\n' (and {TOKEN!r})")

    with pytest.raises(TesServerUnavailableError) as info:
        _hook(handler).get_task("t1")
    text = f"{info.value} {info.value!r} {info.value.args}"
    assert "LocalProtocolError" in text and "invalid header" in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
    logged = "".join(capsys.readouterr())  # Airflow's structlog writes to stdout
    assert "retry 1 of 1" in logged
    assert not _leaks(text + logged, TOKEN)


async def test_async_transport_error_text_never_reaches_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, extra={"token": TOKEN})

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError(f"bad answer to Authorization: Bearer {TOKEN}")

    hook = _hook(handler)
    with pytest.raises(TesServerUnavailableError) as info:
        await hook.a_get_task("t1")
    await hook.aclose()
    assert "RemoteProtocolError" in str(info.value)
    assert not _leaks(str(info.value), TOKEN)


@pytest.mark.parametrize(
    ("conn", "echo"),
    [
        pytest.param({"extra": {"token": TOKEN}}, f"Bearer {TOKEN}", id="bearer"),
        pytest.param(
            {"login": "alice", "password": PASSWORD},
            "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
            id="basic-header",
        ),
        pytest.param({"login": "alice", "password": PASSWORD}, quote(PASSWORD, safe=""), id="basic-quoted"),
    ],
)
def test_a_server_echoing_the_credential_is_scrubbed(
    monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], echo: str
) -> None:
    _set(monkeypatch, **conn)
    hook = _hook(lambda request: httpx.Response(400, json={"message": f"bad header Authorization: {echo}"}))
    with pytest.raises(TesBadRequestError) as info:
        hook.get_task("t1")
    assert "***" in str(info.value)
    assert not _leaks(str(info.value), TOKEN, PASSWORD, echo)


def test_an_issued_oauth2_token_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        login="client",
        password="client-secret-123",
        extra={"auth_type": "oauth2", "token_url": "http://idp.test/token"},
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "idp.test":
            return httpx.Response(200, json={"access_token": ISSUED, "expires_in": 300})
        return httpx.Response(503, json={"message": f"token {ISSUED} overloaded us"})

    with pytest.raises(TesError) as info:
        _hook(handler).get_task("t1")
    assert "overloaded" in str(info.value)
    assert not _leaks(str(info.value), ISSUED, "client-secret-123")


def test_scrubber_forms_and_short_values() -> None:
    scrub = Scrubber()
    scrub.add("abc")  # too short to replace safely
    scrub.add(PASSWORD, login="alice")
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    text = f"{PASSWORD} {quote(PASSWORD, safe='')} {json.dumps(PASSWORD)} {basic} abc"
    assert scrub(text) == '*** *** "***" *** abc'


# -- reload: a rotated credential is picked up ------------------------------------------------------


class RotatingServer:
    def __init__(self, token: str) -> None:
        self.valid = token

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {self.valid}":
            return httpx.Response(401, json={"message": "invalid token"})
        return httpx.Response(200, json={"id": "t1", "state": "RUNNING"})


def test_reload_picks_up_a_rotated_token(monkeypatch: pytest.MonkeyPatch) -> None:
    server = RotatingServer("old-token-123456")
    _set(monkeypatch, extra={"token": "old-token-123456"})
    hook = _hook(server)
    assert hook.get_task("t1").id == "t1"
    old_client = hook.get_conn()
    _set(monkeypatch, extra={"token": "new-token-654321", "timeout": 7})
    server.valid = "new-token-654321"
    with pytest.raises(TesAuthError):
        hook.get_task("t1")  # the hook keeps what it read until told
    settings = hook.reload()
    assert settings.secret == "new-token-654321" and hook.settings.timeout == 7
    assert old_client.is_closed
    assert hook.get_task("t1").id == "t1"
    hook.close()


async def test_a_reload_picks_up_a_rotated_token(monkeypatch: pytest.MonkeyPatch) -> None:
    server = RotatingServer("old-token-123456")
    _set(monkeypatch, extra={"token": "old-token-123456"})
    hook = _hook(server)
    assert (await hook.a_get_task("t1")).id == "t1"
    old_client = await hook.a_get_conn()
    _set(monkeypatch, extra={"token": "new-token-654321"})
    server.valid = "new-token-654321"
    with pytest.raises(TesAuthError) as info:
        await hook.a_get_task("t1")
    assert "new-token" not in str(info.value) and "old-token" not in str(info.value)
    await hook.a_reload()
    assert await hook.a_get_conn() is not old_client
    assert not old_client.is_closed, "requests still in flight on the old client may finish"
    assert (await hook.a_get_task("t1")).id == "t1"
    await hook.aclose()
    assert old_client.is_closed, "the retired client is closed with the hook"


def test_reload_of_a_broken_connection_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, extra={"token": "old-token-123456"})
    hook = _hook(RotatingServer("old-token-123456"))
    hook.get_task("t1")
    _set(monkeypatch, extra={"token": "new-token\n-654321"})
    with pytest.raises(TesConfigurationError, match="control characters"):
        hook.reload()
    assert hook.get_task("t1").id == "t1"  # the working client is kept

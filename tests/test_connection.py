"""The connection model: the provider info's form is the parser's view of the extras, and back."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_tes.connection import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    TesConnection,
    TesConnectionExtras,
)
from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.get_provider_info import get_provider_info
from tests.support.inprocess import fake_connection


def _form() -> dict[str, Any]:
    (conn_type,) = get_provider_info()["connection-types"]
    fields: dict[str, Any] = conn_type["conn-fields"]
    return fields


class RecordingExtra(dict[str, Any]):
    """An extra JSON that notes every key read from it, however it is read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def items(self) -> Any:
        self.read.update(self.keys())
        return super().items()

    def __iter__(self) -> Any:
        self.read.update(self.keys())
        return super().__iter__()


def test_every_extra_the_parser_reads_is_in_the_form_with_its_default() -> None:
    form = _form()
    model = TesConnectionExtras.model_fields
    assert set(form) == set(model)
    for key, field in model.items():
        assert form[key]["schema"].get("default") == field.default, key
        assert form[key]["label"] == field.title
        assert field.description and form[key]["description"].split() == field.description.split(), key
    # the parser reads the extras only through the model: feed it every form key (and one
    # unknown one) and see which it touched
    extra = RecordingExtra({key: field["schema"].get("default", "x") for key, field in form.items()})
    extra.update(token="tok-123456", auth_type="bearer", protocol="https", unknown_key="?")
    TesConnection.from_airflow(fake_connection(extra))
    assert extra.read == set(form)


def test_form_types_enum_and_secret() -> None:
    form = _form()
    assert form["timeout"]["schema"] == {"type": ["number", "null"], "default": DEFAULT_TIMEOUT}
    assert form["retries"]["schema"] == {"type": ["integer", "null"], "default": DEFAULT_RETRIES}
    assert form["max_concurrency"]["schema"]["default"] == DEFAULT_MAX_CONCURRENCY
    assert form["poll_interval"]["schema"]["default"] == DEFAULT_POLL_INTERVAL
    assert form["verify"]["schema"] == {"type": ["boolean", "null"], "default": True}
    assert form["auth_type"]["schema"]["enum"] == ["auto", "none", "basic", "bearer", "oauth2"]
    assert form["token"]["schema"]["format"] == "password"
    assert form["allowed_local_roots"]["schema"] == {"type": ["string", "null"]}
    secret_fields = [key for key, f in form.items() if f["schema"].get("format") == "password"]
    assert secret_fields == ["token", "tenant_secret"]


def test_defaults_come_from_the_model() -> None:
    conn = TesConnection.from_airflow(fake_connection())
    assert (conn.timeout, conn.retries, conn.max_concurrency, conn.poll_interval) == (
        DEFAULT_TIMEOUT,
        DEFAULT_RETRIES,
        DEFAULT_MAX_CONCURRENCY,
        DEFAULT_POLL_INTERVAL,
    )
    assert conn.auth_type == "none" and conn.verify is True


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": "soon"}, "connection 'c': extra 'timeout' must be a number, got 'soon'"),
        ({"timeout": 0}, "connection 'c': extra 'timeout' must be >= 0.001, got 0"),
        ({"retries": 1.5}, None),
        ({"retries": "x"}, "connection 'c': extra 'retries' must be an integer, got 'x'"),
        ({"max_concurrency": 0}, "connection 'c': extra 'max_concurrency' must be >= 1, got 0"),
        ({"verify": "maybe"}, "connection 'c': extra 'verify' must be true or false, got 'maybe'"),
        ({"auth_type": "kerberos"}, "connection 'c': auth_type must be one of none, basic, bearer, oauth2"),
    ],
)
def test_extra_errors(extra: dict[str, Any], message: str | None) -> None:
    if message is None:  # int("1.5") fails, int(1.5) truncates: as before
        assert TesConnection.from_airflow(fake_connection(extra)).retries == 1
        return
    with pytest.raises(TesConfigurationError) as info:
        TesConnection.from_airflow(fake_connection(extra))
    assert str(info.value).startswith(message)


def test_frozen_and_secret_not_in_repr() -> None:
    conn = TesConnection.from_airflow(fake_connection({"token": "tok-Sup3r-secret"}))
    assert conn.auth_type == "bearer" and conn.secret == "tok-Sup3r-secret"
    assert "tok-Sup3r-secret" not in repr(conn) + str(conn)
    extras = TesConnectionExtras.model_validate({"token": "tok-Sup3r-secret"})
    assert "tok-Sup3r-secret" not in repr(extras)
    with pytest.raises(Exception, match="frozen"):
        conn.timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({"verify": "false"}, False), ({"verify": "yes"}, True), ({"ca_bundle": "/ca.pem"}, "/ca.pem")],
)
def test_verify(extra: dict[str, Any], expected: bool | str) -> None:
    assert TesConnection.from_airflow(fake_connection(extra)).tls_verify() == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/srv, /data,", ("/srv", "/data")), (["/srv", " /data"], ("/srv", "/data")), ("", None), ([], ())],
)
def test_allowed_local_roots_from_a_string_or_a_list(value: Any, expected: tuple[str, ...] | None) -> None:
    roots = TesConnection.from_airflow(fake_connection({"allowed_local_roots": value})).allowed_local_roots
    assert roots == expected


# -- credentials as pasted ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "attribute", "expected"),
    [
        ({"extra": {"token": "tok-123456\n"}}, "secret", "tok-123456"),
        ({"password": "  tok-123456\r\n", "extra": {"auth_type": "bearer"}}, "secret", "tok-123456"),
        ({"login": " alice\n", "password": "pw-123456 \n"}, "secret", "pw-123456"),
        ({"login": " alice\n", "password": "pw-123456"}, "login", "alice"),
    ],
)
def test_credentials_are_stripped(kw: dict[str, Any], attribute: str, expected: str) -> None:
    extra = kw.pop("extra", {})
    assert getattr(TesConnection.from_airflow(fake_connection(extra, **kw)), attribute) == expected


@pytest.mark.parametrize(
    ("kw", "field", "pieces"),
    [
        ({"extra": {"token": "tok-12\n3456"}}, "extra 'token'", ["tok-12", "3456"]),
        ({"login": "alice", "password": "pw-12\x003456"}, "password", ["pw-12", "3456"]),
        ({"login": "al\tice", "password": "pw-123456"}, "login", ["ice", "pw-123456"]),
    ],
)
def test_control_characters_are_refused_without_echo(
    kw: dict[str, Any], field: str, pieces: list[str]
) -> None:
    extra = kw.pop("extra", {})
    with pytest.raises(TesConfigurationError, match=f"the {field} contains control characters") as info:
        TesConnection.from_airflow(fake_connection(extra, **kw))
    assert not [piece for piece in pieces if piece in str(info.value)]


# -- URLs in messages ------------------------------------------------------------------------------


def test_malformed_host_names_the_field_not_its_content() -> None:
    with pytest.raises(TesConfigurationError, match="host is not a valid URL") as info:
        TesConnection.from_airflow(fake_connection(host="https://alice:pa/ss@tes.example.org"))
    assert "pa" not in str(info.value).replace("password", "").replace("port", "")
    assert "alice" not in str(info.value)


@pytest.mark.parametrize(
    "token_url", ["https://u:idp-pass@idp.example.org:x/token", "ftp://u:idp-pass@idp.example.org/token"]
)
def test_malformed_token_url_names_the_field(token_url: str) -> None:
    extra = {"auth_type": "oauth2", "token_url": token_url}
    with pytest.raises(TesConfigurationError, match="extra 'token_url'") as info:
        TesConnection.from_airflow(fake_connection(extra, login="client", password="pw-123456"))
    assert "idp-pass" not in str(info.value)


def test_token_url_shown_without_userinfo_or_query() -> None:
    extra = {"auth_type": "oauth2", "token_url": "https://u:idp-pass@idp.example.org/token?client_secret=xyz"}
    conn = TesConnection.from_airflow(fake_connection(extra, login="client", password="pw-123456"))
    text = conn.describe_credential()
    assert "https://idp.example.org/token" in text
    assert "idp-pass" not in text and "xyz" not in text

"""The TES connection, read from Airflow once: the single home of every connection default.

Two models, because an Airflow connection has two layers:

* :class:`TesConnectionExtras` is the connection's *extra* JSON as the provider reads it: every
  key, its type, default and help text, declared once. The connection form in Airflow's UI
  (``conn-fields`` in the provider info) is generated from it by :func:`connection_form_fields`,
  so the form and the parser cannot disagree.
* :class:`TesConnection` is what the rest of the provider uses: the extras (it extends that
  model, so a new extra is added in one place), plus the base URL resolved, the auth type
  decided and the credential picked. It is frozen; a changed connection is read again (see
  :meth:`~airflow_provider_tes.hooks.tes.TesHook.reload`), never patched.

Airflow's providers manager imports this module (through ``get_provider_info``) while Airflow
itself is still initialising, so nothing here imports ``airflow`` at module level: the error
class is imported where an error is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from airflow_provider_tes.redaction import display_url, mask

if TYPE_CHECKING:
    import httpx

    from airflow_provider_tes.exceptions import TesConfigurationError

DEFAULT_API_PATH = "/ga4gh/tes/v1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 5
DEFAULT_MAX_CONCURRENCY = 10
DEFAULT_POLL_INTERVAL = 5.0
#: Seconds between two reads of a running task's executor log for the live logs.
DEFAULT_LOG_INTERVAL = 10.0
#: Largest answer body read (bytes, after content decoding); a larger one is an error.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Most pages one listing may take; a server handing out tokens forever is stopped there.
DEFAULT_MAX_PAGES = 1000
#: Longest single backoff sleep, and the longest Retry-After the hook will honour.
DEFAULT_RETRY_MAX_WAIT = 30.0
#: Shortest backoff step (seconds); the n-th retry waits about ``2**n`` of them, plus jitter.
DEFAULT_RETRY_MIN_WAIT = 0.5
#: Longest connect phase of a request (seconds), when ``timeout`` is longer.
DEFAULT_CONNECT_TIMEOUT = 10.0

AuthType = Literal["none", "basic", "bearer", "oauth2"]
AUTH_TYPES: tuple[AuthType, ...] = ("none", "basic", "bearer", "oauth2")


# -- extras: how one value of the extra JSON is read --------------------------------------------------


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def _number(*, integer: bool = False, minimum: float = 0) -> Callable[[Any], float | int]:
    def read(value: Any) -> float | int:
        try:
            number = int(value) if integer else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be {'an integer' if integer else 'a number'}, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be >= {minimum}, got {value!r}")
        return number

    return read


def _text(value: Any) -> str | None:
    """Optional text: blank means unset."""
    if value is None or value == "":
        return None
    return str(value)


def _auth_type(value: Any) -> str:
    text = str(value or "").strip().lower()
    text = text or "auto"
    if text not in ("auto", *AUTH_TYPES):
        raise ValueError(f"auth_type must be one of {', '.join(AUTH_TYPES)} (got {text!r})")
    return text


Flag = Annotated[bool, BeforeValidator(_flag)]
Seconds = Annotated[float, BeforeValidator(_number(minimum=0.001))]
Count = Annotated[int, BeforeValidator(_number(integer=True))]
PositiveCount = Annotated[int, BeforeValidator(_number(integer=True, minimum=1))]
Text = Annotated[str | None, BeforeValidator(_text)]


def _seconds_or_off(value: Any) -> float | None:
    """Seconds, or off: null, an empty value, 0 or "off"."""
    if value is None or str(value).strip().lower() in ("", "off", "none", "0"):
        return None
    return float(_number(minimum=0.001)(value))


SecondsOrOff = Annotated[float | None, BeforeValidator(_seconds_or_off)]


def _roots(value: Any) -> tuple[str, ...] | None:
    """Directories, given in the JSON extra as a list or as one comma-separated string."""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    elif (value := _text(value)) is None:
        return None
    return tuple(root.strip() for root in value.split(",") if root.strip())


#: Blank means unset; the form masks it, the repr leaves it out.
Secret = Annotated[Text, Field(repr=False, json_schema_extra={"format": "password"})]
#: The form takes one comma-separated string; a JSON list is accepted too.
Roots = Annotated[tuple[str, ...] | None, BeforeValidator(_roots, json_schema_input_type=str | None)]


class TesConnectionExtras(BaseModel):
    """Every key of the connection's extra JSON that the provider reads, with its form metadata.

    ``title`` is the form label and the attribute's docstring its help text; the JSON schema of
    this model becomes the connection form, fields in this order (related ones together). Unknown
    keys are ignored (Airflow's UI adds its own).
    """

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    # Who the provider is to the server, and which of its tasks are this deployment's.
    auth_type: Annotated[
        Literal["auto", "none", "basic", "bearer", "oauth2"], BeforeValidator(_auth_type)
    ] = Field("auto", title="Auth type")
    """none, basic (login/password), bearer (token below, or the password field) or oauth2 (client
    credentials: client id as login, secret as password, token URL below). auto: basic when a login
    is set, bearer when only a token is."""
    token: Secret = Field(None, title="Bearer token")
    """Static bearer token (kept secret)."""
    token_url: Text = Field(None, title="OAuth2 token URL")
    """Client-credentials token endpoint (auth type oauth2); tokens are renewed before they expire."""
    scope: Text = Field(None, title="OAuth2 scope")
    """Scope requested with oauth2 (optional)."""
    tenant_secret: Secret = Field(None, title="Tenant secret")
    """Key of the tag that marks this deployment's tasks, so a retry adopts only its own (default:
    [tes] tenant_secret, then [core] fernet_key, then the credential). Kept secret."""
    # How requests travel, and how much any one may take.
    protocol: Text = Field(None, title="Protocol")
    """http or https, for a host given without scheme (default https)."""
    verify: Flag = Field(True, title="Verify TLS")
    """Verify the server's TLS certificate."""
    ca_bundle: Text = Field(None, title="CA bundle path")
    """PEM file of CAs to trust for the TES URL."""
    timeout: Seconds = Field(DEFAULT_TIMEOUT, title="Timeout (s)")
    """Longest time one request may take, its whole answer included."""
    retries: Count = Field(DEFAULT_RETRIES, title="Retries")
    """Retries of a failed request (jittered backoff)."""
    max_concurrency: PositiveCount = Field(DEFAULT_MAX_CONCURRENCY, title="Max concurrent requests")
    """Cap on simultaneous requests; more wait their turn."""
    max_response_bytes: PositiveCount = Field(DEFAULT_MAX_RESPONSE_BYTES, title="Max answer size (bytes)")
    """Largest answer the provider reads; a larger one fails like a bad answer."""
    max_pages: PositiveCount = Field(DEFAULT_MAX_PAGES, title="Max pages per listing")
    """Most pages one task listing may take before it is treated as a bad answer."""
    # How a running task is watched.
    poll_interval: Seconds = Field(DEFAULT_POLL_INTERVAL, title="Poll interval (s)")
    """Default seconds between status polls."""
    log_interval: SecondsOrOff = Field(DEFAULT_LOG_INTERVAL, title="Live log interval (s)")
    """Seconds between reads of a running task's executor log, shown in the Airflow task log while
    it runs; 0 or empty turns live logs off."""
    # Where files go in and out, and which local files may go.
    inputs_url: Text = Field(None, title="Inputs URL")
    """Where local inputs are staged, e.g. s3://bucket/tes/inputs/"""
    outputs_url: Text = Field(None, title="Outputs URL")
    """Where task outputs go, e.g. s3://bucket/tes/outputs/"""
    aws_conn_id: Text = Field(None, title="AWS connection id")
    """Airflow AWS connection used to stage inputs."""
    allowed_local_roots: Roots = Field(None, title="Allowed local roots")
    """Comma-separated worker directories that local inputs may come from; any other local path is
    refused (recommended when inputs come from run configuration)."""
    # What the Airflow UI links to.
    task_link_template: Text = Field(None, title="Task link template")
    """URL of the 'TES Task' link; {base_url}, {origin} and {task_id} are replaced, e.g.
    {origin}/tasks/{task_id} for Funnel's dashboard."""

    @classmethod
    def read(cls, extra: Mapping[str, Any], conn_id: str) -> Self:
        # Only declared keys are looked up: what is read is what the form shows.
        present = {key: extra[key] for key in cls.model_fields if key in extra}
        try:
            return cls.model_validate(present)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            cause = (first.get("ctx") or {}).get("error")
            problem = str(cause) if isinstance(cause, ValueError) else str(first["msg"])
            if key == "auth_type":
                raise _error(f"connection {conn_id!r}: {problem}") from None
            raise _error(f"connection {conn_id!r}: extra {key!r} {problem}") from None


def connection_form_fields() -> dict[str, dict[str, Any]]:
    """The ``conn-fields`` of the provider info: one form field per extra key, from the model."""
    fields: dict[str, dict[str, Any]] = {}
    for key, prop in TesConnectionExtras.model_json_schema()["properties"].items():
        variants = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        schema: dict[str, Any] = {"type": [variants[0]["type"], "null"]}
        for name in ("enum", "format", "default"):
            value = prop.get(name, variants[0].get(name))
            if value is not None:
                schema[name] = value
        # A docstring wraps where the source does; the form shows one paragraph.
        description = " ".join(prop.get("description", "").split())
        fields[key] = {"label": prop["title"], "schema": schema, "description": description}
    return fields


def _error(message: str) -> TesConfigurationError:
    from airflow_provider_tes.exceptions import TesConfigurationError

    return TesConfigurationError(message)


# -- the connection -------------------------------------------------------------------------------------


class TesConnection(TesConnectionExtras):
    """Everything the provider needs from an Airflow connection, validated once.

    The extras are inherited, so each setting is declared once; on top come the connection's own
    fields, resolved. ``host`` is the TES base URL. A host without scheme means https (``protocol``
    extra overrides, for the URI form of a connection), a URL without path means
    ``/ga4gh/tes/v1``; in the URI form the path arrives as ``schema``. ``auth_type`` is decided
    (never ``auto``) and ``secret`` is the password, token or client secret it uses; it is never in
    the repr.
    """

    model_config = ConfigDict(extra="forbid")

    conn_id: str
    base_url: str
    auth_type: AuthType
    login: str | None = None
    secret: str | None = Field(default=None, repr=False)

    @classmethod
    def from_airflow(cls, conn: Any) -> Self:
        """Read an Airflow ``Connection`` (anything with its attributes)."""
        conn_id = conn.conn_id
        if conn.conn_type and conn.conn_type != "tes":
            raise _error(
                f"connection {conn_id!r} has type {conn.conn_type!r}; "
                "TesHook needs a connection of type 'tes'"
            )
        extras = TesConnectionExtras.read(conn.extra_dejson or {}, conn_id)
        base_url = _base_url(conn, extras)
        token = _credential(extras.token, "extra 'token'", conn_id)
        login = _credential(conn.login, "login", conn_id)
        password = _credential(conn.password, "password", conn_id)
        auth_type = extras.auth_type
        if auth_type == "auto":
            auth_type = "bearer" if token else ("basic" if login else "none")
        secret: str | None = None
        if auth_type == "basic":
            if not login:
                raise _error(f"connection {conn_id!r}: basic auth needs a login (username)")
            secret = password or ""
        elif auth_type == "bearer":
            secret = token or password
            if not secret:
                raise _error(
                    f"connection {conn_id!r}: bearer auth needs a token (extra 'token' or the password field)"
                )
        elif auth_type == "oauth2":
            if not (extras.token_url and login and password):
                raise _error(
                    f"connection {conn_id!r}: oauth2 needs extra 'token_url', the client id as login "
                    "and the client secret as password"
                )
            _check_url(extras.token_url, "extra 'token_url'", conn_id)
            secret = password
        tenant_secret = _credential(extras.tenant_secret, "extra 'tenant_secret'", conn_id)
        for value in (secret, tenant_secret):
            if value:
                mask(value)
        resolved = {
            "conn_id": conn_id,
            "base_url": base_url,
            "auth_type": auth_type,
            "login": login if auth_type in ("basic", "oauth2") else None,
            "secret": secret,
            "token": token,
            "tenant_secret": tenant_secret,
        }
        return cls.model_validate({**dict(extras), **resolved})

    def tls_verify(self) -> bool | str:
        """What httpx should verify; nothing when no URL the client talks to is https.

        Building a verifying SSL context costs tens of milliseconds per client, most of a
        plain-HTTP submit, so it is skipped when no request can use TLS (redirects are off).
        """
        urls = [self.base_url, self.token_url if self.auth_type == "oauth2" else None]
        if not any(url and url.lower().startswith("https:") for url in urls):
            return False
        return self.ca_bundle or self.verify

    def httpx_auth(self, on_token: Callable[[str], None] | None = None) -> httpx.Auth | None:
        """The httpx auth of this connection's credential (``None`` for auth type none).

        ``on_token`` is told each OAuth2 access token as it is issued.
        """
        import httpx

        from airflow_provider_tes.auth import BearerToken, OAuth2ClientCredentials

        if self.auth_type == "basic":
            return httpx.BasicAuth(self.login or "", self.secret or "")
        if self.auth_type == "bearer":
            return BearerToken(self.secret or "")
        if self.auth_type == "oauth2":
            return OAuth2ClientCredentials(
                token_url=self.token_url or "",
                client_id=self.login or "",
                client_secret=self.secret or "",
                scope=self.scope,
                on_token=on_token,
            )
        return None

    def describe_credential(self) -> str:
        """Which credential was used, for an auth error; never the credential itself."""
        if self.auth_type == "basic":
            return f"the login/password (user {self.login!r}) of connection {self.conn_id!r}"
        if self.auth_type == "bearer":
            return f"the bearer token of connection {self.conn_id!r}"
        if self.auth_type == "oauth2":
            return (
                f"the OAuth2 client {self.login!r} (token from {display_url(self.token_url or '')}) "
                f"of connection {self.conn_id!r}"
            )
        return f"connection {self.conn_id!r}, which sends no credentials (set a login/password or token)"


def _credential(value: str | None, field: str, conn_id: str) -> str | None:
    """A login, password or token as pasted, normalised: surrounding whitespace dropped.

    ``cat token.txt`` leaves a newline that h11 refuses to send, and its error quotes the
    header. A control character inside the value is refused; the message names the field,
    never the value.
    """
    if value is None:
        return None
    value = value.strip()
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise _error(
            f"connection {conn_id!r}: the {field} contains control characters (a line break or tab?); "
            "paste it again without them"
        )
    return value or None


def _check_url(url: str, field: str, conn_id: str) -> None:
    """An http(s) URL that parses; the error names the field, never the text (it may hold a password)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise _error(f"connection {conn_id!r}: the {field} is not a valid URL (check its port)") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise _error(f"connection {conn_id!r}: the {field} must be an absolute http(s) URL")


def _base_url(conn: Any, extras: TesConnectionExtras) -> str:
    host = (conn.host or "").strip()
    if not host:
        raise _error(
            f"connection {conn.conn_id!r} has no host: set it to the TES base URL, "
            "e.g. https://tes.example.org/ga4gh/tes/v1"
        )
    if "://" not in host:
        host = f"{extras.protocol or 'https'}://{host}"
    try:
        parts = urlsplit(host)
        url_port = parts.port
    except ValueError:
        # The text after ':' may be the start of a password (https://user:pa/ss@host).
        raise _error(
            f"connection {conn.conn_id!r}: the host is not a valid URL (check its port; "
            "credentials belong in login/password, not in the host)"
        ) from None
    if parts.scheme not in {"http", "https"}:
        raise _error(f"connection {conn.conn_id!r}: the TES URL must be http or https, got {parts.scheme!r}")
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    port = url_port or conn.port
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

"""A tiny OpenID Connect provider on 127.0.0.1, for tests of OAuth2 client-credentials auth.

Plain Python (no pytest import)::

    with OidcProvider(client_id="tes-client", client_secret="s3cret", lifetime=3) as idp:
        idp.config_url       # http://127.0.0.1:PORT/.well-known/openid-configuration
        idp.token_url        # POST here: grant_type=client_credentials
        idp.token_requests   # how many token requests were answered (any outcome)
        idp.verify(token)    # the claims, or jwt.InvalidTokenError

Endpoints:

* ``/.well-known/openid-configuration``: ``issuer``, ``jwks_uri``, ``token_endpoint``,
  ``authorization_endpoint`` (Funnel reads these four; no ``introspection_endpoint``, so
  Funnel takes every signature-valid, unexpired token as active);
* ``/jwks``: the RSA public key (``kid`` and ``alg`` set: Funnel's jwx requires both);
* ``/token``: the client-credentials grant. The client authenticates with HTTP Basic
  (RFC 6749 2.3.1: form-encoded, then base64) or ``client_id``/``client_secret`` form fields.
  Answers RS256 JWTs with ``iss``, ``sub`` (the client id), ``aud``, ``iat``, ``exp`` = now +
  ``lifetime``, ``scope`` (the requested one, if any) and ``jti``; errors are RFC 6749 5.2
  JSON (``invalid_client`` 401, ``unsupported_grant_type`` / ``invalid_request`` 400).

``advertised_lifetime`` makes ``expires_in`` lie (longer than the real ``exp``), to drive a
client into presenting an expired token; ``fail_next(status)`` makes the next token requests
fail with a given HTTP status.

:class:`JwtGateway` is a loopback reverse proxy in front of a TES server that admits only
bearer JWTs of one :class:`OidcProvider` -- the checks Funnel's OIDC mode makes (signature by
the JWKS key, ``iss``, ``exp``; ``aud`` here too) -- and forwards them upstream with basic auth.
It stands in for Funnel's own OIDC mode, which panics at start-up in v0.12.2 (a nil
``*oauth2.Config`` in ``server/auth_oidc.go``).
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

LOOPBACK = "127.0.0.1"


class OidcProvider:
    """A threaded OIDC/OAuth2 provider for one confidential client."""

    def __init__(
        self,
        client_id: str = "tes-client",
        client_secret: str = "tes-client-secret",
        *,
        lifetime: float = 3.0,
        advertised_lifetime: float | None = None,
        audience: str | None = None,
        kid: str = "test-key-1",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime = lifetime
        self.advertised_lifetime = advertised_lifetime
        self.audience = audience
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lock = threading.Lock()
        self.token_requests = 0
        self.tokens_issued = 0
        self.requests: list[dict[str, Any]] = []  # one per token request: form, auth kind, outcome
        self._failures: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- addresses ------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    # -- tokens ---------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        return {"keys": [jwk]}

    def issue(
        self, subject: str | None = None, scope: str | None = None, lifetime: float | None = None
    ) -> str:
        """A signed access token (also used directly by tests)."""
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject or self.client_id,
            "aud": self.audience or self.client_id,
            "iat": int(now),
            "exp": int(now + (self.lifetime if lifetime is None else lifetime)),
            "jti": uuid.uuid4().hex,
            "client_id": self.client_id,
        }
        if scope:
            claims["scope"] = scope
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if it is one of ours and unexpired; else ``jwt.InvalidTokenError``."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            issuer=self.issuer,
            audience=self.audience or self.client_id,
            options={"require": ["exp", "iss", "sub"]},
        )
        return claims

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` token requests with HTTP ``status``."""
        with self._lock:
            self._failures.extend([status] * count)

    def reset_counts(self) -> None:
        with self._lock:
            self.token_requests = 0
            self.tokens_issued = 0
            self.requests.clear()

    # -- token endpoint -------------------------------------------------------------------------

    def _token_response(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        auth_kind = "none"
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        if client_secret is not None:
            auth_kind = "post"
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            auth_kind = "basic"
            try:
                decoded = base64.b64decode(authorization[6:], validate=True).decode()
                user, _, password = decoded.partition(":")
                client_id, client_secret = unquote(user), unquote(password)
            except (ValueError, UnicodeDecodeError):
                client_id = client_secret = None
        record = {"form": {k: v for k, v in form.items() if k != "client_secret"}, "auth": auth_kind}
        with self._lock:
            self.token_requests += 1
            self.requests.append(record)
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            record["outcome"] = failure
            return failure, {"error": "temporarily_unavailable", "error_description": "injected failure"}
        if form.get("grant_type") != "client_credentials":
            record["outcome"] = "unsupported_grant_type"
            return 400, {"error": "unsupported_grant_type", "error_description": "only client_credentials"}
        if client_id != self.client_id or client_secret != self.client_secret:
            record["outcome"] = "invalid_client"
            return 401, {"error": "invalid_client", "error_description": "client authentication failed"}
        if "audience" in form and self.audience and form["audience"] != self.audience:
            record["outcome"] = "invalid_target"
            return 400, {"error": "invalid_target", "error_description": "unknown audience"}
        scope = form.get("scope")
        token = self.issue(scope=scope)
        with self._lock:
            self.tokens_issued += 1
        record["outcome"] = "issued"
        advertised = self.lifetime if self.advertised_lifetime is None else self.advertised_lifetime
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": max(1, math.floor(advertised)),
        }
        if scope:
            answer["scope"] = scope
        return 200, answer

    # -- server ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/.well-known/openid-configuration":
                    self._send(
                        200,
                        {
                            "issuer": provider.issuer,
                            "jwks_uri": provider.jwks_url,
                            "token_endpoint": provider.token_url,
                            "authorization_endpoint": f"{provider.issuer}/authorize",
                            "grant_types_supported": ["client_credentials"],
                            "token_endpoint_auth_methods_supported": [
                                "client_secret_basic",
                                "client_secret_post",
                            ],
                            "id_token_signing_alg_values_supported": ["RS256"],
                            "response_types_supported": ["token"],
                            "subject_types_supported": ["public"],
                        },
                    )
                elif path == "/jwks":
                    self._send(200, provider.jwks())
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if urlsplit(self.path).path != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                status, payload = provider._token_response(self.headers, body)
                self._send(status, payload)

        return Handler

    def start(self) -> OidcProvider:
        if self._server is not None:
            return self
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class JwtGateway:
    """Reverse proxy to ``upstream`` (a TES base URL) that admits only ``provider``'s valid JWTs.

    Rejected requests get HTTP 401 (what Funnel answers for a bad bearer token) and are not
    forwarded. Records: ``accepted``, ``rejected`` (counts), ``token_ids`` (the ``jti`` of
    every accepted request, in order), ``rejections`` (the reasons).
    """

    def __init__(self, upstream: str, provider: OidcProvider, upstream_auth: tuple[str, str] | None = None):
        self.upstream = upstream.rstrip("/")
        self.provider = provider
        self._client = httpx.Client(auth=upstream_auth, timeout=30.0)
        self._lock = threading.Lock()
        self.accepted = 0
        self.rejected = 0
        self.token_ids: list[str] = []
        self.rejections: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        """The TES base URL as seen through the gateway (same path as upstream)."""
        return self.url + urlsplit(self.upstream).path

    def reset_counts(self) -> None:
        with self._lock:
            self.accepted = self.rejected = 0
            self.token_ids.clear()
            self.rejections.clear()

    def _admit(self, authorization: str) -> str | None:
        """None when admitted, else the reason."""
        if not authorization.startswith("Bearer "):
            return "no bearer token"
        try:
            claims = self.provider.verify(authorization[7:])
        except jwt.InvalidTokenError as err:
            return f"{type(err).__name__}: {err}"
        with self._lock:
            self.accepted += 1
            self.token_ids.append(str(claims.get("jti")))
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reason = gateway._admit(self.headers.get("Authorization", ""))
                if reason is not None:
                    with gateway._lock:
                        gateway.rejected += 1
                        gateway.rejections.append(reason)
                    payload = {"code": 16, "message": "Bearer authorization token not accepted"}
                    self._answer(401, json.dumps(payload).encode(), "application/json")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                try:
                    upstream = gateway._client.request(
                        self.command,
                        f"{urlsplit(gateway.upstream).scheme}://{urlsplit(gateway.upstream).netloc}{self.path}",
                        content=body,
                        headers=headers,
                    )
                except httpx.HTTPError as err:
                    self._answer(502, json.dumps({"message": str(err)}).encode(), "application/json")
                    return
                self._answer(
                    upstream.status_code,
                    upstream.content,
                    upstream.headers.get("Content-Type", "application/json"),
                )

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler

    def start(self) -> JwtGateway:
        if self._server is None:
            self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
            self._server.daemon_threads = True
            self.port = int(self._server.server_address[1])
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="jwt-gateway", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._client.close()

    def __enter__(self) -> JwtGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

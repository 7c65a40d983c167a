"""A tiny OpenID Connect provider on 127.0.0.1, for tests of OAuth2 client-credentials auth.

Both servers here are built on the shared loopback core (:mod:`tests.support.loopback`)::

    with OidcProvider(client_id="tes-client", client_secret="s3cret", lifetime=3) as idp:
        idp.config_url       # http://127.0.0.1:PORT/.well-known/openid-configuration
        idp.token_url        # POST here: grant_type=client_credentials
        idp.token_requests   # how many token requests came in (any outcome)
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
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support.loopback import ForwardingServer, LoopbackServer
from tests.support.rules import Answer, Request, Rewrite, Rule, json_answer


class OidcProvider(LoopbackServer):
    """An OIDC/OAuth2 provider for one confidential client."""

    prefix = ""

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
        self.tokens_issued = 0
        self.requests: list[dict[str, Any]] = []  # one per token request answered: form, auth, outcome
        super().__init__()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def config_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def token_requests(self) -> int:
        """How many token requests came in (any outcome, injected failures included)."""
        with self.lock:
            return sum(1 for r in self.seen if r.path == "/token")

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
        failure = json_answer(status, {"error": "temporarily_unavailable", "error_description": "injected"})
        self.add_rule(Rule(Rewrite(answer=failure), method="POST", path="^/token$", times=count))

    def reset_counts(self) -> dict[str, int]:
        with self.lock:
            self.tokens_issued = 0
            self.requests.clear()
            self.seen.clear()
            return super().reset_counts()

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
        with self.lock:
            self.requests.append(record)
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
        with self.lock:
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

    # -- the provider's endpoints --------------------------------------------------------------

    async def backend(self, request: Request) -> Answer:
        if request.method == "POST" and request.path == "/token":
            status, payload = self._token_response(request.headers, request.body)
            headers = {"Cache-Control": "no-store"}
            if status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="token"'
            return json_answer(status, payload, headers)
        if request.method == "GET" and request.path == "/.well-known/openid-configuration":
            return json_answer(
                200,
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url,
                    "token_endpoint": self.token_url,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["token"],
                    "subject_types_supported": ["public"],
                },
            )
        if request.method == "GET" and request.path == "/jwks":
            return json_answer(200, self.jwks())
        return json_answer(404, {"error": "not_found"})


class JwtGateway(ForwardingServer):
    """Reverse proxy to ``upstream`` (a TES base URL) that admits only ``provider``'s valid JWTs.

    The admission check is a rule of the loopback core: a rejected request gets HTTP 401 (what
    Funnel answers for a bad bearer token) and is not forwarded; an admitted one goes upstream
    with ``upstream_auth`` (basic) instead of the bearer token. Records: ``accepted``,
    ``rejected`` (counts), ``token_ids`` (the ``jti`` of every accepted request, in order),
    ``rejections`` (the reasons).
    """

    def __init__(self, upstream: str, provider: OidcProvider, upstream_auth: tuple[str, str] | None = None):
        self.provider = provider
        self.accepted = 0
        self.rejected = 0
        self.token_ids: list[str] = []
        self.rejections: list[str] = []
        self._upstream_authorization = (
            "Basic " + base64.b64encode(":".join(upstream_auth).encode()).decode() if upstream_auth else None
        )
        super().__init__(upstream, rules=[Rule(self._admission, name="bearer JWT")])

    def reset_counts(self) -> dict[str, int]:
        with self.lock:
            self.accepted = self.rejected = 0
            self.token_ids.clear()
            self.rejections.clear()
            return super().reset_counts()

    def _admission(self, request: Request) -> Rewrite:
        reason = self._admit(request.headers.get("Authorization", ""))
        if reason is not None:
            self.rejected += 1
            self.rejections.append(reason)
            return Rewrite(
                answer=json_answer(401, {"code": 16, "message": "Bearer authorization token not accepted"})
            )
        authorization = self._upstream_authorization
        if authorization is None:
            return Rewrite()
        return Rewrite(request=lambda r: r.with_header("Authorization", authorization))

    def _admit(self, authorization: str) -> str | None:
        """None when admitted, else the reason."""
        if not authorization.startswith("Bearer "):
            return "no bearer token"
        try:
            claims = self.provider.verify(authorization[7:])
        except jwt.InvalidTokenError as err:
            return f"{type(err).__name__}: {err}"
        self.accepted += 1
        self.token_ids.append(str(claims.get("jti")))
        return None

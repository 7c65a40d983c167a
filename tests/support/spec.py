"""Check requests and responses against the GA4GH TES 1.1 OpenAPI document itself.

Plain Python (no pytest import), so the unit tests and the Funnel integration tests
can share it::

    transport = SpecCheckingTransport(httpx.HTTPTransport())
    hook = TesHook("tes_default", transport=transport,
                   async_transport=AsyncSpecCheckingTransport(httpx.AsyncHTTPTransport()))
    ...
    assert [r.method for r in transport.requests] == ["POST", "GET"]

The spec is OpenAPI 3.0, whose schema dialect is close to JSON Schema draft 4. It is
converted once, on first use:

* ``nullable: true`` becomes ``type: [<type>, "null"]`` (and ``null`` joins an ``enum``);
* ``$ref`` to another document (the GA4GH service-info schemas) becomes ``{}``;
* ``format: int64`` / ``int32`` are checked, for strings (``size_bytes`` is an int64
  carried as a decimal string) as well as for integers;
* in the **request** direction, properties marked ``readOnly`` (``id``, ``state``,
  ``logs``, ``creation_time`` of a task) must be absent, and properties the spec does
  not declare are rejected (Funnel decodes request bodies strictly); in the
  **response** direction both are allowed, as the spec says.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import jsonschema
import yaml

from tests.support import REPO_ROOT

SPEC_PATH = Path(
    os.environ.get("TES_OPENAPI_SPEC")
    or REPO_ROOT.parent / "shared" / "tes" / "task_execution_service.openapi.yaml"
)
BASE_PATH = "/ga4gh/tes/v1"

_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_DECIMAL = re.compile(r"-?[0-9]+\Z")


class SpecViolation(AssertionError):
    """A request or response the TES 1.1 OpenAPI document does not allow."""


@functools.cache
def load_spec() -> dict[str, Any]:
    """The OpenAPI document, parsed once."""
    with SPEC_PATH.open(encoding="utf-8") as fh:
        doc: dict[str, Any] = yaml.safe_load(fh)
    return doc


# -- schema conversion ----------------------------------------------------------------------------


def _convert(node: Any, *, request: bool) -> Any:
    """OpenAPI 3.0 schema (sub)tree -> JSON Schema draft 4 tree."""
    if isinstance(node, list):
        return [_convert(item, request=request) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and isinstance(node["$ref"], str) and not node["$ref"].startswith("#"):
        return {}  # external service-info schemas: stubbed
    out = {k: _convert(v, request=request) for k, v in node.items()}
    if out.pop("nullable", False):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    if request and isinstance(out.get("properties"), dict):
        props: dict[str, Any] = out["properties"]
        for name, prop in list(props.items()):
            if _is_read_only(prop):
                props[name] = {"not": {}, "description": f"{name} is readOnly: servers own it"}
        out.setdefault("additionalProperties", False)
    return out


def _is_read_only(prop: Any) -> bool:
    if not isinstance(prop, dict):
        return False
    if prop.get("readOnly") is True:
        return True
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = _resolve_pointer(load_spec(), ref)
        return isinstance(target, dict) and target.get("readOnly") is True
    return False


def _resolve_pointer(doc: Any, ref: str) -> Any:
    node = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@functools.cache
def _components(request: bool) -> dict[str, Any]:
    return _convert(copy.deepcopy(load_spec()["components"]), request=request)  # type: ignore[no-any-return]


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()

    def int_format(name: str) -> Any:
        low, high = _INT_RANGES[name]

        @checker.checks(name)
        def check(value: Any) -> bool:
            if isinstance(value, bool):
                return True  # not this format's business
            if isinstance(value, str):
                if not _DECIMAL.match(value):
                    return False
                value = int(value)
            if isinstance(value, int):
                return low <= value <= high
            return True

        return check

    int_format("int32")
    int_format("int64")
    return checker


_FORMATS = _format_checker()


@functools.cache
def _validator(ref: str, request: bool) -> jsonschema.Draft4Validator:
    # $ref siblings are ignored in draft 4, so the converted components can ride along in
    # the root and every "#/components/..." pointer resolves inside this one document.
    schema = {"$ref": ref, "components": _components(request)}
    return jsonschema.Draft4Validator(schema, format_checker=_FORMATS)


def _errors(validator: jsonschema.Draft4Validator, data: Any) -> list[str]:
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    return [
        f"at {'/'.join(str(p) for p in e.absolute_path) or '<root>'}: "
        + (e.schema.get("description", e.message) if e.validator == "not" else e.message)
        for e in errors
    ]


def schema_errors(schema_name: str, data: Any, *, request: bool = False) -> list[str]:
    """Why ``data`` is not a valid ``schema_name`` (empty list if it is)."""
    if schema_name not in load_spec()["components"]["schemas"]:
        raise KeyError(f"the TES spec has no schema {schema_name!r}")
    return _errors(_validator(f"#/components/schemas/{schema_name}", request), data)


def validate_response(schema_name: str, data: Any) -> None:
    """Assert that ``data`` is a valid ``schema_name`` as a server would send it."""
    errors = schema_errors(schema_name, data, request=False)
    if errors:
        raise SpecViolation(f"not a valid TES {schema_name} response:\n  " + "\n  ".join(errors))


def validate_request_body(schema_name: str, data: Any) -> None:
    """Assert that ``data`` is a valid ``schema_name`` as a client may send it."""
    errors = schema_errors(schema_name, data, request=True)
    if errors:
        raise SpecViolation(f"not a valid TES {schema_name} request body:\n  " + "\n  ".join(errors))


# -- operations ---------------------------------------------------------------------------------


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = ""
    for piece in re.split(r"(\{[^}]+\})", template):
        if piece.startswith("{") and piece.endswith("}"):
            pattern += f"(?P<{piece[1:-1]}>[^/]+)"
        else:
            pattern += re.escape(piece)
    return re.compile(pattern + r"\Z")


@functools.cache
def _operations() -> list[tuple[str, str, re.Pattern[str], dict[str, Any]]]:
    """(method, template, regex, operation), the more literal templates first."""
    ops = []
    for template, item in load_spec()["paths"].items():
        for method in _HTTP_METHODS:
            if method in item:
                ops.append((method.upper(), template, _template_regex(template), item[method]))
    # "/tasks/{id}:cancel" before "/tasks/{id}": more literal characters win.
    ops.sort(key=lambda op: -len(re.sub(r"\{[^}]+\}", "", op[1])))
    return ops


def find_operation(method: str, path: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(template, path params, operation) of a request; ``path`` is below the base path."""
    method = method.upper()
    allowed = []
    for op_method, template, regex, operation in _operations():
        match = regex.match(path)
        if not match:
            continue
        if op_method != method:
            allowed.append(f"{op_method} {template}")
            continue
        params = {k: unquote(v) for k, v in match.groupdict().items()}
        for name, value in params.items():
            if not value:
                raise SpecViolation(f"{method} {path}: path parameter {name!r} is empty")
        return template, params, operation
    if allowed:
        raise SpecViolation(
            f"{method} {path}: the TES spec has no such method here (only {', '.join(allowed)})"
        )
    raise SpecViolation(f"{method} {path}: no such path in the TES spec")


def _parameters(operation: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for param in operation.get("parameters", []):
        if "$ref" in param:
            param = _resolve_pointer(load_spec(), param["$ref"])
        out[param["name"]] = param
    return out


def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    """A query string value as the JSON value its schema describes (or the raw string)."""
    if "$ref" in schema:
        schema = _resolve_pointer(load_spec(), schema["$ref"])
    kind = schema.get("type")
    if kind == "integer" and _DECIMAL.match(value):
        return int(value)
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def _check_query(where: str, operation: Mapping[str, Any], params: Any) -> None:
    items: list[tuple[str, str]] = list(params.items()) if isinstance(params, Mapping) else list(params or [])
    declared = {name: p for name, p in _parameters(operation).items() if p.get("in") == "query"}
    seen: dict[str, list[str]] = {}
    for name, value in items:
        if name not in declared:
            raise SpecViolation(
                f"{where}: query parameter {name!r} is not declared (allowed: {', '.join(sorted(declared))})"
            )
        seen.setdefault(name, []).append(str(value))
    problems: list[str] = []
    for name, param in declared.items():
        if param.get("required") and name not in seen:
            problems.append(f"required query parameter {name!r} is missing")
    for name, values in seen.items():
        raw_schema = declared[name].get("schema", {})
        if raw_schema.get("type") == "array":
            value: Any = [_coerce(v, raw_schema.get("items", {})) for v in values]
        else:
            if len(values) > 1:
                problems.append(f"query parameter {name!r} is given {len(values)} times but is not an array")
                continue
            value = _coerce(values[0], raw_schema)
        schema = {**_convert(copy.deepcopy(raw_schema), request=False), "components": _components(False)}
        for error in jsonschema.Draft4Validator(schema, format_checker=_FORMATS).iter_errors(value):
            problems.append(
                f"query parameter {name!r}={values if len(values) > 1 else values[0]!r}: {error.message}"
            )
    # Only in the spec's prose: "Must be less than 2048".
    for raw in seen.get("page_size", []):
        if _DECIMAL.match(raw) and not 0 < int(raw) < 2048:
            problems.append(f"page_size={raw}: must be between 1 and 2047")
    if "tag_value" in seen and len(seen["tag_value"]) > len(seen.get("tag_key", [])):
        problems.append("more tag_value than tag_key parameters: they are zipped together")
    if problems:
        raise SpecViolation(f"{where}: " + "; ".join(problems))


def _check_body(where: str, operation: Mapping[str, Any], body: Any) -> None:
    request_body = operation.get("requestBody")
    if request_body is None:
        # No requestBody in the spec: nothing, or an empty JSON object (what
        # grpc-gateway servers such as Funnel accept for :cancel), may be sent.
        if body not in (None, {}):
            raise SpecViolation(f"{where}: the spec defines no request body here, got {body!r:.200}")
        return
    if body is None:
        if request_body.get("required"):
            raise SpecViolation(f"{where}: the request body is required")
        return
    schema = request_body.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        raise SpecViolation(f"{where}: the spec defines no JSON body here")
    ref = schema.get("$ref", "")
    name = ref.rsplit("/", 1)[-1]
    errors = schema_errors(name, body, request=True)
    if errors:
        raise SpecViolation(f"{where}: the body is not a valid {name}:\n  " + "\n  ".join(errors))


def validate_request(
    method: str,
    url_path: str,
    params: list[tuple[str, str]] | Mapping[str, str] | None,
    body: Any | None,
    *,
    base_path: str = BASE_PATH,
) -> str:
    """Assert that a request is one the TES 1.1 spec defines; return its operationId.

    ``url_path`` is the full (percent-encoded) URL path, starting with ``base_path``.
    """
    where = f"{method.upper()} {url_path}"
    base = base_path.rstrip("/")
    if not url_path.startswith(base + "/"):
        raise SpecViolation(f"{where}: the path is not below the TES base path {base_path!r}")
    try:
        _template, _path_params, operation = find_operation(method, url_path[len(base) :])
    except SpecViolation as err:
        raise SpecViolation(f"{where}: {err}") from None
    _check_query(where, operation, params)
    _check_body(where, operation, body)
    return str(operation.get("operationId", ""))


# -- httpx transports -----------------------------------------------------------------------------


def _request_parts(request: httpx.Request) -> tuple[str, list[tuple[str, str]], Any]:
    path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
    params = list(request.url.params.multi_items())
    body: Any = None
    if request.content:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise SpecViolation(
                f"{request.method} {path}: body sent as {content_type!r}, the TES spec takes application/json"
            )
        try:
            body = json.loads(request.content)
        except ValueError as err:
            raise SpecViolation(f"{request.method} {path}: the body is not JSON ({err})") from None
    return path, params, body


class _SpecChecking:
    def __init__(self, base_path: str) -> None:
        self.base_path = base_path
        #: Every request seen, in order, spec-valid or not.
        self.requests: list[httpx.Request] = []
        #: The violation messages, in case something swallowed the AssertionError.
        self.violations: list[str] = []

    def _check(self, request: httpx.Request) -> None:
        self.requests.append(request)
        try:
            path, params, body = _request_parts(request)
            validate_request(request.method, path, params, body, base_path=self.base_path)
        except SpecViolation as err:
            self.violations.append(str(err))
            raise

    def count(self, method: str, path_suffix: str = "") -> int:
        """How many requests had this method and a URL path ending in ``path_suffix``."""
        return sum(
            1 for r in self.requests if r.method == method.upper() and r.url.path.endswith(path_suffix)
        )


class SpecCheckingTransport(_SpecChecking, httpx.BaseTransport):
    """Checks each outgoing request against the TES spec, then hands it to ``inner``."""

    def __init__(self, inner: httpx.BaseTransport, *, base_path: str = BASE_PATH) -> None:
        super().__init__(base_path)
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self._check(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncSpecCheckingTransport(_SpecChecking, httpx.AsyncBaseTransport):
    """The async twin of :class:`SpecCheckingTransport`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, base_path: str = BASE_PATH) -> None:
        super().__init__(base_path)
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self._check(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


#: A spec-valid service-info answer (shaped like Funnel's), for fake servers in unit tests.
EXAMPLE_SERVICE_INFO: dict[str, Any] = {
    "id": "org.example.tes",
    "name": "Funnel",
    "type": {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"},
    "organization": {"name": "Example", "url": "https://example.org"},
    "version": "0.12.2",
}

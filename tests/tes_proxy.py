"""A fault-injecting HTTP proxy for a GA4GH TES server (test utility).

Plain Python (no pytest import).  The proxy listens on a free 127.0.0.1 port
and forwards every request (method, path + query, headers including
``Authorization``, body) to a real TES server -- normally Funnel -- through one
pooled ``httpx.Client``.  On the way it can:

* **preempt** tasks: Funnel never reports ``PREEMPTED``, so
  ``proxy.preempt(n, name_prefix)`` marks the next ``n`` tasks created through
  the proxy; right after the create response comes back the proxy cancels them
  upstream (with the client's ``Authorization`` header) and from then on
  reports ``state: PREEMPTED`` for them in GetTask and ListTasks responses;
* **rewrite** any task's state: ``proxy.rewrite_state(task_id, "SYSTEM_ERROR")``;
* **inject faults**: ``proxy.set_faults(rate, kinds, methods=..., path_regex=...)``
  with a seeded RNG, kinds being

  ======================  ===========================================================
  ``"500"`` ``"502"``     answer that status (JSON ``{"message": "injected"}``),
  ``"503"``               request NOT forwarded
  ``"429"``               answer 429 with ``Retry-After: 1``, request NOT forwarded
  ``"reset"``             abort the connection (TCP RST), no answer, NOT forwarded
  ``"delay"``             forward, then wait ``proxy.delay_seconds`` before answering
  ``"truncate"``          forward, then answer with half the body but the full
                          Content-Length, then close
  ``"drop_response"``     forward (the server does the work!), then close the
                          connection without answering -- the ambiguous create
  ======================  ===========================================================

Usage::

    with TesProxy(funnel.url, seed=1) as proxy:
        hook_url = proxy.base_url            # http://127.0.0.1:PORT/ga4gh/tes/v1
        proxy.preempt(1, name_prefix="preemptible-")
        proxy.set_faults(0.3, ["503", "reset"], methods=["GET"])
        ...
        assert proxy.stats["injected"]["reset"] >= 1

Records: ``proxy.requests`` (method, path-with-query) for every request seen;
``proxy.created`` (task id, request body dict) for every successful create;
``proxy.preempted_ids``; ``proxy.cancelled_ids`` (upstream cancels the proxy
issued and that succeeded); ``proxy.fault_log`` (method, path, kind) for every
injected fault; ``proxy.stats`` -- ``requests``, ``forwarded``, ``connections``,
``upstream_errors``, ``injected_total`` and ``injected`` (a dict kind -> count).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import struct
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx

FAULT_KINDS = ("500", "502", "503", "429", "reset", "delay", "truncate", "drop_response")
TES_PREFIX = "/ga4gh/tes/v1"

# Hop-by-hop headers (RFC 9110 7.6.1) plus the ones the proxy recomputes itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "expect",
    }
)

# .../tasks  (CreateTask on POST, ListTasks on GET), optional trailing slash.
_TASKS_RE = re.compile(r"^(?P<base>.*)/tasks/?$")
# .../tasks/{id}  (GetTask)
_TASK_RE = re.compile(r"^(?P<base>.*)/tasks/(?P<id>[^/:]+)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    proxy: TesProxy

    def shutdown_request(self, request: Any) -> None:
        # The socket may already have been closed by a "reset" fault.
        with contextlib.suppress(OSError):
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Never print tracebacks for clients that went away (timeouts, resets).
        self.proxy._bump("handler_errors")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TesProxy/1.0"
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are dropped after this many seconds
    server: _Server

    # --- plumbing -----------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.proxy._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _write_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        close: bool = False,
        truncate: bool = False,
    ) -> None:
        close = close or truncate or self.close_connection
        self.close_connection = close
        reason = self.responses.get(status, ("",))[0]
        length = len(body)
        if truncate:
            length = len(body) if len(body) >= 2 else len(body) + 1
            body = body[: len(body) // 2]
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not any(k.lower() == "date" for k, _ in headers):
            lines.append(f"Date: {self.date_time_string()}")
        lines.append(f"Content-Length: {length}")
        lines.append("Connection: close" if close else "Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        payload = head if self.command == "HEAD" else head + body
        try:
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _json(self, status: int, obj: Any, extra: list[tuple[str, str]] | None = None) -> None:
        headers = [("Content-Type", "application/json"), *(extra or [])]
        self._write_response(status, headers, json.dumps(obj).encode())

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, answering nothing."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.rfile.close()  # drop makefile()'s reference so close() is real
        with contextlib.suppress(OSError):
            sock.close()

    def _drop(self) -> None:
        """Close the connection gracefully (FIN) without answering."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- the request --------------------------------------------------------------
    def _handle(self) -> None:
        proxy = self.server.proxy
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        method, raw_path = self.command, self.path
        path = raw_path.split("?", 1)[0]
        proxy._record_request(method, raw_path)
        kind = proxy._pick_fault(method, path)
        try:
            if kind in ("500", "502", "503"):
                self._json(int(kind), {"message": "injected"})
                return
            if kind == "429":
                self._json(429, {"message": "injected"}, [("Retry-After", "1")])
                return
            if kind == "reset":
                self._reset()
                return

            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            headers.append(("Accept-Encoding", "identity"))
            try:
                resp = proxy._client.request(method, proxy.upstream + raw_path, headers=headers, content=body)
                content = resp.content
            except Exception as exc:
                proxy._bump("upstream_errors")
                if kind == "drop_response":
                    self._drop()
                else:
                    self._json(502, {"message": f"tes proxy: upstream error: {type(exc).__name__}: {exc}"})
                return
            proxy._bump("forwarded")
            content = proxy._after_forward(method, path, body, resp.status_code, content, self.headers)

            if kind == "drop_response":
                self._drop()
                return
            if kind == "delay" and proxy._stop_event.wait(proxy.delay_seconds):
                self._drop()  # the proxy is stopping: don't answer late
                return
            out_headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
            self._write_response(resp.status_code, out_headers, content, truncate=kind == "truncate")
        except Exception as exc:  # never let a handler thread die noisily
            proxy._bump("handler_errors")
            with contextlib.suppress(Exception):
                self._json(502, {"message": f"tes proxy error: {type(exc).__name__}: {exc}"})
            self.close_connection = True


class TesProxy:
    """Fault-injecting proxy in front of a TES server; see the module docstring."""

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.seed = seed
        self.delay_seconds: float = 3.0
        self.url = ""
        self.base_url = ""

        self.requests: list[tuple[str, str]] = []
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.preempted_ids: list[str] = []
        self.cancelled_ids: list[str] = []
        self.fault_log: list[tuple[str, str, str]] = []
        self.stats: dict[str, Any] = {}

        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._faults: dict[str, Any] | None = None
        self._preempt_rules: list[list[Any]] = []  # [remaining, name_prefix | None]
        self._state_overrides: dict[str, str] = {}
        self._conns: set[socket.socket] = set()
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client = None  # type: ignore[assignment]
        self.reset_records()

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> TesProxy:
        if self._server is not None:
            return self
        self._stop_event.clear()
        self._client = httpx.Client(
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,
        )
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        port = server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + TES_PREFIX
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"tes-proxy-{port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stop_event.set()  # wakes "delay" sleepers
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # end idle keep-alive connections and their threads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._client.close()

    def __enter__(self) -> TesProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- configuration --------------------------------------------------------------
    def preempt(self, count: int, name_prefix: str | None = None) -> None:
        """Preempt the next ``count`` tasks created through the proxy (whose name starts with
        ``name_prefix``, if given): cancel them upstream and report them as PREEMPTED."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._preempt_rules.append([count, name_prefix])

    def rewrite_state(self, task_id: str, state: str) -> None:
        """Report ``state`` for ``task_id`` in every GetTask / ListTasks response from now on."""
        with self._lock:
            self._state_overrides[task_id] = state

    def clear_rewrites(self) -> None:
        with self._lock:
            self._state_overrides.clear()
            self._preempt_rules.clear()

    def set_faults(
        self,
        rate: float,
        kinds: Iterable[str],
        *,
        methods: Iterable[str] | None = None,
        path_regex: str | None = None,
        limit: int | None = None,
    ) -> None:
        """Inject one of ``kinds`` (chosen at random) into each matching request with probability
        ``rate``.  ``methods`` restricts to those HTTP methods; ``path_regex`` is ``re.search``-ed
        against the request path (without query string); ``limit`` caps the number of faults
        injected by this configuration."""
        kinds = list(kinds)
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; known: {FAULT_KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if not kinds:
            raise ValueError("kinds must not be empty")
        with self._lock:
            self._faults = {
                "rate": rate,
                "kinds": kinds,
                "methods": {m.upper() for m in methods} if methods is not None else None,
                "path_re": re.compile(path_regex) if path_regex is not None else None,
                "remaining": limit,
            }

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = None

    def reset_records(self) -> None:
        """Empty the records and zero the counters (configuration is kept)."""
        with self._lock:
            self.requests.clear()
            self.created.clear()
            self.preempted_ids.clear()
            self.cancelled_ids.clear()
            self.fault_log.clear()
            self.stats.clear()
            self.stats.update(
                {
                    "requests": 0,
                    "forwarded": 0,
                    "connections": 0,
                    "upstream_errors": 0,
                    "handler_errors": 0,
                    "cancel_errors": 0,
                    "injected_total": 0,
                    "injected": dict.fromkeys(FAULT_KINDS, 0),
                }
            )

    # --- internals (called from handler threads) ------------------------------------
    def _bump(self, key: str) -> None:
        with self._lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
                self.stats["connections"] += 1
            else:
                self._conns.discard(conn)

    def _record_request(self, method: str, raw_path: str) -> None:
        with self._lock:
            self.requests.append((method, raw_path))
            self.stats["requests"] += 1

    def _pick_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            f = self._faults
            if f is None:
                return None
            if f["methods"] is not None and method not in f["methods"]:
                return None
            if f["path_re"] is not None and not f["path_re"].search(path):
                return None
            if f["remaining"] is not None and f["remaining"] <= 0:
                return None
            if self._rng.random() >= f["rate"]:
                return None
            kind: str = self._rng.choice(f["kinds"])
            if f["remaining"] is not None:
                f["remaining"] -= 1
            self.stats["injected"][kind] += 1
            self.stats["injected_total"] += 1
            self.fault_log.append((method, path, kind))
            return kind

    def _after_forward(
        self, method: str, path: str, req_body: bytes, status: int, content: bytes, req_headers: Any
    ) -> bytes:
        """Record creates, preempt, and rewrite task states in the response body."""
        m_tasks = _TASKS_RE.match(path)
        if method == "POST" and m_tasks and 200 <= status < 300:
            self._on_create(m_tasks.group("base"), req_body, content, req_headers)
            return content
        if method != "GET" or status != 200:
            return content
        m_task = _TASK_RE.match(path)
        if not (m_tasks or m_task):
            return content
        with self._lock:
            overrides = dict(self._state_overrides)
        if not overrides:
            return content
        try:
            doc = json.loads(content)
        except ValueError:
            return content
        changed = False
        if m_task and isinstance(doc, dict):
            state = overrides.get(str(doc.get("id", m_task.group("id"))))
            if state is not None:
                doc["state"] = state
                changed = True
        elif m_tasks and isinstance(doc, dict) and isinstance(doc.get("tasks"), list):
            for entry in doc["tasks"]:
                if isinstance(entry, dict) and entry.get("id") in overrides:
                    entry["state"] = overrides[entry["id"]]
                    changed = True
        return json.dumps(doc).encode() if changed else content

    def _on_create(self, base: str, req_body: bytes, content: bytes, req_headers: Any) -> None:
        try:
            task_id = json.loads(content).get("id")
        except (ValueError, AttributeError):
            return
        if not task_id:
            return
        try:
            body = json.loads(req_body) if req_body else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        name = body.get("name") or ""
        with self._lock:
            self.created.append((task_id, body))
            rule = next(
                (r for r in self._preempt_rules if r[0] > 0 and (r[1] is None or name.startswith(r[1]))), None
            )
            if rule is None:
                return
            rule[0] -= 1
            self.preempted_ids.append(task_id)
            self._state_overrides[task_id] = "PREEMPTED"
        headers = {"Content-Type": "application/json"}
        auth = req_headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        cancel_url = f"{self.upstream}{base}/tasks/{task_id}:cancel"
        for _attempt in range(3):
            try:
                r = self._client.post(cancel_url, headers=headers, content=b"{}")
            except Exception:
                continue
            if r.status_code < 500:
                if r.status_code < 300:
                    with self._lock:
                        self.cancelled_ids.append(task_id)
                else:
                    self._bump("cancel_errors")
                return
        self._bump("cancel_errors")

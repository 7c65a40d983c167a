"""Loopback HTTP helpers for B1: a counting, state-rewriting proxy and a TES stub server.

Both run on a small asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) in a background
thread with its own event loop, bound to 127.0.0.1 only. asyncio rather than a thread per
connection because the per-task baseline opens one connection per trigger (up to 10,000).

* :class:`CountingProxy` forwards to a real TES server (Funnel), counts requests by kind and,
  like ``tests/tes_proxy.py``'s ``rewrite_state``, reports a chosen state for chosen tasks. Unlike
  that proxy it also drops a rewritten task from a ListTasks answer filtered by another state,
  as a real server would once the task has moved on.
* :class:`TesStub` answers the TES calls the provider makes from memory (ListTasks with state and
  tag filters and paging, GET /tasks/{id}, POST /tasks, service-info); ``rewrite_state`` really
  changes the state. Used when creating the tasks in Funnel would take too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TES_PREFIX = "/ga4gh/tes/v1"
_TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}

Response = tuple[int, str, bytes]


def _kind(method: str, path: str) -> str:
    rest = path.removeprefix(TES_PREFIX).strip("/")
    if rest == "tasks":
        return "create" if method == "POST" else "list"
    if rest.startswith("tasks/"):
        return "cancel" if rest.endswith(":cancel") else "get"
    return "other"


class _LoopbackServer:
    """asyncio HTTP/1.1 server in a daemon thread; subclasses implement :meth:`handle`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + TES_PREFIX

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> _LoopbackServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as err:  # pragma: no cover - reported to start()
                errors.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=main, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError(f"{type(self).__name__} did not start")
        if errors:
            raise errors[0]
        return self

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096, limit=2**20)
        self.port = self._server.sockets[0].getsockname()[1]
        await self.on_start()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self.on_stop()

    async def on_start(self) -> None:
        pass

    async def on_stop(self) -> None:
        pass

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None

    def __enter__(self) -> _LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counts(self) -> dict[str, int]:
        """Zero the counters and return what they were."""
        with self._lock:
            old, self.counts = dict(self.counts), Counter()
        return old

    def snapshot_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    # -- HTTP ---------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with self._lock:
            self.connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = raw.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                path = urlsplit(target).path
                with self._lock:
                    self.counts[_kind(method, path)] += 1
                try:
                    status, ctype, payload = await self.handle(method, target, headers, body)
                except Exception as err:
                    status, ctype = 502, "application/json"
                    payload = json.dumps({"message": f"loopback server error: {type(err).__name__}: {err}"})
                    payload = payload.encode()
                close = headers.get("connection", "").lower() == "close"
                head = (
                    f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
                )
                writer.write(head.encode("latin-1") + payload)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        raise NotImplementedError


class _Upstream:
    """A keep-alive connection pool to one HTTP/1.1 server, on raw asyncio streams.

    httpx costs ~2 ms of CPU per request here, and its pool gets slower with every request
    queued on it, so a proxy built on it serves a few hundred requests a second at best: too
    few for the per-task baseline at 10,000 tasks. Requests queue on a semaphore instead.
    """

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._gate = asyncio.Semaphore(size)

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        async with self._gate:
            for attempt in range(2):
                reused = bool(self._idle)
                reader, writer = (
                    self._idle.pop()
                    if reused
                    else await asyncio.open_connection(self.host, self.port, limit=2**20)
                )
                lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                lines.append(f"Content-Length: {len(body)}")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
                try:
                    status_line = await reader.readline()
                    if not status_line:
                        raise ConnectionResetError("upstream closed the connection")
                    status = int(status_line.split()[1])
                    resp_headers = await _read_headers(reader)
                    data = await _read_body(reader, resp_headers)
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    if attempt or not reused:
                        raise
                    continue  # a stale keep-alive connection: once more on a fresh one
                if resp_headers.get("connection", "").lower() == "close" or (
                    "content-length" not in (resp_headers)
                    and "chunked" not in resp_headers.get("transfer-encoding", "")
                ):
                    writer.close()
                else:
                    self._idle.append((reader, writer))
                return status, resp_headers.get("content-type", "application/json"), data
        raise AssertionError("unreachable")

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            return headers
        key, _, value = raw.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        length = int(headers["content-length"])
        return await reader.readexactly(length) if length else b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while await reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readline()
    return await reader.read()


class CountingProxy(_LoopbackServer):
    """Forwards to ``upstream`` (a TES server URL without the API path), counting and rewriting."""

    def __init__(self, upstream: str, max_upstream_connections: int = 32) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.max_upstream_connections = max_upstream_connections
        self._overrides: dict[str, str] = {}
        self._pool: _Upstream | None = None

    async def on_start(self) -> None:
        self._pool = _Upstream(self.upstream, self.max_upstream_connections)

    async def on_stop(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def rewrite_state(self, task_id: str, state: str) -> None:
        self._overrides[task_id] = state

    def clear_rewrites(self) -> None:
        self._overrides = {}

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        assert self._pool is not None
        fwd = {k: v for k, v in headers.items() if k in ("authorization", "content-type", "accept")}
        status, ctype, content = await self._pool.request(method, target, fwd, body)
        overrides = self._overrides
        if method == "GET" and status == 200 and overrides:
            content = self._rewrite(target, content, overrides)
        return status, ctype, content

    @staticmethod
    def _rewrite(target: str, content: bytes, overrides: dict[str, str]) -> bytes:
        parts = urlsplit(target)
        kind = _kind("GET", parts.path)
        if kind == "get":
            task_id = unquote(parts.path.rsplit("/", 1)[-1])
            if task_id not in overrides:
                return content
            doc = json.loads(content)
            doc["state"] = overrides[task_id]
            return json.dumps(doc).encode()
        if kind != "list":
            return content
        doc = json.loads(content)
        wanted = parse_qs(parts.query).get("state", [None])[0]
        tasks = []
        changed = False
        for entry in doc.get("tasks") or []:
            state = overrides.get(entry.get("id"))
            if state is not None:
                changed = True
                if wanted and state != wanted:
                    continue  # the task has left the listed state, so a server would not list it
                entry["state"] = state
            tasks.append(entry)
        if not changed:
            return content
        doc["tasks"] = tasks
        return json.dumps(doc).encode()


class TesStub(_LoopbackServer):
    """An in-memory TES server: enough of the API for the provider's polling and creating."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def rewrite_state(self, task_id: str, state: str) -> None:
        self.tasks[task_id]["state"] = state

    def clear_rewrites(self) -> None:
        """Back to QUEUED for every task (the stub's idea of a task that never starts)."""
        for task in self.tasks.values():
            task["state"] = "QUEUED"

    def _minimal(self, task: dict[str, Any]) -> dict[str, Any]:
        return {"id": task["id"], "state": task["state"]}

    async def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(target)
        rest = parts.path.removeprefix(TES_PREFIX).strip("/")
        query = parse_qs(parts.query, keep_blank_values=True)
        if rest == "service-info":
            return self._json({"id": "stub", "name": "benchmark TES stub", "version": "1"})
        if rest == "tasks" and method == "POST":
            doc = json.loads(body)
            task_id = f"stub{next(self._ids):08d}"
            self.tasks[task_id] = {
                "id": task_id,
                "state": "QUEUED",
                "name": doc.get("name") or "",
                "tags": doc.get("tags") or {},
            }
            return self._json({"id": task_id})
        if rest == "tasks":
            return self._list(query)
        if rest.startswith("tasks/") and method == "GET":
            task = self.tasks.get(unquote(rest.removeprefix("tasks/")))
            if task is None:
                return 404, "application/json", b'{"message": "no such task"}'
            return self._json(self._minimal(task))
        if rest.endswith(":cancel") and method == "POST":
            task = self.tasks.get(unquote(rest.removeprefix("tasks/").removesuffix(":cancel")))
            if task is not None and task["state"] not in _TERMINAL:
                task["state"] = "CANCELED"
            return self._json({})
        return 404, "application/json", b'{"message": "not found"}'

    def _list(self, query: dict[str, list[str]]) -> Response:
        state = (query.get("state") or [None])[0]
        name_prefix = (query.get("name_prefix") or [""])[0]
        keys = query.get("tag_key", [])
        values = query.get("tag_value", [])
        filters = list(zip(keys, values + [""] * (len(keys) - len(values)), strict=True))
        page_size = min(2047, int((query.get("page_size") or ["256"])[0]))
        start = int((query.get("page_token") or ["0"])[0] or 0)
        matched = [
            t
            for t in self.tasks.values()
            if (state is None or t["state"] == state)
            and t["name"].startswith(name_prefix)
            and all(k in t["tags"] and (not v or t["tags"][k] == v) for k, v in filters)
        ]
        page = matched[start : start + page_size]
        token = str(start + page_size) if start + page_size < len(matched) else ""
        return self._json({"tasks": [self._minimal(t) for t in page], "next_page_token": token})

    @staticmethod
    def _json(doc: Any) -> Response:
        return 200, "application/json", json.dumps(doc).encode()

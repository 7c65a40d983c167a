"""One loopback HTTP/1.1 server core for every fake or proxy server the tests and benchmarks run.

Why one core: the fault proxy in front of Funnel, the OIDC provider and its JWT gateway, and the
benchmark's in-memory TES used to be three hand-written servers, each with its own HTTP plumbing
and its own way of changing answers. Here the plumbing is written once, and everything a server
does *to* a request or an answer is a rule of :mod:`tests.support.rules`, applied in one place
(:meth:`LoopbackServer._exchange`): a fault, a gateway's admission check or a server personality
is a list of rules, not another server. A subclass only says how its backend answers.

Why asyncio: the benchmark's per-task baseline opens one connection per trigger (up to 10,000),
too many for a thread each. The loop runs in a daemon thread; rules and records are shared with
the caller's thread under one lock. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from tests.support.rules import (
    TES_PREFIX,
    Answer,
    Request,
    Rewrite,
    Rule,
    json_answer,
    tes_call,
)

LOOPBACK = "127.0.0.1"

#: Headers that belong to one connection (RFC 9110 7.6.1) or that a server here recomputes.
HOP_BY_HOP = frozenset(
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


class LoopbackServer:
    """The server core: connections, HTTP/1.1 framing, rules, records. Subclasses answer in
    :meth:`backend`; ``rules`` (in order) rewrite around it."""

    #: The API path under ``url`` (``base_url``).
    prefix = TES_PREFIX
    #: ``seen`` keeps the most recent requests only (a benchmark sends millions).
    max_seen = 100_000

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: list[Rule] = list(rules)
        self.seen: list[Request] = []  # every request, as received
        self.counts: Counter[str] = Counter()  # by tes_call()
        self.stats: dict[str, Any] = {}
        self.lock = threading.RLock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self.reset_records()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + self.prefix

    # -- rules and records (any thread) ----------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        with self.lock:
            if rule in self.rules:
                self.rules.remove(rule)

    def bump(self, key: str, by: int = 1) -> None:
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + by

    def reset_records(self) -> None:
        """Forget what was seen and zero the counters (rules stay)."""
        with self.lock:
            self.seen.clear()
            self.counts.clear()
            self.stats.clear()
            self.stats.update(requests=0, connections=0, handler_errors=0)

    def reset_counts(self) -> dict[str, int]:
        """Zero the per-call counters and return what they were."""
        with self.lock:
            old, self.counts = dict(self.counts), Counter()
        return old

    def snapshot_counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def seen_calls(self, call: str) -> list[Request]:
        """The requests seen (as sent, bodies included) that were this TES call: ``create``,
        ``list``, ``get``, ``cancel`` or ``other``."""
        with self.lock:
            return [r for r in self.seen if tes_call(r.method, r.path) == call]

    # -- what subclasses provide -----------------------------------------------------------------

    async def backend(self, request: Request) -> Answer:
        return json_answer(404, {"message": "not found"})

    async def on_backend_answer(self, received: Request, answer: Answer) -> None:
        """Called when the backend answered ``received`` (as sent, before any rule rewrote it)."""

    async def on_stop(self) -> None:
        pass

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._loop is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()

        async def listen() -> None:
            self._server = await asyncio.start_server(self._serve, LOOPBACK, 0, backlog=4096, limit=2**20)
            self.port = int(self._server.sockets[0].getsockname()[1])

        def main() -> None:
            try:
                loop.run_until_complete(listen())
            except BaseException as err:  # reported to start()
                errors.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors or not self.port:
            self._loop = None
            raise RuntimeError(f"{type(self).__name__} did not start: {errors}")
        return self

    def stop(self) -> None:
        """Close the listener and every connection at once (answers being delayed are dropped)."""
        loop, thread, self._loop = self._loop, self._thread, None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        connections = list(self._connections.items())
        for writer, task in connections:
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*(task for _, task in connections), return_exceptions=True)
        await self.on_stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one connection --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        self.bump("connections")
        try:
            while (request := await _read_request(reader)) is not None:
                close = request.headers.get("connection", "").lower() == "close"
                if not await self._exchange(request, writer, close=close) or close:
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
            return
        finally:
            self._connections.pop(writer, None)
            with contextlib.suppress(Exception):
                writer.close()

    async def _exchange(self, request: Request, writer: asyncio.StreamWriter, *, close: bool) -> bool:
        """Answer one request; False when the connection is finished."""
        received = request
        with self.lock:
            self.seen.append(request)
            if len(self.seen) > self.max_seen:
                del self.seen[: self.max_seen // 10]
            self.counts[tes_call(request.method, request.path)] += 1
            self.stats["requests"] += 1
            rewrites = [rw for rule in self.rules if (rw := rule.pick(request)) is not None]
        try:
            answer: Answer | None = None
            for rewrite in rewrites:
                if rewrite.delivery == "reset":
                    _reset(writer)
                    return False
                if rewrite.request is not None:
                    request = rewrite.request(request)
                if rewrite.answer is not None:
                    answer = rewrite.answer(request) if callable(rewrite.answer) else replace(rewrite.answer)
                    break
            if answer is None:
                answer = await self.backend(request)
                await self.on_backend_answer(received, answer)
            for rewrite in rewrites:
                _rewrite_answer(answer, rewrite, request)
        except Exception as exc:  # a broken rule or backend answers 502, never kills the server
            self.bump("handler_errors")
            answer, rewrites = json_answer(502, {"message": f"{type(self).__name__} error: {exc!r}"}), []
        delay = sum(rw.delay for rw in rewrites)
        if delay:
            await asyncio.sleep(delay)
        delivery = next((rw.delivery for rw in rewrites if rw.delivery != "whole"), "whole")
        if delivery == "drop":
            writer.close()
            return False
        trickle = max((rw.trickle for rw in rewrites), default=0.0)
        close = close or delivery == "truncate"
        body = b"" if request.method == "HEAD" else answer.body
        if delivery == "truncate":  # the full length announced (at least one byte more than sent)
            writer.write(_head(answer, max(len(body), 1), close) + body[: len(body) // 2])
        else:
            writer.write(_head(answer, len(answer.body), close))
        if trickle and delivery == "whole":
            for start in range(0, len(body), 16):
                writer.write(body[start : start + 16])
                await writer.drain()
                await asyncio.sleep(trickle)
        elif delivery == "whole":
            writer.write(body)
        await writer.drain()
        return not close


_NOT_JSON = object()


def _rewrite_answer(answer: Answer, rewrite: Rewrite, request: Request) -> None:
    if rewrite.body is not None and 200 <= answer.status < 300:
        try:
            doc = json.loads(answer.body)
        except ValueError:
            doc = _NOT_JSON
        if doc is not _NOT_JSON:
            answer.body = json.dumps(rewrite.body(doc, request)).encode()
    if rewrite.status is not None:
        answer.status = rewrite.status
    for name, value in rewrite.headers.items():
        answer.set_header(name, value)


def _head(answer: Answer, length: int, close: bool) -> bytes:
    try:
        reason = HTTPStatus(answer.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {answer.status} {reason}"]
    lines += [f"{k}: {v}" for k, v in answer.headers if k.lower() not in HOP_BY_HOP]
    lines.append(f"Content-Length: {length}")
    lines.append("Connection: close" if close else "Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _pairs(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The header lines as sent (names in their own case, repeats kept)."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.raw]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST, answering nothing."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_headers(reader: asyncio.StreamReader) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = raw.decode("latin-1").partition(":")
        headers.append((key.strip(), value.strip()))
    return headers


async def _read_body(reader: asyncio.StreamReader, headers: httpx.Headers, *, to_eof: bool) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await _read_headers(reader)  # trailers
        return b"".join(parts)
    if "content-length" in headers:
        length = int(headers["content-length"])
        return await reader.readexactly(length) if length else b""
    return await reader.read() if to_eof else b""


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _version = line.decode("latin-1").split(" ", 2)
    headers = httpx.Headers(await _read_headers(reader))
    return Request(method, target, headers, await _read_body(reader, headers, to_eof=False))


class _UpstreamPool:
    """Keep-alive connections to one HTTP/1.1 server, on raw asyncio streams.

    Not httpx: it costs ~2 ms of CPU per request here and its pool slows down with every request
    queued on it, so a proxy built on it serves a few hundred requests a second at best, too few
    for the benchmark's per-task baseline at 10,000 tasks. Requests queue on a semaphore instead.
    """

    def __init__(self, origin: str, size: int, timeout: float) -> None:
        parts = urlsplit(origin)
        self.host, self.port = parts.hostname or LOOPBACK, parts.port or 80
        self.timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._gate = asyncio.Semaphore(size)

    async def request(self, request: Request) -> Answer:
        async with self._gate:
            return await asyncio.wait_for(self._exchange(request), self.timeout)

    async def _exchange(self, request: Request) -> Answer:
        for attempt in range(2):
            reused = bool(self._idle)
            if reused:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
            lines = [f"{request.method} {request.target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
            lines += [f"{k}: {v}" for k, v in _pairs(request.headers) if k.lower() not in HOP_BY_HOP]
            lines += ["Accept-Encoding: identity", f"Content-Length: {len(request.body)}"]
            try:
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionResetError("upstream closed the connection")
                status = int(status_line.split()[1])
                headers = httpx.Headers(await _read_headers(reader))
                no_body = request.method == "HEAD" or status in (204, 304)
                body = b"" if no_body else await _read_body(reader, headers, to_eof=True)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if attempt or not reused:
                    raise
                continue  # a stale keep-alive connection: once more on a fresh one
            framed = (
                no_body or "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")
            )
            if headers.get("connection", "").lower() == "close" or not framed:
                writer.close()
            else:
                self._idle.append((reader, writer))
            return Answer(status, body, [(k, v) for k, v in _pairs(headers) if k.lower() not in HOP_BY_HOP])
        raise AssertionError("unreachable")

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class ForwardingServer(LoopbackServer):
    """A reverse proxy: the backend is another HTTP server (normally Funnel).

    ``upstream`` is its URL; a path in it (``.../ga4gh/tes/v1``) becomes this server's ``prefix``.
    Requests are forwarded with their path and query unchanged.
    """

    def __init__(
        self,
        upstream: str,
        *,
        rules: Iterable[Rule] = (),
        max_upstream_connections: int = 64,
        upstream_timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(upstream.rstrip("/"))
        self.upstream = upstream.rstrip("/")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path or TES_PREFIX
        self.max_upstream_connections = max_upstream_connections
        self.upstream_timeout = upstream_timeout
        self._pool: _UpstreamPool | None = None
        super().__init__(rules)

    def reset_records(self) -> None:
        with self.lock:
            super().reset_records()
            self.stats.update(forwarded=0, upstream_errors=0)

    async def call_upstream(self, request: Request) -> Answer:
        """Send ``request`` upstream (no records, errors raised)."""
        if self._pool is None:
            self._pool = _UpstreamPool(self.origin, self.max_upstream_connections, self.upstream_timeout)
        return await self._pool.request(request)

    async def backend(self, request: Request) -> Answer:
        try:
            answer = await self.call_upstream(request)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.bump("upstream_errors")
            return json_answer(502, {"message": f"tes proxy: upstream error: {type(exc).__name__}: {exc}"})
        self.bump("forwarded")
        return answer

    async def on_stop(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

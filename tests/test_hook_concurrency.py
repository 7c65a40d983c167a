"""The hook's concurrency gate on a real socket: a burst larger than ``max_concurrency`` queues.

``httpx.MockTransport`` has no pool, so this needs a real server: a tiny HTTP/1.1 one on the
event loop, answering each request after a fixed delay and counting requests in flight.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from airflow_provider_tes.exceptions import TesRequestTimeoutError
from airflow_provider_tes.hooks.tes import TesHook

CONN_ID = "tes_gate"
DELAY = 0.3  # seconds the server takes per answer
BURST = 16
CAP = 2
TIMEOUT = 1.0


IN_FLIGHT = {"now": 0, "peak": 0}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            task_id = head.split(b" ", 2)[1].split(b"?")[0].rsplit(b"/", 1)[-1].decode()
            IN_FLIGHT["now"] += 1
            IN_FLIGHT["peak"] = max(IN_FLIGHT["peak"], IN_FLIGHT["now"])
            await asyncio.sleep(DELAY)
            IN_FLIGHT["now"] -= 1
            body = json.dumps({"id": task_id, "state": "RUNNING"}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def slow_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "tes",
                "host": f"http://127.0.0.1:{port}/ga4gh/tes/v1",
                "extra": {"max_concurrency": CAP, "timeout": TIMEOUT, "retries": 0},
            }
        ),
    )
    async with server:
        yield
        server.close()


async def _burst(hook: TesHook) -> list[BaseException | str]:
    results = await asyncio.gather(*(hook.a_get_task(f"t{i}") for i in range(BURST)), return_exceptions=True)
    return [r if isinstance(r, BaseException) else str(r.id) for r in results]


@pytest.mark.usefixtures("slow_server")
async def test_a_burst_queues_and_every_request_succeeds() -> None:
    # BURST / CAP rounds of DELAY each: the last request waits ~2.1 s, twice TIMEOUT.
    assert (BURST / CAP - 1) * DELAY > TIMEOUT
    IN_FLIGHT["peak"] = 0
    async with TesHook(CONN_ID) as hook:
        results = await _burst(hook)
    assert results == [f"t{i}" for i in range(BURST)]
    assert IN_FLIGHT["peak"] == CAP


@pytest.mark.usefixtures("slow_server")
async def test_without_the_gate_the_queue_eats_the_request_deadline() -> None:
    """The deadline of a request starts once it passes the gate; httpx's pool has no such point."""
    async with TesHook(CONN_ID) as ungated:
        await ungated.a_get_conn()
        ungated._async_gate = asyncio.Semaphore(BURST)  # httpx's pool limit alone
        results = await _burst(ungated)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert failed and all(isinstance(r, TesRequestTimeoutError) for r in failed)

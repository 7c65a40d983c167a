"""One TES client per connection and event loop, shared by the pollers and the triggers' cancels.

Why: a triggerer may hold pollers of one connection at several intervals (operators and sensors
with different ``poll_interval``) and cancel hundreds of deferred tasks at once (a user marking a
mapped stage failed). Each building its own client would set up TLS (tens of milliseconds of
blocking work) on the event loop and hold sockets of its own; here they borrow the one live
client, counted, and the last user closes it, so an idle triggerer holds no sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

from airflow_provider_tes.hooks.tes import TesHook

#: Per event loop (weakly: a loop that ends takes its entry along), per connection: the
#: client and how many pollers use it.
_HOOKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[TesHook, int]]] = (
    weakref.WeakKeyDictionary()
)


def acquire_hook(tes_conn_id: str) -> TesHook:
    """The connection's client in this loop, shared by the pollers of every interval."""
    hooks = _HOOKS.setdefault(asyncio.get_running_loop(), {})
    hook, users = hooks.get(tes_conn_id, (None, 0))
    if hook is None:
        hook = TesHook(tes_conn_id)
    hooks[tes_conn_id] = (hook, users + 1)
    return hook


async def release_hook(tes_conn_id: str) -> None:
    """Done with the client: the last user closes it, so an idle triggerer holds no sockets."""
    hooks = _HOOKS.get(asyncio.get_running_loop(), {})
    hook, users = hooks.get(tes_conn_id, (None, 0))
    if hook is None:
        return
    if users > 1:
        hooks[tes_conn_id] = (hook, users - 1)
        return
    del hooks[tes_conn_id]
    await hook.aclose()


@contextlib.asynccontextmanager
async def borrowed_hook(tes_conn_id: str) -> AsyncIterator[TesHook]:
    """The connection's live client for one call (a new one when no poller has one), held so
    that pollers ending meanwhile do not close it under the call.

    For the triggers' cancel path: marking many deferred tasks failed at once cancels them one
    after another while the others still poll, so each cancel reuses the pollers' client
    instead of setting up TLS (tens of milliseconds of blocking work) on the event loop.
    """
    hook = acquire_hook(tes_conn_id)
    try:
        yield hook
    finally:
        await release_hook(tes_conn_id)

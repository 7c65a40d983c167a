"""Work that serves many triggers at once (the status poller, its lookups, the live-log clock)
runs in a task with a context of its own, not the context of the trigger that started it.

Why: the triggerer routes a log record to an Airflow task's log by the context variables it
binds in each trigger's task (structlog's: ``trigger_id``, ``ti_id``, ...), and a new task
copies its creator's context. Shared work started by one trigger would log into that trigger's
task log, even after that task ended, and into no other. In a context of its own its lines are
the triggerer's; what concerns one trigger reaches that trigger through its updates, and the
trigger says it in its own log.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def shared_task(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """``coro`` as a task that no trigger's context (and so no task log) follows."""
    return asyncio.create_task(coro, name=name, context=contextvars.Context())

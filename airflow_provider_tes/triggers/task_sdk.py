"""What a trigger asks of Airflow, and tells it, about its own task instance: the one home of it.

A trigger reaches Airflow only through the task SDK, whose calls go over the triggerer's
channel to its supervisor and are synchronous. Here they run through ``asgiref``'s
``sync_to_async``, as Airflow's own triggers do: off the event loop, and routed back to the
loop that owns the channel (Airflow 3.2's channel is bound to that loop; a plain thread with a
loop of its own cannot use it). Every call is bounded in time, since a trigger must not hang on
an api-server or database that is away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async

#: Seconds one question to Airflow may take.
CALL_TIMEOUT = 10.0

_T = TypeVar("_T")


def map_index_of(ti: Any) -> int:
    return -1 if getattr(ti, "map_index", None) is None else int(ti.map_index)


async def _call(func: Callable[..., _T], *args: Any) -> _T:
    async with asyncio.timeout(CALL_TIMEOUT):
        return await sync_to_async(func, thread_sensitive=False)(*args)


def _task_state(ti: Any) -> tuple[bool, str | None]:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = map_index_of(ti)
    states = RuntimeTaskInstance.get_task_states(
        dag_id=ti.dag_id, map_index=map_index, task_ids=[ti.task_id], run_ids=[ti.run_id]
    )
    of_run = states.get(ti.run_id) or {}
    # The execution API keys a mapped task instance as ``<task_id>_<map_index>``.
    key = ti.task_id if map_index < 0 else f"{ti.task_id}_{map_index}"
    if key not in of_run:
        return False, None
    state = of_run[key]
    return True, None if state is None else str(state)


async def task_state(ti: Any) -> tuple[bool, str | None]:
    """(whether the task instance still exists, its state now)."""
    return await _call(_task_state, ti)


def _get_xcom(ti: Any, key: str) -> Any:
    from airflow.sdk.execution_time.xcom import XCom

    return XCom.get_one(
        key=key, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=map_index_of(ti)
    )


async def get_xcom(ti: Any, key: str) -> Any:
    """The task instance's XCom ``key`` (``None`` when there is none)."""
    return await _call(_get_xcom, ti, key)


def _set_xcom(ti: Any, key: str, value: Any) -> None:
    from airflow.sdk.execution_time.xcom import XCom

    XCom.set(key, value, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=map_index_of(ti))


async def set_xcom(ti: Any, key: str, value: Any) -> None:
    """Store the task instance's XCom ``key`` (plain JSON)."""
    await _call(_set_xcom, ti, key, value)

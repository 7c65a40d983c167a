"""Whether anyone in Airflow still waits for a TES task, asked before a trigger cancels it.

Why: Airflow's triggerer (>= 3.3) calls a trigger's ``on_kill`` for every trigger it ran that is
no longer assigned to it. That is what a user's clear or mark-failed looks like, and also what a
triggerer sees after it stalled longer than ``[triggerer] triggerer_health_check_threshold`` (a
long GC pause, a frozen VM, a metadata-database outage that stopped its heartbeats): another
triggerer took its triggers over meanwhile, and the task instances are still deferred on them.
Canceling there would kill every TES task a healthy deployment is waiting for. So ``on_kill``
asks Airflow first (through the task SDK, the one channel a trigger has) what became of the task
instance, and cancels only when nobody waits for the task any more.

The rules, by the state of the task instance that deferred on the trigger:

=====================================  ===============================================  ======
state                                  why                                              cancel
=====================================  ===============================================  ======
``deferred``, XCom ``tes_task_id`` is  it still waits on this task (its trigger moved   no
this task                              to another triggerer, or a new try reattached)
``deferred``, another task             the try moved on to another TES task             yes
``running``, ``up_for_retry``,         a try is under way or due that may adopt this    no
``up_for_reschedule``, ``restarting``  still-running task (reattach), unless its XCom
                                       names another task
none, ``scheduled``, ``queued``        cleared by a user (nothing adopts a task before  yes
                                       it runs), or resuming after this task ended
``success``, ``failed``, ``skipped``,  the task instance ended                          yes
``upstream_failed``, ``removed``
no such task instance                  its run was deleted                              yes
Airflow cannot be asked                the answer is unknown                            no
=====================================  ===============================================  ======

Whatever is left running by mistake is an orphan that no try will adopt; leaving it costs money
until it ends, canceling a task someone waits for loses its work, so every doubt leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_tes.run_state import TES_TASK_ID_KEY
from airflow_provider_tes.triggers.task_sdk import get_xcom, task_state

#: States in which a try is running or due that may reattach to a still-running TES task.
_MAY_ADOPT = frozenset({"running", "up_for_retry", "up_for_reschedule", "restarting"})


@dataclass(frozen=True)
class Ownership:
    """What Airflow said of the task instance behind a trigger, and what follows for its TES task."""

    #: Whether someone may still wait for the TES task (then it is not canceled).
    waited_for: bool
    #: Why, in words for the task log.
    reason: str


def decide(exists: bool, state: str | None, published: Any, tes_task_id: str) -> Ownership:
    """The rules of the module docstring, on Airflow's answer."""
    if not exists:
        return Ownership(False, "its task instance no longer exists (the DAG run was deleted)")
    elsewhere = published is not None and str(published) != tes_task_id
    moved_on = f"the task instance is {state} on TES task {published} now"
    if state == "deferred":
        if elsewhere:
            return Ownership(False, moved_on)
        return Ownership(True, "the task instance is still deferred on it (another triggerer watches it)")
    if state in _MAY_ADOPT:
        if elsewhere:
            return Ownership(False, moved_on)
        return Ownership(True, f"the task instance is {state}: a try may still reattach to it")
    if state in (None, "scheduled", "queued"):
        return Ownership(False, f"the task instance was cleared or is resuming (state {state or 'none'})")
    return Ownership(False, f"the task instance ended ({state})")


async def ownership(ti: Any, tes_task_id: str) -> Ownership:
    """Whether the Airflow task instance ``ti`` (the trigger's) may still wait for ``tes_task_id``.

    Any failure to ask (an api-server or database away) answers "waited for": see the module
    docstring for why a doubt never cancels.
    """
    try:
        exists, state = await task_state(ti)
        published = await get_xcom(ti, TES_TASK_ID_KEY) if exists else None
    except Exception as err:  # a doubt never cancels (see the module docstring)
        return Ownership(True, f"Airflow could not be asked what became of the task instance ({err!r})")
    return decide(exists, state, published, tes_task_id)

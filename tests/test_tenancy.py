"""Tenancy against a real Funnel: a task is adopted only by the deployment that signed it.

Two deployments (``prod`` and ``staging``, told apart by ``[tes] deployment_name`` and sharing
the TES credential, so the same key: the hardest case) run the same DAG and run id against one
Funnel. Neither reattaches to the other's running task, and neither takes the other's task for
its own when a create is ambiguous (the request lost before Funnel, or the answer lost after).
Tasks planted with the right name and tags but no valid identity tag are never adopted.
Each case also shows the positive side (the owner does adopt), so no assertion is vacuous.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog.testing

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import DEPLOYMENT_TAG, IDENTITY_MAC_TAG, TaskIdentity, Tenant
from airflow_provider_tes.models import TesExecutor, TesState, TesTask, TesView
from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.run_state import RunState
from tests.support.tes_proxy import TesProxy

pytestmark = pytest.mark.funnel

DIRECT = "tes_tenancy_direct"
PROXIED = "tes_tenancy_proxy"
DAG_ID = "tes_tenancy"
SLEEP = "sleep 60"


def tes_conn(host: str, funnel: Any, bucket: str) -> str:
    extra = {"outputs_url": f"s3://{bucket}/tenancy/", "poll_interval": 1, "retries": 3}
    return json.dumps(
        {"conn_type": "tes", "host": host, "login": funnel.user, "password": funnel.password, "extra": extra}
    )


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch, funnel: Any, s3_bucket: str) -> Iterator[TesHook]:
    for name in ("AIRFLOW__TES__TENANT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(f"AIRFLOW_CONN_{DIRECT.upper()}", tes_conn(funnel.base_url, funnel, s3_bucket))
    with TesHook(DIRECT, retry_min_wait=0.05) as hook:
        yield hook


@pytest.fixture
def proxy(
    monkeypatch: pytest.MonkeyPatch, funnel: Any, direct: TesHook, s3_bucket: str
) -> Iterator[TesProxy]:
    with TesProxy(funnel.url, seed=5) as p:
        monkeypatch.setenv(f"AIRFLOW_CONN_{PROXIED.upper()}", tes_conn(p.base_url, funnel, s3_bucket))
        yield p


@pytest.fixture
def made(direct: TesHook) -> Iterator[list[str]]:
    """Ids of tasks a test made; every one still running is canceled at the end."""
    ids: list[str] = []
    yield ids
    for tes_id in ids:
        if direct.get_task(tes_id).state in {TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING}:
            direct.cancel_task(tes_id)


def deployment(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("AIRFLOW__TES__DEPLOYMENT_NAME", name)


def identity(run_id: str, try_number: int = 1) -> TaskIdentity:
    return TaskIdentity(dag_id=DAG_ID, task_id="ten", run_id=run_id, try_number=try_number)


def start(run_id: str, try_number: int, made: list[str], conn_id: str = DIRECT) -> tuple[RunState, list[str]]:
    """What a worker's try does before it waits: reattach or submit. Returns its log events too."""
    op = TesTaskOperator(
        task_id="ten", image="alpine:3.20", command=SLEEP, tes_conn_id=conn_id, deferrable=False
    )
    with structlog.testing.capture_logs() as logs:
        run_state = op.manager.start(identity(run_id, try_number), deadline=None)
    made.extend(a for a in run_state.attempts if a not in made)
    return run_state, [str(e.get("event")) for e in logs]


def named(hook: TesHook, name: str) -> dict[str, TesTask]:
    return {t.id or "": t for t in hook.list_tasks(name_prefix=name, view=TesView.BASIC) if t.name == name}


def scheduled_run_id() -> str:
    # The same scheduled run id in both deployments; unique per test run on the shared Funnel.
    return f"scheduled__2025-06-01T00:00:00+00:00.{uuid.uuid4().hex[:8]}"


def test_reattach_never_crosses_deployments(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, made: list[str]
) -> None:
    run_id = scheduled_run_id()
    deployment(monkeypatch, "prod")
    prod_first, _ = start(run_id, 1, made)  # prod's try 1; its worker then dies (it never waits here)

    deployment(monkeypatch, "staging")
    staging_retry, events = start(run_id, 2, made)
    assert staging_retry.tes_task_id != prod_first.tes_task_id, "staging adopted prod's running task"
    assert any("Not reattaching" in e for e in events), events
    assert not any(e.startswith("Reattaching") for e in events), events
    assert (direct.get_task(staging_retry.tes_task_id, view=TesView.BASIC).tags or {})[
        DEPLOYMENT_TAG
    ] == "staging"

    deployment(monkeypatch, "prod")
    prod_retry, events = start(run_id, 2, made)
    assert prod_retry.attempts == (prod_first.tes_task_id,), "prod reattaches to its own task"
    assert any(e.startswith("Reattaching") for e in events), events
    prefix = identity(run_id).instance_prefix
    assert len(list(direct.list_tasks(name_prefix=prefix, view=TesView.BASIC))) == 2


@pytest.mark.parametrize("fault", ["503", "drop_response"])
def test_ambiguous_create_never_takes_another_deployments_task(
    fault: str, monkeypatch: pytest.MonkeyPatch, proxy: TesProxy, direct: TesHook, made: list[str]
) -> None:
    """``503``: the create never reached Funnel; ``drop_response``: Funnel made it, the answer was lost.

    Either way Funnel holds prod's task with the very name staging's create looks up.
    """
    run_id = scheduled_run_id()
    name = identity(run_id).name()
    deployment(monkeypatch, "prod")
    prod, _ = start(run_id, 1, made)

    deployment(monkeypatch, "staging")
    proxy.set_faults(1.0, [fault], methods=["POST"], path_regex=r"/tasks$", limit=1)
    staging, events = start(run_id, 1, made, conn_id=PROXIED)
    assert proxy.stats["injected"][fault] == 1
    assert any("looking the task up by name" in e for e in events), events
    assert staging.tes_task_id != prod.tes_task_id, "staging took prod's task for its own"

    on_funnel = named(direct, name)
    assert set(on_funnel) == {prod.tes_task_id, staging.tes_task_id}, "one task per deployment"
    assert (on_funnel[staging.tes_task_id].tags or {})[DEPLOYMENT_TAG] == "staging"
    posts = [p for m, p in proxy.requests if m == "POST" and p.split("?")[0].endswith("/tasks")]
    # 503: sent again after the look-up found only prod's task; lost answer: found its own, not resent.
    assert len(posts) == (2 if fault == "503" else 1)


def test_planted_tasks_are_not_adopted(
    monkeypatch: pytest.MonkeyPatch, proxy: TesProxy, direct: TesHook, made: list[str]
) -> None:
    run_id = scheduled_run_id()
    deployment(monkeypatch, "prod")
    first = identity(run_id)
    forger = Tenant(deployment="prod", key=b"a secret that is not prod's secret")
    plants = {
        "no identity tag (as before tasks were signed)": {**first.tags(0), DEPLOYMENT_TAG: "prod"},
        "a made-up identity tag": {
            **first.tags(0),
            DEPLOYMENT_TAG: "prod",
            IDENTITY_MAC_TAG: "v1:" + "0" * 64,
        },
        "an identity tag made with another secret": {**first.tags(0), **forger.tags(first, 0)},
    }
    planted = set()
    for tags in plants.values():
        task = TesTask(
            name=first.name(),
            tags=tags,
            executors=[TesExecutor(image="alpine:3.20", command=["sleep", "60"])],
        )
        planted.add(direct.create_task(task))
    made.extend(planted)

    # An ambiguous create of try 1 finds the planted tasks under its name and resends.
    proxy.set_faults(1.0, ["503"], methods=["POST"], path_regex=r"/tasks$", limit=1)
    created, events = start(run_id, 1, made, conn_id=PROXIED)
    assert created.tes_task_id not in planted
    assert any("looking the task up by name" in e for e in events), events
    assert set(named(direct, first.name())) == planted | {created.tes_task_id}

    # Try 2 reattaches to try 1's real task, never to a planted one.
    retry, events = start(run_id, 2, made)
    assert retry.attempts == (created.tes_task_id,)

    # With the real task gone, the plants are the only running tasks of the task instance:
    # each is looked at and refused, and the retry submits anew.
    direct.cancel_task(created.tes_task_id)
    retry, events = start(run_id, 3, made)
    assert retry.attempts[0] not in planted | {created.tes_task_id}
    assert sum("Not reattaching" in e for e in events) == len(plants), events
    assert any(e.startswith("Submitted TES task") for e in events), events

"""Scenarios that need a running Airflow (scheduler, triggerer, api-server), not `dags test`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesState
from tests.support.airflow_env import TEST_DAGS, AirflowEnv, stack_connections
from tests.support.airflow_services import AirflowServices

pytestmark = pytest.mark.funnel

DAG_ID = "tes_test_live"
TASK_ID = "sleeper"
#: tests/dags/tes_test_live_logs.py: one numbered line a second, streamed into the task log.
LIVE_LOGS_DAG_ID = "tes_test_live_logs"
LIVE_LOGS_TASK_ID = "counter"
COUNTED_LINE = re.compile(r"stdout \| counted-(\d+)\b")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, funnel: Any, moto_server: Any, s3_bucket: str
) -> Iterator[AirflowServices]:
    env = AirflowEnv(
        home=tmp_path_factory.mktemp("airflow-live"),
        dags_folder=TEST_DAGS,
        connections=stack_connections(funnel, moto_server.endpoint_url, s3_bucket, "live"),
    )
    env.migrate()
    with AirflowServices(env) as services:
        yield services


@pytest.fixture
def tes(monkeypatch: pytest.MonkeyPatch, funnel: Any) -> Iterator[TesHook]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TES_LIVE_CHECK",
        json.dumps(
            {"conn_type": "tes", "host": funnel.base_url, "login": funnel.user, "password": funnel.password}
        ),
    )
    with TesHook("tes_live_check") as hook:
        yield hook


def _tes_id(live: AirflowServices, run_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return str(live.xcom(DAG_ID, run_id, TASK_ID, key="tes_task_id"))
        except AssertionError:
            time.sleep(1)
    raise AssertionError("the operator never published its TES task id")


def _wait_state(hook: TesHook, tes_id: str, wanted: set[TesState], timeout: float = 90) -> TesState:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = hook.get_task(tes_id).state
        if state in wanted:
            return state
        time.sleep(1)
    raise AssertionError(f"TES task {tes_id} stayed {state}, wanted {wanted}")


def _tasks_of_run(hook: TesHook, run_id: str) -> list[str]:
    return [t.id or "" for t in hook.list_tasks(tags={"dag_id": DAG_ID, "run_id": run_id})]


def test_triggerer_restart_resumes_the_wait(live: AirflowServices, tes: TesHook) -> None:
    run_id = live.trigger(DAG_ID, conf={"seconds": 25})
    live.wait_for_ti(DAG_ID, run_id, TASK_ID, {"deferred"}, timeout=240)
    tes_id = _tes_id(live, run_id)
    live.stop_component("triggerer")
    time.sleep(3)
    # Stopping the triggerer cancels nothing on the TES side.
    assert tes.get_task(tes_id).state in {TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING}
    live.start_component("triggerer")
    assert live.wait_for_ti(DAG_ID, run_id, TASK_ID, {"success", "failed"}, timeout=240) == "success"
    result = live.xcom(DAG_ID, run_id, TASK_ID)
    assert result["tes_task_id"] == tes_id
    assert result["state"] == "COMPLETE"
    assert _tasks_of_run(tes, run_id) == [tes_id], "no second submission"


def test_mark_failed_while_deferred_cancels_the_tes_task(live: AirflowServices, tes: TesHook) -> None:
    run_id = live.trigger(DAG_ID, conf={"seconds": 300})
    live.wait_for_ti(DAG_ID, run_id, TASK_ID, {"deferred"}, timeout=240)
    tes_id = _tes_id(live, run_id)
    _wait_state(tes, tes_id, {TesState.RUNNING})
    # Only a trigger the triggerer runs can be told of the user's action: Airflow deletes a
    # trigger that no triggerer has picked up yet without calling anything. Wait until ours
    # logs the state it saw (in the task log, through the API).
    deadline = time.monotonic() + 120
    while f"TES task {tes_id} is RUNNING" not in live.task_log(DAG_ID, run_id, TASK_ID):
        assert time.monotonic() < deadline, "the triggerer never ran the trigger"
        time.sleep(1)
    live.set_ti_state(DAG_ID, run_id, TASK_ID, "failed")
    assert _wait_state(tes, tes_id, {TesState.CANCELED}, timeout=120) is TesState.CANCELED
    assert _tasks_of_run(tes, run_id) == [tes_id]


def test_live_logs_reach_the_task_log_while_it_runs(live: AirflowServices) -> None:
    dag_id, task_id, counted = LIVE_LOGS_DAG_ID, LIVE_LOGS_TASK_ID, COUNTED_LINE
    live.wait_for_dag(dag_id)
    run_id = live.trigger(dag_id)
    seen_while_running: set[int] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = live.task_instance(dag_id, run_id, task_id).get("state")
        if state in ("success", "failed"):
            break
        if state == "deferred":
            seen_while_running |= {int(n) for n in counted.findall(live.task_log(dag_id, run_id, task_id))}
        time.sleep(1)
    assert live.wait_for_ti(dag_id, run_id, task_id, {"success", "failed"}, timeout=120) == "success"
    assert len(seen_while_running) >= 10, f"only {sorted(seen_while_running)} were in the log while it ran"
    final = [int(n) for n in counted.findall(live.task_log(dag_id, run_id, task_id))]
    assert sorted(final) == list(range(1, 21)), final  # all 20, each exactly once

"""The run state carried across deferrals: typed, versioned, readable after an upgrade, nothing secret.

``data/run_state_v0.json`` was captured from provider 0.1.0 (the untyped dict it pushed to
XCom before deferring); :func:`test_v0_payload_resumes_on_funnel` resumes a real Funnel task
from that shape, so tasks deferred before an upgrade finish after it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_tes.events import EventStatus, TesTaskEvent
from airflow_provider_tes.exceptions import TesDeadlineExceededError, TesError
from airflow_provider_tes.identity import OutputFolder, TaskIdentity
from airflow_provider_tes.models import TesState
from airflow_provider_tes.run_state import RUN_STATE_VERSION, RunState

V0_PAYLOAD = json.loads((Path(__file__).parent / "data" / "run_state_v0.json").read_text())


def test_v0_payload_is_read() -> None:
    state = RunState.from_xcom(V0_PAYLOAD)
    assert state.identity == TaskIdentity(
        dag_id="legacy_dag", task_id="legacy", run_id="manual__2026-12-01T00:00:00"
    )
    assert state.attempts == ("d4legacy0001",)
    assert state.tes_task_id == "d4legacy0001"
    assert state.next_attempt == 1
    assert state.preemptible_left == 2
    assert state.output_folder == OutputFolder(V0_PAYLOAD["out_dir"])
    assert state.deadline is None


def test_v0_payload_without_next_attempt_counts_attempts() -> None:
    payload = {k: v for k, v in V0_PAYLOAD.items() if k != "next_attempt"}
    assert RunState.from_xcom(payload).next_attempt == 1


def test_round_trip_and_no_request_body() -> None:
    state = RunState.from_xcom(V0_PAYLOAD).submitted("d4second").after_preemption()
    state = RunState(**{**state.__dict__, "deadline": 1_900_000_000.5})
    payload = state.to_xcom()
    assert payload["version"] == RUN_STATE_VERSION
    assert RunState.from_xcom(json.loads(json.dumps(payload))) == state
    text = json.dumps(payload)
    # The v0 shape carried the whole request: env values and the script. This one never does.
    assert "sk-live-123" not in text
    assert "task" not in payload
    assert "echo hi" not in text


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "not a mapping",
        {},
        {**V0_PAYLOAD, "attempts": None},
        {**V0_PAYLOAD, "preemptible_left": "many"},
        {**V0_PAYLOAD, "version": RUN_STATE_VERSION + 1},
    ],
)
def test_damaged_payload_is_an_error_naming_the_run_state(payload: Any) -> None:
    with pytest.raises(TesError, match="run state"):
        RunState.from_xcom(payload)


def test_event_round_trip() -> None:
    event = TesTaskEvent(
        status=EventStatus.TERMINAL,
        tes_task_id="t1",
        message="TES task ended COMPLETE",
        state=TesState.COMPLETE,
    )
    decoded = TesTaskEvent.from_payload(event.to_trigger_event().payload)
    assert decoded == event
    assert decoded.terminal_state() is TesState.COMPLETE


def test_event_written_by_0_1_0_is_read() -> None:
    # provider 0.1.0's trigger sent no error_type on terminal events
    payload = {"status": "terminal", "tes_task_id": "t1", "state": "EXECUTOR_ERROR", "message": "ended"}
    assert TesTaskEvent.from_payload(payload).terminal_state() is TesState.EXECUTOR_ERROR


def test_deadline_and_error_events_raise() -> None:
    deadline = TesTaskEvent.from_payload({"status": "deadline", "tes_task_id": "t1", "message": "too late"})
    with pytest.raises(TesDeadlineExceededError, match="too late"):
        deadline.terminal_state()
    error = TesTaskEvent.from_payload({"status": "error", "tes_task_id": "t1", "message": "server gone"})
    with pytest.raises(TesError, match="server gone"):
        error.terminal_state()


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {},
        {"status": "done", "tes_task_id": "t1"},
        {"status": "terminal", "tes_task_id": "t1", "state": "RUNNING"},
        {"status": "terminal", "tes_task_id": "t1", "state": None},
        {"status": "terminal", "state": "COMPLETE"},
        {"status": "terminal", "tes_task_id": "t1", "state": "FINISHED"},
    ],
)
def test_unreadable_event_is_an_error_not_an_outcome(payload: Any) -> None:
    with pytest.raises(TesError):
        TesTaskEvent.from_payload(payload).terminal_state()


# -- against Funnel -----------------------------------------------------------------------------------


@pytest.mark.funnel
@pytest.mark.parametrize("ended", ["COMPLETE", "PREEMPTED"])
def test_v0_payload_resumes_on_funnel(
    ended: str, funnel_conn: Callable[..., str], s3_bucket: str, s3_client: Any
) -> None:
    """A task deferred by 0.1.0 (its request sent, its v0 run state in XCom) finishes after an upgrade.

    PREEMPTED makes the new code resubmit from the operator's arguments into the same output
    folder, with the budget and attempt numbers the v0 payload recorded.
    """
    from airflow_provider_tes.hooks.tes import TesHook
    from airflow_provider_tes.models import TesTask
    from airflow_provider_tes.operators.tes import TesTaskOperator

    conn_id = funnel_conn("tes_run_state", f"s3://{s3_bucket}/run-state/", poll_interval=1)
    identity = TaskIdentity(dag_id="tes_run_state", task_id="legacy", run_id=f"legacy-{uuid.uuid4().hex[:8]}")
    folder = f"s3://{s3_bucket}/run-state/{identity.name()}-20261202-000000/"
    body = json.loads(json.dumps(V0_PAYLOAD["task"]).replace(V0_PAYLOAD["out_dir"], folder))
    body.pop("resources", None)  # the server does not matter here; PREEMPTED comes from the event
    with TesHook(conn_id) as hook:
        first = hook.create_task(
            TesTask.model_validate({**body, "name": identity.name(), "tags": identity.tags()})
        )
        for _ in range(120):
            if (hook.get_task(first).state or TesState.UNKNOWN).is_terminal:
                break
            time.sleep(0.5)
    payload = {**V0_PAYLOAD, "identity": identity.to_dict(), "out_dir": folder, "attempts": [first]}

    op = TesTaskOperator(
        task_id="legacy",
        image="alpine:3.20",
        command="echo hi",
        env={"API_KEY": "sk-live-123"},
        tes_conn_id=conn_id,
        preemptible=2,
        poll_interval=1,
        deferrable=False,
    )
    pushed: dict[str, Any] = {}
    ti = SimpleNamespace(
        dag_id=identity.dag_id,
        task_id=identity.task_id,
        run_id=identity.run_id,
        map_index=-1,
        try_number=1,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
        xcom_pull=lambda **kw: payload,
    )
    event = {"status": "terminal", "tes_task_id": first, "state": ended, "message": f"TES task ended {ended}"}
    result = op.execute_complete({"ti": ti}, event)  # type: ignore[arg-type]

    assert result["state"] == "COMPLETE"
    assert result["exit_code"] == 0
    assert result["outputs_url"] == folder
    assert result["stdout_url"] == folder + "stdout"
    stdout = s3_client.get_object(Bucket=s3_bucket, Key=(folder + "stdout").split("/", 3)[3])
    assert stdout["Body"].read() == b"hi\n"
    if ended == "COMPLETE":
        assert result["attempts"] == [first]
    else:
        assert result["attempts"][0] == first and len(result["attempts"]) == 2
        with TesHook(conn_id) as hook:
            second = hook.get_task(result["attempts"][1], view="BASIC")
        assert second.name == identity.name(1)
        assert (second.tags or {})["attempt"] == "1"
        assert (second.resources.preemptible if second.resources else None) is True  # 1 resubmission left


@pytest.mark.funnel
def test_xcom_of_finished_task_holds_no_env_value_or_script(test_dags: Any) -> None:
    from tests.dags.tes_test_run_state import SCRIPT_MARKER, SECRET_ENV_VALUE

    test_dags.dags_test("tes_test_run_state")
    assert test_dags.task_states("tes_test_run_state") == {"secretive": "success"}
    assert test_dags.xcom("tes_test_run_state", "secretive")["exit_code"] == 0
    run_state = test_dags.xcom("tes_test_run_state", "secretive", key="tes_run_state")
    assert run_state["version"] == RUN_STATE_VERSION, "the task deferred, so its run state is in XCom"
    rows = test_dags.query("SELECT key, value FROM xcom WHERE dag_id = 'tes_test_run_state'")
    assert len(rows) >= 4, rows
    for key, value in rows:
        text = value.decode() if isinstance(value, bytes) else str(value)
        assert SECRET_ENV_VALUE not in text, key
        assert SCRIPT_MARKER not in text, key

"""``wait_for_completion=False``: submit, publish, return at once; a later try reattaches.

Runs the real operator against Funnel (the example DAG with a sensor is in test_examples.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.links import TES_TASK_LINK_KEY
from airflow_provider_tes.models import TesState
from airflow_provider_tes.operators.tes import TesTaskOperator


def context(run_id: str, pushed: dict[str, Any], try_number: int = 1) -> Any:
    ti = SimpleNamespace(
        dag_id="tes_submit_only",
        task_id="submit",
        run_id=run_id,
        map_index=-1,
        try_number=try_number,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
        xcom_pull=lambda *a, **kw: None,
    )
    return {"ti": ti}


@pytest.mark.funnel
def test_returns_at_once_with_the_state_it_saw(
    funnel: Any, funnel_conn: Callable[..., str], s3_bucket: str
) -> None:
    funnel_conn("tes_submit_only", f"s3://{s3_bucket}/submit-only/")
    op = TesTaskOperator(
        task_id="submit",
        image="alpine:3.20",
        command="sleep 6; echo done > done.txt",
        tes_conn_id="tes_submit_only",
        wait_for_completion=False,
    )
    run_id = f"submit-only-{uuid.uuid4().hex[:8]}"
    pushed: dict[str, Any] = {}
    started = time.monotonic()
    result = op.execute(context(run_id, pushed))
    assert time.monotonic() - started < 5, "submit-only must not wait for the command"

    tes_id = result["tes_task_id"]
    assert result["state"] in {"QUEUED", "INITIALIZING", "RUNNING"}, result
    assert "exit_code" not in result and "outputs" not in result
    assert result["attempts"] == [tes_id]
    assert result["outputs_url"].startswith(f"s3://{s3_bucket}/submit-only/")
    assert result["work_dir_url"] == result["outputs_url"] + "work/"
    assert result["stdout_url"] == result["outputs_url"] + "stdout"
    assert result["stderr_url"] == result["outputs_url"] + "stderr"
    # Published as when waiting: the id and the link, for the sensor and the UI.
    assert pushed["tes_task_id"] == tes_id
    assert pushed[TES_TASK_LINK_KEY] == f"{funnel.base_url}/tasks/{tes_id}?view=FULL"

    # A new try of the same task instance while the task runs takes it over: no second task.
    again: dict[str, Any] = {}
    retried = op.execute(context(run_id, again, try_number=2))
    assert retried["tes_task_id"] == tes_id
    assert again["tes_task_id"] == tes_id

    with TesHook("tes_submit_only") as hook:
        deadline = time.monotonic() + 120
        state = hook.get_task(tes_id).state
        while state is not None and not state.is_terminal and time.monotonic() < deadline:
            time.sleep(1)
            state = hook.get_task(tes_id).state
        assert state is TesState.COMPLETE
        ours = list(hook.list_tasks(tags={"dag_id": "tes_submit_only", "run_id": run_id}))
        assert [t.id for t in ours] == [tes_id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wait_for_completion": False, "preemptible": 1}, "resubmitting after preemption needs"),
        ({"wait_for_completion": "no"}, "must be True or False"),
    ],
)
def test_bad_wait_for_completion_is_refused_when_parsed(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TesConfigurationError, match="'wait_for_completion'") as err:
        TesTaskOperator(task_id="t", image="alpine:3.20", command="true", **kwargs)
    assert message in str(err.value)

"""TesTaskSensor against Funnel through `airflow dags test`."""

from __future__ import annotations

import pytest

from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.sensors.tes import TesTaskSensor
from tests.support.airflow_env import AirflowEnv

pytestmark = pytest.mark.funnel


def test_sensor_outcomes(test_dags: AirflowEnv) -> None:
    proc = test_dags.dags_test("tes_test_sensor", check=False)
    assert test_dags.task_states("tes_test_sensor") == {
        "submit_ok": "success",
        "submit_bad": "success",
        "wait_ok": "success",
        "wait_ok_poke": "success",
        "wait_bad": "failed",
        "wait_bad_soft": "skipped",
        "wait_bad_accepted": "success",
        "submit_script_bad": "success",
        "wait_script_bad": "failed",
        "wait_script_bad_accepted": "success",
    }, proc.stdout[-5000:]
    assert "ended EXECUTOR_ERROR, not one of the success states (COMPLETE)" in proc.stdout + proc.stderr
    assert "failed in its executor with exit code 4" in proc.stdout + proc.stderr


@pytest.mark.parametrize("states", [["RUNNING"], ["NOPE"], []])
def test_success_states_must_be_terminal(states: list[str]) -> None:
    with pytest.raises(TesConfigurationError, match="success_states"):
        TesTaskSensor(task_id="s", tes_task_id="x", success_states=states)

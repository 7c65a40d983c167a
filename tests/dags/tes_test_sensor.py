"""TesTaskSensor on tasks submitted outside the sensor: success, failure, soft fail, custom states."""

from __future__ import annotations

import uuid
from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesTask
from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.sensors.tes import TesTaskSensor

with DAG(dag_id="tes_test_sensor", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):

    @task
    def submit(script: str) -> str:
        with TesHook() as hook:
            return hook.create_task(
                TesTask(
                    name=f"sensor-target-{uuid.uuid4().hex[:8]}",
                    executors=[TesExecutor(image="alpine:3.20", command=["/bin/sh", "-c", script])],
                )
            )

    ok = submit.override(task_id="submit_ok")("sleep 2")
    bad = submit.override(task_id="submit_bad")("sleep 2; exit 3")

    TesTaskSensor(task_id="wait_ok", tes_task_id=ok, poke_interval=1)
    TesTaskSensor(task_id="wait_ok_poke", tes_task_id=ok, poke_interval=1, deferrable=False, mode="poke")
    TesTaskSensor(task_id="wait_bad", tes_task_id=bad, poke_interval=1)
    TesTaskSensor(task_id="wait_bad_soft", tes_task_id=bad, poke_interval=1, soft_fail=True)
    TesTaskSensor(
        task_id="wait_bad_accepted", tes_task_id=bad, poke_interval=1, success_states=["EXECUTOR_ERROR"]
    )

    # Submitted by the operator (its exit-code wrapper ends COMPLETE whatever the script does):
    # the sensor reads the script's exit code as the operator does.
    script_bad = TesTaskOperator(
        task_id="submit_script_bad", image="alpine:3.20", command="exit 4", wait_for_completion=False
    )
    TesTaskSensor(task_id="wait_script_bad", tes_task_id=script_bad.output["tes_task_id"], poke_interval=1)
    TesTaskSensor(
        task_id="wait_script_bad_accepted",
        tes_task_id=script_bad.output["tes_task_id"],
        poke_interval=1,
        success_states=["EXECUTOR_ERROR"],
    )

"""A submit-only TES task and the sensor that waits for it: the task is owned by the DAG run
while the run is active, whatever became of the operator's own task instance."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.sensors.tes import TesTaskSensor

with DAG(dag_id="tes_test_cleanup", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    submitted = TesTaskOperator(
        task_id="submit_only", image="alpine:3.20", command="sleep 300", wait_for_completion=False
    )
    TesTaskSensor(task_id="wait", tes_task_id=submitted.output["tes_task_id"], poke_interval=2)

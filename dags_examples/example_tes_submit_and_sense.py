"""Submit now, wait later: the operator returns as soon as the TES task is sent, a sensor waits.

Useful when the work in between does not depend on the TES task (or when many tasks are
submitted by one Airflow task and waited on elsewhere). The submitting task's result has the
task id and where its outputs will land, but no exit code: the command has not ended yet.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.sensors.tes import TesTaskSensor

with DAG(
    dag_id="example_tes_submit_and_sense",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "tes"],
) as dag:
    submit = TesTaskOperator(
        task_id="submit",
        image="alpine:3.20",
        command="sleep 8; echo finished later > later.txt",
        wait_for_completion=False,
    )
    wait = TesTaskSensor(
        task_id="wait",
        tes_task_id="{{ ti.xcom_pull(task_ids='submit')['tes_task_id'] }}",
        poll_interval=1,
        poke_interval=1,
    )
    submit >> wait

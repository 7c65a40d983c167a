"""A TES task that sleeps for ``params.seconds``: long enough to act on it while it is deferred."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(
    dag_id="tes_test_live",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={"seconds": 20},
):
    TesTaskOperator(
        task_id="sleeper",
        image="alpine:3.20",
        command="sleep {{ params.seconds }}; echo slept > slept.txt",
        poll_interval=1,
    )

"""A TES task that prints ``params.lines`` numbered lines, one a second, with live logs every 2 s."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(
    dag_id="tes_test_live_logs",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={"lines": 20},
):
    TesTaskOperator(
        task_id="counter",
        image="alpine:3.20",
        command="i=1; while [ $i -le {{ params.lines }} ]; do echo counted-$i; i=$((i+1)); sleep 1; done",
        poll_interval=1,
        log_interval=2,
    )

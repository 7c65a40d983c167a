"""A preemptible task behind the test proxy (connection ``tes_proxy``), which reports PREEMPTED."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(dag_id="tes_test_preempt", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    TesTaskOperator(
        task_id="preempted",
        image="alpine:3.20",
        command="echo survived > survived.txt",
        preemptible=2,
        tes_conn_id="tes_proxy",
        poll_interval=1,
    )

"""A task whose command fails: the Airflow task must fail with exit code and stderr."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(dag_id="tes_test_failing", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    TesTaskOperator(
        task_id="fail",
        image="alpine:3.20",
        command="echo partial > partial.txt; echo 'something went wrong on purpose' >&2; exit 3",
        poll_interval=1,
    )

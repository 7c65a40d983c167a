"""Hello world on TES: a shell script that writes a file, returned as a task output.

Needs a ``tes_default`` connection whose extra sets ``outputs_url`` (see the README).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(
    dag_id="example_tes_hello",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "tes"],
) as dag:
    TesTaskOperator(
        task_id="hello",
        image="alpine:3.20",
        command="""
            echo "hello from TES, run {{ run_id }}"
            echo "hello TES" > greeting.txt
        """,
        poll_interval=1,
    )

"""Preemptible capacity: the task may be preempted up to twice and is then resubmitted.

The first two submissions ask for preemptible resources; if the server reports
PREEMPTED, the operator resubmits (same output folder), and the last allowed attempt
runs non-preemptible so the task can finish.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(
    dag_id="example_tes_preemptible",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "tes"],
) as dag:
    TesTaskOperator(
        task_id="cheap_compute",
        image="alpine:3.20",
        command="echo computed > result.txt",
        preemptible=2,
        cpu_cores=1,
        ram_gb=1,
        poll_interval=1,
    )

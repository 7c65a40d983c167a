"""Dynamic task mapping: one TES task per sample, all waiting in the triggerer at once."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(
    dag_id="example_tes_mapped",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "tes"],
) as dag:

    @task
    def samples() -> list[dict[str, str]]:
        return [{"SAMPLE": name} for name in ("s1", "s2", "s3")]

    TesTaskOperator.partial(
        task_id="per_sample",
        image="alpine:3.20",
        command='echo "processed $SAMPLE" > "$SAMPLE.txt"',
        poll_interval=1,
    ).expand(env=samples())

"""Two steps: the second task reads the first one's working directory through XCom."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(
    dag_id="example_tes_pipeline",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "tes"],
) as dag:
    produce = TesTaskOperator(
        task_id="produce",
        image="alpine:3.20",
        command="seq 1 5 > numbers.txt",
        poll_interval=1,
    )
    consume = TesTaskOperator(
        task_id="consume",
        image="alpine:3.20",
        inputs={"/data/previous": "{{ ti.xcom_pull(task_ids='produce')['work_dir_url'] }}"},
        command="wc -l < /data/previous/numbers.txt > count.txt",
        poll_interval=1,
    )
    produce >> consume

"""Local inputs: a file made on the worker is staged to object storage, then read by the task.

Staging is content-addressed (``{inputs_url}/file/<digest>``), so running the DAG again
with the same file uploads nothing. Needs ``inputs_url`` and ``outputs_url`` on the
``tes_default`` connection.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(
    dag_id="example_tes_staging",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "tes"],
) as dag:

    @task
    def make_inputs() -> dict[str, str]:
        folder = Path(tempfile.mkdtemp(prefix="tes-example-"))
        (folder / "numbers.txt").write_text("".join(f"{i}\n" for i in range(1, 101)))
        refs = folder / "refs"
        refs.mkdir()
        (refs / "a.txt").write_text("alpha\n")
        (refs / "b.txt").write_text("beta\n")
        return {"file": str(folder / "numbers.txt"), "dir": str(refs)}

    inputs = make_inputs()

    count = TesTaskOperator(
        task_id="sum_numbers",
        image="alpine:3.20",
        inputs={
            "/data/numbers.txt": "{{ ti.xcom_pull(task_ids='make_inputs')['file'] }}",
            "/data/refs": "{{ ti.xcom_pull(task_ids='make_inputs')['dir'] }}",
        },
        command="""
            awk '{s += $1} END {print s}' /data/numbers.txt > sum.txt
            cat /data/refs/a.txt /data/refs/b.txt > refs.txt
        """,
        poll_interval=1,
    )
    inputs >> count

"""``@task.tes``: a Python function returns the command, which runs in a container on TES.

The function runs on the worker when the task runs, so it can use its arguments (here an
XCom of an upstream task) to build the command; a returned string is a script, a returned
list an argv. ``.expand()`` maps it like any other TaskFlow task: one TES task per sample.
"""

from __future__ import annotations

import shlex
from datetime import datetime

from airflow.sdk import DAG, task

with DAG(
    dag_id="example_tes_taskflow",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["example", "tes"],
) as dag:

    @task
    def samples() -> list[str]:
        return ["s1", "s2", "s3"]

    @task.tes(image="alpine:3.20", poll_interval=1)
    def greet(names: list[str]) -> str:
        """A script (str); Jinja in it is rendered, as in a TesTaskOperator's command."""
        return f"echo {shlex.quote(' '.join(names))} > greeting.txt\necho 'run {{{{ run_id }}}}'"

    @task.tes(image="alpine:3.20", poll_interval=1, env={"STEP": "processed"})
    def per_sample(sample: str) -> list[str]:
        """An argv (list): run as is, here by the shell of the image."""
        return ["sh", "-c", f'echo "$STEP {sample}" > {shlex.quote(sample)}.txt']

    names = samples()
    greet(names)
    per_sample.expand(sample=names)

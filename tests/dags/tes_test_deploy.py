"""DAGs of the deployment suite (tests/deployment): mapped fan-outs that print numbered lines,
and a task whose retry must adopt the TES task of a try that died while it submitted (long
enough to be still running when the retry starts: a finished task is never adopted)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_provider_tes.operators.tes import TesTaskOperator

#: One numbered line a second: ``<sample>-line-<n>`` for n in 1..seconds.
COUNTING = "i=1; while [ $i -le {seconds} ]; do echo {name}-line-$i; i=$((i+1)); sleep 1; done"

with DAG(
    dag_id="tes_deploy_fanout",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={"count": 50, "seconds": 20},
    max_active_tasks=64,
):

    @task
    def commands(**context: object) -> list[str]:
        params = context["params"]
        assert isinstance(params, dict)
        return [
            COUNTING.format(seconds=int(params["seconds"]), name=f"s{k}") for k in range(int(params["count"]))
        ]

    TesTaskOperator.partial(
        task_id="sample", image="alpine:3.20", poll_interval=1, log_interval=2, retries=0
    ).expand(command=commands())

with DAG(dag_id="tes_deploy_adopt", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    TesTaskOperator(
        task_id="adopted",
        image="alpine:3.20",
        command="sleep 60; echo adopted",
        poll_interval=1,
        retries=1,
        retry_delay=timedelta(seconds=1),
    )

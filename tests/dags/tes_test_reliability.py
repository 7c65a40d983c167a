"""DAGs of tests/test_reliability.py.

* ``tes_test_rel_faults``: 20 mapped tasks through the fault-injecting proxy (connection
  ``tes_faulty``, defined by the test while the proxy runs).
* ``tes_test_rel_deadline``: a task that would sleep for 5 minutes, with an 8 s
  ``execution_timeout``; the deadline must cancel the TES task.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

with DAG(dag_id="tes_test_rel_faults", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    TesTaskOperator.partial(
        task_id="echo",
        image="alpine:3.20",
        command='echo "$I" > out.txt',
        tes_conn_id="tes_faulty",
        poll_interval=1,
    ).expand(env=[{"I": str(i)} for i in range(20)])

with DAG(dag_id="tes_test_rel_deadline", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    TesTaskOperator(
        task_id="sleeper",
        image="alpine:3.20",
        command="sleep 300",
        execution_timeout=timedelta(seconds=8),
        poll_interval=1,
    )

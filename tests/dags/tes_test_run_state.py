"""A deferred task whose env holds a secret-looking value and whose script is recognisable:
tests/test_run_state.py checks that neither reaches XCom."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator

#: Shaped like a live API key; must never appear in XCom.
SECRET_ENV_VALUE = "sk-live-7f3e9a2b4c1d8e6f5a0b9c8d7e6f5a4b"
#: A line of the script; the script text must never appear in XCom either.
SCRIPT_MARKER = "run-state-script-marker-51c2"

with DAG(dag_id="tes_test_run_state", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    TesTaskOperator(
        task_id="secretive",
        image="alpine:3.20",
        command=f'test -n "$API_TOKEN" && echo {SCRIPT_MARKER} > marker.txt',
        env={"API_TOKEN": SECRET_ENV_VALUE},
        poll_interval=1,
    )

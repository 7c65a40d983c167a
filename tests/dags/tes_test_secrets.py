"""The DAG of tests/test_secrets_scan.py: every kind of credential, deferring, and failing.

Each connection (defined by the test as environment variables of the Airflow services) carries
one kind of credential, and each task below waits through one of them:

* ``tes_sec_bearer``: a bearer JWT pasted with a trailing newline, through a JWT gateway;
* ``tes_sec_oauth2``: OAuth2 client credentials against the test OIDC provider (short-lived
  tokens, so several are issued while the tasks wait);
* ``tes_sec_basic``: Funnel's second user, whose password holds '/', '@' and ':';
* ``tes_sec_flaky``: the same user through a proxy that answers some reads with 503;
* ``tes_sec_revoked``: a bearer token (password field, trailing newline) that the gateway starts
  refusing while the task is deferred, so the trigger ends with an error event;
* ``tes_sec_wrong``: a token the gateway never accepts; ``tes_sec_down``: a server that answers
  only 503.

Nothing secret is written here: the executor env values come from the Variable
``tes_sec_service_api_key`` (which Airflow's masker then knows) and from an extra of the generic
connection ``tes_sec_app`` (which no masker knows; only the env key's name makes Airflow hide it in
the rendered-template view), and the watched TES task id from ``dag_run.conf``: neither the DAG's
source nor its serialized form in the metadata DB holds a secret. The command checks that the
values arrived (40 characters each) without printing them, then sleeps long enough for the scheduler to
process the end of the deferring run before the trigger fires (Airflow 3.3 fails a task instance
whose first run's end is processed after its resumed run started).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.sensors.tes import TesTaskSensor

ENV = {
    # registered with Airflow's masker (every Variable value is)
    "SERVICE_API_KEY": "{{ var.value.tes_sec_service_api_key }}",
    # known to no masker: an extra key of a generic connection that Airflow does not find sensitive
    "BACKUP_API_KEY": "{{ conn.tes_sec_app.extra_dejson.opaque }}",
}
USES_ENV = 'test "$(printf %s "$SERVICE_API_KEY$BACKUP_API_KEY" | wc -c)" -eq 80 && sleep 15'

with DAG(
    dag_id="tes_test_secrets",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={"retries": 0, "poll_interval": 1},
):
    for kind in ("bearer", "oauth2", "basic", "flaky"):
        TesTaskOperator(
            task_id=f"{kind}_op",
            image="alpine:3.20",
            command=USES_ENV,
            env=ENV,
            tes_conn_id=f"tes_sec_{kind}",
        )
    for kind in ("bearer", "oauth2", "basic"):
        # The test cancels the watched task once all three wait in the triggerer.
        TesTaskSensor(
            task_id=f"{kind}_sensor",
            tes_task_id="{{ dag_run.conf['watched'] }}",
            success_states=("COMPLETE", "CANCELED"),
            tes_conn_id=f"tes_sec_{kind}",
        )
    TesTaskOperator(
        task_id="revoked_op", image="alpine:3.20", command="sleep 120", env=ENV, tes_conn_id="tes_sec_revoked"
    )
    TesTaskOperator(
        task_id="wrong_token_op", image="alpine:3.20", command=USES_ENV, env=ENV, tes_conn_id="tes_sec_wrong"
    )
    TesTaskOperator(
        task_id="down_op", image="alpine:3.20", command=USES_ENV, env=ENV, tes_conn_id="tes_sec_down"
    )
    TesTaskSensor(
        task_id="missing_sensor", tes_task_id="{{ dag_run.conf['missing'] }}", tes_conn_id="tes_sec_basic"
    )

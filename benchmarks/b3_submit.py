"""B3: submit overhead. ``TesTaskOperator.execute`` up to its deferral vs py-tes ``create_task``.

Both talk to the same Funnel (``compute="noop"``: tasks are accepted and stay QUEUED) and send the
same task: the body the operator built is read back from Funnel and handed to py-tes. The
operator runs like a fresh Airflow task each time (new operator and hook, so a new connection),
with a fake context as in ``tests/test_operator_validation.py`` and a real connection from an
``AIRFLOW_CONN_`` variable; py-tes opens a connection per call too. The two alternate so that
background load hits both alike; the medians are compared.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.common import MachineMeter, Row

CONN_ID = "tes_bench_submit"
USER, PASSWORD = "bench", "bench-pw"
WARMUP = 3


def _context(run: int) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="bench_b3",
        task_id="submit",
        run_id=f"manual__bench-{run}",
        map_index=-1,
        try_number=1,
        xcom_push=lambda **kw: None,
    )
    return {"ti": ti}


def run(*, quick: bool, tmp: Path, log: Any) -> tuple[list[Row], dict[str, Any]]:
    import httpx
    import tes
    import tes.utils
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_tes.hooks.tes import TesHook
    from airflow_provider_tes.operators.tes import TesTaskOperator
    from tests.support.stack import FunnelServer, find_funnel_binary

    reps = 10 if quick else 30
    workdir = Path(tempfile.mkdtemp(prefix="funnel-b3-", dir=tmp))
    with FunnelServer(
        find_funnel_binary(), workdir, None, USER, PASSWORD, compute="noop", log_level="warn"
    ) as f:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
            {
                "conn_type": "tes",
                "host": f.base_url,
                "login": USER,
                "password": PASSWORD,
                "extra": {"outputs_url": "s3://tes-bench/outputs/"},
            }
        )

        def operator_submit(i: int, transport: httpx.BaseTransport | None = None) -> tuple[float, str]:
            op = TesTaskOperator(
                task_id="submit",
                image="alpine:3.20",
                command="echo hello",
                tes_conn_id=CONN_ID,
                deferrable=True,  # measured up to the deferral ([operators] default_deferrable is off)
            )
            if transport is not None:
                op.hook = TesHook(CONN_ID, transport=transport)
            started = time.perf_counter()
            try:
                op.execute(_context(i))  # type: ignore[arg-type]
            except TaskDeferred as deferred:
                elapsed = time.perf_counter() - started
                task_id = deferred.trigger.tes_task_id
            else:
                raise RuntimeError("TesTaskOperator.execute returned instead of deferring")
            op.hook.close()
            return elapsed, task_id

        # The exact body the operator sent (Funnel does not return input contents, so it is
        # captured on the way out), as py-tes models.
        sent: list[dict[str, Any]] = []

        class Capture(httpx.HTTPTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                if request.method == "POST":
                    sent.append(json.loads(request.read()))
                return super().handle_request(request)

        operator_submit(-1, Capture())
        full = sent[0]
        body = tes.utils.unmarshal(full, tes.Task)
        client = tes.HTTPClient(url=f.url, user=USER, password=PASSWORD, timeout=30)

        def pytes_submit() -> float:
            started = time.perf_counter()
            try:
                client.create_task(body)
            except Exception as err:
                detail = getattr(getattr(err, "response", None), "text", "")
                raise RuntimeError(
                    f"py-tes create_task failed: {err}: {detail[:300]}; body {body.as_json()}"
                ) from err
            return time.perf_counter() - started

        meter = MachineMeter().start()
        ops: list[float] = []
        bare: list[float] = []
        for i in range(WARMUP + reps):
            op_s, _ = operator_submit(i)
            bare_s = pytes_submit()
            if i >= WARMUP:
                ops.append(op_s)
                bare.append(bare_s)
        busy = meter.stop()
        # For scale: a default httpx client loads the CA bundle even for a plain-http URL; the
        # operator makes a new client (hook) per task run, but without TLS for http:// servers.
        client_s = []
        for _ in range(reps):
            started = time.perf_counter()
            httpx.Client().close()
            client_s.append(time.perf_counter() - started)
    op_med, bare_med = statistics.median(ops), statistics.median(bare)
    log(f"  B3: operator median {op_med * 1000:.1f} ms, py-tes median {bare_med * 1000:.1f} ms ({reps} each)")
    client_med = statistics.median(client_s)
    raw = {
        "httpx_client_s": client_s,
        "operator_s": ops,
        "pytes_s": bare,
        "machine_cores_busy": busy,
        "task_body": full,
    }
    rows = [
        Row(
            "B3",
            f"median of {reps}",
            "submit ms",
            op_med * 1000,
            bare_med * 1000,
            target="<= 1.5x",
            passed=op_med <= 1.5 * bare_med,
            backend="funnel(noop)",
            notes="operator: validate + create + state check + xcom; py-tes: one POST",
        ),
        Row(
            "B3",
            f"p90 of {reps}",
            "submit ms",
            sorted(ops)[int(0.9 * (len(ops) - 1))] * 1000,
            sorted(bare)[int(0.9 * (len(bare) - 1))] * 1000,
            backend="funnel(noop)",
        ),
        Row(
            "B3",
            f"median of {reps}",
            "httpx.Client() ms",
            client_med * 1000,
            op_med * 1000,
            notes="a default client loads the CA bundle; the hook makes no TLS context for plain-HTTP "
            "servers, so the operator does not pay this",
        ),
    ]
    return rows, raw

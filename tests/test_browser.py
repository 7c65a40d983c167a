"""The provider as a person sees it: a real Airflow 3 UI in headless Chromium.

Brings up Airflow (api-server, scheduler, dag-processor, triggerer) with the provider, runs
``tes_test_live`` against Funnel, and drives Debian's Chromium through ``tests/browser/drive.js``
(playwright-core, no browser download) to (1) fill in the new-connection form for a
"GA4GH TES" connection, (2) open the finished task instance and follow its "TES Task"
extra link and (3) watch the Logs tab of a deferred task fill with the lines the trigger
streams from the TES executor. Screenshots land in ``tests/artifacts/screenshots/``.

Needs ``scripts/install-browser.sh`` (Debian's chromium + ``npm ci`` in tests/browser); the
test fails, never skips, when the browser is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_tes.get_provider_info import get_provider_info
from airflow_provider_tes.links import TES_TASK_LINK_KEY, TesOutputsLink, outputs_link
from airflow_provider_tes.operators.tes import TesTaskOperator
from tests.support.airflow_env import TEST_DAGS, AirflowEnv, aws_connection, tes_connection
from tests.support.airflow_services import AirflowServices
from tests.test_live_airflow import COUNTED_LINE, LIVE_LOGS_DAG_ID, LIVE_LOGS_TASK_ID

pytestmark = pytest.mark.funnel

DAG_ID = "tes_test_live"
TASK_ID = "sleeper"
TESTS_DIR = Path(__file__).resolve().parent
BROWSER_DIR = TESTS_DIR / "browser"
SCREENSHOTS = TESTS_DIR / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
#: How long the TES task sleeps. Not 1: when the trigger fires before the worker that deferred
#: has exited (seconds, on a busy 2-core machine), that worker's late "success" executor event
#: reaches the scheduler while the resumed run is RUNNING under the same try number, and
#: Airflow 3.3 marks the task FAILED ("task-state-changed-externally").
SLEEP_SECONDS = 15
#: Lines (one a second) the live-logs task prints: it must still be deferred when the page has
#: loaded and refreshed its log, on a busy machine.
LIVE_LINES = 90
#: Per UI element: the machine may be busy with other test runs.
UI_TIMEOUT_MS = 120_000


def _node() -> str:
    node = shutil.which("node")
    missing = []
    if node is None:
        missing.append("node (Node.js)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("tests/browser/node_modules/playwright-core")
    if missing:
        pytest.fail(f"browser test needs {', '.join(missing)}: run scripts/install-browser.sh")
    assert node is not None
    return node


def _drive(mode: str, config: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one step of tests/browser/drive.js; returns what it saw on the page."""
    config = {"screenshot_dir": str(SCREENSHOTS), "timeout_ms": UI_TIMEOUT_MS, **config}
    proc = subprocess.run(
        [_node(), str(BROWSER_DIR / "drive.js"), mode],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        cwd=BROWSER_DIR,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"drive.js {mode} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    for shot in result.get("screenshots", []):
        assert Path(shot).stat().st_size > 10_000, f"screenshot {shot} looks empty"
    return result


@pytest.fixture(scope="module")
def ui(
    tmp_path_factory: pytest.TempPathFactory, funnel: Any, moto_server: Any, s3_bucket: str
) -> Iterator[tuple[AirflowServices, str]]:
    """A running Airflow with a ``tes_test_live`` run already triggered (it runs while we browse)."""
    _node()  # fail before spending a minute on Airflow when the browser is missing
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for stale in SCREENSHOTS.glob("failure-*.png"):
        stale.unlink()
    env = AirflowEnv(
        home=tmp_path_factory.mktemp("airflow-browser"),
        dags_folder=TEST_DAGS,
        connections={
            "tes_default": tes_connection(
                funnel.base_url,
                funnel.user,
                funnel.password,
                outputs_url=f"s3://{s3_bucket}/browser/",
                aws_conn_id="aws_default",
                poll_interval=1,
            ),
            "aws_default": aws_connection(moto_server.endpoint_url),
        },
    )
    env.migrate()
    with AirflowServices(env) as services:
        run_id = services.trigger(DAG_ID, conf={"seconds": SLEEP_SECONDS})
        yield services, run_id


def _tes_connection_type() -> dict[str, Any]:
    types = get_provider_info()["connection-types"]
    return dict(next(t for t in types if t["connection-type"] == "tes"))


def test_new_connection_form_shows_the_tes_fields(ui: tuple[AirflowServices, str], funnel: Any) -> None:
    services, _ = ui
    conn_type = _tes_connection_type()
    behaviour = conn_type["ui-field-behaviour"]
    extra_labels = [field["label"] for field in conn_type["conn-fields"].values()]
    result = _drive(
        "connection-form",
        {
            "airflow_url": services.url,
            "connection_type_label": conn_type["hook-name"],
            "host_label": behaviour["relabeling"]["host"],
            "last_extra_label": extra_labels[-1],
            "conn_id": "tes_from_the_ui",
            "host_value": funnel.base_url,
        },
    )
    standard = result["standard_labels"]
    for label in ("TES base URL", "Username", "Password / token"):
        assert label in standard, f"{label!r} not on the form: {standard}"
    for hidden in ("Host", "Schema", "Port", "Login", "Password"):
        assert hidden not in standard, f"{hidden!r} should be hidden or relabeled: {standard}"
    assert result["host_placeholder"] == behaviour["placeholders"]["host"]
    shown = result["extra_labels"]
    for label in ("Auth type", "Bearer token", "Inputs URL", "Outputs URL", *extra_labels):
        assert label in shown, f"extra field {label!r} not on the form: {shown}"


def test_task_instance_tes_task_link_leads_to_the_task(ui: tuple[AirflowServices, str], funnel: Any) -> None:
    services, run_id = ui
    state = services.wait_for_ti(DAG_ID, run_id, TASK_ID, {"success", "failed"}, timeout=300)
    assert state == "success", services.logs()
    tes_id = services.xcom(DAG_ID, run_id, TASK_ID, key="tes_task_id")
    link = services.xcom(DAG_ID, run_id, TASK_ID, key=TES_TASK_LINK_KEY)
    assert link == f"{funnel.base_url}/tasks/{tes_id}?view=FULL"
    # Once the operator declares the "TES Outputs" link, it must show on the page too.
    with_outputs = any(isinstance(x, TesOutputsLink) for x in TesTaskOperator.operator_extra_links)

    result = _drive(
        "task-instance",
        {
            "airflow_url": services.url,
            "dag_id": DAG_ID,
            "run_id": run_id,
            "task_id": TASK_ID,
            "tes_origin": funnel.base_url,
            "tes_user": funnel.user,
            "expect_links": ["TES Outputs"] if with_outputs else [],
        },
        env={"TES_PASSWORD": funnel.password},
    )
    assert result["state"] == "success"
    assert result["links"]["TES Task"] == link, result["links"]
    # The browser followed the link to the TES server (a new tab) ... Note: Funnel answers a
    # browser (Accept: text/html) with its dashboard, which has no page for this API path and
    # shows "404 Not Found" (its own task page is <origin>/tasks/<id>): see the screenshot.
    assert result["followed"]["url"] == link
    assert result["followed"]["status"] == 200, result["followed"]
    # ... and the same URL, asked for JSON with the connection's credentials, is the task.
    response = httpx.get(
        result["links"]["TES Task"],
        auth=(funnel.user, funnel.password),
        headers={"Accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:500]
    task = response.json()
    assert task["id"] == tes_id
    assert task["state"] == "COMPLETE"
    assert task["tags"]["dag_id"] == DAG_ID and task["tags"]["run_id"] == run_id
    assert task["logs"], "view=FULL carries the task's logs"

    if with_outputs:
        outputs_url = services.xcom(DAG_ID, run_id, TASK_ID)["outputs_url"]
        expected = outputs_link(outputs_url)
        assert services.xcom(DAG_ID, run_id, TASK_ID, key="tes_outputs_link") == expected
        assert result["links"]["TES Outputs"] == expected, result["links"]


def _counted(lines: list[str]) -> list[int]:
    return [int(n) for line in lines for n in COUNTED_LINE.findall(line)]


def test_logs_tab_shows_lines_streamed_while_the_task_is_deferred(ui: tuple[AirflowServices, str]) -> None:
    """The Logs tab of a deferred task (screenshot: docs/images/task-log-live-lines.png)."""
    services, _ = ui
    dag_id, task_id = LIVE_LOGS_DAG_ID, LIVE_LOGS_TASK_ID
    run_id = services.trigger(dag_id, conf={"lines": LIVE_LINES})
    services.wait_for_ti(dag_id, run_id, task_id, {"deferred"}, timeout=300)
    deadline = time.monotonic() + 120
    while len(COUNTED_LINE.findall(services.task_log(dag_id, run_id, task_id))) < 3:
        assert time.monotonic() < deadline, "no streamed line reached the task log"
        time.sleep(1)

    result = _drive(
        "task-log",
        {
            "airflow_url": services.url,
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "streamed_marker": "stdout | ",
            "min_lines": 3,
            "viewport_height": 760,
        },
    )
    state_after = services.task_instance(dag_id, run_id, task_id)["state"]
    assert state_after == "deferred", "the page was read after the task stopped waiting"
    assert result["state"] == "deferred", result
    assert [Path(shot).name for shot in result["screenshots"]] == ["task-log-live-lines.png"]
    first, shown = _counted(result["first_lines"]), _counted(result["lines"])
    assert len(first) >= 3, result["first_lines"]
    # In order, each once, and the page added newer lines by itself (no reload).
    assert shown == list(range(shown[0], shown[-1] + 1)), result["lines"]
    assert shown[-1] > max(first), result
    assert services.wait_for_ti(dag_id, run_id, task_id, {"success", "failed"}, timeout=300) == "success"

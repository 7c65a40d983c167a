"""The TES view (Airflow plugin page) against a real api-server, with tasks on Funnel.

The api-server runs with the simple auth manager and a real user (not "all admins"), so the
page must authenticate. Its TES connection points at a proxy in front of Funnel that counts
requests, to show that one page view is one listing, never a GET per task. The tasks are
submitted from this process by the real operator (``wait_for_completion=False``) under a
deployment name of this module's own, so the page lists exactly them:

========================  ==============  ====================================================
task                      DAG             state
========================  ==============  ====================================================
``ok``                    tes_view_a      COMPLETE
``fails``                 tes_view_a      EXECUTOR_ERROR (exit 3, no wrapper)
``long``                  tes_view_a      RUNNING (sleeps; canceled at the end)
``per_item`` [0], [1]     tes_view_a      COMPLETE (mapped)
``stopped``               tes_view_b      CANCELED
``waiting``               tes_view_b      QUEUED (as the proxy reports it: Funnel starts at once)
========================  ==============  ====================================================

plus a task with this deployment's tags but a forged signature, and one of another deployment.
``waiting`` has a run id with markup in it, which the page must show as text.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesState, TesTask
from airflow_provider_tes.operators.tes import TesTaskOperator
from tests.support.airflow_env import TEST_DAGS, AirflowEnv, aws_connection, tes_connection
from tests.support.airflow_services import AirflowServices
from tests.support.tes_proxy import TesProxy

pytestmark = pytest.mark.funnel

DEPLOYMENT = f"tes-view-{uuid.uuid4().hex[:6]}"
TENANT_SECRET = secrets.token_urlsafe(24)
RUN_ID = "manual__2026-06-01T12:00:00+00:00"
#: The run id of one task, with markup in it: the page must show it as text.
MARKUP_RUN_ID = 'manual__<b>bold</b>&"quoted"'
USER = "viewer"


@dataclass
class Page:
    status: int
    text: str
    headers: httpx.Headers


@dataclass
class Setup:
    services: AirflowServices
    proxy: TesProxy
    token: str
    ids: dict[str, str]
    tes_base_url: str

    def page(self, *, auth: str | None = "bearer", **params: Any) -> Page:
        headers, cookies = {}, {}
        if auth == "bearer":
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth == "cookie":
            cookies["_token"] = self.token
        response = httpx.get(
            f"{self.services.url}/tes/tasks", params=params, headers=headers, cookies=cookies, timeout=60
        )
        return Page(response.status_code, response.text, response.headers)


class Rows(HTMLParser):
    """The page's rows (``<tr data-...>``), counts (``<li data-count...>``) and each row's links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-tes-task-id" in a:
            self.rows.append({"id": a["data-tes-task-id"], "state": a["data-state"], "dag": a["data-dag-id"]})
            self.rows[-1]["links"] = []
            self.rows[-1]["cells"] = []
        elif tag == "li" and "data-count-state" in a:
            self.counts[a["data-count-state"]] = int(a["data-count"])
        elif tag == "a" and self.rows and "href" in a:
            self.rows[-1]["links"].append(a)

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.rows}


def _submit(
    conn_id: str,
    dag_id: str,
    task_id: str,
    command: str | list[str],
    map_index: int = -1,
    run_id: str = RUN_ID,
) -> str:
    # A list command runs as is (no exit-code wrapper), so a failing one ends EXECUTOR_ERROR on Funnel.
    op = TesTaskOperator(
        task_id=task_id,
        image="alpine:3.20",
        command=command,
        shell=None if isinstance(command, list) else "/bin/sh",
        tes_conn_id=conn_id,
        wait_for_completion=False,
    )
    ti = SimpleNamespace(
        dag_id=dag_id,
        task_id=task_id,
        run_id=run_id,
        map_index=map_index,
        try_number=1,
        xcom_push=lambda **kw: None,
    )
    return str(op.execute({"ti": ti})["tes_task_id"])  # type: ignore[arg-type]


def _wait_for(hook: TesHook, wanted: dict[str, set[TesState]], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {tid: hook.get_task(tid).state for tid in wanted}
        if all(states[tid] in ok for tid, ok in wanted.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"TES tasks did not reach their states: {states}")
        time.sleep(1)


def _start_api_server(services: AirflowServices, timeout: float = 180) -> None:
    """Only the api-server: the page needs no scheduler, and the machine is small."""
    services.start_component("api-server")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services._check_alive()
        try:
            if httpx.get(f"{services.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"the api-server did not answer within {timeout}s\n{services.logs()}")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, funnel: Any, moto_server: Any, s3_bucket: str
) -> Iterator[Setup]:
    conn = {"outputs_url": f"s3://{s3_bucket}/tes-view/", "aws_conn_id": "aws_default"}
    with TesProxy(funnel.url) as proxy, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__TES__DEPLOYMENT_NAME", DEPLOYMENT)
        mp.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(moto_server.endpoint_url))
        direct = tes_connection(
            funnel.base_url, funnel.user, funnel.password, tenant_secret=TENANT_SECRET, **conn
        )
        mp.setenv("AIRFLOW_CONN_TES_VIEW_SUBMIT", direct)

        home = tmp_path_factory.mktemp("airflow-tes-view")
        password = secrets.token_urlsafe(12)
        (home / "passwords.json").write_text(json.dumps({USER: password}))
        env = AirflowEnv(
            home=home,
            dags_folder=TEST_DAGS,
            connections={
                "tes_default": tes_connection(
                    proxy.base_url, funnel.user, funnel.password, tenant_secret=TENANT_SECRET, **conn
                ),
                "aws_default": aws_connection(moto_server.endpoint_url),
                "not_tes": json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9"}),
            },
        )
        services = AirflowServices(env)
        env.extra_env.update(
            {
                "AIRFLOW__TES__DEPLOYMENT_NAME": DEPLOYMENT,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            }
        )
        env.migrate()
        _start_api_server(services)
        ids: dict[str, str] = {}
        try:
            submit = "tes_view_submit"
            ids["ok"] = _submit(submit, "tes_view_a", "ok", "echo ok")
            ids["fails"] = _submit(submit, "tes_view_a", "fails", ["sh", "-c", "echo failing >&2; exit 3"])
            ids["long"] = _submit(submit, "tes_view_a", "long", "sleep 600")
            ids["item0"] = _submit(submit, "tes_view_a", "per_item", "echo 0", map_index=0)
            ids["item1"] = _submit(submit, "tes_view_a", "per_item", "echo 1", map_index=1)
            ids["stopped"] = _submit(submit, "tes_view_b", "stopped", "sleep 600")
            ids["waiting"] = _submit(submit, "tes_view_b", "waiting", "echo soon", run_id=MARKUP_RUN_ID)
            with TesHook(submit) as hook:
                planted_tags = {
                    "deployment": DEPLOYMENT,
                    "dag_id": "tes_view_a",
                    "task_id": "planted",
                    "run_id": RUN_ID,
                    "map_index": "-1",
                    "try_number": "1",
                    "attempt": "0",
                    "identity_hmac": "v1:" + "0" * 64,
                }
                executor = [TesExecutor(image="alpine:3.20", command=["true"])]
                ids["planted"] = hook.create_task(
                    TesTask(name="planted", executors=executor, tags=planted_tags)
                )
                ids["foreign"] = hook.create_task(
                    TesTask(name="foreign", executors=executor, tags={**planted_tags, "deployment": "other"})
                )
                _wait_for(hook, {ids["stopped"]: {TesState.RUNNING}, ids["long"]: {TesState.RUNNING}})
                hook.cancel_task(ids["stopped"])
                done = {TesState.COMPLETE}
                _wait_for(
                    hook,
                    {
                        ids["ok"]: done,
                        ids["item0"]: done,
                        ids["item1"]: done,
                        ids["waiting"]: done,
                        ids["fails"]: {TesState.EXECUTOR_ERROR},
                        ids["stopped"]: {TesState.CANCELED},
                    },
                )
            proxy.rewrite_state(ids["waiting"], "QUEUED")
            token = _login(services.url, password)
            yield Setup(services, proxy, token, ids, proxy.base_url)
        finally:
            with TesHook("tes_view_submit") as hook:
                if "long" in ids:
                    hook.cancel_task(ids["long"])
            services.stop()


def _login(url: str, password: str) -> str:
    response = httpx.post(f"{url}/auth/token", json={"username": USER, "password": password}, timeout=30)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["access_token"])


def test_needs_an_authenticated_user(setup: Setup) -> None:
    assert setup.page(auth=None).status == 401
    bad = httpx.get(f"{setup.services.url}/tes/tasks", headers={"Authorization": "Bearer forged"}, timeout=30)
    assert bad.status_code in (401, 403)
    # The UI's session cookie is what authenticates the page inside the Airflow UI (an iframe).
    assert setup.page(auth="cookie").status == 200


def test_lists_this_deployments_tasks_with_counts_per_state(setup: Setup) -> None:
    setup.proxy.reset_records()
    page = setup.page()
    assert page.status == 200, page.text
    parsed = Rows(page.text)
    ids = setup.ids
    mine = {k: v for k, v in ids.items() if k not in ("planted", "foreign")}
    assert {row["id"] for row in parsed.rows} == set(mine.values())
    states = {row["id"]: row["state"] for row in parsed.rows}
    assert states == {
        ids["ok"]: "COMPLETE",
        ids["item0"]: "COMPLETE",
        ids["item1"]: "COMPLETE",
        ids["fails"]: "EXECUTOR_ERROR",
        ids["long"]: "RUNNING",
        ids["stopped"]: "CANCELED",
        ids["waiting"]: "QUEUED",
    }
    assert parsed.counts == {
        "ALL": 7,
        "COMPLETE": 3,
        "EXECUTOR_ERROR": 1,
        "RUNNING": 1,
        "CANCELED": 1,
        "QUEUED": 1,
    }
    # Rows by state, what may need attention first.
    assert [row["state"] for row in parsed.rows][:3] == ["RUNNING", "QUEUED", "EXECUTOR_ERROR"]
    assert "1 task(s) carry this deployment's name without its signature" in page.text
    # One listing filtered by this deployment's tag on the server; no request per task.
    calls = setup.proxy.requests
    assert calls and all(
        method == "GET" and path.startswith("/ga4gh/tes/v1/tasks?") for method, path in calls
    )
    assert all(f"tag_value={DEPLOYMENT}" in path and "view=BASIC" in path for _, path in calls), calls


def test_rows_link_to_the_task_instance_and_the_tes_task(setup: Setup) -> None:
    rows = Rows(setup.page().text).by_id()
    run = quote(RUN_ID, safe="")
    mapped = rows[setup.ids["item1"]]
    hrefs = [link["href"] for link in mapped["links"]]
    assert hrefs == [
        "/dags/tes_view_a",
        f"/dags/tes_view_a/runs/{run}/tasks/per_item/mapped/1",
        f"{setup.tes_base_url}/tasks/{setup.ids['item1']}?view=FULL",
    ]
    assert [link["target"] for link in mapped["links"]] == ["_top", "_top", "_blank"]
    plain = [link["href"] for link in rows[setup.ids["fails"]]["links"]]
    assert plain[1] == f"/dags/tes_view_a/runs/{run}/tasks/fails"


def test_filters_by_dag_and_state(setup: Setup) -> None:
    by_dag = Rows(setup.page(dag_id="tes_view_b").text)
    assert {row["id"] for row in by_dag.rows} == {setup.ids["stopped"], setup.ids["waiting"]}
    assert by_dag.counts == {"ALL": 2, "CANCELED": 1, "QUEUED": 1}

    complete = Rows(setup.page(state="COMPLETE").text)
    assert {row["id"] for row in complete.rows} == {setup.ids[k] for k in ("ok", "item0", "item1")}
    assert complete.counts["ALL"] == 7 and complete.counts["EXECUTOR_ERROR"] == 1, (
        "counts ignore the state filter"
    )

    both = Rows(setup.page(dag_id="tes_view_a", state="RUNNING").text)
    assert [row["id"] for row in both.rows] == [setup.ids["long"]]
    assert Rows(setup.page(dag_id="no_such_dag").text).rows == []


def test_escapes_what_it_shows_and_shows_no_command(setup: Setup) -> None:
    page = setup.page()
    assert "<b>bold</b>" not in page.text
    assert "manual__&lt;b&gt;bold&lt;/b&gt;&amp;&quot;quoted&quot;" in page.text
    for secret_ish in ("sleep 600", "echo failing", "/mnt/task/command", TENANT_SECRET):
        assert secret_ish not in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_bad_connections_are_reported_on_the_page(setup: Setup) -> None:
    unknown = setup.page(conn_id="no_such_connection")
    assert unknown.status == 400 and "no_such_connection" in unknown.text
    wrong_type = setup.page(conn_id="not_tes")
    assert wrong_type.status == 400 and "needs a connection of type" in wrong_type.text
    assert setup.page(conn_id="../etc").status == 400


def test_the_plugin_is_registered_with_its_menu_entry(setup: Setup) -> None:
    response = httpx.get(
        f"{setup.services.url}/api/v2/plugins",
        headers={"Authorization": f"Bearer {setup.token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    plugin = next(p for p in response.json()["plugins"] if p["name"] == "tes")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/tes"
    views = {(v["destination"], v["href"]) for v in plugin["external_views"]}
    assert views == {("nav", "/tes/tasks"), ("dag", "/tes/tasks?dag_id={DAG_ID}")}


def test_the_menu_entry_shows_the_page_in_the_airflow_ui(setup: Setup) -> None:
    """Headless Chromium opens "TES tasks" in the UI (screenshot: docs/images/tes-view.png)."""
    from tests.test_browser import _drive

    result = _drive(
        "tes-view",
        {"airflow_url": setup.services.url, "url_route": "tes_tasks", "viewport_height": 760},
        env={"AIRFLOW_TOKEN": setup.token},
    )
    assert result["iframe_src"].endswith("/tes/tasks"), result
    assert sorted(result["states"]) == sorted(
        ["COMPLETE"] * 3 + ["EXECUTOR_ERROR", "RUNNING", "CANCELED", "QUEUED"]
    )
    assert result["counts"]["ALL"] == 7

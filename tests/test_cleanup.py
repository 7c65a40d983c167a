"""``airflow tes cleanup`` on a real scheduler + triggerer: an abandoned deferred task's TES task
is found and, with ``--yes``, canceled; a waited-for task and a submit-only task are not."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesState
from tests.support.airflow_env import TEST_DAGS, AirflowEnv, stack_connections
from tests.support.airflow_services import AirflowServices

pytestmark = pytest.mark.funnel

LIVE, CLEANUP = "tes_test_live", "tes_test_cleanup"


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, funnel: Any, moto_server: Any, s3_bucket: str
) -> Iterator[AirflowServices]:
    env = AirflowEnv(
        home=tmp_path_factory.mktemp("airflow-cleanup"),
        dags_folder=TEST_DAGS,
        connections=stack_connections(funnel, moto_server.endpoint_url, s3_bucket, "cleanup"),
        extra_env={"AIRFLOW__TES__DEPLOYMENT_NAME": "cleanup-suite"},
    )
    env.migrate()
    with AirflowServices(env) as running:
        yield running


@pytest.fixture
def tes(monkeypatch: pytest.MonkeyPatch, funnel: Any) -> Iterator[TesHook]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TES_CLEANUP_CHECK",
        json.dumps(
            {"conn_type": "tes", "host": funnel.base_url, "login": funnel.user, "password": funnel.password}
        ),
    )
    with TesHook("tes_cleanup_check") as hook:
        yield hook


def _published(
    services: AirflowServices, dag_id: str, run_id: str, task_id: str, timeout: float = 180
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return str(services.xcom(dag_id, run_id, task_id, key="tes_task_id"))
        except AssertionError:
            time.sleep(1)
    raise AssertionError(f"{dag_id}.{task_id} never published its TES task id")


def _cleanup(services: AirflowServices, *args: str) -> dict[str, Any]:
    out = services.env.run("tes", "cleanup", "--output", "json", *args)
    return dict(json.loads(out.stdout))


def _states(tes: TesHook, *ids: str) -> list[TesState | None]:
    return [tes.get_task(i).state for i in ids]


def test_cleanup_cancels_exactly_the_orphans(services: AirflowServices, tes: TesHook) -> None:
    abandoned_run = services.trigger(LIVE, conf={"seconds": 300})
    waited_run = services.trigger(LIVE, conf={"seconds": 300})
    submit_run = services.trigger(CLEANUP)
    for run_id in (abandoned_run, waited_run):
        services.wait_for_ti(LIVE, run_id, "sleeper", {"deferred"})
    services.wait_for_ti(CLEANUP, submit_run, "submit_only", {"success"})
    abandoned = _published(services, LIVE, abandoned_run, "sleeper")
    waited = _published(services, LIVE, waited_run, "sleeper")
    submitted = _published(services, CLEANUP, submit_run, "submit_only")
    try:
        # The run is abandoned: its triggerer dies, then the task is marked failed while no
        # triggerer runs its trigger, so nothing is told to cancel the TES task.
        services.stop_component("triggerer", sig=signal.SIGKILL)
        services.set_ti_state(LIVE, abandoned_run, "sleeper", "failed")
        time.sleep(3)
        assert _states(tes, abandoned, waited, submitted) == [TesState.RUNNING] * 3

        dry = _cleanup(services)
        by_id = {t["tes_task_id"]: t for t in dry["tasks"]}
        assert dry["dry_run"] and dry["orphans"] == [abandoned], dry
        assert {waited, submitted} <= by_id.keys()
        assert "failed" in by_id[abandoned]["why"]
        assert (by_id[waited]["orphan"], by_id[submitted]["orphan"]) == (False, False)
        time.sleep(2)
        assert _states(tes, abandoned, waited, submitted) == [TesState.RUNNING] * 3, (
            "a dry run cancels nothing"
        )

        done = _cleanup(services, "--yes")
        assert done["canceled"] == [abandoned] and not done["failed"], done
        deadline = time.monotonic() + 60
        while tes.get_task(abandoned).state is not TesState.CANCELED:
            assert time.monotonic() < deadline, "the orphan was not canceled"
            time.sleep(1)
        assert _states(tes, waited, submitted) == [TesState.RUNNING] * 2
        assert _cleanup(services)["orphans"] == []
    finally:
        services.start_component("triggerer")
        for tes_id in (abandoned, waited, submitted):
            tes.cancel_task(tes_id)


def test_cleanup_help_and_bad_arguments(services: AirflowServices) -> None:
    help_text = services.env.run("tes", "cleanup", "--help").stdout
    for option in ("--yes", "--older-than", "--dag-id", "--conn-id", "--output"):
        assert option in help_text
    bad = services.env.run("tes", "cleanup", "--older-than", "soon", check=False)
    assert bad.returncode != 0 and "--older-than must be seconds" in bad.stdout + bad.stderr

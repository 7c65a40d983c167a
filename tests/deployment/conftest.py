"""The production-shaped deployment the suite runs on, started once for the module.

PostgreSQL, Redis, api-server, scheduler, dag-processor, a Celery worker and two triggerers
(:mod:`tests.support.deployment`), against the session's Funnel and moto S3. Each process that
talks to TES has a connection of its own (as on a machine of its own): ``tes_default`` points
each at its own proxy in front of Funnel, so the requests of each triggerer can be counted;
``tes_proxy`` is one proxy shared by all, which preempts tasks on request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from airflow_provider_tes.hooks.tes import TesHook
from tests.support.airflow_env import TEST_DAGS, AirflowEnv, stack_connections, tes_connection
from tests.support.deployment import TRIGGERERS, Deployment, deployment
from tests.support.tes_proxy import TesProxy

#: The processes that talk to TES, each through its own proxy.
TES_CLIENTS = ("worker", *TRIGGERERS, "api-server")


@dataclass
class Deployed:
    airflow: Deployment
    #: ``tes_default`` of each process in :data:`TES_CLIENTS`, by name.
    proxies: dict[str, TesProxy]
    #: ``tes_proxy``, shared by every process.
    shared: TesProxy
    #: A hook straight to Funnel, for what the test checks there.
    tes: TesHook


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
    funnel: Any,
    moto_server: Any,
    s3_bucket: str,
) -> Iterator[Deployed]:
    connections = stack_connections(funnel, moto_server.endpoint_url, s3_bucket, "deploy")
    tes_default = json.loads(connections["tes_default"])
    with (
        TesProxy(funnel.url, seed=11) as shared,
        TesProxy(funnel.url, seed=1) as worker,
        TesProxy(funnel.url, seed=2) as first,
        TesProxy(funnel.url, seed=3) as second,
        TesProxy(funnel.url, seed=4) as api,
    ):
        proxies = dict(zip(TES_CLIENTS, (worker, first, second, api), strict=True))
        connections["tes_proxy"] = tes_connection(
            shared.base_url, funnel.user, funnel.password, **{**tes_default["extra"], "poll_interval": 1}
        )
        env = AirflowEnv(
            home=tmp_path_factory.mktemp("airflow-deployment"),
            dags_folder=TEST_DAGS,
            connections=connections,
            extra_env={
                "AIRFLOW__TES__DEPLOYMENT_NAME": "deployment-suite",
                # A worker killed mid-task is noticed after this many seconds (300 by default).
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            },
        )
        with deployment(
            env,
            triggerer_capacity=30,
            component_env={
                name: {
                    "AIRFLOW_CONN_TES_DEFAULT": tes_connection(
                        proxy.base_url, funnel.user, funnel.password, **tes_default["extra"]
                    )
                }
                for name, proxy in proxies.items()
            },
        ) as airflow:
            monkeypatch_module.setenv(
                "AIRFLOW_CONN_TES_DEPLOY_CHECK",
                json.dumps(
                    {
                        "conn_type": "tes",
                        "host": funnel.base_url,
                        "login": funnel.user,
                        "password": funnel.password,
                    }
                ),
            )
            with TesHook("tes_deploy_check") as tes:
                yield Deployed(airflow, proxies, shared, tes)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(autouse=True)
def _show_logs_on_failure(request: pytest.FixtureRequest, deployed: Deployed) -> Iterator[None]:
    """Each process's log, printed after a failed test (pytest shows it with the failure)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(deployed.airflow.logs(tail=20000))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

"""PREEMPTED, produced by the test proxy in front of Funnel (Funnel never sets it).

The DAG asks for ``preemptible=2``: up to two resubmissions, the last one sent without
``preemptible``. Runs through real ``airflow dags test``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.airflow_env import AirflowEnv
from tests.support.tes_proxy import TesProxy

pytestmark = pytest.mark.funnel

DAG_ID = "tes_test_preempt"


@pytest.fixture
def proxied(test_dags: AirflowEnv, funnel: Any, s3_bucket: str) -> Iterator[tuple[AirflowEnv, TesProxy]]:
    with TesProxy(funnel.url) as proxy:
        test_dags.connections["tes_proxy"] = json.dumps(
            {
                "conn_type": "tes",
                "host": proxy.base_url,
                "login": funnel.user,
                "password": funnel.password,
                "extra": {"outputs_url": f"s3://{s3_bucket}/preempt/", "poll_interval": 1},
            }
        )
        try:
            yield test_dags, proxy
        finally:
            test_dags.connections.pop("tes_proxy", None)


def _preemptible_flags(proxy: TesProxy) -> list[bool]:
    """``preemptible`` of every submitted attempt, each stated explicitly (TES has no default)."""
    flags = [(body.get("resources") or {}).get("preemptible") for _, body in proxy.created]
    assert all(isinstance(flag, bool) for flag in flags), f"an attempt left preemptible unstated: {flags}"
    return [bool(flag) for flag in flags]


@pytest.mark.parametrize("times", [1, 2])
def test_preempted_task_is_resubmitted_and_succeeds(proxied: tuple[AirflowEnv, TesProxy], times: int) -> None:
    airflow, proxy = proxied
    proxy.preempt(times)
    airflow.dags_test(DAG_ID)
    result = airflow.xcom(DAG_ID, "preempted")
    assert result["state"] == "COMPLETE"
    assert len(result["attempts"]) == times + 1
    assert result["attempts"][:-1] == proxy.preempted_ids
    assert [task_id for task_id, _ in proxy.created] == result["attempts"]
    # The budget counts down; the final allowed attempt (after 2 preemptions) is not preemptible.
    assert _preemptible_flags(proxy) == [True, True, False][: times + 1]
    names = [body["name"] for _, body in proxy.created]
    assert len(set(names)) == len(names), "every submission has its own name"
    assert {body["tags"]["attempt"] for _, body in proxy.created} == {str(i) for i in range(times + 1)}


def test_preemption_beyond_budget_fails_clearly(proxied: tuple[AirflowEnv, TesProxy]) -> None:
    airflow, proxy = proxied
    proxy.preempt(3)
    proc = airflow.dags_test(DAG_ID, check=False)
    assert airflow.task_states(DAG_ID) == {"preempted": "failed"}
    assert "preemption budget is spent" in proc.stdout + proc.stderr
    assert len(proxy.created) == 3
    assert _preemptible_flags(proxy) == [True, True, False]

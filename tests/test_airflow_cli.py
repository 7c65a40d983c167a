"""The provider as Airflow's own CLI sees it: registration, hooks, connection tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.airflow_env import AirflowEnv

pytestmark = pytest.mark.funnel


def test_provider_is_registered_without_warnings(airflow: AirflowEnv) -> None:
    providers = airflow.run("providers", "list", "--output", "json")
    names = {p["package_name"] for p in json.loads(providers.stdout)}
    assert "airflow-provider-tes" in names
    hooks = airflow.run("providers", "hooks", "--output", "json")
    tes = [h for h in json.loads(hooks.stdout) if h.get("connection_type") == "tes"]
    assert tes and tes[0]["class"] == "airflow_provider_tes.hooks.tes.TesHook"
    # The providers manager reports problems with a provider on stderr (logs), never in the JSON.
    for out in (providers, hooks):
        for line in out.stderr.lower().splitlines():
            assert "airflow_provider_tes" not in line and "airflow-provider-tes" not in line, line


def test_connections_test_against_funnel(airflow: AirflowEnv, funnel: Any) -> None:
    ok = airflow.run("connections", "test", "tes_default", check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Connection success!" in ok.stdout

    airflow.connections["tes_wrong_pw"] = json.dumps(
        {"conn_type": "tes", "host": funnel.base_url, "login": funnel.user, "password": "not-the-password"}
    )
    try:
        bad = airflow.run("connections", "test", "tes_wrong_pw", check=False)
    finally:
        airflow.connections.pop("tes_wrong_pw")
    output = bad.stdout + bad.stderr
    assert "Connection success!" not in output
    assert "rejected the login/password" in output
    assert "not-the-password" not in output

"""The tenant tag without a server: where its key comes from, what it covers, what it refuses.

Against Funnel (two deployments, planted tasks) see ``tests/test_tenancy.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_tes.connection import TesConnection
from airflow_provider_tes.identity import DEPLOYMENT_TAG, IDENTITY_MAC_TAG, TaskIdentity, Tenant
from tests.support.inprocess import fake_connection

IDENTITY = TaskIdentity(
    dag_id="dag", task_id="task", run_id="scheduled__2025-01-01T00:00:00+00:00", try_number=1
)


@pytest.fixture(autouse=True)
def no_configured_tenancy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIRFLOW__TES__DEPLOYMENT_NAME", "AIRFLOW__TES__TENANT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
        monkeypatch.delenv(name, raising=False)


def settings(password: str | None = "pw-123456", **extra: Any) -> TesConnection:
    conn = fake_connection(
        extra,
        conn_id="tes_tenancy",
        host="http://tes.invalid/ga4gh/tes/v1",
        login="alice" if password else None,
        password=password,
    )
    return TesConnection.from_airflow(conn)


def signed(tenant: Tenant, identity: TaskIdentity = IDENTITY, attempt: int = 0) -> dict[str, str]:
    return {**identity.tags(attempt), **tenant.tags(identity, attempt)}


def test_key_sources_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    credential = Tenant.of_connection(settings())
    assert credential.source == "the connection's credential" and credential.durable

    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "fernet-one,fernet-old")
    fernet = Tenant.of_connection(settings())
    assert fernet.source == "[core] fernet_key" and fernet.key != credential.key
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "fernet-one")
    assert Tenant.of_connection(settings()).key == fernet.key, "only the first (current) fernet key counts"

    monkeypatch.setenv("AIRFLOW__TES__TENANT_SECRET", "configured-secret")
    configured = Tenant.of_connection(settings())
    assert configured.source == "[tes] tenant_secret" and configured.key not in (fernet.key, credential.key)

    extra = Tenant.of_connection(settings(tenant_secret=" connection-secret\n"))
    assert extra.source == "the connection's extra 'tenant_secret'"
    assert extra.key == Tenant.of_connection(settings(tenant_secret="connection-secret")).key


def test_unfilled_config_templates_are_not_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow's task SDK returns the template text of an unset fernet_key: a public constant.
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "{FERNET_KEY}")
    assert Tenant.of_connection(settings()).source == "the connection's credential"


def test_no_secret_at_all_signs_with_a_key_of_this_process() -> None:
    tenant = Tenant.of_connection(settings(password=None))
    assert not tenant.durable
    assert tenant.deployment == "airflow"
    assert tenant.owns(signed(tenant)), "the process itself verifies what it signed (ambiguous create)"


def test_deployment_name_configured_or_derived_from_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    derived = Tenant.of_connection(settings()).deployment
    assert derived.startswith("airflow-") and len(derived) == len("airflow-") + 12
    assert Tenant.of_connection(settings()).deployment == derived, "stable"
    assert Tenant.of_connection(settings(tenant_secret="other")).deployment != derived
    monkeypatch.setenv("AIRFLOW__TES__DEPLOYMENT_NAME", " prod ")
    assert Tenant.of_connection(settings()).deployment == "prod"


def test_the_secret_is_never_in_tags_repr_or_form() -> None:
    conn = settings(tenant_secret="tenant-secret-xyz")
    tenant = Tenant.of_connection(conn)
    tags = signed(tenant)
    assert tags[DEPLOYMENT_TAG] == tenant.deployment
    assert tags[IDENTITY_MAC_TAG].startswith("v1:") and len(tags[IDENTITY_MAC_TAG]) == 3 + 64
    for text in (json.dumps(tags), repr(tenant), repr(conn)):
        assert "tenant-secret-xyz" not in text
        assert tenant.key.hex() not in text


def test_owns_only_what_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__TES__DEPLOYMENT_NAME", "prod")
    prod = Tenant.of_connection(settings())
    tags = signed(prod)
    assert prod.owns(tags)
    assert prod.owns({**tags, "user_tag": "anything"}), "other tags are not covered"

    legacy = IDENTITY.tags(0)  # submitted before tasks were signed
    assert not prod.owns(legacy)
    assert not prod.owns({**legacy, DEPLOYMENT_TAG: "prod"})
    assert not prod.owns({**tags, IDENTITY_MAC_TAG: "v1:" + "0" * 64})
    assert not prod.owns({**tags, IDENTITY_MAC_TAG: ""})
    assert not prod.owns({**tags, IDENTITY_MAC_TAG: "v1:\u00e9" * 20}), (
        "non-ASCII tags are refused, not raised"
    )
    assert not prod.owns(None)
    # The tag covers every field of the identity: copying it onto another one does not verify.
    for key, value in [
        ("dag_id", "other"),
        ("task_id", "other"),
        ("run_id", "manual__other"),
        ("map_index", "3"),
        ("try_number", "2"),
        ("attempt", "1"),
    ]:
        assert not prod.owns({**tags, key: value}), key
    for key in ("dag_id", "try_number", "attempt"):
        assert not prod.owns({k: v for k, v in tags.items() if k != key}), key


def test_two_deployments_sharing_a_secret_do_not_own_each_others_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__TES__DEPLOYMENT_NAME", "prod")
    prod = Tenant.of_connection(settings())
    monkeypatch.setenv("AIRFLOW__TES__DEPLOYMENT_NAME", "staging")
    staging = Tenant.of_connection(settings())
    assert prod.key == staging.key
    assert not staging.owns(signed(prod)) and not prod.owns(signed(staging))
    # Relabelling prod's task as staging's does not verify either: the name is signed.
    assert not staging.owns({**signed(prod), DEPLOYMENT_TAG: "staging"})


def test_same_name_other_secret_does_not_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__TES__DEPLOYMENT_NAME", "prod")
    ours = Tenant.of_connection(settings(tenant_secret="ours"))
    theirs = Tenant.of_connection(settings(tenant_secret="theirs"))
    assert not ours.owns(signed(theirs))


def test_adopts_reads_back_the_try_and_attempt() -> None:
    tenant = Tenant.of_connection(settings())
    earlier = IDENTITY.with_try(2)
    assert tenant.adopts(IDENTITY.with_try(3), signed(tenant, earlier, attempt=1)) == (earlier, 1)
    other_run = TaskIdentity(dag_id="dag", task_id="task", run_id="manual__x", try_number=1)
    assert tenant.adopts(IDENTITY.with_try(3), signed(tenant, other_run)) is None
    assert tenant.adopts(IDENTITY.with_try(3), earlier.tags(1)) is None

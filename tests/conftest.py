"""Shared pytest fixtures.

# --- Real integration stack (moto S3 + Funnel TES) ------------------------------
# Session-scoped; see tests/support/stack.py for the machinery.  Funnel is built from
# source by scripts/build-funnel.sh on first use (needs Go; cached afterwards,
# or point $FUNNEL_BINARY at a prebuilt v0.12.2 binary).  Executors run through
# scripts/docker-shim in Linux namespaces, so the `funnel` fixture needs root.
# When any test of the session failed, Funnel's config (passwords redacted) and
# logs are copied to tests/artifacts/funnel-<timestamp>/.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# In-process Airflow (hooks, operators under unit test) gets a throwaway home and SQLite,
# never the user's ~/airflow. Set before anything imports airflow.
if "AIRFLOW_HOME" not in os.environ:
    import atexit
    import tempfile

    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-provider-tes-tests-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)

from tests.support.airflow_env import (
    TEST_DAGS,
    AirflowEnv,
    aws_connection,
    stack_connections,
    tes_connection,
)
from tests.support.stack import FunnelServer, MotoServer, find_funnel_binary
from tests.support.tes_proxy import TesProxy

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
TEST_BUCKET = "tes-test"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """An in-memory S3 (moto server mode) on a free 127.0.0.1 port."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(moto_server: MotoServer) -> str:
    """Name of an existing bucket ("tes-test") in ``moto_server``."""
    return moto_server.create_bucket(TEST_BUCKET)


@pytest.fixture(scope="session")
def s3_client(moto_server: MotoServer) -> Any:
    """A boto3 S3 client for ``moto_server``."""
    return moto_server.client("s3")


@pytest.fixture
def aws_conn(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Id of an Airflow ``aws`` connection to ``moto_server``, set in the environment."""
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_TES_TEST_S3", json.dumps(conn))
    return "tes_test_s3"


@pytest.fixture(scope="session")
def funnel_binary() -> str:
    """Path of the Funnel binary (built once, then reused)."""
    if not os.environ.get("FUNNEL_BINARY") and shutil.which("go") is None:
        pytest.fail(
            "Funnel needs the Go toolchain to build (or set FUNNEL_BINARY); "
            "the real-server suite is never skipped"
        )
    return find_funnel_binary()


@pytest.fixture(scope="session")
def funnel(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    funnel_binary: str,
    moto_server: MotoServer,
) -> Iterator[FunnelServer]:
    """A running Funnel server: local compute via the docker shim, GenericS3 -> moto.

    Attributes: ``base_url`` (``http://127.0.0.1:PORT/ga4gh/tes/v1``), ``url``,
    ``http_port``, ``user`` ("admin"), ``password`` (random per session),
    ``log_path``, ``workdir``; see ``stack.FunnelServer``.
    """
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.fail("the Funnel stack runs executors in Linux namespaces and needs root")
    workdir = tmp_path_factory.mktemp("funnel")
    server = FunnelServer(
        funnel_binary,
        workdir,
        moto_server.endpoint_url,
        user="admin",
        password=secrets.token_urlsafe(18),
    )
    SESSION_SECRETS.add(server.password)
    SESSION_SECRETS.add(base64.b64encode(f"{server.user}:{server.password}".encode()).decode())
    SESSION_SECRETS.add(server.second_password)
    SESSION_SECRETS.add(base64.b64encode(f"{server.second_user}:{server.second_password}".encode()).decode())
    with server.serving(request, "funnel"):
        yield server


@pytest.fixture
def funnel_conn(
    monkeypatch: pytest.MonkeyPatch, funnel: FunnelServer, moto_server: MotoServer
) -> Callable[..., str]:
    """``funnel_conn(conn_id, outputs_url, base_url=None, **extra)`` defines the TES connection
    ``conn_id`` (Funnel's user, at ``base_url`` or Funnel itself) and ``aws_default`` (moto) in the
    environment and returns ``conn_id``: an operator run in the test process reads its connections
    there, as a worker does, and uploads through ``aws_default``."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(moto_server.endpoint_url))

    def define(conn_id: str, outputs_url: str, base_url: str | None = None, **extra: Any) -> str:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            tes_connection(
                base_url or funnel.base_url, funnel.user, funnel.password, outputs_url=outputs_url, **extra
            ),
        )
        return conn_id

    return define


@pytest.fixture
def funnel_proxy(funnel: FunnelServer) -> Iterator[Callable[..., TesProxy]]:
    """Make proxies in front of the session Funnel: ``funnel_proxy("tesk")`` is a started
    :class:`~tests.support.tes_proxy.TesProxy` answering like that personality
    (``tests.support.personalities.PERSONALITIES``; None: plain Funnel), stopped after the test.

    Point the client at ``proxy.base_url`` with Funnel's ``user``/``password``; read what it
    submitted in ``proxy.seen`` / ``proxy.seen_calls("create")`` (bodies as sent).
    """
    proxies: list[TesProxy] = []

    def make(personality: str | None = None, *, seed: int = 0) -> TesProxy:
        proxy = TesProxy(funnel.url, seed=seed, personality=personality).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def personality_proxy(request: pytest.FixtureRequest, funnel_proxy: Callable[..., TesProxy]) -> TesProxy:
    """A proxy in front of the session Funnel with the personality given by indirect
    parametrization: ``@pytest.mark.parametrize("personality_proxy", ["tesk"], indirect=True)``
    (unparametrized: none)."""
    return funnel_proxy(getattr(request, "param", None))


@pytest.fixture(scope="session")
def airflow(
    tmp_path_factory: pytest.TempPathFactory, funnel: Any, moto_server: Any, s3_bucket: str
) -> AirflowEnv:
    env = AirflowEnv(
        home=tmp_path_factory.mktemp("airflow-home"),
        connections=stack_connections(funnel, moto_server.endpoint_url, s3_bucket, "examples"),
    )
    env.migrate()
    return env


@pytest.fixture
def test_dags(airflow: AirflowEnv) -> Iterator[AirflowEnv]:
    """The same Airflow home, reading the DAGs under tests/dags instead of the examples."""
    original = airflow.dags_folder
    airflow.dags_folder = TEST_DAGS
    try:
        yield airflow
    finally:
        airflow.dags_folder = original


# -- a secrets scan over the whole session ----------------------------------------------------------

#: Passwords/tokens of the session's servers; fixtures add theirs.
SESSION_SECRETS: set[str] = set()


def _leaks(text: str) -> list[str]:
    return [secret for secret in SESSION_SECRETS if secret and secret in text]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any Airflow CLI output or log file of the session shows a secret."""
    found: list[str] = []
    for number, output in enumerate(AirflowEnv.OUTPUTS):
        if _leaks(output):
            found.append(f"CLI output #{number}: {output.splitlines()[0] if output else ''}")
    for home in AirflowEnv.HOMES:
        for folder in ("logs", "service-logs"):
            for path in (home / folder).rglob("*") if (home / folder).exists() else []:
                if path.is_file() and _leaks(path.read_text(errors="replace")):
                    found.append(str(path))
    scanned = len(AirflowEnv.OUTPUTS)
    if found:
        print(f"\n[secrets] a password or token appears in: {found}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif SESSION_SECRETS:
        print(
            f"\n[secrets] scanned {scanned} Airflow CLI outputs and the logs of {len(AirflowEnv.HOMES)} "
            "Airflow homes: no password or token found",
            file=sys.stderr,
        )

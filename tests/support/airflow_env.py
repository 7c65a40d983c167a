"""A real Airflow installation for tests and the demo: temp AIRFLOW_HOME, SQLite, CLI calls.

Plain Python (no pytest) so ``make demo`` (scripts/demo.py) uses the same code as the tests.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tests.support import REPO_ROOT

EXAMPLE_DAGS = REPO_ROOT / "dags_examples"
TEST_DAGS = REPO_ROOT / "tests" / "dags"
AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))


def tes_connection(base_url: str, user: str, password: str, **extra: Any) -> str:
    """``AIRFLOW_CONN_...`` JSON for a TES server."""
    return json.dumps(
        {"conn_type": "tes", "host": base_url, "login": user, "password": password, "extra": extra}
    )


def stack_connections(funnel: Any, s3_endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    """``tes_default`` (Funnel, staging and outputs under ``s3://bucket/prefix/``) and ``aws_default``."""
    return {
        "tes_default": tes_connection(
            funnel.base_url,
            funnel.user,
            funnel.password,
            inputs_url=f"s3://{bucket}/{prefix}/inputs/",
            outputs_url=f"s3://{bucket}/{prefix}/outputs/",
            aws_conn_id="aws_default",
            poll_interval=1,
        ),
        "aws_default": aws_connection(s3_endpoint),
    }


def aws_connection(endpoint_url: str, key: str = "testing", secret: str = "testing") -> str:
    return json.dumps(
        {
            "conn_type": "aws",
            "login": key,
            "password": secret,
            "extra": {"endpoint_url": endpoint_url, "region_name": "us-east-1"},
        }
    )


@dataclass
class AirflowEnv:
    """One AIRFLOW_HOME with its own SQLite database and connections from env vars.

    Every home and every CLI output is remembered (``HOMES``, ``OUTPUTS``) so the test
    session can scan all of them for secrets at its end.
    """

    HOMES: ClassVar[list[Path]] = []
    OUTPUTS: ClassVar[list[str]] = []

    home: Path
    dags_folder: Path = EXAMPLE_DAGS
    connections: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.home / "airflow.db"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AIRFLOW_CONN_") and not k.startswith("AIRFLOW__")
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                # As the README recommends: TES operators and sensors defer unless told not to.
                "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            }
        )
        for conn_id, value in self.connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = value
        env.update(self.extra_env)
        return env

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [AIRFLOW_BIN, *args],
            env=self.env(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.OUTPUTS.append(f"$ airflow {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
        if check and proc.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-8000:]}"
                f"\n--- stderr\n{proc.stderr[-8000:]}"
            )
        return proc

    def migrate(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.HOMES.append(self.home)
        self.run("db", "migrate", timeout=600)

    def dags_test(
        self, dag_id: str, *, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return self.run("dags", "test", dag_id, timeout=timeout, check=check)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path) as db:
            return list(db.execute(sql, params).fetchall())

    def task_states(self, dag_id: str) -> dict[str, str]:
        """State of each task (``task_id`` or ``task_id[map_index]``) in the newest run of ``dag_id``."""
        rows = self.query(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = "
            "(SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1)",
            dag_id,
            dag_id,
        )
        return {(t if m < 0 else f"{t}[{m}]"): s for t, m, s in rows}

    def xcom(self, dag_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """An XCom of the newest run of ``dag_id``, decoded from the metadata DB."""
        rows = self.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = ? AND map_index = ? "
            "ORDER BY dag_run_id DESC LIMIT 1",
            dag_id,
            task_id,
            key,
            map_index,
        )
        if not rows:
            return None
        value = rows[0][0]
        if isinstance(value, bytes):
            value = value.decode()
        return json.loads(value) if isinstance(value, str) else value

"""A running Airflow: api-server, scheduler, dag-processor and triggerer as separate processes.

Separate processes (not ``airflow standalone``) so a test can stop and restart the
triggerer on its own. LocalExecutor on SQLite, everything on 127.0.0.1, auth off
(every user is admin) so tests can drive the REST API directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.airflow_env import AIRFLOW_BIN, AirflowEnv
from tests.support.stack import free_port

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_TI_STATES = {"success", "failed", "upstream_failed", "skipped", "removed"}


class AirflowServices:
    """The processes of one Airflow, each started by name and logged to ``service-logs/<name>.log``.

    Subclasses (the production-shaped :class:`tests.support.deployment.Deployment`) name other
    components in :attr:`components` and say how each starts in :meth:`command`.
    """

    components: tuple[str, ...] = COMPONENTS

    def __init__(self, env: AirflowEnv) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: Settings of one component only (as on a machine of its own), e.g. its connections.
        self.component_env: dict[str, dict[str, str]] = {}
        self.log_dir = env.home / "service-logs"
        env.extra_env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API_AUTH__JWT_SECRET": "tes-provider-test-jwt-secret-0123456789abcdef",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "2",
            }
        )

    def command(self, name: str) -> list[str]:
        """How the component ``name`` is started."""
        args = [AIRFLOW_BIN, name]
        if name == "api-server":
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        return args

    def start_component(self, name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            self.command(name),
            env={**self.env.env(), **self.component_env.get(name, {})},
            cwd=self.env.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop_component(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def start(self, timeout: float = 180) -> AirflowServices:
        for name in self.components:
            self.start_component(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if httpx.get(f"{self.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"Airflow api-server did not answer within {timeout}s\n{self.logs()}")

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {proc.returncode}\n{self.logs(name)}")

    def stop(self) -> None:
        for name in reversed(self.components):
            self.stop_component(name)

    def logs(self, name: str | None = None, tail: int = 6000) -> str:
        names = [name] if name else list(self.components)
        out = []
        for n in names:
            path = self.log_dir / f"{n}.log"
            if path.exists():
                out.append(f"--- {n}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def __enter__(self) -> AirflowServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST API -------------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/api/v2/dags/{dag_id}", timeout=10)
            if response.status_code == 200:
                return
            self._check_alive()
            time.sleep(1)
        raise AssertionError(f"DAG {dag_id} was not parsed within {timeout}s\n{self.logs('dag-processor')}")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.wait_for_dag(dag_id)
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return str(run["dag_run_id"])

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def wait_for_ti(
        self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 300
    ) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.task_instance(dag_id, run_id, task_id).get("state")
            if state in states:
                return str(state)
            time.sleep(1)
        raise AssertionError(f"{dag_id}.{task_id} stayed {state}, wanted {states}\n{self.logs()}")

    def set_ti_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        self.api(
            "PATCH",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}",
            json={"new_state": state},
        )

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The task's log as the UI reads it (API, all of it), as text."""
        answer = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true", "map_index": map_index},
            headers={"Accept": "application/json"},
        )
        content = answer.get("content", "") if isinstance(answer, dict) else answer
        if isinstance(content, list):
            return "\n".join(_log_entry_text(entry) for entry in content)
        return str(content)

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        entry = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index},
        )
        return entry["value"]


def _log_entry_text(entry: Any) -> str:
    """One structured log record as text: its message, and an exception's type and text."""
    if not isinstance(entry, dict):
        return str(entry)
    text = str(entry.get("event", entry))
    for error in entry.get("error_detail") or []:
        if isinstance(error, dict):
            text += f"\n{error.get('exc_type')}: {error.get('exc_value')}"
    return text


def service_log_dir(env: AirflowEnv) -> Path:
    return env.home / "service-logs"

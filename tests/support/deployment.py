"""Airflow as production runs it, on 127.0.0.1: PostgreSQL, Redis, CeleryExecutor, two triggerers.

The processes of a distributed deployment, each on its own (as on separate machines, only the
host is shared): api-server, scheduler, dag-processor, one Celery worker and two triggerers,
with a PostgreSQL metadata database and Redis as the Celery broker. Each server is a throwaway
instance of Debian's packages (``scripts/install-deployment.sh`` installs them) on a free port
of 127.0.0.1, in a data directory of its own that is removed at the end.

Facts that shape it (Airflow 3.3):

* PostgreSQL refuses to run as root, so it runs as the ``postgres`` user (``runuser``), in a
  directory under the system temp folder (a pytest temp dir is closed to other users).
* Airflow's async database URL needs ``asyncpg`` beside psycopg2; with SQLAlchemy 2.1 the
  Celery result backend must name the driver (``db+postgresql+psycopg2://``).
* The triggerer's and the worker's log servers bind every interface, so both run with
  ``--skip-serve-logs``; the api-server reads task logs from the shared log folder instead.
* Every process has the same ``[api_auth] jwt_secret`` and ``[core] execution_api_server_url``.
* A triggerer's triggers go to another one after ``[triggerer] triggerer_health_check_threshold``
  (30 s by default) without a heartbeat; tests set 10 s and ``job_heartbeat_sec`` 1 (at 5 s,
  a busy two-core box lets a heartbeat slip that far now and then).

Plain Python, no pytest: the deployment tests and benchmarks use it alike.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.airflow_env import AIRFLOW_BIN, AirflowEnv
from tests.support.airflow_services import AirflowServices
from tests.support.stack import LOOPBACK, free_port

INSTALL_HINT = "run scripts/install-deployment.sh (make test-deploy does) to install PostgreSQL and Redis"
TRIGGERERS = ("triggerer-1", "triggerer-2")
#: Seconds without a heartbeat before a triggerer's triggers move to another (Airflow: 30).
HEALTH_CHECK_THRESHOLD = 10


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: {INSTALL_HINT}")
    return found[-1]


def _wait(predicate: Any, timeout: float, what: str, logs: Any = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} within {timeout:g}s\n{logs()}")


class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth, one ``airflow`` database)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tes-deploy-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@{LOOPBACK}:{self.port}/airflow"

    def _as_postgres(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def start(self) -> Postgres:
        initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            self._as_postgres(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
            check=True,
            capture_output=True,
        )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self._as_postgres(
                postgres,
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait(self._ready, 60, "PostgreSQL did not accept connections", self.logs)
        self.sql("CREATE DATABASE airflow", database="postgres")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {self.proc.returncode}\n{self.logs()}")
        try:
            self.sql("SELECT 1", database="postgres")
        except Exception:
            return False
        return True

    def sql(self, statement: str, *params: Any, database: str = "airflow") -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns (none for a statement without a result)."""
        import psycopg2

        connection = psycopg2.connect(
            host=LOOPBACK, port=self.port, user="postgres", dbname=database, connect_timeout=5
        )
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params or None)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def logs(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- postgres\n{text[-tail:]}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """A throwaway Redis server on 127.0.0.1, nothing persisted: the Celery broker."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tes-deploy-redis-"))
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> Redis:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError(f"redis-server is not installed: {INSTALL_HINT}")
        options = {"bind": LOOPBACK, "port": str(self.port), "save": "", "appendonly": "no"}
        options |= {"dir": str(self.dir), "logfile": str(self.log_path)}
        self.proc = subprocess.Popen(
            [server, *(arg for name, value in options.items() for arg in (f"--{name}", value))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait(self._ready, 30, "Redis did not answer PING", self.logs)
        return self

    def _ready(self) -> bool:
        import redis

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}\n{self.logs()}")
        try:
            return bool(redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def logs(self, tail: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- redis\n{text[-tail:]}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Deployment(AirflowServices):
    """api-server, scheduler, dag-processor, a Celery worker and two triggerers on PostgreSQL + Redis.

    :param env: the Airflow home (DAG folder, connections); its SQLite settings are replaced.
    :param postgres: the metadata database (started).
    :param redis: the Celery broker (started).
    :param worker_concurrency: task slots of the Celery worker.
    :param triggerer_capacity: ``[triggerer] capacity`` of each triggerer.
    """

    components = ("api-server", "scheduler", "dag-processor", "worker", *TRIGGERERS)

    def __init__(
        self,
        env: AirflowEnv,
        postgres: Postgres,
        redis: Redis,
        *,
        worker_concurrency: int = 8,
        triggerer_capacity: int = 1000,
    ) -> None:
        super().__init__(env)
        self.postgres = postgres
        self.redis = redis
        self.worker_concurrency = worker_concurrency
        #: The job id of each triggerer component (see :meth:`triggerer_job_of`).
        self.triggerer_jobs: dict[str, int] = {}
        env.extra_env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url,
                "AIRFLOW__CELERY__BROKER_URL": redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{postgres.url}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
                "AIRFLOW__CORE__PARALLELISM": "64",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64",
                "AIRFLOW__TRIGGERER__CAPACITY": str(triggerer_capacity),
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_CHECK_THRESHOLD),
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
            }
        )

    def start_component(self, name: str) -> None:
        if name not in TRIGGERERS:
            super().start_component(name)
            return
        known = set(self._triggerer_job_ids())
        super().start_component(name)
        found: list[int] = []

        def started() -> bool:
            self._check_alive()
            found[:] = [job for job in self._triggerer_job_ids() if job not in known]
            return bool(found)

        _wait(started, 120, f"{name} did not start a triggerer job", lambda: self.logs(name))
        self.triggerer_jobs[name] = found[-1]

    def _triggerer_job_ids(self) -> list[int]:
        rows = self.postgres.sql("SELECT id FROM job WHERE job_type = 'TriggererJob' ORDER BY id")
        return [int(r[0]) for r in rows]

    def command(self, name: str) -> list[str]:
        if name == "worker":
            return [
                AIRFLOW_BIN,
                "celery",
                "worker",
                "--skip-serve-logs",
                "--concurrency",
                str(self.worker_concurrency),
                "--celery-hostname",
                f"tes-deploy-worker-{self.port}@{LOOPBACK}",
            ]
        if name in TRIGGERERS:
            return [AIRFLOW_BIN, "triggerer", "--skip-serve-logs"]
        return super().command(name)

    def start(self, timeout: float = 240) -> Deployment:
        self.env.migrate()
        super().start(timeout)  # the triggerers one at a time (see start_component)
        _wait(
            lambda: self._check_alive() or len(self.live_triggerers()) == len(TRIGGERERS),
            timeout,
            "both triggerers did not heartbeat",
            self.logs,
        )
        _wait(
            lambda: self._check_alive() or "ready." in self._log_text("worker"),
            timeout,
            "the Celery worker did not get ready",
            lambda: self.logs("worker"),
        )
        return self

    def _log_text(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, name: str | None = None, tail: int = 6000) -> str:
        own = super().logs(name, tail)
        return own if name else f"{own}\n{self.postgres.logs()}\n{self.redis.logs()}"

    # -- what the metadata database says -------------------------------------------------------

    def live_triggerers(self) -> list[int]:
        """Job ids of the triggerers that heartbeat within the health-check threshold."""
        rows = self.postgres.sql(
            "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running' "
            "AND latest_heartbeat > now() - make_interval(secs => %s) ORDER BY id",
            HEALTH_CHECK_THRESHOLD,
        )
        return [int(r[0]) for r in rows]

    def triggerer_job_of(self, component: str) -> int:
        """The job id of a triggerer component (recorded as it started: the job rows of two
        triggerers on one host differ in nothing else)."""
        return self.triggerer_jobs[component]

    def triggers_by_triggerer(self, dag_id: str, run_id: str) -> dict[int | None, int]:
        """How many triggers of a run's deferred task instances each triggerer job holds."""
        rows = self.postgres.sql(
            "SELECT t.triggerer_id, count(*) FROM trigger t JOIN task_instance ti ON ti.trigger_id = t.id "
            "WHERE ti.dag_id = %s AND ti.run_id = %s GROUP BY t.triggerer_id",
            dag_id,
            run_id,
        )
        return {(None if r[0] is None else int(r[0])): int(r[1]) for r in rows}

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of a run (state, try number, map index), from the database."""
        rows = self.postgres.sql(
            "SELECT task_id, map_index, state, try_number FROM task_instance "
            "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
            dag_id,
            run_id,
        )
        return [{"task_id": t, "map_index": m, "state": s, "try_number": n} for t, m, s, n in rows]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """Wait until the DAG run ends; its REST API record."""
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            run = dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))
            if run.get("state") in ("success", "failed"):
                return run
            time.sleep(2)
        raise AssertionError(f"DAG run {dag_id}/{run_id} stayed {run.get('state')}\n{self.logs()}")

    def mapped_task_instances(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """The REST API's records of a mapped task's instances."""
        answer = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/listMapped",
            params={"limit": 1000},
        )
        return list(answer["task_instances"])

    def clear(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        """Clear task instances through the REST API (the CLI ignores runs without a logical date)."""
        self.api(
            "POST",
            f"/dags/{dag_id}/clearTaskInstances",
            json={"dag_run_id": run_id, "task_ids": task_ids, "dry_run": False, "only_failed": False},
        )

    def signal(self, component: str, sig: int) -> None:
        """Send ``sig`` to every process of a component: its process group, and any child
        that left it (a task process in a session of its own)."""
        pid = self.procs[component].pid
        children = _descendants(pid)  # before the signal: a dead parent's children move away
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)


def _descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(Path(stat).parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@contextlib.contextmanager
def deployment(
    env: AirflowEnv, component_env: dict[str, dict[str, str]] | None = None, **kwargs: Any
) -> Iterator[Deployment]:
    """PostgreSQL, Redis and the Airflow processes, started and torn down together.

    :param component_env: settings of single processes (by component name), e.g. connections.
    """
    with contextlib.ExitStack() as stack:
        postgres = Postgres().start()
        stack.callback(postgres.stop)
        redis = Redis().start()
        stack.callback(redis.stop)
        services = Deployment(env, postgres, redis, **kwargs)
        services.component_env.update(component_env or {})
        stack.callback(services.stop)
        yield services.start()

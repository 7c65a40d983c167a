"""Reliability against a real Funnel: faults on the wire, lost answers, killed workers, deadlines.

* 20 mapped tasks through a proxy that breaks 30 % of all calls (``airflow dags test``);
* a create whose answer is dropped after Funnel made the task;
* a worker killed between submit and defer, then retried (reattach; never reuse a finished task);
* ``execution_timeout`` passing while deferred (``airflow dags test``);
* ``on_kill`` of a worker-side (non-deferrable) wait;
* no trace of the Funnel password in CLI output, task logs, XCom, reprs or exception texts.

Funnel is always queried directly (a clean connection) to count what really exists.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog.testing

from airflow_provider_tes.connection import TesConnection
from airflow_provider_tes.exceptions import (
    TesAmbiguousCreateError,
    TesAuthError,
    TesNotFoundError,
    TesServerUnavailableError,
    TesTaskFailedError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import TaskIdentity
from airflow_provider_tes.models import TesExecutor, TesState, TesTask, TesView
from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.run_state import RunState
from tests.support.airflow_env import AirflowEnv, aws_connection
from tests.support.tes_proxy import FAULT_KINDS, TesProxy

pytestmark = pytest.mark.funnel

FAULTS_DAG = "tes_test_rel_faults"
DEADLINE_DAG = "tes_test_rel_deadline"
MAPPED = 20
DIRECT = "tes_rel_direct"
PROXIED = "tes_rel_proxy"

#: Everything this module saw that must not hold a secret: CLI output, exception texts, reprs.
EVIDENCE: list[tuple[str, str]] = []


def remember(what: str, text: Any) -> None:
    EVIDENCE.append((what, text if isinstance(text, str) else repr(text)))


def remember_error(what: str, err: BaseException) -> None:
    remember(f"{what}: str", str(err))
    remember(f"{what}: repr", repr(err))
    remember(f"{what}: traceback", "".join(traceback.format_exception(err)))
    remember(f"{what}: pickle", pickle.dumps(err).decode("latin-1"))


def cli(env: AirflowEnv, *args: str, check: bool = False, timeout: float = 600) -> Any:
    proc = env.run(*args, check=check, timeout=timeout)
    remember(f"airflow {' '.join(args)}: stdout", proc.stdout)
    remember(f"airflow {' '.join(args)}: stderr", proc.stderr)
    return proc


def tes_conn(host: str, funnel: Any, **extra: Any) -> str:
    return json.dumps(
        {"conn_type": "tes", "host": host, "login": funnel.user, "password": funnel.password, "extra": extra}
    )


def read_s3(s3_client: Any, url: str) -> str:
    parts = urlsplit(url)
    return str(s3_client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read().decode())


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def latest_run_id(env: AirflowEnv, dag_id: str) -> str:
    rows = env.query("SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1", dag_id)
    assert rows, f"no run of {dag_id}"
    return str(rows[0][0])


def tasks_tagged(hook: TesHook, tags: dict[str, str], name_prefix: str | None = None) -> list[TesTask]:
    """Every Funnel task with (at least) these tags; re-checked here in case a filter is ignored."""
    found = hook.list_tasks(name_prefix=name_prefix, tags=tags, view=TesView.BASIC)
    return [t for t in found if all((t.tags or {}).get(k) == v for k, v in tags.items())]


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def conns(monkeypatch: pytest.MonkeyPatch, funnel: Any, moto_server: Any, s3_bucket: str) -> None:
    """In-process connections: Funnel directly, and the AWS one the operator reads outputs with."""
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{DIRECT.upper()}",
        tes_conn(funnel.base_url, funnel, outputs_url=f"s3://{s3_bucket}/rel/", poll_interval=1, retries=3),
    )
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(moto_server.endpoint_url))


@pytest.fixture
def direct(conns: None) -> Iterator[TesHook]:
    with TesHook(DIRECT, retry_min_wait=0.05) as hook:
        yield hook


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch, funnel: Any, conns: None, s3_bucket: str) -> Iterator[TesProxy]:
    with TesProxy(funnel.url, seed=11) as p:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{PROXIED.upper()}",
            tes_conn(p.base_url, funnel, outputs_url=f"s3://{s3_bucket}/rel/", poll_interval=1, retries=3),
        )
        yield p


def operator(
    command: str, *, task_id: str = "rel", conn_id: str = DIRECT, preemptible: int = 0
) -> TesTaskOperator:
    return TesTaskOperator(
        task_id=task_id,
        image="alpine:3.20",
        command=command,
        tes_conn_id=conn_id,
        poll_interval=1,
        deferrable=False,
        preemptible=preemptible,
    )


def context(run_id: str, *, task_id: str = "rel", try_number: int = 1) -> Any:
    ti = SimpleNamespace(
        dag_id="tes_rel_inprocess",
        task_id=task_id,
        run_id=run_id,
        map_index=-1,
        try_number=try_number,
        xcom_push=lambda **kw: None,
        xcom_pull=lambda *a, **kw: None,
    )
    return {"ti": ti}


def instance_tags(run_id: str, task_id: str = "rel") -> dict[str, str]:
    return TaskIdentity(dag_id="tes_rel_inprocess", task_id=task_id, run_id=run_id).instance_tags()


# -- 1. 30 % faults on every call, 20 mapped tasks ----------------------------------------------------


def test_thirty_percent_faults_twenty_mapped_tasks(
    test_dags: AirflowEnv, funnel: Any, s3_bucket: str, s3_client: Any, direct: TesHook
) -> None:
    with TesProxy(funnel.url, seed=3) as faulty:
        faulty.delay_seconds = 3  # longer than the connection's 2 s timeout
        test_dags.connections["tes_faulty"] = tes_conn(
            faulty.base_url,
            funnel,
            outputs_url=f"s3://{s3_bucket}/rel/",
            poll_interval=1,
            timeout=2,
            retries=8,
        )
        faulty.set_faults(0.3, FAULT_KINDS)
        started = time.monotonic()
        try:
            proc = cli(test_dags, "dags", "test", FAULTS_DAG, timeout=420)
        finally:
            faulty.clear_faults()
            test_dags.connections.pop("tes_faulty", None)
        elapsed = time.monotonic() - started
        stats, fault_log, created = faulty.stats, list(faulty.fault_log), list(faulty.created)
    print(f"\n[rel] {MAPPED} mapped tasks through 30% faults: {elapsed:.0f}s; proxy stats {stats}")

    states = test_dags.task_states(FAULTS_DAG)
    assert states == {f"echo[{i}]": "success" for i in range(MAPPED)}, (
        f"{states}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    for i in range(MAPPED):
        result = test_dags.xcom(FAULTS_DAG, "echo", map_index=i)
        assert result["state"] == "COMPLETE", result
        assert result["exit_code"] == 0
        assert read_s3(s3_client, result["work_dir_url"] + "out.txt") == f"{i}\n"

    run_id = latest_run_id(test_dags, FAULTS_DAG)
    on_funnel = tasks_tagged(direct, {"dag_id": FAULTS_DAG, "run_id": run_id})
    assert len(on_funnel) == MAPPED, "exactly one TES task per mapped task instance, no duplicates"
    assert sorted(int((t.tags or {})["map_index"]) for t in on_funnel) == list(range(MAPPED))
    assert {t.state for t in on_funnel} == {TesState.COMPLETE}
    results = {test_dags.xcom(FAULTS_DAG, "echo", map_index=i)["tes_task_id"] for i in range(MAPPED)}
    assert results == {t.id for t in on_funnel}
    # every create Funnel answered (even when the proxy then lost the answer) is one of them
    assert {task_id for task_id, _ in created} == results

    assert stats["injected_total"] > 0
    post_faults = [kind for method, path, kind in fault_log if method == "POST" and path.endswith("/tasks")]
    assert post_faults, f"no fault hit a create: {fault_log}"
    print(f"[rel] faults on creates: {post_faults}")


# -- 2. the answer to an accepted create is lost ------------------------------------------------------


def test_dropped_create_response_makes_one_task(proxy: TesProxy, direct: TesHook) -> None:
    proxy.set_faults(1.0, ["drop_response"], methods=["POST"], path_regex=r"/tasks$", limit=1)
    name = f"rel-dropped-{uuid.uuid4().hex[:12]}"
    task = TesTask(
        name=name,
        tags={"suite": "reliability", "case": name},
        executors=[TesExecutor(image="alpine:3.20", command=["true"])],
    )
    with TesHook(PROXIED, retry_min_wait=0.05) as hook:
        tes_id = hook.create_task(task)

    assert proxy.stats["injected"]["drop_response"] == 1
    posts = [p for m, p in proxy.requests if m == "POST" and p.split("?")[0].endswith("/tasks")]
    assert len(posts) == 1, "the create was never resent"
    on_funnel = list(direct.list_tasks(name_prefix=name, view=TesView.BASIC))
    assert [t.id for t in on_funnel] == [tes_id]
    assert on_funnel[0].name == name


# -- 3. worker killed between submit and defer ----------------------------------------------------------


def _submit_then_die(
    env: dict[str, str], command: str, run_id: str, conn_id: str, preemptible: int, pipe: Any
) -> None:
    """Child process: submit like a worker, then die by SIGKILL right after the create returned."""
    os.environ.update(env)

    original = TesHook.create_task

    def create_then_die(self: TesHook, task: TesTask) -> str:
        tes_id = original(self, task)
        pipe.send(tes_id)
        os.kill(os.getpid(), signal.SIGKILL)
        return tes_id  # pragma: no cover

    TesHook.create_task = create_then_die  # type: ignore[method-assign]
    operator(command, conn_id=conn_id, preemptible=preemptible).execute(context(run_id, try_number=1))


def killed_worker(command: str, run_id: str, *, conn_id: str = DIRECT, preemptible: int = 0) -> str:
    """Run try 1 in a child that is SIGKILLed after submitting; returns the TES task id it made."""
    mp = multiprocessing.get_context("fork")
    receive, send = mp.Pipe(duplex=False)
    env = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_")}
    child = mp.Process(target=_submit_then_die, args=(env, command, run_id, conn_id, preemptible, send))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join()
        raise AssertionError("the child worker hung")
    assert child.exitcode == -signal.SIGKILL, f"the child ended {child.exitcode}, not by SIGKILL"
    assert receive.poll(1), "the child died before it submitted"
    return str(receive.recv())


def test_killed_worker_retry_reattaches(direct: TesHook, s3_client: Any) -> None:
    run_id = f"rel-kill-{uuid.uuid4().hex[:8]}"
    first = killed_worker("sleep 5; echo done > done.txt", run_id)
    assert direct.get_task(first).state in {TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING}

    with structlog.testing.capture_logs() as logs:
        op = operator("sleep 5; echo done > done.txt")
        result = op.execute(context(run_id, try_number=2))
    events = [str(e.get("event")) for e in logs]
    assert any("Reattaching" in e for e in events), events
    assert not any(e.startswith("Submitted TES task") for e in events), events
    assert result["state"] == "COMPLETE"
    assert result["tes_task_id"] == first
    assert read_s3(s3_client, result["work_dir_url"] + "done.txt") == "done\n"
    on_funnel = tasks_tagged(direct, instance_tags(run_id))
    assert [t.id for t in on_funnel] == [first], "one TES task for the task instance"


def test_retry_after_finished_task_submits_anew(direct: TesHook) -> None:
    run_id = f"rel-done-{uuid.uuid4().hex[:8]}"
    first = killed_worker("echo done > done.txt", run_id)
    wait_for(lambda: direct.get_task(first).state == TesState.COMPLETE, 60, f"{first} COMPLETE")

    with structlog.testing.capture_logs() as logs:
        result = operator("echo done > done.txt").execute(context(run_id, try_number=2))
    assert not any("Reattaching" in str(e.get("event")) for e in logs)
    assert result["state"] == "COMPLETE"
    assert result["tes_task_id"] != first
    on_funnel = tasks_tagged(direct, instance_tags(run_id))
    assert {t.id for t in on_funnel} == {first, result["tes_task_id"]}
    assert sorted((t.tags or {})["try_number"] for t in on_funnel) == ["1", "2"]


def test_reattached_task_preempted_is_resubmitted(proxy: TesProxy, direct: TesHook) -> None:
    run_id = f"rel-kill-preempt-{uuid.uuid4().hex[:8]}"
    command = "sleep 3; echo done > done.txt"
    first = killed_worker(command, run_id, conn_id=PROXIED, preemptible=1)
    op = operator(command, conn_id=PROXIED, preemptible=1)
    reattach = op.manager.find_running

    def reattach_then_preempt(identity: TaskIdentity) -> RunState | None:
        run_state = reattach(identity)
        proxy.rewrite_state(first, "PREEMPTED")  # from now on the reattached task reads PREEMPTED
        return run_state

    op.manager.find_running = reattach_then_preempt  # type: ignore[method-assign]
    try:
        result = op.execute(context(run_id, try_number=2))
    finally:
        # The proxy only rewrote its state: stop the real task if it still runs.
        if direct.get_task(first).state in {TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING}:
            direct.cancel_task(first)
    assert result["state"] == "COMPLETE"
    assert result["attempts"][0] == first and len(result["attempts"]) == 2
    assert len(tasks_tagged(direct, instance_tags(run_id))) == 2


# -- 4. deadline (execution_timeout) passes while deferred ---------------------------------------------


def test_deadline_cancels_tes_task(test_dags: AirflowEnv, direct: TesHook) -> None:
    started = time.monotonic()
    proc = cli(test_dags, "dags", "test", DEADLINE_DAG, timeout=300)
    print(f"\n[rel] deadline DAG: {time.monotonic() - started:.0f}s")
    assert test_dags.task_states(DEADLINE_DAG) == {"sleeper": "failed"}
    output = proc.stdout + proc.stderr
    assert "passed its deadline" in output, output[-6000:]
    tes_id = test_dags.xcom(DEADLINE_DAG, "sleeper", key="tes_task_id")
    assert tes_id
    wait_for(lambda: direct.get_task(tes_id).state == TesState.CANCELED, 30, f"{tes_id} CANCELED")


# -- 5. on_kill of a worker-side wait -------------------------------------------------------------------


def test_on_kill_cancels_running_task(direct: TesHook) -> None:
    run_id = f"rel-onkill-{uuid.uuid4().hex[:8]}"
    op = operator("sleep 300")
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = op.execute(context(run_id))
        except BaseException as err:  # handed to the test thread
            box["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    tes_id = wait_for(lambda: op.tes_task_id, 60, "the submit")
    wait_for(lambda: direct.get_task(tes_id).state == TesState.RUNNING, 60, f"{tes_id} RUNNING")
    op.on_kill()
    worker.join(60)
    assert not worker.is_alive(), "the worker-side wait did not end after on_kill"
    assert direct.get_task(tes_id).state == TesState.CANCELED
    error = box.get("error")
    assert isinstance(error, TesTaskFailedError), box
    assert "CANCELED" in str(error)
    remember_error("on_kill", error)


# -- 6. secrets ----------------------------------------------------------------------------------------


def _collect_errors(funnel: Any, proxy: TesProxy, direct: TesHook) -> None:
    """Provoke the hook's error paths once each, so their texts are scanned too."""
    with pytest.raises(TesNotFoundError) as not_found:
        direct.get_task("no-such-task-rel")
    remember_error("not found", not_found.value)

    proxy.set_faults(1.0, ["503"], methods=["GET"])
    with (
        TesHook(PROXIED, retries=1, retry_min_wait=0.01) as hook,
        pytest.raises(TesServerUnavailableError) as down,
    ):
        hook.get_task("whatever")
    remember_error("unavailable", down.value)

    proxy.set_faults(1.0, ["drop_response"], methods=["POST"])
    nameless = TesTask(executors=[TesExecutor(image="alpine:3.20", command=["true"])])
    with TesHook(PROXIED, retries=0) as hook, pytest.raises(TesAmbiguousCreateError) as ambiguous:
        hook.create_task(nameless)
    remember_error("ambiguous create", ambiguous.value)
    proxy.clear_faults()

    os.environ["AIRFLOW_CONN_TES_REL_WRONG"] = json.dumps(
        {"conn_type": "tes", "host": funnel.base_url, "login": funnel.user, "password": "wrong-password-rel"}
    )
    try:
        with TesHook("tes_rel_wrong", retries=0) as hook, pytest.raises(TesAuthError) as auth:
            hook.get_service_info()
        remember_error("auth", auth.value)
    finally:
        del os.environ["AIRFLOW_CONN_TES_REL_WRONG"]


def test_no_secret_anywhere(test_dags: AirflowEnv, funnel: Any, proxy: TesProxy, direct: TesHook) -> None:
    password = funnel.password
    needles = {
        "password": password.encode(),
        "basic auth header": base64.b64encode(f"{funnel.user}:{password}".encode()),
    }
    if not any(what.startswith("airflow dags test") for what, _ in EVIDENCE):
        cli(test_dags, "dags", "test", DEADLINE_DAG, timeout=300)  # this test ran alone
    cli(test_dags, "connections", "test", "tes_default", timeout=120)

    for conn_id in (DIRECT, PROXIED):
        hook = TesHook(conn_id)
        settings = hook.settings
        assert isinstance(settings, TesConnection) and settings.secret == password
        for obj in (hook, settings, settings.httpx_auth(), hook.get_conn()):
            remember(f"{conn_id}: {type(obj).__name__}", repr(obj))
            remember(f"{conn_id}: {type(obj).__name__} str", str(obj))
        hook.close()
    _collect_errors(funnel, proxy, direct)

    places: dict[str, bytes] = {what: text.encode("utf-8", "surrogateescape") for what, text in EVIDENCE}
    # `airflow dags test` runs tasks in process and writes their logs to its stdout (scanned
    # above); whatever lands under logs/ (processor logs, task logs of other modes) is scanned too.
    cli_text = "".join(text for what, text in EVIDENCE if what.startswith("airflow dags test"))
    assert "Submitted TES task" in cli_text, "the task logs are not in the captured CLI output"
    logs = test_dags.home / "logs"
    log_files = [p for p in logs.rglob("*") if p.is_file()] if logs.exists() else []
    places.update({str(p): p.read_bytes() for p in log_files})
    xcoms = test_dags.query("SELECT dag_id, task_id, key, value FROM xcom")
    assert xcoms
    for dag_id, task_id, key, value in xcoms:
        places[f"xcom {dag_id}.{task_id}.{key}"] = value if isinstance(value, bytes) else str(value).encode()
    for db_file in Path(test_dags.db_path).parent.glob(Path(test_dags.db_path).name + "*"):
        places[f"metadata DB file {db_file.name}"] = db_file.read_bytes()

    def leaks(where: dict[str, bytes]) -> list[str]:
        return [f"{kind} in {w}" for w, data in where.items() for kind, n in needles.items() if n in data]

    assert leaks({"control": tes_conn(funnel.base_url, funnel).encode()}), "the scan finds a real leak"
    assert not leaks(places), leaks(places)
    print(f"\n[rel] scanned {len(places)} places ({len(log_files)} log files, {len(xcoms)} XComs)")
    assert any(what.startswith("airflow connections test") for what, _ in EVIDENCE)

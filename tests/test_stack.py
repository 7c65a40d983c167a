"""Smoke tests of the real integration stack (moto S3 + Funnel v0.12.2 + docker shim).

These talk to Funnel with plain httpx on purpose: they pin down what the server
really does, independently of the provider's own hook.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack import FunnelServer

TERMINAL_STATES = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture
def tes(funnel: FunnelServer) -> httpx.Client:
    with httpx.Client(base_url=funnel.base_url, auth=(funnel.user, funnel.password), timeout=30) as c:
        yield c


def create_task(tes: httpx.Client, task: dict[str, Any]) -> str:
    resp = tes.post("/tasks", json=task)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def wait_for_state(tes: httpx.Client, task_id: str, states: set[str], timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = tes.get(f"/tasks/{task_id}", params={"view": "MINIMAL"})
        assert resp.status_code == 200, resp.text
        task = resp.json()
        if task["state"] in states:
            return task
        time.sleep(0.25)
    full = tes.get(f"/tasks/{task_id}", params={"view": "FULL"}).json()
    raise AssertionError(f"task {task_id} not in {states} after {timeout}s: {full}")


def get_full(tes: httpx.Client, task_id: str) -> dict[str, Any]:
    resp = tes.get(f"/tasks/{task_id}", params={"view": "FULL"})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def read_s3(s3_client: Any, bucket: str, key: str) -> bytes:
    return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_service_info(funnel: FunnelServer, tes: httpx.Client) -> None:
    resp = tes.get("/service-info")
    assert resp.status_code == 200, resp.text
    info = resp.json()
    assert info["id"] == "org.ga4gh.funnel"
    assert info["type"]["group"] == "org.ga4gh"
    assert info["type"]["artifact"] == "tes"
    assert funnel.base_url == f"http://127.0.0.1:{funnel.http_port}/ga4gh/tes/v1"


def test_task_output_to_s3(tes: httpx.Client, s3_bucket: str, s3_client: Any) -> None:
    task_id = create_task(tes, {
        "name": "stack-output",
        "executors": [{
            "image": "alpine:3.20",
            "command": ["/bin/sh", "-c", "echo hello > /mnt/task/work/out.txt"],
        }],
        "outputs": [{
            "path": "/mnt/task/work/out.txt",
            "url": f"s3://{s3_bucket}/stack/out.txt",
            "type": "FILE",
        }],
    })
    task = wait_for_state(tes, task_id, TERMINAL_STATES)
    assert task["state"] == "COMPLETE", get_full(tes, task_id)
    assert read_s3(s3_client, s3_bucket, "stack/out.txt") == b"hello\n"


def test_inline_content_input_and_stdout(tes: httpx.Client, s3_bucket: str, s3_client: Any) -> None:
    script = 'echo "from content"\necho "two words" | tr a-z A-Z\n'
    task_id = create_task(tes, {
        "name": "stack-content",
        "inputs": [{"path": "/mnt/task/command", "content": script, "type": "FILE"}],
        "executors": [{
            "image": "alpine:3.20",
            "command": ["/bin/sh", "/mnt/task/command"],
            "stdout": "/mnt/task/stdout",
        }],
        "outputs": [{
            "path": "/mnt/task/stdout",
            "url": f"s3://{s3_bucket}/stack/content-stdout.txt",
            "type": "FILE",
        }],
    })
    task = wait_for_state(tes, task_id, TERMINAL_STATES)
    full = get_full(tes, task_id)
    assert task["state"] == "COMPLETE", full
    expected = b"from content\nTWO WORDS\n"
    assert read_s3(s3_client, s3_bucket, "stack/content-stdout.txt") == expected
    # FULL view carries the executor's stdout tail and the output file log.
    executor_log = full["logs"][0]["logs"][0]
    assert executor_log["exit_code"] == 0
    assert executor_log["stdout"] == expected.decode()
    assert [o["url"] for o in full["logs"][0]["outputs"]] == [f"s3://{s3_bucket}/stack/content-stdout.txt"]
    # BASIC view drops input content.
    basic = tes.get(f"/tasks/{task_id}", params={"view": "BASIC"}).json()
    assert not basic["inputs"][0].get("content")


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
        out.extend(children)
        stack.extend(children)
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_cancel_kills_the_executor(funnel: FunnelServer, tes: httpx.Client) -> None:
    task_id = create_task(tes, {
        "name": "stack-cancel",
        "executors": [{"image": "alpine:3.20", "command": ["sleep", "300"]}],
    })
    wait_for_state(tes, task_id, {"RUNNING"} | TERMINAL_STATES, timeout=60)

    # The shim records the pid of the executor's `unshare` under the name
    # "<task id>-<executor index>"; find the `sleep 300` below it.
    pid_file = funnel.shim_state_dir / f"{task_id}-0.pid"
    deadline = time.monotonic() + 30
    sleep_pids: list[int] = []
    unshare_pid = -1
    while time.monotonic() < deadline and not sleep_pids:
        if pid_file.exists():
            unshare_pid = int(pid_file.read_text())
            sleep_pids = [p for p in _descendants(unshare_pid) if _cmdline(p) == ["sleep", "300"]]
        time.sleep(0.1)
    assert sleep_pids, f"executor process not found for {task_id}"

    resp = tes.post(f"/tasks/{task_id}:cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {}

    task = wait_for_state(tes, task_id, TERMINAL_STATES, timeout=30)
    assert task["state"] == "CANCELED"

    # The worker notices the cancel within Worker.PollingRate (0.5s) and runs
    # the StopCommand (`docker-shim rm -f NAME`).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in [*sleep_pids, unshare_pid]):
        time.sleep(0.1)
    assert not any(_alive(p) for p in [*sleep_pids, unshare_pid]), "executor survived the cancel"
    # ... and the task stays CANCELED (the worker's own final events do not override it).
    time.sleep(1.0)
    assert tes.get(f"/tasks/{task_id}").json()["state"] == "CANCELED"


def test_wrong_password_is_401(funnel: FunnelServer) -> None:
    for auth in [(funnel.user, funnel.password + "x"), ("nobody", funnel.password), None]:
        with httpx.Client(base_url=funnel.base_url, auth=auth, timeout=10) as c:
            assert c.get("/service-info").status_code == 401
            assert c.get("/tasks").status_code == 401
            assert c.post("/tasks", json={"executors": []}).status_code == 401
    # /healthz is the only unauthenticated endpoint.
    assert httpx.get(f"{funnel.url}/healthz", timeout=10).status_code == 200


def test_list_tasks_filters(tes: httpx.Client) -> None:
    """Observed ListTasks filtering of Funnel v0.12.2 (boltdb).

    FILLED IN FROM OBSERVATION.
    """
    run = uuid.uuid4().hex[:8]
    specs = [("a1", "a"), ("a2", "a"), ("b1", "b")]
    ids: dict[str, str] = {}
    for suffix, flavour in specs:
        ids[suffix] = create_task(tes, {
            "name": f"stackls-{run}-{suffix}",
            "tags": {"stack-run": run, "flavour": flavour},
            "executors": [{"image": "alpine:3.20", "command": ["true"]}],
        })

    def listed(**params: Any) -> tuple[list[str], list[dict[str, Any]]]:
        resp = tes.get("/tasks", params=params)
        assert resp.status_code == 200, resp.text
        tasks = resp.json().get("tasks", [])
        return [t["id"] for t in tasks], tasks

    got, tasks = listed(name_prefix=f"stackls-{run}-a")
    print("name_prefix", got, tasks)
    got, tasks = listed(tag_key="stack-run", tag_value=run)
    print("tag run", got, tasks)
    got, tasks = listed(tag_key=["stack-run", "flavour"], tag_value=[run, "a"])
    print("tag run+a", got, tasks)
    got, tasks = listed(tag_key="flavour")
    print("tag flavour only", got[:5], tasks[:2])
    got, tasks = listed(tag_key="stack-run", tag_value="nope")
    print("tag nope", got, tasks)
    print(ids)
    assert False

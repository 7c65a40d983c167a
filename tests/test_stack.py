"""Smoke tests of the real integration stack (moto S3 + Funnel v0.12.2 + docker shim).

These talk to Funnel with plain httpx on purpose: they pin down what the server
really does, independently of the provider's own hook.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import FunnelServer

TERMINAL_STATES = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


@pytest.fixture
def tes(funnel: FunnelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=funnel.base_url, auth=(funnel.user, funnel.password), timeout=30) as c:
        yield c


def create_task(tes: httpx.Client, task: dict[str, Any]) -> str:
    resp = tes.post("/tasks", json=task)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def wait_for_state(
    tes: httpx.Client, task_id: str, states: set[str], timeout: float = 120.0
) -> dict[str, Any]:
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
    task_id = create_task(
        tes,
        {
            "name": "stack-output",
            "executors": [
                {
                    "image": "alpine:3.20",
                    "command": ["/bin/sh", "-c", "echo hello > /mnt/task/work/out.txt"],
                }
            ],
            "outputs": [
                {
                    "path": "/mnt/task/work/out.txt",
                    "url": f"s3://{s3_bucket}/stack/out.txt",
                    "type": "FILE",
                }
            ],
        },
    )
    task = wait_for_state(tes, task_id, TERMINAL_STATES)
    assert task["state"] == "COMPLETE", get_full(tes, task_id)
    assert read_s3(s3_client, s3_bucket, "stack/out.txt") == b"hello\n"


def test_inline_content_input_and_stdout(tes: httpx.Client, s3_bucket: str, s3_client: Any) -> None:
    script = 'echo "from content"\necho "two words" | tr a-z A-Z\n'
    task_id = create_task(
        tes,
        {
            "name": "stack-content",
            "inputs": [{"path": "/mnt/task/command", "content": script, "type": "FILE"}],
            "executors": [
                {
                    "image": "alpine:3.20",
                    "command": ["/bin/sh", "/mnt/task/command"],
                    "stdout": "/mnt/task/stdout",
                }
            ],
            "outputs": [
                {
                    "path": "/mnt/task/stdout",
                    "url": f"s3://{s3_bucket}/stack/content-stdout.txt",
                    "type": "FILE",
                }
            ],
        },
    )
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
    task_id = create_task(
        tes,
        {
            "name": "stack-cancel",
            "executors": [{"image": "alpine:3.20", "command": ["sleep", "300"]}],
        },
    )
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
    """Observed ListTasks filtering of Funnel v0.12.2 (boltdb): the filters WORK.

    * ``name_prefix`` filters on the task name prefix.
    * ``tag_key``/``tag_value`` filter on tags; repeated pairs are ANDed; a
      ``tag_key`` without a ``tag_value`` matches any value of that key; a
      non-matching value gives an empty list.
    * Newest first.  ``page_size`` counts *matching* tasks; ``next_page_token``
      is the last returned id whenever a page is full (so a final empty page is
      possible) and ``""`` (not absent) otherwise.
    * The default (MINIMAL) view returns every field, zero-valued
      (``"name": ""``, ``"creation_time": ""``, ``"resources": null``, ...), even
      when a tag filter is given; only ``id`` and ``state`` are meaningful.
    """
    run = uuid.uuid4().hex[:8]
    ids: dict[str, str] = {}
    for suffix, flavour in [("a1", "a"), ("a2", "a"), ("b1", "b")]:
        ids[suffix] = create_task(
            tes,
            {
                "name": f"stackls-{run}-{suffix}",
                "tags": {"stack-run": run, "flavour": flavour},
                "executors": [{"image": "alpine:3.20", "command": ["true"]}],
            },
        )

    def listed(**params: Any) -> tuple[list[str], dict[str, Any]]:
        resp = tes.get("/tasks", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        return [t["id"] for t in body.get("tasks", [])], body

    newest_first = [ids["b1"], ids["a2"], ids["a1"]]

    got, body = listed(name_prefix=f"stackls-{run}-a")
    assert got == [ids["a2"], ids["a1"]]
    assert body["next_page_token"] == ""
    minimal = body["tasks"][0]
    assert minimal["name"] == ""
    assert minimal["creation_time"] == ""
    assert minimal["resources"] is None
    assert minimal["state"] in {"QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"}

    got, _ = listed(name_prefix=f"stackls-{run}-a", view="BASIC")
    assert got == [ids["a2"], ids["a1"]]
    got, _ = listed(name_prefix=f"stackls-{run}-zzz")
    assert got == []

    got, body = listed(tag_key="stack-run", tag_value=run)
    assert got == newest_first
    assert body["tasks"][0]["tags"] == {}  # still MINIMAL
    got, body = listed(tag_key="stack-run", tag_value=run, view="BASIC")
    assert got == newest_first
    assert body["tasks"][0]["tags"] == {"stack-run": run, "flavour": "b"}
    got, _ = listed(tag_key=["stack-run", "flavour"], tag_value=[run, "a"])
    assert got == [ids["a2"], ids["a1"]]
    got, _ = listed(tag_key="stack-run", tag_value="no-such-run")
    assert got == []
    got, _ = listed(tag_key="flavour")  # key only: any value
    assert set(newest_first) <= set(got)
    got, _ = listed(tag_key=["stack-run", "flavour"], tag_value=[run, "b"], name_prefix=f"stackls-{run}-a")
    assert got == []

    # Paging counts matching tasks only.
    got, body = listed(tag_key="stack-run", tag_value=run, page_size=2)
    assert got == newest_first[:2]
    assert body["next_page_token"] == ids["a2"]
    got, body = listed(tag_key="stack-run", tag_value=run, page_size=2, page_token=body["next_page_token"])
    assert got == newest_first[2:]
    assert body["next_page_token"] == ""
    got, body = listed(tag_key="stack-run", tag_value=run, page_size=3)
    assert body["next_page_token"] == ids["a1"]  # full page -> token, ...
    got, body = listed(tag_key="stack-run", tag_value=run, page_size=3, page_token=ids["a1"])
    assert got == []  # ... then an empty final page
    assert body["next_page_token"] == ""

    for task_id in ids.values():
        wait_for_state(tes, task_id, TERMINAL_STATES, timeout=60)
    got, _ = listed(tag_key="stack-run", tag_value=run, state="COMPLETE")
    assert got == newest_first


def test_recorded_api_quirks(funnel: FunnelServer, tes: httpx.Client) -> None:
    """Other Funnel v0.12.2 behaviour a TES client has to live with."""
    task_id = create_task(tes, {"executors": [{"image": "alpine:3.20", "command": ["true"]}]})
    assert wait_for_state(tes, task_id, TERMINAL_STATES)["state"] == "COMPLETE"

    # Cancelling a finished task is a 500, not a no-op.
    resp = tes.post(f"/tasks/{task_id}:cancel")
    assert resp.status_code == 500
    assert "terminal" in resp.json()["error"]
    assert tes.get(f"/tasks/{task_id}").json()["state"] == "COMPLETE"

    # Unknown task: 404 for get and cancel.
    assert tes.get("/tasks/no-such-task").status_code == 404
    assert tes.post("/tasks/no-such-task:cancel").status_code == 404

    # Request bodies are decoded strictly; validation errors are 400.
    resp = tes.post("/tasks", json={"executors": [{"image": "a", "command": ["true"]}], "bogus": 1})
    assert resp.status_code == 400
    assert "unknown field" in resp.json()["error"]
    assert tes.post("/tasks", json={"executors": []}).status_code == 400
    resp = tes.post(
        "/tasks",
        json={
            "executors": [{"image": "a", "command": ["true"]}],
            "resources": {"backend_parameters": {"x": "y"}, "backend_parameters_strict": True},
        },
    )
    assert resp.status_code == 400

    # The API is served under /ga4gh/tes/v1, /v1 and the root.
    auth = (funnel.user, funnel.password)
    for prefix in ("", "/v1"):
        assert httpx.get(f"{funnel.url}{prefix}/tasks", auth=auth, timeout=10).status_code == 200
        assert httpx.get(f"{funnel.url}{prefix}/service-info", auth=auth, timeout=10).status_code == 200

    # FULL view of a finished task: executor exit code, times, system logs.
    full = get_full(tes, task_id)
    assert full["logs"][0]["logs"][0]["exit_code"] == 0
    assert full["logs"][0]["system_logs"]
    assert full["creation_time"]

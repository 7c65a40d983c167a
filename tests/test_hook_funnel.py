"""TesHook against a real Funnel server and a real S3 endpoint (moto server mode).

Every request the hook sends here passes through ``SpecCheckingTransport``, which
validates it against the TES 1.1 OpenAPI document before it reaches Funnel.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_tes.exceptions import TesAuthError, TesNotFoundError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesInput, TesOutput, TesState, TesTask, TesView
from tests.support.spec import AsyncSpecCheckingTransport, SpecCheckingTransport

pytestmark = pytest.mark.funnel


def _conn_env(
    monkeypatch: pytest.MonkeyPatch, conn_id: str, funnel: Any, password: str | None = None
) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "tes",
                "host": funnel.base_url,
                "login": funnel.user,
                "password": funnel.password if password is None else password,
                "extra": {"retries": 2},
            }
        ),
    )


@pytest.fixture
def checked() -> tuple[SpecCheckingTransport, AsyncSpecCheckingTransport]:
    return SpecCheckingTransport(httpx.HTTPTransport()), AsyncSpecCheckingTransport(
        httpx.AsyncHTTPTransport()
    )


@pytest.fixture
def hook(
    monkeypatch: pytest.MonkeyPatch,
    funnel: Any,
    checked: tuple[SpecCheckingTransport, AsyncSpecCheckingTransport],
) -> Iterator[TesHook]:
    _conn_env(monkeypatch, "tes_funnel", funnel)
    sync_t, async_t = checked
    with TesHook("tes_funnel", transport=sync_t, async_transport=async_t, retry_min_wait=0.05) as h:
        yield h
    assert sync_t.requests or async_t.requests, "the hook sent nothing through the spec check"


def _wait(hook: TesHook, task_id: str, timeout: float = 120) -> TesState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = hook.get_task(task_id).state
        assert state is not None
        if state.is_terminal:
            return state
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} not terminal after {timeout}s")


def _shell_task(script: str, name: str, *, outputs: list[TesOutput] | None = None, **kw: Any) -> TesTask:
    return TesTask(
        name=name,
        executors=[TesExecutor(image="alpine:3.20", command=["/bin/sh", "-c", script])],
        outputs=outputs,
        **kw,
    )


def test_service_info(hook: TesHook) -> None:
    info = hook.get_service_info()
    assert info.id == "org.ga4gh.funnel"
    assert info.type.artifact == "tes"


def test_task_writes_output_to_s3(hook: TesHook, s3_bucket: str, s3_client: Any) -> None:
    key = f"hook/{uuid.uuid4().hex}/result.txt"
    task = _shell_task(
        "echo computed-by-funnel > /mnt/out/result.txt",
        f"hook-output-{uuid.uuid4().hex[:8]}",
        outputs=[TesOutput(path="/mnt/out/result.txt", url=f"s3://{s3_bucket}/{key}")],
        inputs=[TesInput(path="/mnt/in/greeting.txt", content="hi\n")],
        tags={"suite": "hook"},
    )
    task_id = hook.create_task(task)
    assert _wait(hook, task_id) is TesState.COMPLETE
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert body == b"computed-by-funnel\n"
    full = hook.get_task(task_id, view=TesView.FULL)
    assert full.last_log is not None
    assert [o.path for o in full.last_log.outputs] == ["/mnt/out/result.txt"]
    assert full.last_log.outputs[0].size_bytes == len(body)


def test_list_by_name_prefix_and_tags(hook: TesHook) -> None:
    run = uuid.uuid4().hex[:10]
    ids = {
        hook.create_task(_shell_task("true", f"list-{run}-{i}", tags={"run": run, "i": str(i)}))
        for i in range(3)
    }
    other = hook.create_task(_shell_task("true", f"other-{run}", tags={"run": "else"}))

    by_prefix = {t.id for t in hook.list_tasks(name_prefix=f"list-{run}")}
    assert by_prefix == ids

    # Small pages force the hook to follow page tokens.
    paged = {t.id for t in hook.list_tasks(name_prefix=f"list-{run}", page_size=1)}
    assert paged == ids

    # Funnel's tag filter: recorded here so the provider knows what it can rely on.
    tagged = {t.id for t in hook.list_tasks(tags={"run": run})}
    assert tagged == ids, "Funnel v0.12.2 filters ListTasks by tag_key/tag_value"
    assert other not in tagged
    assert {t.id for t in hook.list_tasks(tags={"run": run, "i": "1"})} == {
        t.id for t in hook.list_tasks(name_prefix=f"list-{run}-1")
    }

    found = hook.find_task_by_identity(f"list-{run}-2", {"run": run})
    assert found is not None and found.name == f"list-{run}-2"
    assert hook.find_task_by_identity(f"list-{run}-2", {"run": "nope"}) is None


def test_cancel_running_task(hook: TesHook) -> None:
    marker = uuid.uuid4().hex
    task_id = hook.create_task(_shell_task(f"sleep 300 # {marker}", f"cancel-{marker[:8]}"))
    deadline = time.monotonic() + 60
    while hook.get_task(task_id).state is not TesState.RUNNING:
        assert time.monotonic() < deadline, "task never started"
        time.sleep(0.3)
    hook.cancel_task(task_id)
    assert _wait(hook, task_id, timeout=30) is TesState.CANCELED
    # the executor process really stops
    deadline = time.monotonic() + 20
    while _processes_with(marker):
        assert time.monotonic() < deadline, "the canceled executor is still running"
        time.sleep(0.5)


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "pytest" not in cmd:
            found.append(cmd)
    return found


def test_wrong_password_is_an_auth_error(monkeypatch: pytest.MonkeyPatch, funnel: Any) -> None:
    _conn_env(monkeypatch, "tes_wrong", funnel, password="definitely-wrong-pw")
    with TesHook("tes_wrong") as bad:
        with pytest.raises(TesAuthError) as info:
            bad.get_service_info()
        ok, message = bad.test_connection()
    assert not ok
    assert "tes_wrong" in str(info.value) and funnel.user in str(info.value)
    assert "definitely-wrong-pw" not in str(info.value) + message


def test_unknown_id_is_not_found(hook: TesHook) -> None:
    with pytest.raises(TesNotFoundError) as info:
        hook.get_task("no-such-task-id")
    assert "no-such-task-id" in str(info.value)


def test_test_connection_ok(hook: TesHook) -> None:
    ok, message = hook.test_connection()
    assert ok, message
    assert hook.base_url in message


async def test_async_calls_share_one_client(hook: TesHook) -> None:
    task_id = hook.create_task(_shell_task("true", f"async-{uuid.uuid4().hex[:8]}"))
    client = await hook.a_get_conn()
    info = await hook.a_get_service_info()
    assert info.id == "org.ga4gh.funnel"
    task = await hook.a_get_task(task_id, view=TesView.BASIC)
    assert task.id == task_id
    listed = [t.id async for t in hook.a_list_tasks(name_prefix=task.name)]
    assert listed == [task_id]
    assert await hook.a_get_conn() is client
    await hook.aclose()
    assert client.is_closed

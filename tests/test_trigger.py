"""TesTaskTrigger against the real Funnel server, with the fault-injecting proxy where needed.

The trigger builds its own ``TesHook(tes_conn_id)``, so every test hands it a connection
through an ``AIRFLOW_CONN_<ID>`` environment variable. The trigger logs through structlog
(Airflow 3), which pytest's ``caplog`` does not see; ``structlog.testing.capture_logs``
is used to read its log lines.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import structlog.testing

from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesState, TesTask
from airflow_provider_tes.run_state import TES_TASK_ID_KEY
from airflow_provider_tes.triggers import clients as clients_module
from airflow_provider_tes.triggers import task_sdk
from airflow_provider_tes.triggers.polling import LISTED_STATES
from airflow_provider_tes.triggers.tes import TesTaskTrigger
from tests.support.tes_proxy import TesProxy

pytestmark = pytest.mark.funnel

CLASSPATH = "airflow_provider_tes.triggers.tes.TesTaskTrigger"
#: Longest a single trigger run may take in these tests before it counts as hung.
RUN_TIMEOUT = 45.0


# -- helpers ---------------------------------------------------------------------------------------


def _set_conn(
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    host: str,
    funnel: Any,
    *,
    password: str | None = None,
    retries: int = 3,
) -> str:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "tes",
                "host": host,
                "login": funnel.user,
                "password": funnel.password if password is None else password,
                "extra": {"retries": retries},
            }
        ),
    )
    return conn_id


def _shell_task(script: str, prefix: str) -> TesTask:
    return TesTask(
        name=f"trig-{prefix}-{uuid.uuid4().hex[:8]}",
        executors=[TesExecutor(image="alpine", command=["/bin/sh", "-c", script])],
    )


async def _collect(trigger: TesTaskTrigger, limit: float = RUN_TIMEOUT) -> list[Any]:
    """All events of ``trigger.run()`` until the generator ends (bounded by ``limit`` seconds)."""

    async def drain() -> list[Any]:
        return [event async for event in trigger.run()]

    return await asyncio.wait_for(drain(), limit)


async def _one_event(trigger: TesTaskTrigger, limit: float = RUN_TIMEOUT) -> tuple[dict[str, Any], float]:
    """The payload of the trigger's only event, and how long the run took: a trigger ends its wait
    with exactly one event, and several tests bound how soon that comes."""
    start = time.monotonic()
    events = await _collect(trigger, limit)
    took = time.monotonic() - start
    assert len(events) == 1, events
    return events[0].payload, took


async def _wait_state(
    hook: TesHook, task_id: str, wanted: set[TesState], limit: float = 30.0
) -> TesState | None:
    """Poll Funnel until the task is in one of ``wanted``; the last state seen otherwise."""
    end = time.monotonic() + limit
    state: TesState | None = None
    while time.monotonic() < end:
        state = (await asyncio.to_thread(hook.get_task, task_id)).state
        if state in wanted:
            return state
        await asyncio.sleep(0.3)
    return state


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch, funnel: Any) -> Iterator[TesHook]:
    """A hook straight to Funnel (no proxy), for creating and inspecting tasks."""
    _set_conn(monkeypatch, "tes_trig_direct", funnel.base_url, funnel)
    with TesHook("tes_trig_direct", retry_min_wait=0.05) as hook:
        yield hook


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch, funnel: Any) -> str:
    """Connection id the triggers use to reach Funnel directly."""
    return _set_conn(monkeypatch, "tes_trig", funnel.base_url, funnel)


@pytest.fixture
def proxy(funnel: Any) -> Iterator[TesProxy]:
    with TesProxy(funnel.url, seed=7) as p:
        yield p


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


class _RecordingHook(TesHook):
    """TesHook that remembers its instances and the async clients they opened."""

    instances: list[_RecordingHook] = []  # noqa: RUF012 - reset per test by the fixture

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients: list[httpx.AsyncClient] = []
        _RecordingHook.instances.append(self)

    async def a_get_conn(self) -> httpx.AsyncClient:
        client = await super().a_get_conn()
        if client not in self.clients:
            self.clients.append(client)
        return client


@pytest.fixture
def recording_hook(monkeypatch: pytest.MonkeyPatch) -> type[_RecordingHook]:
    _RecordingHook.instances = []
    # The trigger's status polls go through the shared poller, whose client comes from clients.py.
    monkeypatch.setattr(clients_module, "TesHook", _RecordingHook)
    return _RecordingHook


# -- 1. serialization ------------------------------------------------------------------------------


def test_serialize_is_plain_json_and_round_trips() -> None:
    trigger = TesTaskTrigger(
        tes_task_id="abc123",
        tes_conn_id="tes_x",
        poll_interval=2,
        deadline=time.time() + 3600,
        outage_budget=120,
        started_at=time.time(),
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    # Plain JSON: what the triggerer stores must survive a JSON round trip unchanged.
    assert json.loads(json.dumps(kwargs)) == kwargs
    for value in kwargs.values():
        assert value is None or type(value) in (str, int, float, bool), (type(value), value)
    assert kwargs["tes_task_id"] == "abc123"
    assert kwargs["tes_conn_id"] == "tes_x"
    assert kwargs["poll_interval"] == 2.0
    assert kwargs["outage_budget"] == 120.0

    rebuilt = TesTaskTrigger(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (classpath, kwargs)

    # Defaults serialize as plain JSON too.
    _, default_kwargs = TesTaskTrigger("only-id").serialize()
    assert json.loads(json.dumps(default_kwargs)) == default_kwargs
    assert TesTaskTrigger(**default_kwargs).serialize()[1] == default_kwargs


# -- 2. terminal events ----------------------------------------------------------------------------


async def test_short_task_yields_one_complete_event(direct: TesHook, conn: str) -> None:
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 1", "ok"))
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2, started_at=time.time())

    payload, _ = await _one_event(trigger)

    assert payload["status"] == "terminal"
    assert payload["state"] == "COMPLETE"
    assert payload["tes_task_id"] == task_id
    assert json.loads(json.dumps(payload)) == payload


async def test_failing_task_yields_executor_error(direct: TesHook, conn: str) -> None:
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("exit 3", "fail"))
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2)

    payload, _ = await _one_event(trigger)

    assert payload["status"] == "terminal"
    assert payload["state"] == "EXECUTOR_ERROR"
    assert payload["tes_task_id"] == task_id


# -- 3. logging ------------------------------------------------------------------------------------


async def test_state_changes_are_logged_with_elapsed_time(
    direct: TesHook, conn: str, captured_logs: list[dict[str, Any]]
) -> None:
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 2", "log"))
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2, started_at=time.time())

    payload, _ = await _one_event(trigger)

    assert payload["state"] == "COMPLETE"
    lines = [str(entry.get("event", "")) for entry in captured_logs]
    mine = [line for line in lines if task_id in line]
    elapsed = re.compile(r"\d+\.\ds")
    running = [line for line in mine if "RUNNING" in line]
    complete = [line for line in mine if "COMPLETE" in line]
    assert running, lines
    assert complete, lines
    assert elapsed.search(running[0]), running
    assert elapsed.search(complete[-1]), complete
    # One line per change, not one per poll.
    assert len(running) == 1, running


# -- 4. flaky server -------------------------------------------------------------------------------


async def test_survives_flaky_gets(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, funnel: Any, proxy: TesProxy
) -> None:
    conn_id = _set_conn(monkeypatch, "tes_trig_flaky", proxy.base_url, funnel)
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 1", "flaky"))
    proxy.set_faults(0.5, ["503", "502", "reset", "429", "truncate"], methods=["GET"])
    trigger = TesTaskTrigger(task_id, conn_id, poll_interval=0.2)

    payload, _ = await _one_event(trigger, limit=60)

    assert payload["status"] == "terminal"
    assert payload["state"] == "COMPLETE"
    assert proxy.stats["injected_total"] > 0, proxy.stats
    assert any(task_id in path for _, path in proxy.requests)


# -- 5. persistent outage --------------------------------------------------------------------------


async def test_gives_up_after_outage_budget(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, funnel: Any, proxy: TesProxy
) -> None:
    conn_id = _set_conn(monkeypatch, "tes_trig_down", proxy.base_url, funnel, retries=0)
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 1", "down"))
    proxy.set_faults(1.0, ["503"])
    trigger = TesTaskTrigger(task_id, conn_id, poll_interval=0.2, outage_budget=2)

    payload, took = await _one_event(trigger, limit=20)

    assert payload["status"] == "error"
    assert payload["tes_task_id"] == task_id
    assert "gave up" in payload["message"]
    assert payload["error_type"] == "TesServerUnavailableError"
    assert 2.0 <= took < 10.0, took
    assert proxy.stats["injected"]["503"] >= 2, proxy.stats


# -- 6. auth ---------------------------------------------------------------------------------------


async def test_wrong_password_is_an_immediate_auth_error(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, funnel: Any
) -> None:
    conn_id = _set_conn(monkeypatch, "tes_trig_badpw", funnel.base_url, funnel, password="not-the-pw")
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 1", "auth"))
    trigger = TesTaskTrigger(task_id, conn_id, poll_interval=0.2)  # default outage budget: 600 s

    payload, took = await _one_event(trigger, limit=15)

    assert payload["status"] == "error"
    assert payload["error_type"] == "TesAuthError"
    assert "not-the-pw" not in payload["message"]
    assert took < 5.0, took


# -- 7. deadline -----------------------------------------------------------------------------------


async def test_deadline_cancels_the_task(direct: TesHook, conn: str) -> None:
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 300", "deadline"))
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.5, deadline=time.time() + 2)

    payload, took = await _one_event(trigger, limit=20)

    assert payload["status"] == "deadline"
    assert payload["tes_task_id"] == task_id
    assert took < 8.0, took
    assert await _wait_state(direct, task_id, {TesState.CANCELED}) is TesState.CANCELED


# -- 8. on_kill ------------------------------------------------------------------------------------


async def test_on_kill_cancels_the_task(direct: TesHook, conn: str) -> None:
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 300", "kill"))
    assert await _wait_state(direct, task_id, {TesState.RUNNING}) is TesState.RUNNING
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2)

    await asyncio.wait_for(trigger.on_kill(), 30)

    assert await _wait_state(direct, task_id, {TesState.CANCELED}) is TesState.CANCELED


def _deferred_ti(map_index: int = -1) -> Any:
    """What the triggerer sets as a trigger's ``task_instance`` (the fields ``on_kill`` asks by)."""
    return SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=map_index, try_number=1)


def _airflow_says(monkeypatch: pytest.MonkeyPatch, state: str | None, published: Any) -> list[str]:
    """Airflow's answers to the trigger's two questions (the task SDK needs a triggerer's
    supervisor; the deployment suite asks a real one). Returns the questions asked."""
    asked: list[str] = []

    def task_state(ti: Any) -> tuple[bool, str | None]:
        asked.append(f"state of {ti.dag_id}/{ti.run_id}/{ti.task_id}")
        return True, state

    def get_xcom(ti: Any, key: str) -> Any:
        asked.append(f"xcom {key}")
        return published

    monkeypatch.setattr(task_sdk, "_task_state", task_state)
    monkeypatch.setattr(task_sdk, "_get_xcom", get_xcom)
    return asked


async def test_on_kill_leaves_a_task_that_is_still_deferred_on_another_triggerer(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, conn: str
) -> None:
    """A stalled triggerer resumes after another took its trigger over: the task instance is
    still deferred on this TES task, so the TES task is not canceled."""
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 300", "moved"))
    assert await _wait_state(direct, task_id, {TesState.RUNNING}) is TesState.RUNNING
    asked = _airflow_says(monkeypatch, "deferred", task_id)
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2)
    trigger.task_instance = _deferred_ti()

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(trigger.on_kill(), 30)

    assert asked == ["state of d/r/t", f"xcom {TES_TASK_ID_KEY}"]
    await asyncio.sleep(1.5)
    assert (await asyncio.to_thread(direct.get_task, task_id)).state is TesState.RUNNING
    said = " ".join(str(entry.get("event")) for entry in logs)
    assert f"Not canceling TES task {task_id}: the task instance is still deferred" in said, said
    await asyncio.to_thread(direct.cancel_task, task_id)


async def test_on_kill_leaves_the_task_when_airflow_cannot_be_asked(direct: TesHook, conn: str) -> None:
    """Outside a triggerer's supervisor (or with the api-server away) the task SDK fails: a
    doubt never cancels."""
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 300", "unasked"))
    assert await _wait_state(direct, task_id, {TesState.RUNNING}) is TesState.RUNNING
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2)
    trigger.task_instance = _deferred_ti(map_index=3)

    await asyncio.wait_for(trigger.on_kill(), 30)

    await asyncio.sleep(1.5)
    assert (await asyncio.to_thread(direct.get_task, task_id)).state is TesState.RUNNING
    await asyncio.to_thread(direct.cancel_task, task_id)


@pytest.mark.parametrize(("state", "moved_on"), [("failed", False), (None, False), ("deferred", True)])
async def test_on_kill_cancels_when_nobody_waits(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, conn: str, state: str | None, moved_on: bool
) -> None:
    """Marked failed, cleared (no state yet), or deferred again on another TES task: canceled."""
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 300", "owned"))
    assert await _wait_state(direct, task_id, {TesState.RUNNING}) is TesState.RUNNING
    _airflow_says(monkeypatch, state, "another-task" if moved_on else task_id)
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2)
    trigger.task_instance = _deferred_ti()

    await asyncio.wait_for(trigger.on_kill(), 30)

    assert await _wait_state(direct, task_id, {TesState.CANCELED}) is TesState.CANCELED


# -- 9. triggerer restart ----------------------------------------------------------------------------


async def test_triggerer_restart_leaves_task_running_and_resumes(
    direct: TesHook, conn: str, recording_hook: type[_RecordingHook]
) -> None:
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 3", "restart"))
    first = TesTaskTrigger(task_id, conn, poll_interval=0.2, started_at=time.time())
    classpath, kwargs = first.serialize()

    events: list[Any] = []

    async def consume(trigger: TesTaskTrigger) -> None:
        async for event in trigger.run():
            events.append(event)

    # Stop the "triggerer" once the trigger has seen the task running.
    assert await _wait_state(direct, task_id, {TesState.RUNNING}) is TesState.RUNNING
    runner = asyncio.create_task(consume(first))
    await asyncio.sleep(1.0)
    assert not runner.done(), "the trigger ended while the task still ran"
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 10)
    assert events == []

    # run() closed its hook's client on the way out.
    assert len(recording_hook.instances) == 1
    hook = recording_hook.instances[0]
    assert hook.clients, "the trigger never polled"
    assert all(client.is_closed for client in hook.clients)
    assert hook._async_client is None

    # The TES task was left alone.
    state = (await asyncio.to_thread(direct.get_task, task_id)).state
    assert state in {TesState.RUNNING, TesState.COMPLETE}, state

    # A new triggerer rebuilds the trigger from the stored kwargs and picks up the task.
    assert classpath == CLASSPATH
    second = TesTaskTrigger(**json.loads(json.dumps(kwargs)))
    resumed, _ = await _one_event(second)
    assert resumed["status"] == "terminal"
    assert resumed["state"] == "COMPLETE"
    assert resumed["tes_task_id"] == task_id
    assert all(client.is_closed for h in recording_hook.instances for client in h.clients)


# -- 10. unknown task --------------------------------------------------------------------------------


async def test_unknown_task_is_a_not_found_error(conn: str) -> None:
    # A 404 counts against the outage budget (eventually consistent servers), so it ends the
    # wait once the budget is spent, not at the first answer.
    trigger = TesTaskTrigger("no-such-task-" + uuid.uuid4().hex[:8], conn, poll_interval=0.2, outage_budget=1)

    payload, took = await _one_event(trigger, limit=15)

    assert payload["status"] == "error"
    assert payload["error_type"] == "TesNotFoundError"
    assert payload["tes_task_id"] == trigger.tes_task_id
    assert "404" in payload["message"] and "outage_budget" in payload["message"], payload["message"]
    assert 1.0 <= took < 10.0, took


async def test_missing_connection_is_a_configuration_error() -> None:
    trigger = TesTaskTrigger("some-task", "tes_trig_nowhere", poll_interval=0.2)

    payload, _ = await _one_event(trigger, limit=15)

    assert payload["status"] == "error"
    assert payload["error_type"] == "TesConfigurationError"
    assert "AIRFLOW_CONN_TES_TRIG_NOWHERE" in payload["message"]


async def test_cancel_during_a_request_closes_the_client(
    monkeypatch: pytest.MonkeyPatch,
    direct: TesHook,
    funnel: Any,
    proxy: TesProxy,
    recording_hook: type[_RecordingHook],
) -> None:
    conn_id = _set_conn(monkeypatch, "tes_trig_slow", proxy.base_url, funnel)
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 1", "slow"))
    proxy.delay_seconds = 5.0
    proxy.set_faults(1.0, ["delay"], methods=["GET"])
    trigger = TesTaskTrigger(task_id, conn_id, poll_interval=0.2)

    runner = asyncio.create_task(_collect(trigger))
    end = time.monotonic() + 5
    while not proxy.requests:  # the first poll is in flight, held by the proxy
        assert time.monotonic() < end, "the trigger never polled"
        await asyncio.sleep(0.05)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 5)

    (hook,) = recording_hook.instances
    assert hook.clients
    assert all(client.is_closed for client in hook.clients)
    # one round was in flight, its listings (one per listed state) all held by the proxy
    assert proxy.stats["injected"]["delay"] == len(LISTED_STATES), proxy.stats


async def test_deadline_holds_while_the_server_hangs(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, funnel: Any, proxy: TesProxy
) -> None:
    conn_id = _set_conn(monkeypatch, "tes_trig_hung", proxy.base_url, funnel)
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 300", "hung"))
    try:
        proxy.delay_seconds = 10.0
        proxy.set_faults(1.0, ["delay"], methods=["GET"])
        trigger = TesTaskTrigger(task_id, conn_id, poll_interval=0.2, deadline=time.time() + 1)

        events = await _collect(trigger, limit=4)  # 3 s of grace after the deadline

        assert [event.payload["status"] for event in events] == ["deadline"]
    finally:
        await asyncio.to_thread(direct.cancel_task, task_id)


# -- 11. a poller that fails in unexpected ways ---------------------------------------------------

#: What Airflow's triggerer cancels a trigger with on a user action (``_USER_ACTION_CANCEL_MSG``).
USER_ACTION = "__airflow_user_action__"


async def _run_like_the_triggerer(trigger: TesTaskTrigger, events: list[Any]) -> None:
    """What ``TriggerRunner.run_trigger`` does: ``on_kill`` only when the run ends with the
    CancelledError of a user action, so any other exception out of a cancel skips it."""
    try:
        async for event in trigger.run():
            events.append(event)
    except asyncio.CancelledError as err:
        if err.args and err.args[0] == USER_ACTION:
            await asyncio.wait_for(trigger.on_kill(), 30)
        raise


class _BrokenHostHook(TesHook):
    """The poller's hook on a host where every status request fails with a non-TES error."""

    async def a_get_task(self, *args: Any, **kwargs: Any) -> TesTask:
        raise OSError("a broken triggerer host")

    def a_list_tasks(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError("a broken triggerer host")


async def test_cancel_reaches_on_kill_while_the_poller_fails(
    monkeypatch: pytest.MonkeyPatch, direct: TesHook, conn: str
) -> None:
    monkeypatch.setattr(clients_module, "TesHook", _BrokenHostHook)
    task_id = await asyncio.to_thread(direct.create_task, _shell_task("sleep 300", "broken"))
    assert await _wait_state(direct, task_id, {TesState.RUNNING}) is TesState.RUNNING
    trigger = TesTaskTrigger(task_id, conn, poll_interval=0.2)  # default outage budget: 600 s
    events: list[Any] = []

    runner = asyncio.create_task(_run_like_the_triggerer(trigger, events))
    await asyncio.sleep(1.5)  # several failed rounds, each delivered, none ending the wait
    assert not runner.done(), "the wait went on within the outage budget"
    runner.cancel(USER_ACTION)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 35)

    assert events == []
    # on_kill ran (with its own hook) and canceled the TES task
    assert await _wait_state(direct, task_id, {TesState.CANCELED}) is TesState.CANCELED

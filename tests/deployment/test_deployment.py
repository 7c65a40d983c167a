"""The provider's promises on Airflow as production runs it: PostgreSQL, CeleryExecutor, two triggerers.

Every scenario acts as an operator of such a deployment would (the REST API, signals to
processes) and checks real outcomes: task instance states and tries in the metadata database,
XCom and task logs through the API, and the TES tasks on Funnel. See ``conftest.py`` for the
deployment and ``docs/deployment.md`` for what the figures printed here mean.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_tes.models import TesState, TesView
from tests.deployment.conftest import Deployed
from tests.support import REPO_ROOT
from tests.support.deployment import HEALTH_CHECK_THRESHOLD, TRIGGERERS
from tests.support.rules import tes_call

pytestmark = pytest.mark.funnel

FANOUT = "tes_deploy_fanout"
SAMPLE = "sample"
#: Where the measured figures go (the failover's are quoted in docs/deployment.md).
FIGURES = REPO_ROOT / "tests" / "artifacts" / "deployment"


def _record(name: str, figures: dict[str, Any]) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
    print(f"\n[deployment] {name}: {json.dumps(figures, sort_keys=True)}")


def _line_numbers(log: str, sample: int) -> list[int]:
    return [int(n) for n in re.findall(rf"stdout \| s{sample}-line-(\d+)\b", log)]


def _tes_tasks(deployed: Deployed, dag_id: str, run_id: str) -> list[Any]:
    return list(deployed.tes.list_tasks(tags={"dag_id": dag_id, "run_id": run_id}, view=TesView.BASIC))


def _submissions(deployed: Deployed, dag_id: str, run_id: str) -> Counter[tuple[str, str, str]]:
    """TES tasks per (map index, try, attempt): more than one of any is a duplicate."""
    return Counter(
        (t.tags["map_index"], t.tags["try_number"], t.tags["attempt"])
        for t in _tes_tasks(deployed, dag_id, run_id)
    )


def _wait_mapped(
    deployed: Deployed, run_id: str, count: int, states: set[str], timeout: float = 300
) -> list[dict[str, Any]]:
    airflow = deployed.airflow
    deadline = time.monotonic() + timeout
    tis: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        airflow._check_alive()
        tis = [ti for ti in airflow.task_instances(FANOUT, run_id) if ti["task_id"] == SAMPLE]
        if len(tis) == count and all(ti["state"] in states for ti in tis):
            return tis
        time.sleep(1)
    raise AssertionError(f"the samples stayed {Counter(ti['state'] for ti in tis)}, wanted {states}")


def _check_every_sample(
    deployed: Deployed, run_id: str, count: int, lines: int, *, repeats: bool = False
) -> dict[str, int]:
    """Each sample succeeded in its first try, with one TES task, its result and every line once;
    what was counted (all of it checked to be as it must)."""
    airflow = deployed.airflow
    tis = [ti for ti in airflow.task_instances(FANOUT, run_id) if ti["task_id"] == SAMPLE]
    assert sorted(ti["map_index"] for ti in tis) == list(range(count))
    assert {(ti["state"], ti["try_number"]) for ti in tis} == {("success", 1)}, tis
    submissions = _submissions(deployed, FANOUT, run_id)
    assert submissions == Counter({(str(k), "1", "0"): 1 for k in range(count)}), submissions
    states = Counter(t.state for t in _tes_tasks(deployed, FANOUT, run_id))
    assert states == Counter({TesState.COMPLETE: count}), states
    lost = repeated = 0
    for k in range(count):
        result = airflow.xcom(FANOUT, run_id, SAMPLE, map_index=k)
        assert (result["state"], result["exit_code"]) == ("COMPLETE", 0), result
        numbers = _line_numbers(airflow.task_log(FANOUT, run_id, SAMPLE, map_index=k), k)
        lost += len(set(range(1, lines + 1)) - set(numbers))
        repeated += len(numbers) - len(set(numbers))
        if repeats:
            assert sorted(set(numbers)) == list(range(1, lines + 1)), f"sample {k} lost lines: {numbers}"
        else:
            assert numbers == list(range(1, lines + 1)), f"sample {k} showed lines {numbers}"
    duplicates = sum(submissions.values()) - len(submissions)
    return {
        "tasks_ended": len(tis),
        "duplicate_tes_tasks": duplicates,
        "lines_lost": lost,
        "lines_repeated": repeated,
    }


def _holders(deployed: Deployed, run_id: str) -> dict[int, int]:
    return {k: v for k, v in deployed.airflow.triggers_by_triggerer(FANOUT, run_id).items() if k is not None}


def _component_of(deployed: Deployed, job_id: int) -> str:
    return next(name for name in TRIGGERERS if deployed.airflow.triggerer_job_of(name) == job_id)


def _trigger_log_files(deployed: Deployed, run_id: str) -> list[Path]:
    logs = deployed.airflow.env.home / "logs"
    return [p for p in logs.rglob("*") if p.is_file() and ".trigger." in p.name and run_id in str(p)]


def _wait_between_reads(deployed: Deployed, run_id: str, quiet: float = 0.8, timeout: float = 30) -> None:
    """Until no trigger log of the run has been written for ``quiet`` seconds: the moment
    between two live-log reads (a kill during a read's few milliseconds may show that read's
    lines again after the takeover; see docs/deployment.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newest = max((p.stat().st_mtime for p in _trigger_log_files(deployed, run_id)), default=0.0)
        if time.time() - newest >= quiet:
            return
        time.sleep(0.05)
    raise AssertionError("the live logs were never quiet for a moment")


def _requests_by_kind(proxy: Any) -> Counter[str]:
    """What one process asked TES: listings and single-task reads, by view."""
    kinds: Counter[str] = Counter()
    for request in list(proxy.seen):
        call = tes_call(request.method, request.path)
        view = (request.query.get("view") or ["MINIMAL"])[0]
        kinds[f"{call} {view}" if call in ("get", "list") else call] += 1
    return kinds


# -- 1. a fan-out through Celery, spread over both triggerers ----------------------------------------


def test_a_fanout_of_50_runs_once_each_through_celery_and_both_triggerers(deployed: Deployed) -> None:
    airflow = deployed.airflow
    started = time.monotonic()
    run_id = airflow.trigger(FANOUT, conf={"count": 50, "seconds": 20})
    held: Counter[int] = Counter()
    while (state := airflow.api("GET", f"/dags/{FANOUT}/dagRuns/{run_id}")["state"]) not in (
        "success",
        "failed",
    ):
        assert time.monotonic() - started < 600, f"the fan-out is still {state}\n{airflow.logs()}"
        for job_id, count in _holders(deployed, run_id).items():
            held[job_id] = max(held[job_id], count)
        time.sleep(1)
    assert state == "success"
    counted = _check_every_sample(deployed, run_id, count=50, lines=20)
    # Each triggerer's capacity is 30, so 50 waits at once need both; each held its share.
    assert len(held) == 2 and all(held.values()), held
    makespan = round(time.monotonic() - started, 1)
    _record("fanout", {"most_triggers_held": dict(held), "makespan_s": makespan, **counted})


# -- 2. a triggerer killed while it holds triggers ------------------------------------------------------


def test_a_triggerer_killed_mid_wait_is_taken_over_without_loss_or_repeat(deployed: Deployed) -> None:
    airflow, count, lines = deployed.airflow, 24, 45
    run_id = airflow.trigger(FANOUT, conf={"count": count, "seconds": lines})
    _wait_mapped(deployed, run_id, count, {"deferred"})
    time.sleep(6)  # a few live-log reads in the task logs
    holders = _holders(deployed, run_id)
    victim_job = max(holders, key=lambda job: holders[job])
    victim = _component_of(deployed, victim_job)
    survivor = next(name for name in TRIGGERERS if name != victim)
    moved = holders[victim_job]
    proxy = deployed.proxies[survivor]

    _wait_between_reads(deployed, run_id)
    proxy.reset_records()
    killed_at = time.monotonic()
    airflow.signal(victim, signal.SIGKILL)
    deadline = killed_at + 120
    while victim_job in _holders(deployed, run_id):
        assert time.monotonic() < deadline, f"no takeover: {_holders(deployed, run_id)}"
        time.sleep(0.2)
    takeover = time.monotonic() - killed_at
    time.sleep(4)  # the survivor's first rounds for its new triggers
    requests = _requests_by_kind(proxy)

    airflow.procs.pop(victim).wait(10)
    airflow.start_component(victim)
    assert airflow.wait_for_run(FANOUT, run_id)["state"] == "success"
    counted = _check_every_sample(deployed, run_id, count, lines)
    # The takeover cost the survivor a round of listings, not a status GET per moved trigger.
    assert requests["get MINIMAL"] < moved / 4, requests
    _record(
        "failover",
        {
            "triggers_moved": moved,
            "survivor_held_before": holders.get(deployed.airflow.triggerer_job_of(survivor), 0),
            "takeover_s": round(takeover, 1),
            "health_check_threshold_s": HEALTH_CHECK_THRESHOLD,
            **counted,
            "survivor_requests_from_the_kill_to_4s_after_the_takeover": dict(requests),
        },
    )


# -- 3. a triggerer frozen past the health-check threshold ---------------------------------------------


def test_a_triggerer_frozen_past_the_threshold_cancels_nothing_when_it_resumes(deployed: Deployed) -> None:
    airflow, count, lines = deployed.airflow, 10, 40
    run_id = airflow.trigger(FANOUT, conf={"count": count, "seconds": lines})
    _wait_mapped(deployed, run_id, count, {"deferred"})
    time.sleep(4)
    holders = _holders(deployed, run_id)
    frozen_job = max(holders, key=lambda job: holders[job])
    frozen = _component_of(deployed, frozen_job)

    airflow.signal(frozen, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120
        while frozen_job in _holders(deployed, run_id):
            assert time.monotonic() < deadline, f"no takeover: {_holders(deployed, run_id)}"
            time.sleep(0.5)
    finally:
        airflow.signal(frozen, signal.SIGCONT)
    # Resumed, it is told to stop the triggers it lost (Airflow calls on_kill as for a user's
    # action), and asks Airflow before canceling: the task instances are still deferred.
    frozen_logs = f".trigger.{frozen_job}.log"
    deadline = time.monotonic() + 60
    while True:
        said = "\n".join(
            p.read_text(errors="replace")
            for p in _trigger_log_files(deployed, run_id)
            if p.name.endswith(frozen_logs)
        )
        if said.count("Not canceling TES task") >= holders[frozen_job]:
            break
        assert time.monotonic() < deadline, f"{said[-4000:]}\n{airflow.logs(frozen)}"
        time.sleep(0.5)
    assert said.count("Trigger cancelled by user action") == holders[frozen_job]
    assert "still deferred" in said and "Canceling TES task" not in said

    assert airflow.wait_for_run(FANOUT, run_id)["state"] == "success"
    # No line lost, all COMPLETE. A line may show twice: the process froze at any moment, also
    # between showing a read's lines and keeping its position (docs/deployment.md).
    counted = _check_every_sample(deployed, run_id, count, lines, repeats=True)
    _record("freeze", {"triggers_held_by_the_frozen_triggerer": holders[frozen_job], **counted})


# -- 4. the Celery worker killed during a submit ---------------------------------------------------------


def test_the_retry_of_a_worker_killed_during_submit_adopts_its_tes_task(deployed: Deployed) -> None:
    airflow, proxy = deployed.airflow, deployed.proxies["worker"]
    dag_id, task_id = "tes_deploy_adopt", "adopted"
    # The create reaches Funnel; its answer is held back until the worker is gone.
    proxy.delay_seconds = 60
    proxy.reset_records()
    proxy.set_faults(1.0, ["delay"], methods=["POST"], path_regex=r"/tasks$", limit=1)
    try:
        run_id = airflow.trigger(dag_id)
        deadline = time.monotonic() + 180
        while not _tes_tasks(deployed, dag_id, run_id):
            assert time.monotonic() < deadline, "the create never reached Funnel"
            time.sleep(0.3)
        airflow.signal("worker", signal.SIGKILL)
        airflow.procs.pop("worker").wait(10)
    finally:
        proxy.clear_faults()
    airflow.start_component("worker")

    assert airflow.wait_for_ti(dag_id, run_id, task_id, {"success", "failed"}, timeout=300) == "success"
    (ti,) = airflow.task_instances(dag_id, run_id)
    assert ti["try_number"] == 2, "the retry did the work"
    (tes_task,) = _tes_tasks(deployed, dag_id, run_id)
    assert tes_task.tags["try_number"] == "1", "the first try's task, adopted"
    assert airflow.xcom(dag_id, run_id, task_id)["tes_task_id"] == tes_task.id
    assert "Reattaching to TES task" in airflow.task_log(dag_id, run_id, task_id, try_number=2)


# -- 5. the scheduler restarted while tasks are deferred ---------------------------------------------------


def test_a_scheduler_restart_while_tasks_are_deferred_loses_and_repeats_nothing(deployed: Deployed) -> None:
    airflow, count, lines = deployed.airflow, 12, 25
    run_id = airflow.trigger(FANOUT, conf={"count": count, "seconds": lines})
    _wait_mapped(deployed, run_id, count, {"deferred"})
    airflow.stop_component("scheduler")
    time.sleep(8)
    airflow.start_component("scheduler")
    assert airflow.wait_for_run(FANOUT, run_id)["state"] == "success"
    _check_every_sample(deployed, run_id, count, lines)


# -- 6. outcomes as in one box: a failing command, preemption, a user's mark-failed ----------------------


def test_a_failing_command_fails_with_its_exit_code(deployed: Deployed) -> None:
    airflow = deployed.airflow
    run_id = airflow.trigger("tes_test_failing")
    assert airflow.wait_for_ti("tes_test_failing", run_id, "fail", {"success", "failed"}) == "failed"
    log = airflow.task_log("tes_test_failing", run_id, "fail")
    assert "exit code 3" in log and "something went wrong on purpose" in log


def test_a_preempted_task_is_resubmitted_and_succeeds(deployed: Deployed) -> None:
    airflow, proxy = deployed.airflow, deployed.shared
    proxy.reset_records()
    proxy.preempt(1)
    run_id = airflow.trigger("tes_test_preempt")
    assert airflow.wait_for_ti("tes_test_preempt", run_id, "preempted", {"success", "failed"}) == "success"
    result = airflow.xcom("tes_test_preempt", run_id, "preempted")
    assert result["attempts"][:-1] == proxy.preempted_ids and len(result["attempts"]) == 2
    assert [task_id for task_id, _ in proxy.created] == result["attempts"]


def test_a_user_marking_a_deferred_task_failed_cancels_its_tes_task(deployed: Deployed) -> None:
    airflow = deployed.airflow
    run_id = airflow.trigger("tes_test_live", conf={"seconds": 300})
    airflow.wait_for_ti("tes_test_live", run_id, "sleeper", {"deferred"})
    tes_id = str(airflow.xcom("tes_test_live", run_id, "sleeper", key="tes_task_id"))
    deadline = time.monotonic() + 120
    while f"TES task {tes_id} is RUNNING" not in airflow.task_log("tes_test_live", run_id, "sleeper"):
        assert time.monotonic() < deadline, "no triggerer ran the trigger"
        time.sleep(1)
    airflow.set_ti_state("tes_test_live", run_id, "sleeper", "failed")
    deadline = time.monotonic() + 120
    while (state := deployed.tes.get_task(tes_id).state) is not TesState.CANCELED:
        assert time.monotonic() < deadline, f"TES task {tes_id} stayed {state}"
        time.sleep(1)

"""``airflow tes cleanup``: the net under every way a TES task can lose the Airflow task that owns it.

A TES task costs money while it runs. The provider cancels it when its Airflow task is killed,
passes its deadline, or is cleared or marked while deferred (Airflow >= 3.3), but some endings
reach no code of the provider: a deferred task cleared or marked on Airflow 3.2, a trigger
deleted before any triggerer ran it, a DAG run deleted, a worker dying between create and defer
on the last try. As ``airflow kubernetes cleanup-pods`` is for pods, this finds such tasks on the
TES server and maps each back to its Airflow task instance and try through the tags the operator
wrote into it (:mod:`airflow_provider_tes.identity`), then judges it by the rules of
:func:`judge`. Only tasks of this deployment whose identity tag verifies with its tenant secret
are looked at: another deployment's task, or one it cannot map back, is never touched.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_tes.exceptions import TesError
from airflow_provider_tes.identity import DEPLOYMENT_TAG, WAITS_TAG, Tenant
from airflow_provider_tes.models import TesState, TesTask, TesView
from airflow_provider_tes.run_state import TES_TASK_ID_KEY

#: The states a task is listed in: every non-terminal one but CANCELING (already on its way).
LISTED = (TesState.QUEUED, TesState.INITIALIZING, TesState.RUNNING, TesState.PAUSED)
#: Task instance states in which nothing will run again.
ENDED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
#: DAG run states in which a submit-only task may still be waited for.
RUN_ACTIVE = frozenset({"queued", "running"})
#: Task instance states of a newer try that has not published a TES task yet: it may still
#: reattach to a running task of an earlier try.
MAY_ADOPT = frozenset(
    {"none", "scheduled", "queued", "running", "up_for_retry", "up_for_reschedule", "restarting"}
)

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Owner:
    """What the metadata database says of the task instance a TES task was submitted for."""

    state: str  # "none" for a task instance without a state (cleared)
    try_number: int
    #: The TES task id its try published (XCom ``tes_task_id``), if any.
    published: str | None
    #: The state of its DAG run.
    run_state: str | None


@dataclass(frozen=True)
class Finding:
    tes_task_id: str
    state: str
    age_s: float | None
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    orphan: bool
    why: str


def parse_age(text: str) -> float:
    """``--older-than``: seconds, or a number with ``s``, ``m``, ``h`` or ``d``."""
    match = _AGE.match(str(text))
    if match is None:
        raise SystemExit(
            f"--older-than must be seconds or a number with s, m, h or d (e.g. 30m), got {text!r}"
        )
    return float(match.group(1)) * _UNIT[match.group(2)]


def judge(tags: Mapping[str, str], tes_task_id: str, owner: Owner | None) -> tuple[bool, str]:
    """Whether a non-terminal TES task with ``tags`` is an orphan, and why (in a few words).

    Kept: a task its task instance's try still runs, waits for (deferred, queued, up for retry)
    or published; a task an earlier try left while a newer try is on its way and may reattach
    to it; a submit-only task while its DAG run is active. An orphan: a task whose task
    instance is gone or has ended, whose try was followed by one that published another task,
    or a submit-only task whose DAG run has ended.
    """
    if owner is None:
        return True, "its task instance no longer exists (DAG run or task deleted)"
    if tags.get(WAITS_TAG) == "false":
        if owner.run_state in RUN_ACTIVE:
            return False, f"submit-only; its DAG run is {owner.run_state}"
        return True, f"submit-only; its DAG run is {owner.run_state or 'gone'}"
    if owner.state in ENDED:
        return True, f"its task instance is {owner.state}"
    if owner.published == tes_task_id:
        return False, f"try {owner.try_number} waits for it ({owner.state})"
    try_number = int(tags.get("try_number", "0") or 0)
    if owner.published is not None:
        return True, f"try {owner.try_number} moved on to TES task {owner.published}"
    if owner.try_number == try_number or owner.state in MAY_ADOPT:
        return False, f"try {owner.try_number} is {owner.state} and may still wait for or adopt it"
    return True, f"try {owner.try_number} is {owner.state}"


def _age(task: TesTask, now: datetime) -> float | None:
    if not task.creation_time:
        return None
    try:
        created = datetime.fromisoformat(task.creation_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return max(0.0, (now - created).total_seconds())


def find(
    tasks: Iterable[TesTask],
    tenant: Tenant,
    owner_of: Callable[[Mapping[str, str]], Owner | None],
    *,
    now: datetime,
    older_than: float = 0.0,
    dag_id: str | None = None,
) -> list[Finding]:
    """Judge every listed task of this tenant that passes the filters (others are left out)."""
    found = []
    for task in tasks:
        tags = {k: str(v) for k, v in (task.tags or {}).items()}
        if not task.id or not tenant.owns(tags):
            continue
        if dag_id is not None and tags.get("dag_id") != dag_id:
            continue
        age = _age(task, now)
        if older_than and (age is None or age < older_than):
            continue
        orphan, why = judge(tags, task.id, owner_of(tags))
        found.append(
            Finding(
                tes_task_id=task.id,
                state=task.state.value if task.state else "UNKNOWN",
                age_s=None if age is None else round(age),
                dag_id=tags["dag_id"],
                run_id=tags["run_id"],
                task_id=tags["task_id"],
                map_index=int(tags.get("map_index", "-1")),
                try_number=int(tags.get("try_number", "0")),
                orphan=orphan,
                why=why,
            )
        )
    return found


def _owners_from_the_database() -> Callable[[Mapping[str, str]], Owner | None]:
    """Look task instances up in the metadata database (the CLI runs where the scheduler does)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    def owner_of(tags: Mapping[str, str]) -> Owner | None:
        keys = {
            "dag_id": tags["dag_id"],
            "run_id": tags["run_id"],
            "task_id": tags["task_id"],
            "map_index": int(tags.get("map_index", "-1")),
        }
        with create_session() as session:
            ti = session.scalars(select(TaskInstance).filter_by(**keys)).one_or_none()
            if ti is None:
                return None
            run_state = session.scalars(
                select(DagRun.state).filter_by(dag_id=keys["dag_id"], run_id=keys["run_id"])
            ).one_or_none()
            xcom = session.scalars(select(XComModel).filter_by(key=TES_TASK_ID_KEY, **keys)).one_or_none()
            published = None if xcom is None else XComModel.deserialize_value(xcom)
            return Owner(
                state=str(ti.state) if ti.state else "none",
                try_number=int(ti.try_number or 0),
                published=None if published is None else str(published),
                run_state=None if run_state is None else str(run_state),
            )

    return owner_of


def cleanup(args: Any) -> None:
    """The ``airflow tes cleanup`` command."""
    from airflow_provider_tes.hooks.tes import TesHook

    older_than = parse_age(args.older_than)
    with TesHook(args.conn_id) as hook:
        tenant = Tenant.of_connection(hook.settings)
        listing = (
            task
            for state in LISTED
            for task in hook.list_tasks(
                state=state, tags={DEPLOYMENT_TAG: tenant.deployment}, view=TesView.BASIC
            )
        )
        findings = find(
            listing,
            tenant,
            _owners_from_the_database(),
            now=datetime.now(UTC),
            older_than=older_than,
            dag_id=args.dag_id,
        )
        failed = []
        canceled = []
        if args.yes:
            for finding in findings:
                if not finding.orphan:
                    continue
                try:
                    hook.cancel_task(finding.tes_task_id)
                except TesError as err:
                    failed.append((finding.tes_task_id, str(err)))
                else:
                    canceled.append(finding.tes_task_id)
    _report(args, tenant, findings, canceled, failed)
    if failed:
        raise SystemExit(1)


def _report(
    args: Any, tenant: Tenant, findings: list[Finding], canceled: list[str], failed: list[tuple[str, str]]
) -> None:
    orphans = [f for f in findings if f.orphan]
    if args.output == "json":
        print(
            json.dumps(
                {
                    "deployment": tenant.deployment,
                    "dry_run": not args.yes,
                    "tasks": [asdict(f) for f in findings],
                    "orphans": [f.tes_task_id for f in orphans],
                    "canceled": canceled,
                    "failed": [{"tes_task_id": i, "error": e} for i, e in failed],
                },
                indent=2,
            )
        )
        return
    from airflow.cli.simple_table import AirflowConsole

    rows = [
        {
            "TES task": f.tes_task_id,
            "state": f.state,
            "age": "?" if f.age_s is None else f"{f.age_s:.0f}s",
            "dag / run / task [map] try": f"{f.dag_id} / {f.run_id} / {f.task_id}"
            + (f" [{f.map_index}]" if f.map_index >= 0 else "")
            + f" try {f.try_number}",
            "orphan": "yes" if f.orphan else "no",
            "why": f.why,
        }
        for f in findings
    ]
    if rows:
        AirflowConsole().print_as(data=rows, output=args.output)
    summary = (
        f"{len(findings)} active TES task(s) of deployment {tenant.deployment!r}, {len(orphans)} orphan(s)"
    )
    if not args.yes:
        summary += "; a dry run: add --yes to cancel the orphans" if orphans else ""
    else:
        summary += f"; canceled {len(canceled)}" + (f", {len(failed)} failed: {failed}" if failed else "")
    print(summary, file=sys.stderr if args.output in ("json", "yaml") else sys.stdout)

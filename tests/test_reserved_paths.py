"""/mnt/task is the operator's: nothing is mounted or uploaded at, above or inside it, but its work dir.

A DIRECTORY input at ``/mnt/task`` would hide the command script and the work directory; an
output at ``/mnt/task/`` would upload the script (and any secret in it). Refused before any
request, with an error naming the argument and the fix, in the style of
``tests/test_operator_validation.py``. Paths strictly inside ``/mnt/task/work/`` are the
user's and keep working.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from airflow_provider_tes.container import GUEST_COMMAND_PATH, reserved_by_operator
from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.identity import OutputFolder
from airflow_provider_tes.operators.tes import TesTaskOperator
from airflow_provider_tes.task_spec import TaskSpec


@pytest.fixture(autouse=True)
def connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_TES_DEFAULT",
        json.dumps(
            {
                "conn_type": "tes",
                "host": "http://tes.invalid:8000/ga4gh/tes/v1",
                "login": "u",
                "password": "pw-xyz",
                "extra": {"outputs_url": "s3://bucket/out/", "inputs_url": "s3://bucket/in/"},
            }
        ),
    )


def run(requests: list[httpx.Request], **kwargs: Any) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500)

    op = TesTaskOperator(**{"task_id": "t", "image": "alpine:3.20", "command": "echo hi", **kwargs})
    op.hook = TesHook(op.tes_conn_id, transport=httpx.MockTransport(answer), retries=0)
    ti = SimpleNamespace(dag_id="dag", task_id="t", run_id="r", map_index=-1, try_number=1, xcom_push=print)
    op.execute({"ti": ti})  # type: ignore[arg-type]


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("directory input at /mnt/task", {"inputs": {"/mnt/task": "s3://b/overlay/"}}, "inputs"),
    ("directory input at /mnt/task/", {"inputs": {"/mnt/task/": "s3://b/overlay/"}}, "inputs"),
    ("input at /mnt", {"inputs": {"/mnt": "s3://b/overlay/"}}, "inputs"),
    ("input at /", {"inputs": {"/": "s3://b/overlay/"}}, "inputs"),
    ("input replacing the script", {"inputs": {GUEST_COMMAND_PATH: {"content": "evil"}}}, "inputs"),
    ("input beside the script", {"inputs": {"/mnt/task/extra.sh": "s3://b/x"}}, "inputs"),
    ("input at the work dir", {"inputs": {"/mnt/task/work": "s3://b/dir/"}}, "inputs"),
    ("output of /mnt/task/", {"outputs": {"/mnt/task/": "s3://other-bucket/all/"}}, "outputs"),
    ("output of /mnt", {"outputs": {"/mnt/": "s3://other-bucket/all/"}}, "outputs"),
    ("output of the script", {"outputs": {GUEST_COMMAND_PATH: "s3://b/script"}}, "outputs"),
    ("output of stdout", {"outputs": {"/mnt/task/stdout": "s3://b/stdout"}}, "outputs"),
    ("output of the work dir", {"outputs": {"/mnt/task/work/": "s3://b/work/"}}, "outputs"),
    ("output of a look-alike", {"outputs": {"/mnt/task/workdir.txt": "s3://b/x"}}, "outputs"),
    (
        "TesOutput of /mnt/task",
        {"outputs": [{"path": "/mnt/task", "url": "s3://b/all/", "type": "DIRECTORY"}]},
        "outputs",
    ),
    (
        "wildcard output over /mnt",
        {"outputs": [{"path": "/mnt/*", "path_prefix": "/mnt/", "url": "s3://b/all/"}]},
        "outputs",
    ),
    (
        "wildcard output in /mnt/task",
        {"outputs": [{"path": "/mnt/task/*", "path_prefix": "/mnt/task/", "url": "s3://b/all/"}]},
        "outputs",
    ),
    ("volume at /mnt/task", {"volumes": ["/mnt/task"]}, "volumes"),
    ("volume at /mnt", {"volumes": ["/mnt"]}, "volumes"),
    ("disk at /mnt/task", {"disk_gb": {"/mnt/task": 10}}, "disk_gb"),
]


@pytest.mark.parametrize(("case", "kwargs", "argument"), REFUSED, ids=[c[0] for c in REFUSED])
def test_reserved_path_refused_before_any_request(case: str, kwargs: dict[str, Any], argument: str) -> None:
    requests: list[httpx.Request] = []
    with pytest.raises(TesConfigurationError) as info:
        run(requests, **kwargs)
    message = str(info.value)
    assert f"argument {argument!r}" in message, message
    assert "used by the operator" in message
    assert "/mnt/task/work/" in message and "/data/" in message, "the error says what to use instead"
    assert requests == [], f"{case}: {len(requests)} request(s) sent before failing"


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("output of a file the command writes", {"outputs": {"/mnt/task/work/result.txt": "s3://b/r.txt"}}),
    ("output of a directory in the work dir", {"outputs": {"/mnt/task/work/out/": "s3://b/out/"}}),
    (
        "wildcard output in the work dir",
        {"outputs": [{"path": "/mnt/task/work/*.txt", "path_prefix": "/mnt/task/work/", "url": "s3://b/t/"}]},
    ),
    ("input placed in the work dir", {"inputs": {"/mnt/task/work/data.csv": "s3://b/d.csv"}}),
    ("input elsewhere under /mnt", {"inputs": {"/mnt/data/": "s3://b/data/"}}),
    ("input at a look-alike", {"inputs": {"/mnt/tasks/x": "s3://b/x"}}),
    ("volume elsewhere under /mnt", {"volumes": ["/mnt/scratch"]}),
    ("workdir at / (not a mount)", {"workdir": "/"}),
]


@pytest.mark.parametrize(("case", "kwargs"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_paths_users_need_keep_working(case: str, kwargs: dict[str, Any]) -> None:
    spec = TaskSpec(image="alpine:3.20", command="echo hi", **kwargs)
    plan = spec.plan(connection_inputs_url="s3://b/in/", connection_outputs_url="s3://b/out/")
    task = plan.assemble({}, OutputFolder("s3://b/out/t-1/")).task
    placed = (
        {i.path for i in task.inputs or []} | {o.path for o in task.outputs or []} | set(task.volumes or [])
    )
    for path in [*(kwargs.get("inputs") or {}), *(kwargs.get("volumes") or [])]:
        assert path.rstrip("/") in placed
    for output in kwargs.get("outputs") or []:
        path = output["path"] if isinstance(output, dict) else output
        assert path.rstrip("/") in placed


def test_operator_places_its_own_files_under_mnt_task() -> None:
    plan = TaskSpec(image="alpine:3.20", command="echo hi").plan(
        connection_inputs_url=None, connection_outputs_url="s3://b/out/"
    )
    task = plan.assemble({}, OutputFolder("s3://b/out/t-1/")).task
    own = [i.path for i in task.inputs or []] + [o.path for o in task.outputs or []]
    assert own and all(reserved_by_operator(path) for path in own), own

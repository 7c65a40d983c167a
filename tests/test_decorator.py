"""``@task.tes`` and script files: registration, arguments, the file rule, and a deferred task
resumed on a fresh operator (against Funnel) without calling the function again.

The example DAGs (tests/test_examples.py) run both through ``airflow dags test``.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_tes.decorators.tes import _TesDecoratedOperator, tes_task
from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.get_provider_info import get_provider_info
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesView
from airflow_provider_tes.operators.tes import TesTaskOperator

START = datetime(2025, 1, 1)


class FakeTi(SimpleNamespace):
    """The task instance parts the operator uses, with an XCom store per key."""

    def __init__(self, task_id: str, run_id: str = "manual__r1", map_index: int = -1) -> None:
        super().__init__(
            dag_id="tes_decorator", task_id=task_id, run_id=run_id, map_index=map_index, try_number=1
        )
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = json.loads(json.dumps(value))  # stored as Airflow stores it: JSON

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int = -1) -> Any:
        assert (task_ids, map_indexes) == (self.task_id, self.map_index)
        return self.xcoms.get(key)


def context_of(ti: FakeTi) -> dict[str, Any]:
    return {"ti": ti, "run_id": ti.run_id, "params": {}}


# -- registration ------------------------------------------------------------------------------------


def test_registered_as_task_tes() -> None:
    assert get_provider_info()["task-decorators"] == [
        {"class-name": "airflow_provider_tes.decorators.tes.tes_task", "name": "tes"}
    ]
    # `airflow.sdk.task` finds it through the installed provider's metadata.
    assert task.tes is tes_task


def test_every_operator_argument_is_accepted() -> None:
    params = inspect.signature(TesTaskOperator.__init__).parameters
    names = [p for p in params if p not in {"self", "kwargs", "command", "executors"}]
    values: dict[str, Any] = {
        "image": "alpine:3.20",
        "inputs": {"/data/in.txt": "s3://b/in.txt"},
        "outputs": {"/mnt/task/work/out.txt": "s3://b/out.txt"},
        "inputs_url": "s3://b/in/",
        "outputs_url": "s3://b/out/",
        "env": {"A": "1"},
        "workdir": "/mnt/task/work",
        "shell": "/bin/bash",
        "cpu_cores": 2,
        "ram_gb": 1.5,
        "disk_gb": {"/scratch": 4},
        "zones": ["z1"],
        "backend_parameters": {"k": "v"},
        "backend_parameters_strict": False,
        "volumes": ["/cache"],
        "tags": {"t": "1"},
        "name": "label",
        "preemptible": 2,
        "tes_conn_id": "tes_other",
        "aws_conn_id": "aws_other",
        "allowed_local_roots": ["/srv"],
        "poll_interval": 3,
        "log_interval": 7,
        "startup_timeout": 600,
        "wait_for_completion": True,
        "deferrable": True,
    }
    assert sorted(values) == sorted(names), "a TesTaskOperator argument is missing from this test"
    with DAG("tes_decorator_args", schedule=None, start_date=START) as dag:

        @task.tes(**values)
        def run() -> str:
            return "true"

        run()
    op = dag.task_dict["run"]
    assert isinstance(op, _TesDecoratedOperator)
    for name, value in values.items():
        assert getattr(op, name) == value, name


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ({"command": "echo hi"}, "'command'"),
        ({"executors": [{"image": "alpine", "command": ["true"]}]}, "'executors'"),
        ({"shell": "sh"}, "'shell'"),
        ({"image": None}, "'image'"),
    ],
)
def test_bad_arguments_fail_when_the_dag_is_parsed(argument: dict[str, Any], message: str) -> None:
    kwargs = {"image": "alpine:3.20", **argument}
    with DAG("d", schedule=None, start_date=START):

        @task.tes(**kwargs)
        def run() -> str:
            return "true"

        with pytest.raises(TesConfigurationError, match=message):
            run()


def test_mapped_over_function_arguments_and_operator_partial() -> None:
    with DAG("tes_decorator_mapped", schedule=None, start_date=START) as dag:

        @task
        def samples() -> list[str]:
            return ["a", "b"]

        @task.tes(image="alpine:3.20")
        def per_sample(sample: str, flag: str) -> str:
            return f"echo {sample} {flag}"

        mapped = per_sample.partial(flag="-n").expand(sample=samples())
    op = dag.task_dict["per_sample"]
    assert mapped.operator is op
    assert op.partial_kwargs["image"] == "alpine:3.20"
    assert op.partial_kwargs["op_kwargs"] == {"flag": "-n"}
    assert set(op.op_kwargs_expand_input.value) == {"sample"}


@pytest.mark.parametrize("returned", ["", "   ", [], ["ok", 3], {"cmd": "x"}, None])
def test_a_bad_return_value_fails_before_anything_is_sent(returned: Any) -> None:
    requests: list[httpx.Request] = []
    with DAG("tes_decorator_bad", schedule=None, start_date=START) as dag:

        @task.tes(image="alpine:3.20", outputs_url="s3://b/out/")
        def build() -> Any:
            return returned

        build()
    op = dag.task_dict["build"]
    op.hook = TesHook(
        "tes_default",
        transport=httpx.MockTransport(lambda r: requests.append(r) or httpx.Response(500)),  # type: ignore[func-returns-value]
        retries=0,
    )
    with pytest.raises(TesConfigurationError, match="build must return a script"):
        op.execute(context_of(FakeTi("build")))
    assert requests == []


# -- script files --------------------------------------------------------------------------------------


@pytest.fixture
def dag_with_scripts(tmp_path: Path) -> DAG:
    (tmp_path / "run.sh").write_text("echo {{ params.word }} from the file\n# ends like a file name: next.sh")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "step.bash").write_text("echo step {{ run_id }}\n")
    return DAG("tes_script_files", schedule=None, start_date=START, template_searchpath=[str(tmp_path)])


def rendered_command(dag: DAG, command: Any, **kwargs: Any) -> Any:
    op = TesTaskOperator(
        task_id=f"t{uuid.uuid4().hex[:6]}", image="alpine", command=command, dag=dag, **kwargs
    )
    op.render_template_fields({"params": {"word": "hello"}, "run_id": "r1"}, dag.get_template_env())
    return op


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # One word, ending in .sh/.bash, found in the search path: the file, templated.
        ("run.sh", "echo hello from the file\n# ends like a file name: next.sh"),
        ("sub/step.bash", "echo step r1"),  # Jinja drops the final newline, as for any template
        # Airflow issue #21918: inline scripts that merely end in .sh stay inline (and templated).
        ("echo {{ params.word }}; ./run.sh", "echo hello; ./run.sh"),
        ("run.sh ", "run.sh "),
        ("echo a\nrun.sh", "echo a\nrun.sh"),
        # The shape of a file name but no such file: an inline script (the program in the image).
        ("missing.sh", "missing.sh"),
        ("/opt/tool/run.sh", "/opt/tool/run.sh"),
        # A list is an argv: never read from a file.
        (["sh", "run.sh"], ["sh", "run.sh"]),
        (["run.sh"], ["run.sh"]),
    ],
)
def test_script_file_rule(dag_with_scripts: DAG, command: Any, expected: Any) -> None:
    assert rendered_command(dag_with_scripts, command).command == expected


def test_only_command_is_ever_read_from_a_file(dag_with_scripts: DAG) -> None:
    op = rendered_command(
        dag_with_scripts,
        "run.sh",
        inputs={"/mnt/in/run.sh": "s3://bucket/run.sh", "/mnt/in/local.sh": "run.sh"},
        name="run.sh",
        env={"SCRIPT": "run.sh"},
    )
    assert op.command.startswith("echo hello from the file")
    assert op.inputs == {"/mnt/in/run.sh": "s3://bucket/run.sh", "/mnt/in/local.sh": "run.sh"}
    assert op.name == "run.sh"
    assert op.env == {"SCRIPT": "run.sh"}


def test_a_returned_file_name_is_read_too(dag_with_scripts: DAG) -> None:
    with dag_with_scripts:

        @task.tes(image="alpine")
        def pick() -> str:
            return "sub/step.bash"

        pick()
    op = dag_with_scripts.task_dict["pick"]
    assert op.render_command("sub/step.bash", {"run_id": "r9"}) == "echo step r9"
    assert op.render_command("echo {{ run_id }} > x.sh", {"run_id": "r9"}) == "echo r9 > x.sh"


# -- deferral: a fresh operator resumes without the function (against Funnel) ----------------------------


def read_s3(s3_client: Any, url: str) -> str:
    parts = urlsplit(url)
    return str(s3_client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read().decode())


@pytest.mark.funnel
def test_resumes_on_a_fresh_operator_with_the_same_command_and_none_in_xcom(
    funnel_conn: Callable[..., str], s3_bucket: str, s3_client: Any
) -> None:
    funnel_conn("tes_decorator", f"s3://{s3_bucket}/decorator/")
    calls: list[str] = []

    def parse() -> TesTaskOperator:
        """The DAG as a worker parses it: a new operator object each time."""
        with DAG("tes_decorator", schedule=None, start_date=START) as dag:

            @task.tes(image="alpine:3.20", tes_conn_id="tes_decorator", poll_interval=1, deferrable=True)
            def hello(who: str) -> str:
                calls.append(who)
                return f"echo hello {who} from {{{{ ti.task_id }}}} > hello.txt"

            hello("tes")
        op = dag.task_dict["hello"]
        assert isinstance(op, TesTaskOperator)
        return op

    ti = FakeTi("hello", run_id=f"manual__{uuid.uuid4().hex[:8]}")
    with pytest.raises(TaskDeferred) as deferred:
        parse().execute(context_of(ti))
    assert calls == ["tes"]
    # The script is not kept in XCom (served as is by the API and UI).
    assert not any("echo hello" in json.dumps(value, default=str) for value in ti.xcoms.values()), ti.xcoms
    trigger = deferred.value.trigger
    # The trigger's poller lists by the deployment tag the task was submitted with, and Funnel's
    # listing filtered so shows the task.
    with TesHook("tes_decorator") as hook:
        submitted = hook.get_task(trigger.tes_task_id, view=TesView.FULL)
        assert trigger.deployment and (submitted.tags or {}).get("deployment") == trigger.deployment
        listed = hook.list_tasks(tags={"deployment": trigger.deployment}, view=TesView.MINIMAL)
        assert trigger.tes_task_id in {t.id for t in listed}
    event = trigger.wait_here()

    fresh = parse()
    result = fresh.execute_complete(context_of(ti), event.to_trigger_event().payload)
    assert calls == ["tes", "tes"], "the resumed task rebuilds the command with the same arguments"
    assert result["state"] == "COMPLETE"
    assert result["exit_code"] == 0
    assert read_s3(s3_client, result["work_dir_url"] + "hello.txt") == "hello tes from hello\n"
    assert fresh.command == "echo hello tes from hello > hello.txt"

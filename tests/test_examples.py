"""The example DAGs, run by real `airflow dags test` against Funnel + moto.

One Airflow home (SQLite) per session; each test runs one DAG and checks what it left
in S3 and in XCom.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.airflow_env import AirflowEnv

pytestmark = pytest.mark.funnel


def read_s3(s3_client: Any, url: str) -> str:
    parts = urlsplit(url)
    return str(s3_client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read().decode())


def s3_exists(s3_client: Any, url: str) -> bool:
    parts = urlsplit(url)
    found = s3_client.list_objects_v2(Bucket=parts.netloc, Prefix=parts.path.lstrip("/"))
    return bool(found.get("KeyCount"))


def _check_common(result: dict[str, Any], s3_client: Any) -> None:
    assert result["state"] == "COMPLETE"
    assert result["exit_code"] == 0
    assert result["attempts"] == [result["tes_task_id"]]
    assert result["work_dir_url"] == result["outputs_url"] + "work/"
    assert s3_exists(s3_client, result["stdout_url"])
    assert s3_exists(s3_client, result["stderr_url"])


def _check_per_sample(airflow: AirflowEnv, dag_id: str, s3_client: Any) -> set[str]:
    """The mapped and the TaskFlow examples end with the same mapping over s1, s2, s3; the TES task
    ids come back so that each test can check that no two tasks shared one."""
    ids: set[str] = set()
    for index, sample in enumerate(("s1", "s2", "s3")):
        result = airflow.xcom(dag_id, "per_sample", map_index=index)
        _check_common(result, s3_client)
        assert read_s3(s3_client, result["work_dir_url"] + f"{sample}.txt") == f"processed {sample}\n"
        ids.add(result["tes_task_id"])
    return ids


def test_hello(airflow: AirflowEnv, s3_client: Any, s3_bucket: str) -> None:
    airflow.dags_test("example_tes_hello")
    assert airflow.task_states("example_tes_hello") == {"hello": "success"}
    result = airflow.xcom("example_tes_hello", "hello")
    _check_common(result, s3_client)
    assert result["outputs_url"].startswith(f"s3://{s3_bucket}/examples/outputs/example_tes_hello.hello-")
    assert read_s3(s3_client, result["work_dir_url"] + "greeting.txt") == "hello TES\n"
    assert read_s3(s3_client, result["stdout_url"]).startswith("hello from TES, run ")
    assert {o["path"] for o in result["outputs"]} >= {"/mnt/task/stdout", "/mnt/task/stderr"}
    assert airflow.xcom("example_tes_hello", "hello", key="tes_task_id") == result["tes_task_id"]
    bucket, _, key = result["outputs_url"].removeprefix("s3://").partition("/")
    assert airflow.xcom("example_tes_hello", "hello", key="tes_outputs_link") == (
        f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={key}"
    )


def test_staging(airflow: AirflowEnv, s3_client: Any, s3_bucket: str) -> None:
    first = airflow.dags_test("example_tes_staging")
    assert "staged 2 input(s): 2 uploaded, 0 skipped" in first.stdout + first.stderr
    result = airflow.xcom("example_tes_staging", "sum_numbers")
    _check_common(result, s3_client)
    assert read_s3(s3_client, result["work_dir_url"] + "sum.txt").strip() == "5050"
    assert read_s3(s3_client, result["work_dir_url"] + "refs.txt") == "alpha\nbeta\n"
    staged = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="examples/inputs/")
    keys = {o["Key"] for o in staged.get("Contents", [])}
    assert any(k.startswith("examples/inputs/file/") for k in keys)
    assert any(k.startswith("examples/inputs/directory/") for k in keys)

    # The same inputs again (the DAG writes the same bytes to a new temp folder): nothing is uploaded.
    second = airflow.dags_test("example_tes_staging")
    assert "staged 2 input(s): 0 uploaded, 2 skipped; 0 B of" in second.stdout + second.stderr
    again = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="examples/inputs/")
    assert {o["Key"]: o["LastModified"] for o in again["Contents"]} == {
        o["Key"]: o["LastModified"] for o in staged["Contents"]
    }
    assert (
        read_s3(s3_client, airflow.xcom("example_tes_staging", "sum_numbers")["work_dir_url"] + "sum.txt")
        == "5050\n"
    )


def test_preemptible_without_preemption(airflow: AirflowEnv, s3_client: Any) -> None:
    airflow.dags_test("example_tes_preemptible")
    result = airflow.xcom("example_tes_preemptible", "cheap_compute")
    _check_common(result, s3_client)
    assert read_s3(s3_client, result["work_dir_url"] + "result.txt") == "computed\n"


def test_mapped(airflow: AirflowEnv, s3_client: Any) -> None:
    airflow.dags_test("example_tes_mapped")
    states = airflow.task_states("example_tes_mapped")
    assert states == {"samples": "success", **{f"per_sample[{i}]": "success" for i in range(3)}}
    assert len(_check_per_sample(airflow, "example_tes_mapped", s3_client)) == 3


def test_pipeline(airflow: AirflowEnv, s3_client: Any) -> None:
    airflow.dags_test("example_tes_pipeline")
    produce = airflow.xcom("example_tes_pipeline", "produce")
    consume = airflow.xcom("example_tes_pipeline", "consume")
    _check_common(consume, s3_client)
    assert read_s3(s3_client, produce["work_dir_url"] + "numbers.txt") == "1\n2\n3\n4\n5\n"
    assert read_s3(s3_client, consume["work_dir_url"] + "count.txt").strip() == "5"


def test_executor_failure_reports_exit_code_and_stderr(test_dags: AirflowEnv, s3_client: Any) -> None:
    proc = test_dags.dags_test("tes_test_failing", check=False)
    assert test_dags.task_states("tes_test_failing") == {"fail": "failed"}
    output = proc.stdout + proc.stderr
    assert "exit code 3" in output
    assert "something went wrong on purpose" in output
    tes_id = test_dags.xcom("tes_test_failing", "fail", key="tes_task_id")
    assert tes_id
    link = test_dags.xcom("tes_test_failing", "fail", key="tes_task_link")
    assert link.endswith(f"/tasks/{tes_id}?view=FULL")
    # outputs of the failed command are still uploaded
    prefix = "examples/outputs/tes_test_failing.fail-"
    listing = s3_client.list_objects_v2(Bucket="tes-test", Prefix=prefix)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any(k.endswith("/stderr") for k in keys), keys
    stderr_key = next(k for k in keys if k.endswith("/stderr"))
    body = s3_client.get_object(Bucket="tes-test", Key=stderr_key)["Body"].read()
    assert b"something went wrong on purpose" in body


def test_openlineage_facets_name_s3_inputs_and_outputs(
    airflow: AirflowEnv, s3_bucket: str, tmp_path: Any
) -> None:
    events_file = tmp_path / "openlineage.jsonl"
    airflow.extra_env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
        {"type": "file", "log_file_path": str(events_file), "append": True}
    )
    try:
        airflow.dags_test("example_tes_staging")
    finally:
        airflow.extra_env.pop("AIRFLOW__OPENLINEAGE__TRANSPORT")
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    complete = [
        e
        for e in events
        if e.get("eventType") == "COMPLETE" and e.get("job", {}).get("name", "").endswith(".sum_numbers")
    ]
    assert complete, [e.get("job", {}).get("name") for e in events]
    event = complete[-1]
    result = airflow.xcom("example_tes_staging", "sum_numbers")
    inputs = {(d["namespace"], d["name"]) for d in event["inputs"]}
    outputs = {(d["namespace"], d["name"]) for d in event["outputs"]}
    namespace = f"s3://{s3_bucket}"
    assert any(ns == namespace and name.startswith("examples/inputs/file/") for ns, name in inputs), inputs
    assert any(ns == namespace and name.startswith("examples/inputs/directory/") for ns, name in inputs), (
        inputs
    )
    stdout_key = result["stdout_url"].removeprefix(namespace + "/")
    assert (namespace, stdout_key) in outputs, outputs


def test_submit_and_sense(airflow: AirflowEnv, s3_client: Any) -> None:
    airflow.dags_test("example_tes_submit_and_sense")
    assert airflow.task_states("example_tes_submit_and_sense") == {"submit": "success", "wait": "success"}
    submitted = airflow.xcom("example_tes_submit_and_sense", "submit")
    # The operator returned right after submitting: the command (sleep 8) had not ended.
    assert submitted["state"] in {"QUEUED", "INITIALIZING", "RUNNING"}, submitted
    assert "exit_code" not in submitted
    assert submitted["attempts"] == [submitted["tes_task_id"]]
    assert submitted["work_dir_url"] == submitted["outputs_url"] + "work/"
    tes_id = airflow.xcom("example_tes_submit_and_sense", "submit", key="tes_task_id")
    assert tes_id == submitted["tes_task_id"]
    # The sensor waited for that task and saw it complete; its outputs are where the result said.
    assert airflow.xcom("example_tes_submit_and_sense", "wait") == "COMPLETE"
    assert read_s3(s3_client, submitted["work_dir_url"] + "later.txt") == "finished later\n"
    assert s3_exists(s3_client, submitted["stdout_url"])


def test_taskflow_decorator_single_and_mapped(airflow: AirflowEnv, s3_client: Any) -> None:
    airflow.dags_test("example_tes_taskflow")
    states = airflow.task_states("example_tes_taskflow")
    assert states == {
        "samples": "success",
        "greet": "success",
        **{f"per_sample[{i}]": "success" for i in range(3)},
    }
    greet = airflow.xcom("example_tes_taskflow", "greet")
    _check_common(greet, s3_client)
    # The function's argument came from the upstream task's XCom; the Jinja it returned was rendered.
    assert read_s3(s3_client, greet["work_dir_url"] + "greeting.txt") == "s1 s2 s3\n"
    assert read_s3(s3_client, greet["stdout_url"]).startswith("run manual__")
    # The script is not kept in XCom (a resumed task calls the function again).
    assert not airflow.query(
        "SELECT key FROM xcom WHERE dag_id = 'example_tes_taskflow' AND key = 'tes_command'"
    )
    ids = {greet["tes_task_id"]} | _check_per_sample(airflow, "example_tes_taskflow", s3_client)
    assert len(ids) == 4


def test_script_file_read_and_templated_inline_ending_in_sh_kept(airflow: AirflowEnv, s3_client: Any) -> None:
    proc = airflow.dags_test("example_tes_script_file")
    assert airflow.task_states("example_tes_script_file") == {
        "report": "success",
        "inline_ending_in_sh": "success",
    }
    assert "command read from script file" in proc.stdout + proc.stderr
    report = airflow.xcom("example_tes_script_file", "report")
    _check_common(report, s3_client)
    lines = read_s3(s3_client, report["work_dir_url"] + "report.txt").splitlines()
    assert lines[0] == "sample: s42"
    assert lines[1].startswith("run: manual__")
    assert lines[2:] == ["line 1", "line 2", "line 3"]
    assert read_s3(s3_client, report["stdout_url"]) == "report for s42 written\n"
    inline = airflow.xcom("example_tes_script_file", "inline_ending_in_sh")
    _check_common(inline, s3_client)
    assert read_s3(s3_client, inline["stdout_url"]) == "generated by inline_ending_in_sh\n"
    assert (
        read_s3(s3_client, inline["work_dir_url"] + "generated.sh")
        == "echo generated by inline_ending_in_sh\n"
    )

"""The pydantic models against the TES 1.1 OpenAPI document's own schemas (tests/spec.py)."""

from __future__ import annotations

import gc
import json
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_tes.models import (
    MAX_INLINE_CONTENT_BYTES,
    TesCreateTaskResponse,
    TesExecutor,
    TesFileType,
    TesInput,
    TesListTasksResponse,
    TesOutput,
    TesOutputFileLog,
    TesResources,
    TesServiceInfo,
    TesState,
    TesTask,
    TesTaskStatesPage,
    from_minimal_json,
)
from tests.support.spec import EXAMPLE_SERVICE_INFO, schema_errors, validate_request_body, validate_response

KIB = 1024


def _nones(value: Any, where: str = "") -> list[str]:
    """Every place in a JSON-like tree that holds None."""
    if value is None:
        return [where or "<root>"]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _nones(v, f"{where}/{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _nones(v, f"{where}/{i}")]
    return []


def full_task() -> TesTask:
    return TesTask(
        name="airflow-dag1-task1-try1",
        description="everything the spec lets a client send",
        inputs=[
            TesInput(name="ref", url="s3://bucket/ref.fa", path="/data/ref.fa", streamable=True),
            TesInput(description="script", content="#!/bin/sh\necho hi\n", path="/scripts/run.sh"),
            TesInput(url="s3://bucket/dir/", path="/data/dir", type=TesFileType.DIRECTORY),
        ],
        outputs=[
            TesOutput(url="s3://bucket/out/result.txt", path="/out/result.txt"),
            TesOutput(url="s3://bucket/out/many/", path="/out/many/*.txt", path_prefix="/out/many/"),
            TesOutput(url="s3://bucket/out/d/", path="/out/d", type=TesFileType.DIRECTORY),
        ],
        resources=TesResources(
            cpu_cores=2,
            preemptible=False,
            ram_gb=1.5,
            disk_gb=10,
            zones=["us-west-1"],
            backend_parameters={"VmSize": "Standard_D2_v3"},
            backend_parameters_strict=True,
        ),
        executors=[
            TesExecutor(
                image="alpine:3.20",
                command=["/bin/sh", "/scripts/run.sh"],
                workdir="/data",
                stdout="/out/stdout.txt",
                stderr="/out/stderr.txt",
                env={"A": "1", "EMPTY": ""},
            ),
            TesExecutor(image="alpine", command=["true"], stdin="/data/ref.fa", ignore_error=True),
        ],
        volumes=["/vol/A/", "/scratch"],
        tags={"airflow_dag_id": "dag1", "empty": ""},
    )


# -- requests ------------------------------------------------------------------------------------


def test_full_task_request_is_spec_valid_and_has_no_none() -> None:
    body = full_task().to_request()
    assert _nones(body) == []
    validate_request_body("tesTask", body)
    assert body["inputs"][1]["content"].startswith("#!")
    assert "url" not in body["inputs"][1]
    assert body["inputs"][2]["type"] == "DIRECTORY"
    assert body["outputs"][1] == {
        "url": "s3://bucket/out/many/",
        "path": "/out/many/*.txt",
        "path_prefix": "/out/many/",
        "type": "FILE",
    }
    assert body["executors"][0]["env"] == {"A": "1", "EMPTY": ""}
    assert body["resources"]["backend_parameters_strict"] is True


def test_minimal_task_request() -> None:
    body = TesTask(executors=[TesExecutor(image="alpine", command=["true"])]).to_request()
    assert body == {"executors": [{"image": "alpine", "command": ["true"]}]}
    validate_request_body("tesTask", body)


def test_server_owned_fields_never_sent() -> None:
    task = full_task().model_copy(
        update={"id": "t-1", "state": TesState.RUNNING, "logs": [], "creation_time": "2024-01-01T00:00:00Z"}
    )
    body = task.to_request()
    assert not set(body) & TesTask.SERVER_FIELDS
    validate_request_body("tesTask", body)


def test_spec_checker_rejects_server_fields_in_a_request() -> None:
    # The checker itself: readOnly fields are refused in the request direction.
    body = {"id": "x", "state": "QUEUED", "executors": [{"image": "a", "command": ["b"]}]}
    errors = schema_errors("tesTask", body, request=True)
    assert any("id" in e for e in errors)
    assert any("state" in e for e in errors)
    assert schema_errors("tesTask", body, request=False) == []


def test_request_model_rejects_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        TesExecutor(image="a", command=["b"], bogus=1)  # type: ignore[call-arg]


# -- validation errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: TesInput(url="s3://b/k", path="data/x"), id="input-relative"),
        pytest.param(lambda: TesInput(url="s3://b/k", path="/data/../x"), id="input-dotdot"),
        pytest.param(lambda: TesOutput(url="s3://b/k", path="out.txt"), id="output-relative"),
        pytest.param(
            lambda: TesOutput(url="s3://b/", path="out/*.txt", path_prefix="/out"),
            id="output-wildcard-relative",
        ),
        pytest.param(
            lambda: TesOutput(url="s3://b/", path="/out/*.txt", path_prefix="out"),
            id="output-prefix-relative",
        ),
        pytest.param(lambda: TesExecutor(image="a", command=["b"], workdir="data"), id="workdir-relative"),
        pytest.param(lambda: TesExecutor(image="a", command=["b"], stdout="o.txt"), id="stdout-relative"),
        pytest.param(
            lambda: TesTask(executors=[TesExecutor(image="a", command=["b"])], volumes=["vol"]),
            id="volume-relative",
        ),
    ],
)
def test_relative_paths_rejected(build: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"absolute|normalised"):
        build()


def test_wildcard_output_needs_a_prefix() -> None:
    with pytest.raises(pydantic.ValidationError, match="path_prefix"):
        TesOutput(url="s3://b/", path="/out/*.txt")


def test_input_needs_exactly_one_source() -> None:
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        TesInput(url="s3://b/k", content="x", path="/x")
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        TesInput(path="/x")


def test_inline_content_limit() -> None:
    assert MAX_INLINE_CONTENT_BYTES == 128 * KIB
    ok = TesInput(content="a" * (128 * KIB), path="/x")
    validate_request_body("tesInput", ok.to_request())
    with pytest.raises(pydantic.ValidationError, match="inline content"):
        TesInput(content="a" * (128 * KIB + 1), path="/x")
    # The limit is in bytes of UTF-8, not characters.
    with pytest.raises(pydantic.ValidationError, match="inline content"):
        TesInput(content="é" * (64 * KIB + 1), path="/x")


def test_inline_content_must_be_a_file() -> None:
    with pytest.raises(pydantic.ValidationError, match="FILE"):
        TesInput(content="x", path="/x", type=TesFileType.DIRECTORY)


def test_request_task_needs_an_executor() -> None:
    with pytest.raises(pydantic.ValidationError, match="executor"):
        TesTask(name="x")
    with pytest.raises(pydantic.ValidationError, match="executor"):
        TesTask.model_validate({"name": "x", "executors": []})
    with pytest.raises(pydantic.ValidationError):
        TesExecutor(image="a", command=[])
    with pytest.raises(pydantic.ValidationError):
        TesExecutor(image="", command=["b"])


def test_duplicate_input_paths_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="more than one input"):
        TesTask(
            executors=[TesExecutor(image="a", command=["b"])],
            inputs=[TesInput(url="s3://b/1", path="/x"), TesInput(url="s3://b/2", path="/x")],
        )


@pytest.mark.parametrize("field", ["ram_gb", "disk_gb", "cpu_cores"])
def test_resources_must_be_positive(field: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        TesResources(**{field: 0})


@pytest.mark.parametrize("field", ["ram_gb", "disk_gb"])
def test_resources_reject_infinity(field: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        TesResources(**{field: float("inf")})


def test_double_leading_slash_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        TesInput(url="s3://b/k", path="//data")


# -- responses ------------------------------------------------------------------------------------

FULL_RESPONSE: dict[str, Any] = {
    "id": "task-123",
    "state": "COMPLETE",
    "name": "airflow-dag1-task1-try1",
    "inputs": [
        {"url": "s3://bucket/ref.fa", "path": "/data/ref.fa", "type": "FILE", "x-server": 1},
        {"content": "echo hi", "path": "/scripts/run.sh"},
    ],
    "outputs": [{"url": "s3://bucket/out/", "path": "/out/*.txt", "path_prefix": "/out/", "type": "FILE"}],
    "resources": {"cpu_cores": 1, "ram_gb": 1.0, "vendor_field": "x"},
    "executors": [{"image": "alpine", "command": ["echo", "hi"], "env": {"A": "1"}, "extension": True}],
    "volumes": ["/vol/A/"],
    "tags": {"k": "v"},
    "logs": [
        {
            "logs": [
                {
                    "start_time": "2024-01-01T00:00:01Z",
                    "end_time": "2024-01-01T00:00:02Z",
                    "stdout": "hi\n",
                    "stderr": "",
                    "exit_code": 0,
                    "pid": 42,
                }
            ],
            "metadata": {"host": "worker-1"},
            "start_time": "2024-01-01T00:00:00Z",
            "end_time": "2024-01-01T00:00:03Z",
            "outputs": [{"url": "s3://bucket/out/a.txt", "path": "/out/a.txt", "size_bytes": "1024"}],
            "system_logs": ["started", "done"],
        }
    ],
    "creation_time": "2024-01-01T00:00:00Z",
    "funnel_extension": {"nested": [1, 2]},
}


def test_full_response_parses_with_unknown_fields() -> None:
    validate_response("tesTask", FULL_RESPONSE)
    task = TesTask.from_response(FULL_RESPONSE)
    assert task.id == "task-123"
    assert task.state is TesState.COMPLETE
    assert task.executors[0].env == {"A": "1"}
    assert task.last_log is not None
    assert task.last_log.outputs[0].size_bytes == 1024
    assert task.last_log.logs[0].exit_code == 0
    assert task.last_log.system_logs == ["started", "done"]
    # unknown fields are dropped, not kept in a way that would be sent back
    assert "funnel_extension" not in task.model_dump()
    assert "vendor_field" not in task.to_request()["resources"]


def test_unknown_fields_rejected_on_the_request_path() -> None:
    with pytest.raises(pydantic.ValidationError):
        TesTask.model_validate(FULL_RESPONSE)


def test_missing_optional_fields_parse() -> None:
    doc = {"id": "t", "state": "RUNNING", "executors": [{"image": "a", "command": ["b"]}]}
    validate_response("tesTask", doc)
    task = TesTask.from_response(doc)
    assert task.inputs is None
    assert task.outputs is None
    assert task.logs is None
    assert task.last_log is None
    # A task log with neither logs nor outputs (servers omit empty lists).
    task = TesTask.from_response({"id": "t", "state": "RUNNING", "logs": [{}]})
    assert task.last_log is not None
    assert task.last_log.logs == []
    assert task.last_log.outputs == []


def test_minimal_view_response_without_executors() -> None:
    task = TesTask.from_response({"id": "x", "state": "QUEUED"})
    assert task.id == "x"
    assert task.state is TesState.QUEUED
    assert task.executors == []


def test_basic_view_input_without_content_parses() -> None:
    doc = {
        "id": "t",
        "state": "RUNNING",
        "inputs": [{"path": "/scripts/run.sh", "type": "FILE"}],
        "executors": [{"image": "a", "command": ["b"]}],
    }
    validate_response("tesTask", doc)
    task = TesTask.from_response(doc)
    assert task.inputs is not None
    assert task.inputs[0].path == "/scripts/run.sh"


@pytest.mark.parametrize("size", ["1024", " 7 ", 2048, "9223372036854775807"])
def test_size_bytes_string_or_int(size: Any) -> None:
    log = TesOutputFileLog.from_response({"url": "s3://b/k", "path": "/k", "size_bytes": size})
    assert log.size_bytes == int(str(size).strip())
    assert isinstance(log.size_bytes, int)


def test_size_bytes_garbage_is_a_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        TesOutputFileLog.from_response({"url": "s3://b/k", "path": "/k", "size_bytes": "12 MB"})


def test_unknown_state_is_a_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="unknown TES state"):
        TesTask.from_response({"id": "x", "state": "DONE"})
    with pytest.raises(pydantic.ValidationError):
        TesTask.from_response({"id": "x", "state": "queued"})


@pytest.mark.parametrize("state", [["QUEUED"], {"s": "QUEUED"}])
def test_unhashable_state_is_a_validation_error(state: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        TesTask.from_response({"id": "x", "state": state})


def test_list_and_create_responses() -> None:
    doc = {
        "tasks": [{"id": "a", "state": "QUEUED"}, {"id": "b", "state": "CANCELING", "z": 1}],
        "next_page_token": "n",
    }
    page = TesListTasksResponse.from_response(doc)
    assert [t.id for t in page.tasks] == ["a", "b"]
    assert page.next_page_token == "n"
    assert TesListTasksResponse.from_response({}).tasks == []
    validate_response("tesCreateTaskResponse", {"id": "a"})
    assert TesCreateTaskResponse.from_response({"id": "a", "extra": 1}).id == "a"
    with pytest.raises(pydantic.ValidationError):
        TesCreateTaskResponse.from_response({})
    with pytest.raises(pydantic.ValidationError):
        TesCreateTaskResponse.from_response({"id": ""})


def test_service_info_response() -> None:
    doc = {
        **EXAMPLE_SERVICE_INFO,
        "id": "org.example.funnel",
        "storage": ["s3://bucket"],
        "tesResources_backend_parameters": ["VmSize"],
        "x-extra": True,
    }
    validate_response("tesServiceInfo", doc)
    info = TesServiceInfo.from_response(doc)
    assert info.type.artifact == "tes"
    assert info.storage == ["s3://bucket"]


# -- states -------------------------------------------------------------------------------------

TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}
NOT_TERMINAL = {"CANCELING", "PAUSED", "UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING"}


def test_states_match_the_spec() -> None:
    from tests.support.spec import load_spec

    spec_states = load_spec()["components"]["schemas"]["tesState"]["enum"]
    assert {s.value for s in TesState} == set(spec_states) == TERMINAL | NOT_TERMINAL
    assert len(TesState) == 11


@pytest.mark.parametrize("state", sorted(TERMINAL | NOT_TERMINAL))
def test_is_terminal(state: str) -> None:
    parsed = TesTask.from_response({"id": "x", "state": state}).state
    assert parsed is TesState(state)
    assert parsed.is_terminal is (state in TERMINAL)


# -- property test --------------------------------------------------------------------------------

_segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,7}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)
_abs_path = st.lists(_segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
_text = st.text(max_size=20)
_opt_text = st.none() | _text
_url = st.sampled_from(["s3://bucket/", "gs://b/", "file:///tmp/", "https://example.org/"]).flatmap(
    lambda base: _segment.map(lambda s: base + s)
)


@st.composite
def _inputs(draw: st.DrawFn) -> list[TesInput]:
    paths = draw(st.lists(_abs_path, max_size=4, unique=True))
    items = []
    for path in paths:
        if draw(st.booleans()):
            items.append(TesInput(content=draw(st.text(max_size=50)), path=path, name=draw(_opt_text)))
        else:
            kind = draw(st.sampled_from(TesFileType))
            items.append(
                TesInput(
                    url=draw(_url),
                    path=path,
                    type=kind,
                    description=draw(_opt_text),
                    streamable=draw(st.none() | st.booleans()),
                )
            )
    return items


@st.composite
def _outputs(draw: st.DrawFn) -> TesOutput:
    if draw(st.booleans()):
        prefix = draw(_abs_path)
        return TesOutput(
            url=draw(_url), path=prefix + "/*" + draw(st.sampled_from([".txt", "", "?"])), path_prefix=prefix
        )
    return TesOutput(
        url=draw(_url), path=draw(_abs_path), type=draw(st.sampled_from(TesFileType)), name=draw(_opt_text)
    )


_positive = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
_resources = st.builds(
    TesResources,
    cpu_cores=st.none() | st.integers(min_value=1, max_value=2**31 - 1),
    preemptible=st.none() | st.booleans(),
    ram_gb=st.none() | _positive,
    disk_gb=st.none() | _positive,
    zones=st.none() | st.lists(_text, max_size=3),
    backend_parameters=st.none() | st.dictionaries(_text, _text, max_size=3),
    backend_parameters_strict=st.none() | st.booleans(),
)
_executor = st.builds(
    TesExecutor,
    image=st.text(min_size=1, max_size=20),
    command=st.lists(_text, min_size=1, max_size=4),
    workdir=st.none() | _abs_path,
    stdin=st.none() | _abs_path,
    stdout=st.none() | _abs_path,
    stderr=st.none() | _abs_path,
    env=st.none() | st.dictionaries(_text, _text, max_size=3),
    ignore_error=st.none() | st.booleans(),
)
_task = st.builds(
    TesTask,
    id=st.none() | _text,
    state=st.none() | st.sampled_from(TesState),
    name=_opt_text,
    description=_opt_text,
    inputs=st.none() | _inputs(),
    outputs=st.none() | st.lists(_outputs(), max_size=3),
    resources=st.none() | _resources,
    executors=st.lists(_executor, min_size=1, max_size=3),
    volumes=st.none() | st.lists(_abs_path, max_size=3),
    tags=st.none() | st.dictionaries(_text, _text, max_size=3),
    creation_time=_opt_text,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task=_task)
def test_any_valid_task_request_is_spec_valid(task: TesTask) -> None:
    body = task.to_request()
    assert _nones(body) == []
    assert not set(body) & TesTask.SERVER_FIELDS
    validate_request_body("tesTask", body)
    # ... and what a server echoes back parses to the same request again; a field of ""
    # counts as unset on the way back (Go servers render unset strings that way).
    echoed = {**body, "id": "srv-1", "state": "QUEUED", "unknown": 1}
    assert TesTask.from_response(echoed).to_request() == _without_empty_strings(body)


_FREE_FORM_MAPS = frozenset({"tags", "env", "backend_parameters", "metadata"})


def _without_empty_strings(value: Any) -> Any:
    """Drop "" model fields; user maps (tags, env, ...) keep their values as they are."""
    if isinstance(value, dict):
        return {
            k: v if k in _FREE_FORM_MAPS else _without_empty_strings(v) for k, v in value.items() if v != ""
        }
    if isinstance(value, list):
        return [_without_empty_strings(v) for v in value]
    return value


# -- answers the spec allows must never fail a finished task (issue: truthful outcomes) ------------


def test_spec_valid_answer_with_loose_values_is_read() -> None:
    """The spec's own example has ``slurmm_id: 123456`` (a number) in a string map."""
    answer = {
        "id": "t1",
        "state": "COMPLETE",
        "tags": {"run": 42, "ok": True, "text": "x"},
        "resources": {"cpu_cores": 0.5, "backend_parameters": {"slots": 4}},
        "executors": [{"image": "a", "command": ["b"], "env": {"N": 1}}],
        "logs": [
            {
                "metadata": {"slurmm_id": 123456},
                "logs": [{"exit_code": 0}],
                "outputs": [{"url": "s3://b/o", "path": "/o"}],
            }
        ],
    }
    task = TesTask.from_response(answer)
    assert task.tags == {"run": "42", "ok": "true", "text": "x"}
    assert task.resources is not None
    assert task.resources.cpu_cores == 0.5
    assert task.resources.backend_parameters == {"slots": "4"}
    assert task.executors[0].env == {"N": "1"}
    assert task.last_log is not None
    assert task.last_log.metadata == {"slurmm_id": "123456"}
    assert task.last_log.outputs[0].size_bytes is None


def test_requests_stay_strict() -> None:
    with pytest.raises(ValueError, match="whole number"):
        TesResources.model_validate({"cpu_cores": 0.5})
    with pytest.raises(ValueError, match="valid string"):
        TesTask.model_validate({"executors": [{"image": "a", "command": ["b"]}], "tags": {"n": 1}})


def test_service_info_without_type_or_version() -> None:
    info = TesServiceInfo.from_response({"id": "org.example", "name": "tes"})
    assert info.type is None
    assert info.version is None


def test_minimal_page_is_judged_entry_by_entry() -> None:
    from airflow_provider_tes.models import TesListTasksResponse, from_minimal_json

    body = (
        b'{"tasks": [{"id": "a", "state": "RUNNING"}, {"id": "b", "state": "SUSPENDED"}, '
        b'{"state": "QUEUED"}]}'
    )
    page = from_minimal_json(TesListTasksResponse, body)
    assert [(t.id, t.state) for t in page.tasks] == [("a", TesState.RUNNING), ("b", None)]


# -- what the shared poller reads every round ---------------------------------------------------


def _listing_page(n: int, *extra: dict[str, Any]) -> bytes:
    tasks = [
        {"id": f"task{i:05d}", "state": "RUNNING", "name": f"n{i}", "tags": {"dag_id": "d"}, "logs": []}
        for i in range(n)
    ]
    return json.dumps({"tasks": [*tasks, *extra], "next_page_token": "next"}).encode()


def test_a_page_of_states_is_judged_entry_by_entry() -> None:
    body = _listing_page(
        2,
        {"id": "foreign", "state": "SLEEPING"},
        {"id": "odd", "state": ["RUNNING"]},
        {"state": "COMPLETE"},
        {"id": 7, "state": "COMPLETE"},
        {"id": "done", "state": "COMPLETE"},
    )
    page = from_minimal_json(TesTaskStatesPage, body)
    assert page.tasks == {
        "task00000": TesState.RUNNING,
        "task00001": TesState.RUNNING,
        "foreign": None,
        "odd": None,
        "done": TesState.COMPLETE,
    }
    assert page.next_page_token == "next"
    with pytest.raises(pydantic.ValidationError):
        from_minimal_json(TesTaskStatesPage, b'{"tasks": [')


def test_a_page_of_states_is_one_object_for_the_garbage_collector() -> None:
    """Thousands of model objects alive per page made the triggerer's collector run full
    collections every few rounds (B1); a page of states adds a handful of tracked objects."""
    body = _listing_page(2000)

    def tracked_while_held(model: Any) -> int:
        gc.collect()
        before = len(gc.get_objects())
        page = from_minimal_json(model, body)
        held = len(gc.get_objects()) - before
        del page
        return held

    assert tracked_while_held(TesTaskStatesPage) < 20
    assert tracked_while_held(TesListTasksResponse) > 2000  # what the poller read before


# -- what live logs read ------------------------------------------------------------------------


def test_a_page_for_live_logs_keeps_ids_states_and_logs_entry_by_entry() -> None:
    from airflow_provider_tes.models import from_logs_json

    executor = {"image": "alpine", "command": ["true"]}
    full = {
        "id": "full",
        "state": "RUNNING",
        "executors": [executor],
        "inputs": [{"path": "/mnt/task/in", "url": "s3://b/k", "content": "x" * 1000}],
        "logs": [{"logs": [{"stdout": "one\ntwo\n", "exit_code": 0}], "system_logs": ["pulled"]}],
    }
    body = json.dumps(
        {
            "tasks": [
                full,
                {"id": "minimal", "state": "RUNNING"},  # no executors: not the FULL view
                {"state": "RUNNING", "executors": [executor]},  # no id: left out
                {"id": "garbled", "state": "RUNNING", "executors": [executor], "logs": "not a list"},
            ],
            "next_page_token": "t2",
        }
    ).encode()
    page = from_logs_json(body)
    assert [t.id for t in page.tasks] == ["full"]
    task = page.tasks[0]
    assert task.state is TesState.RUNNING
    assert task.last_log is not None and task.last_log.logs[-1].stdout == "one\ntwo\n"
    assert task.last_log.system_logs == ["pulled"]
    assert task.inputs in (None, []) and not task.executors, "only what live logs read is kept"
    assert page.partial == ["minimal"]
    assert page.next_page_token == "t2"
    with pytest.raises(pydantic.ValidationError):
        from_logs_json(b'{"tasks": [], "next_page_token": {"not": "a token"}}')

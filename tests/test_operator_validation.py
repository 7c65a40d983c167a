"""Bad operator input: a clear error naming the argument, and not one HTTP request sent.

The hook runs over an ``httpx.MockTransport`` that counts requests; the connection is
real (an Airflow connection from an env var), so unknown and wrong-type connections are
exercised too.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.operators.tes import TesTaskOperator


class Counter:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(500)


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {
        "conn_type": "tes",
        "host": "http://tes.invalid:8000/ga4gh/tes/v1",
        "login": "u",
        "password": "pw-xyz",
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_TES_DEFAULT",
        json.dumps({**base, "extra": {"outputs_url": "s3://bucket/out/", "inputs_url": "s3://bucket/in/"}}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_TES_NO_URLS", json.dumps(base))
    monkeypatch.setenv(
        "AIRFLOW_CONN_TES_ALLOW_LIST",
        json.dumps(
            {**base, "extra": {"outputs_url": "s3://b/out/", "allowed_local_roots": ["/srv", "/data"]}}
        ),
    )
    monkeypatch.setenv("AIRFLOW_CONN_NOT_TES", json.dumps({**base, "conn_type": "http"}))


def context() -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="dag",
        task_id="task",
        run_id="manual__2025-01-01",
        map_index=-1,
        try_number=1,
        xcom_push=lambda **kw: None,
    )
    return {"ti": ti}


def run(counter: Counter, **kwargs: Any) -> None:
    args: dict[str, Any] = {"task_id": "t", "image": "alpine:3.20", "command": "echo hi"}
    args.update(kwargs)
    op = TesTaskOperator(**args)
    op.hook = TesHook(op.tes_conn_id, transport=httpx.MockTransport(counter), retries=0)
    op.execute(context())  # type: ignore[arg-type]


@pytest.fixture
def local_file(tmp_path: Path) -> str:
    path = tmp_path / "data.txt"
    path.write_text("x")
    return str(path)


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("empty image", {"image": ""}, "'image'"),
    ("whitespace image", {"image": "   "}, "'image'"),
    ("sif image", {"image": "/images/tool.sif"}, "registry image"),
    ("relative sif", {"image": "tool.sif"}, "local image file"),
    ("unknown image scheme", {"image": "s3://bucket/image.tar"}, "unsupported scheme"),
    ("image with spaces", {"image": "alpine 3.20"}, "whitespace"),
    ("empty command", {"command": "  "}, "'command'"),
    ("empty argv", {"command": []}, "'command'"),
    ("argv with non-str", {"command": ["echo", 1]}, "'command'"),
    ("relative input path", {"inputs": {"data/x": "s3://b/x"}}, "must be absolute"),
    ("dotted input path", {"inputs": {"/data/../x": "s3://b/x"}}, "normalised"),
    ("reserved input path", {"inputs": {"/mnt/task/command": "s3://b/x"}}, "used by the operator"),
    ("unsupported input scheme", {"inputs": {"/data/x": "sftp://host/x"}}, "unsupported scheme 'sftp'"),
    ("relative local input", {"inputs": {"/data/x": "relative/file.txt"}}, "absolute path on the worker"),
    ("missing local input", {"inputs": {"/data/x": "/no/such/file/anywhere.txt"}}, "does not exist"),
    ("input of wrong type", {"inputs": {"/data/x": 42}}, "local path, a URL or a TesInput"),
    ("inputs not a mapping", {"inputs": ["/data/x"]}, "'inputs'"),
    (
        "input both url and content",
        {"inputs": {"/data/x": {"url": "s3://b/x", "content": "y"}}},
        "exactly one",
    ),
    ("content too large", {"inputs": {"/data/x": {"content": "x" * (128 * 1024 + 1)}}}, "inline content"),
    ("relative output path", {"outputs": {"out.txt": "s3://b/out.txt"}}, "must be absolute"),
    ("output to http", {"outputs": {"/out.txt": "https://host/out.txt"}}, "'outputs'"),
    ("output not a URL", {"outputs": {"/out.txt": "/local/out.txt"}}, "'outputs'"),
    (
        "duplicate path",
        {"inputs": {"/data/x": "s3://b/x"}, "outputs": {"/data/x": "s3://b/y"}},
        "more than once",
    ),
    ("wildcard in the mapping form", {"outputs": {"/mnt/task/work/*.txt": "s3://b/o/"}}, "path_prefix"),
    ("wildcard without prefix", {"outputs": [{"path": "/out/*.txt", "url": "s3://b/o/"}]}, "path_prefix"),
    ("negative ram", {"ram_gb": -1}, "'ram_gb'"),
    ("zero cpu", {"cpu_cores": 0}, "'cpu_cores'"),
    ("string cpu", {"cpu_cores": "two"}, "'cpu_cores'"),
    ("negative disk", {"disk_gb": -5}, "'disk_gb'"),
    ("bad disk mount", {"disk_gb": {"data": 10}}, "'disk_gb'"),
    ("preemptible negative", {"preemptible": -1}, "'preemptible'"),
    ("preemptible bool", {"preemptible": True}, "'preemptible'"),
    ("relative workdir", {"workdir": "work"}, "'workdir'"),
    ("relative shell", {"shell": "sh"}, "'shell'"),
    ("relative volume", {"volumes": ["scratch"]}, "'volumes'"),
    ("bad env name", {"env": {"1BAD": "x"}}, "'env'"),
    ("env not mapping", {"env": ["A=1"]}, "'env'"),
    ("tags not str", {"tags": {"a": 1}}, "'tags'"),
    ("zones as str", {"zones": "us-east-1a"}, "'zones'"),
    ("missing outputs_url", {"tes_conn_id": "tes_no_urls"}, "outputs_url"),
    ("bad outputs_url scheme", {"outputs_url": "http://host/out/"}, "'outputs_url'"),
    ("outputs_url without bucket", {"outputs_url": "s3:///out/"}, "names no bucket"),
    ("missing image", {"image": None}, "'image'"),
    ("missing command", {"command": None}, "'command'"),
    ("executors and image", {"executors": [{"image": "a", "command": ["b"]}]}, "'executors'"),
    ("unknown connection", {"tes_conn_id": "no_such_conn"}, "AIRFLOW_CONN_NO_SUCH_CONN"),
    ("non-TES connection", {"tes_conn_id": "not_tes"}, "type 'tes'"),
    ("negative poll interval", {"poll_interval": -1}, "'poll_interval'"),
    (
        "procfs input",
        {"inputs": {"/data/x": "/proc/self/environ"}},
        "inputs: local path '/proc/self/environ'",
    ),
    (
        "input outside allow-list",
        {"inputs": {"/data/x": "/etc/hostname"}, "allowed_local_roots": ["/srv"]},
        "outside",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case: str, kwargs: dict[str, Any], message: str) -> None:
    counter = Counter()
    with pytest.raises(TesConfigurationError) as info:
        run(counter, **kwargs)
    assert message in str(info.value)
    assert counter.requests == [], f"{case}: {len(counter.requests)} request(s) sent before failing"
    assert "pw-xyz" not in str(info.value)


def test_local_input_needs_inputs_url(local_file: str) -> None:
    counter = Counter()
    with pytest.raises(TesConfigurationError) as info:
        run(counter, tes_conn_id="tes_no_urls", outputs_url="s3://b/out/", inputs={"/data/x": local_file})
    assert "inputs_url" in str(info.value) and "connection" in str(info.value)
    assert counter.requests == []


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25

"""OpenLineage facets of a TES task: inputs and outputs as datasets, no hard dependency."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.providers.common.compat.openlineage.facet import Dataset, ExternalQueryRunFacet
from airflow.providers.openlineage.extractors import OperatorLineage

import airflow_provider_tes
from airflow_provider_tes.container import GUEST_COMMAND_PATH, command_executor, standard_outputs
from airflow_provider_tes.identity import OutputFolder
from airflow_provider_tes.models import TesFileType, TesInput, TesOutput, TesTask
from airflow_provider_tes.openlineage import dataset_identifier, lineage_for_task

FOLDER = OutputFolder.new(
    "s3://results/tes/outputs/", "genomics.align-0f3a9c-t1", datetime(2026, 11, 25, 10, 15, tzinfo=UTC)
)
OUT_DIR = FOLDER.url
STAGED_READS = "s3://staging/tes/inputs/file/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def _task_body() -> dict[str, Any]:
    """What the operator sends for a realistic alignment task (built with the real models)."""
    task = TesTask(
        name="genomics.align-0f3a9c-t1",
        inputs=[
            TesInput(path="/data/reads.fq", url=STAGED_READS),
            TesInput(path="/data/ref/", url="s3://refs/hg38/", type=TesFileType.DIRECTORY),
            TesInput(
                path="/data/panel.bed", url="https://user:secret@example.org:8443/panels/v2.bed?sig=abc"
            ),
            TesInput(path=GUEST_COMMAND_PATH, content="bwa mem /data/ref/hg38.fa /data/reads.fq > out.sam\n"),
        ],
        outputs=[
            *standard_outputs(FOLDER),
            TesOutput(path="/mnt/task/work/aligned.sam", url="gs://archive/align/aligned.sam"),
        ],
        executors=[
            command_executor(
                image="quay.io/biocontainers/bwa:0.7.18--he4a0461_1",
                command="bwa mem ...",
                shell="/bin/sh",
                workdir=None,
                env=None,
            )
        ],
    )
    return task.to_request()


def _result() -> dict[str, Any]:
    return {
        "tes_task_id": "d4tes0001",
        "state": "COMPLETE",
        "exit_code": 0,
        "attempts": ["d4tes0001"],
        "outputs_url": OUT_DIR,
        "work_dir_url": f"{OUT_DIR}work/",
        "stdout_url": f"{OUT_DIR}stdout",
        "stderr_url": f"{OUT_DIR}stderr",
        "outputs": [{"url": f"{OUT_DIR}stdout", "path": "/mnt/task/stdout", "size_bytes": 31}],
    }


def _ids(datasets: list[Any]) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def test_facets_name_inputs_and_outputs() -> None:
    lineage = lineage_for_task(_task_body(), _result(), tes_base_url="https://tes.example.org/ga4gh/tes/v1/")
    assert isinstance(lineage, OperatorLineage)
    assert all(isinstance(d, Dataset) for d in [*lineage.inputs, *lineage.outputs])

    # Inline content (the script) is not a dataset; credentials and the query never leak.
    assert _ids(lineage.inputs) == [
        ("s3://staging", STAGED_READS.removeprefix("s3://staging/")),
        ("s3://refs", "hg38"),
        ("https://example.org:8443", "/panels/v2.bed"),
    ]
    prefix = "tes/outputs/genomics.align-0f3a9c-t1-20261125-101500/"
    # The work dir appears once although the task sends ".../work" and the result says ".../work/".
    assert _ids(lineage.outputs) == [
        ("s3://results", prefix + "work"),
        ("s3://results", prefix + "stdout"),
        ("s3://results", prefix + "stderr"),
        ("s3://results", prefix + "exit_code"),
        ("gs://archive", "align/aligned.sam"),
    ]
    facet = lineage.run_facets["externalQuery"]
    assert isinstance(facet, ExternalQueryRunFacet)
    assert (facet.externalQueryId, facet.source) == ("d4tes0001", "https://tes.example.org/ga4gh/tes/v1")
    assert "secret" not in repr(lineage) and "sig=" not in repr(lineage)


def test_result_adds_outputs_the_body_does_not_name() -> None:
    body = {"inputs": [{"path": "/in", "url": "s3://b/in.txt"}], "executors": []}
    lineage = lineage_for_task(body, {"work_dir_url": "s3://b/out/w/", "stdout_url": None})
    assert lineage is not None
    assert _ids(lineage.inputs) == [("s3://b", "in.txt")]
    assert _ids(lineage.outputs) == [("s3://b", "out/w")]
    assert lineage.run_facets == {}


def test_no_result_and_empty_body() -> None:
    lineage = lineage_for_task({}, None)
    assert lineage is not None
    assert (lineage.inputs, lineage.outputs) == ([], [])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/a/b.txt", ("s3://bucket", "a/b.txt")),
        ("s3://bucket/dir/", ("s3://bucket", "dir")),
        ("s3://bucket", ("s3://bucket", "/")),
        ("gs://bkt/x/y", ("gs://bkt", "x/y")),
        ("http://host/p/q.txt", ("http://host", "/p/q.txt")),
        ("https://u:pw@host:444/p?token=t#frag", ("https://host:444", "/p")),
        ("ftp://ftp.ebi.ac.uk/pub/x.fa.gz", ("ftp://ftp.ebi.ac.uk", "/pub/x.fa.gz")),
        ("drs://drs.example.org/abc123", ("drs://drs.example.org", "/abc123")),
        ("file:///local/data.txt", ("file", "/local/data.txt")),
        ("not a url", None),
        ("", None),
        ("s3:///no-bucket", None),
        ("http://host:notaport/x", None),
    ],
)
def test_dataset_identifier(url: str, expected: tuple[str, str] | None) -> None:
    assert dataset_identifier(url) == expected


@pytest.mark.parametrize(
    "blocked",
    ["airflow.providers.openlineage.extractors", "airflow.providers.common.compat.openlineage.facet"],
)
def test_returns_none_without_the_openlineage_provider(monkeypatch: pytest.MonkeyPatch, blocked: str) -> None:
    # A None entry in sys.modules makes "import x" raise ImportError, as when not installed.
    monkeypatch.setitem(sys.modules, blocked, None)
    assert lineage_for_task(_task_body(), _result()) is None


def test_module_imports_without_the_openlineage_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    # Importing the helper module must not need the provider either.
    for name in ("airflow.providers.openlineage", "airflow.providers.openlineage.extractors"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "airflow_provider_tes.openlineage")
    monkeypatch.delattr(airflow_provider_tes, "openlineage")
    import airflow_provider_tes.openlineage as fresh

    assert fresh.lineage_for_task(_task_body(), _result()) is None

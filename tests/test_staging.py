"""Staging of local inputs to S3, against a real moto server (``moto_server`` from conftest)."""

from __future__ import annotations

import builtins
import collections
import functools
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_tes import _local_inputs, _s3, staging
from airflow_provider_tes.exceptions import TesConfigurationError, TesStagingError
from airflow_provider_tes.staging import (
    MANIFEST_FORMAT,
    InputStager,
    StagedInput,
    StagingReport,
    digest_directory,
    digest_file,
)

BUCKET = "tes-staging"
MiB = 1024**2
#: ``stage_with_warnings(*paths)``: what one new run staged, and the warnings it logged.
StageWithWarnings = Callable[..., tuple[list[StagedInput], list[str]]]


@pytest.fixture(scope="module")
def bucket(moto_server: Any) -> str:
    return str(moto_server.create_bucket(BUCKET))


@pytest.fixture
def inputs_url(bucket: str) -> str:
    """A fresh prefix per test, so tests never see each other's objects."""
    return f"s3://{bucket}/runs/{uuid.uuid4().hex}/"


@pytest.fixture
def prefix(inputs_url: str) -> str:
    return inputs_url.removeprefix(f"s3://{BUCKET}/")


@pytest.fixture
def calls(s3_client: Any) -> Iterator[collections.Counter[str]]:
    """Counts the S3 operations the shared client makes (e.g. ``PutObject``)."""
    counter: collections.Counter[str] = collections.Counter()

    def count(model: Any, **_: Any) -> None:
        counter[model.name] += 1

    s3_client.meta.events.register("before-call.s3", count)
    yield counter
    s3_client.meta.events.unregister("before-call.s3", count)


@pytest.fixture
def stager(inputs_url: str, s3_client: Any) -> Callable[..., InputStager]:
    """Builds stagers on the shared boto3 client; each one stands for a new DAG run."""

    def make(**kwargs: Any) -> InputStager:
        return InputStager(inputs_url, None, client=s3_client, **kwargs)

    return make


@pytest.fixture
def stage_with_warnings(
    stager: Callable[..., InputStager], caplog: pytest.LogCaptureFixture
) -> StageWithWarnings:
    """Stages ``paths`` in a new run and returns what it staged with the warnings that run logged:
    what staging replaces, or cannot keep apart on the server, must be said in the task log."""

    def stage(*paths: Path) -> tuple[list[StagedInput], list[str]]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=staging.__name__):
            staged = stager().stage([str(path) for path in paths]).staged
        return staged, [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    return stage


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def keys(s3_client: Any, prefix: str) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def read(s3_client: Any, key: str) -> bytes:
    return bytes(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- files


def test_file_is_staged_once_through_the_airflow_connection(
    tmp_path: Path, inputs_url: str, prefix: str, aws_conn: str, s3_client: Any
) -> None:
    data = b"ACGT" * 1000
    path = write(tmp_path / "reads.fq", data)

    first = InputStager(inputs_url, aws_conn).stage([str(path)])
    [item] = first.staged
    assert item == StagedInput(
        source=str(path),
        url=f"{inputs_url}file/{sha256(data)}",
        is_directory=False,
        digest=sha256(data),
        size_bytes=len(data),
        uploaded_bytes=len(data),
        skipped=False,
    )
    assert read(s3_client, f"{prefix}file/{sha256(data)}") == data

    [again] = InputStager(inputs_url, aws_conn).stage([str(path)]).staged
    assert (again.uploaded_bytes, again.skipped, again.url) == (0, True, item.url)
    assert keys(s3_client, prefix) == {f"{prefix}file/{sha256(data)}"}


def test_same_content_in_two_files_is_one_object(
    tmp_path: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    a = write(tmp_path / "a.txt", b"same bytes")
    b = write(tmp_path / "other" / "b.txt", b"same bytes")

    staged = stager().stage([str(a), str(b)]).staged

    assert staged[0].url == staged[1].url
    assert sorted(item.uploaded_bytes for item in staged) == [0, len(b"same bytes")]
    assert sorted(item.skipped for item in staged) == [False, True]
    assert keys(s3_client, prefix) == {f"{prefix}file/{sha256(b'same bytes')}"}


def test_large_file_is_uploaded_multipart(
    tmp_path: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any, calls: Any
) -> None:
    data = os.urandom(80 * MiB)
    path = write(tmp_path / "big.bam", data)

    [item] = (
        stager(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_workers=4)
        .stage([str(path)])
        .staged
    )

    assert item.uploaded_bytes == len(data)
    assert calls["CreateMultipartUpload"] == 1
    assert calls["UploadPart"] == 10
    assert calls["PutObject"] == 0
    key = f"{prefix}file/{sha256(data)}"
    assert "-" in s3_client.head_object(Bucket=BUCKET, Key=key)["ETag"]  # a multipart ETag
    assert read(s3_client, key) == data


@pytest.mark.parametrize(
    "planted",
    [b"something else", b"fake content", "fake content with its own checksum"],
    ids=["other size", "same size, no checksum", "same size, its own checksum"],
)
def test_object_planted_at_a_digest_key_is_detected_and_replaced(
    tmp_path: Path,
    prefix: str,
    stager: Callable[..., InputStager],
    stage_with_warnings: StageWithWarnings,
    s3_client: Any,
    planted: bytes | str,
) -> None:
    path = write(tmp_path / "x", b"real content")
    key = f"{prefix}file/{sha256(b'real content')}"
    if isinstance(planted, bytes):
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=planted)
    else:
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"fake content", ChecksumAlgorithm="SHA256")

    [item], [warning] = stage_with_warnings(path)

    assert (item.uploaded_bytes, item.skipped) == (len(b"real content"), False)
    assert read(s3_client, key) == b"real content"
    assert key in warning
    assert "replacing it" in warning
    # Replaced with a checksum: the next run trusts it.
    assert stager().stage([str(path)]).staged[0].skipped


def test_stage_bytes_uses_the_file_layout(
    tmp_path: Path, inputs_url: str, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    script = b"#!/bin/sh\necho " + b"x" * 100_000 + b"\n"

    item = stager().stage_bytes(script, suffix=".sh")

    assert item.url == f"{inputs_url}file/{sha256(script)}"
    assert (item.digest, item.size_bytes, item.uploaded_bytes, item.skipped) == (
        sha256(script),
        len(script),
        len(script),
        False,
    )
    assert read(s3_client, f"{prefix}file/{sha256(script)}") == script
    # Same bytes again, or from a file: nothing more is sent.
    assert stager().stage_bytes(script).skipped
    [from_file] = stager().stage([str(write(tmp_path / "run.sh", script))]).staged
    assert from_file.skipped
    assert from_file.url == item.url
    assert keys(s3_client, prefix) == {f"{prefix}file/{sha256(script)}"}


# --------------------------------------------------------------------------- directories


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ref"
    write(root / "genome.fa", b">chr1\nACGT\n")
    write(root / "idx" / "genome.bwt", b"\x00\x01" * 5000)
    write(root / "idx" / "deep" / "x" / "y.txt", b"deep")
    write(root / "copy.fa", b">chr1\nACGT\n")  # same content as genome.fa, another path
    (root / "empty").mkdir()
    return root


def test_directory_layout_contents_and_marker(
    tree: Path, inputs_url: str, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    files = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}

    [item] = stager().stage([str(tree)]).staged

    digest, entries = digest_directory(str(tree))
    assert item.digest == digest
    assert item.url == f"{inputs_url}directory/{digest}/"
    assert item.is_directory
    assert not item.skipped
    assert item.size_bytes == item.uploaded_bytes == sum(map(len, files.values()))
    assert entries == sorted((rel, sha256(data), len(data)) for rel, data in files.items())

    tree_prefix = f"{prefix}directory/{digest}/"
    marker = f"{prefix}manifests/{digest}.json"
    assert keys(s3_client, prefix) == {tree_prefix + rel for rel in files} | {marker}
    for rel, data in files.items():
        assert read(s3_client, tree_prefix + rel) == data

    manifest_bytes = read(s3_client, marker)
    assert sha256(manifest_bytes) == digest  # the marker proves the digest
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == MANIFEST_FORMAT
    assert ["empty", "directory", ""] in manifest["entries"]
    assert ["idx/deep/x/y.txt", "file", sha256(b"deep")] in manifest["entries"]


def test_second_directory_run_is_skipped_with_one_head(
    tree: Path, stager: Callable[..., InputStager], calls: Any
) -> None:
    stager().stage([str(tree)])
    calls.clear()

    [item] = stager().stage([str(tree)]).staged

    assert (item.uploaded_bytes, item.skipped) == (0, True)
    assert dict(calls) == {"HeadObject": 1}


def test_interrupted_directory_upload_is_completed(
    tree: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any, calls: Any
) -> None:
    same_stager = stager()  # also proves a stager remembers nothing it would have to re-check
    [first] = same_stager.stage([str(tree)]).staged
    lost = f"{prefix}directory/{first.digest}/idx/genome.bwt"
    marker = f"{prefix}manifests/{first.digest}.json"
    s3_client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": lost}, {"Key": marker}]})
    calls.clear()

    [item] = same_stager.stage([str(tree)]).staged
    operations = dict(calls)

    assert (item.uploaded_bytes, item.skipped) == (len(b"\x00\x01" * 5000), False)
    assert read(s3_client, lost) == b"\x00\x01" * 5000
    assert sha256(read(s3_client, marker)) == first.digest
    # One HEAD for the marker, one listing of the tree, one HEAD per object still there (its checksum
    # is checked, see test_planted_tree_object_is_replaced), and only the missing object plus the marker sent.
    assert operations == {"HeadObject": 1 + 3, "ListObjectsV2": 1, "PutObject": 2}


def test_identical_directories_in_one_run_are_written_once(
    tree: Path, tmp_path: Path, stager: Callable[..., InputStager], calls: Any
) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(tree, twin)

    first, second = stager().stage([str(tree), str(twin)]).staged

    assert first.url == second.url
    assert (first.skipped, second.skipped, second.uploaded_bytes) == (False, True, 0)
    assert calls["PutObject"] == sum(1 for p in tree.rglob("*") if p.is_file()) + 1  # files + marker


def test_directory_with_a_foreign_object_is_refused(
    tree: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    digest, _ = digest_directory(str(tree))
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}directory/{digest}/stray.txt", Body=b"?")

    with pytest.raises(TesStagingError, match=r"stray\.txt"):
        stager().stage([str(tree)])
    assert f"{prefix}manifests/{digest}.json" not in keys(s3_client, prefix)


def test_planted_tree_object_is_replaced(
    tree: Path,
    prefix: str,
    stage_with_warnings: StageWithWarnings,
    s3_client: Any,
) -> None:
    digest, _ = digest_directory(str(tree))
    planted = f"{prefix}directory/{digest}/genome.fa"
    s3_client.put_object(Bucket=BUCKET, Key=planted, Body=b">chr1\nTTTT\n")  # same size, other bytes

    [item], warnings = stage_with_warnings(tree)

    assert read(s3_client, planted) == b">chr1\nACGT\n"
    assert item.uploaded_bytes == item.size_bytes  # the planted object was sent again
    assert [planted in warning for warning in warnings] == [True]


def test_marker_without_checksum_makes_the_tree_be_checked_again(
    tree: Path,
    prefix: str,
    stager: Callable[..., InputStager],
    stage_with_warnings: StageWithWarnings,
    s3_client: Any,
) -> None:
    # As an earlier version left it: the tree and the marker, with no SHA-256 on any of them, and one
    # tree object with other bytes of the same size.
    digest, entries = digest_directory(str(tree))
    for rel, _, _ in entries:
        body = b"\x00\x02" * 5000 if rel == "idx/genome.bwt" else (tree / rel).read_bytes()
        s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}directory/{digest}/{rel}", Body=body)
    [item] = stager().stage([str(tree)]).staged  # writes the right marker: undo that below
    manifest_bytes = read(s3_client, f"{prefix}manifests/{digest}.json")
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}manifests/{digest}.json", Body=manifest_bytes)
    for rel, _, _ in entries:
        key = f"{prefix}directory/{digest}/{rel}"
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=read(s3_client, key))
    s3_client.put_object(
        Bucket=BUCKET, Key=f"{prefix}directory/{digest}/idx/genome.bwt", Body=b"\x00\x02" * 5000
    )

    [again], warnings = stage_with_warnings(tree)

    assert read(s3_client, f"{prefix}directory/{digest}/idx/genome.bwt") == b"\x00\x01" * 5000
    assert again.uploaded_bytes == again.size_bytes  # no object vouched for itself, all were replaced
    warned = " ".join(warnings)
    assert f"manifests/{digest}.json" in warned
    assert f"directory/{digest}/idx/genome.bwt" in warned
    # Now every object carries its checksum: the next run is one HEAD again.
    assert stager().stage([str(tree)]).staged[0].skipped
    assert item.digest == digest


def test_empty_directories_are_valid_and_change_the_digest(
    tmp_path: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    (tmp_path / "bare").mkdir()
    (tmp_path / "nested" / "sub").mkdir(parents=True)

    bare, nested = stager().stage([str(tmp_path / "bare"), str(tmp_path / "nested")]).staged

    assert bare.digest != nested.digest
    assert (bare.size_bytes, bare.uploaded_bytes, bare.skipped) == (0, 0, False)  # the marker was written
    assert keys(s3_client, prefix) == {
        f"{prefix}manifests/{bare.digest}.json",
        f"{prefix}manifests/{nested.digest}.json",
    }
    assert json.loads(read(s3_client, f"{prefix}manifests/{nested.digest}.json"))["entries"] == [
        ["sub", "directory", ""]
    ]
    assert stager().stage([str(tmp_path / "bare")]).staged[0].skipped


def test_symlinked_files_are_followed(
    tmp_path: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    target = write(tmp_path / "data" / "target.txt", b"through a link")
    root = tmp_path / "linked"
    root.mkdir()
    (root / "link.txt").symlink_to(target)
    (root / "dirlink").symlink_to(target.parent, target_is_directory=True)

    [item] = stager().stage([str(root)]).staged

    tree_prefix = f"{prefix}directory/{item.digest}/"
    assert read(s3_client, tree_prefix + "link.txt") == b"through a link"
    assert read(s3_client, tree_prefix + "dirlink/target.txt") == b"through a link"


def test_symlink_loops_are_refused(tmp_path: Path, stager: Callable[..., InputStager]) -> None:
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    with pytest.raises(TesConfigurationError, match="symlink loop"):
        stager().stage([str(root)])

    (tmp_path / "self").symlink_to(tmp_path / "self")
    with pytest.raises(TesConfigurationError, match="symlink loop"):
        stager().stage([str(tmp_path / "self")])


def test_prefix_conflicting_names_are_warned_about(
    tmp_path: Path, stage_with_warnings: StageWithWarnings
) -> None:
    write(tmp_path / "d" / "ref.fa", b"A")
    write(tmp_path / "d" / "ref.fa.fai", b"B")
    _, warnings = stage_with_warnings(tmp_path / "d")
    assert any("'ref.fa' and 'ref.fa.fai'" in warning for warning in warnings), warnings


# --------------------------------------------------------------------------- integrity


def no_partial_uploads(s3_client: Any, prefix: str) -> bool:
    return not s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")


@pytest.mark.parametrize("size", [64 * 1024, 12 * MiB], ids=["one request", "multipart"])
def test_file_changed_between_hashing_and_upload_leaves_no_object(
    tmp_path: Path,
    prefix: str,
    stager: Callable[..., InputStager],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    path = write(tmp_path / "reads.bin", os.urandom(size))
    hash_file = staging._digest_identity

    def hash_then_change(identity: Any) -> str:
        digest = hash_file(identity)
        with open(path, "r+b") as handle:
            handle.write(b"EVIL!")  # same size, after the digest was taken
        return digest

    monkeypatch.setattr(staging, "_digest_identity", hash_then_change)
    monkeypatch.setattr(hash_then_change, "cache_clear", hash_file.cache_clear, raising=False)
    make = functools.partial(stager, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)

    with pytest.raises(TesStagingError, match="changed while it was being uploaded"):
        make().stage([str(path)])
    assert keys(s3_client, prefix) == set()
    assert no_partial_uploads(s3_client, prefix)

    # The next run stages the file as it is now, under the digest of those bytes.
    monkeypatch.setattr(staging, "_digest_identity", hash_file)
    [item] = make().stage([str(path)]).staged
    assert item.digest == sha256(path.read_bytes())
    assert read(s3_client, f"{prefix}file/{item.digest}") == path.read_bytes()


def test_file_changed_during_a_multipart_upload_leaves_no_object(
    tmp_path: Path,
    prefix: str,
    stager: Callable[..., InputStager],
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(tmp_path / "reads.bin", os.urandom(12 * MiB))
    read_part = _s3._VerifiedStream.read
    changed: list[int] = []

    def read_then_change(self: Any, amount: int = -1) -> bytes:
        data = read_part(self, amount)
        if not changed:  # after the first part was read, before the last one is
            with open(path, "r+b") as handle:
                handle.seek(-5, os.SEEK_END)
                handle.write(b"EVIL!")
            changed.append(len(data))
        return data

    monkeypatch.setattr(_s3._VerifiedStream, "read", read_then_change)
    with pytest.raises(TesStagingError, match="changed while it was being uploaded"):
        stager(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB).stage([str(path)])

    assert changed == [5 * MiB]
    assert keys(s3_client, prefix) == set()
    assert no_partial_uploads(s3_client, prefix)


def test_write_through_a_shared_mmap_that_keeps_the_metadata_is_caught(
    tmp_path: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    path = write(tmp_path / "reads.bin", b"A" * 65536)
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), 65536) as shared:
        shared[0:5] = b"HELLO"  # the first write makes the page dirty (and may update mtime)
        before = os.stat(path)
        hashed = digest_file(str(path))  # remembered for this size/mtime/ctime/inode
        shared[0:5] = b"EVIL!"  # an already-dirty page: no fault, so no metadata change
        after = os.stat(path)
        assert (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino) == (
            after.st_size,
            after.st_mtime_ns,
            after.st_ctime_ns,
            after.st_ino,
        )

        with pytest.raises(TesStagingError, match="changed while it was being uploaded"):
            stager().stage([str(path)])
        assert keys(s3_client, prefix) == set()

    # The remembered digest was dropped: the next run hashes what the file holds now.
    [item] = stager().stage([str(path)]).staged
    assert item.digest == sha256(path.read_bytes()) != hashed
    assert read(s3_client, f"{prefix}file/{item.digest}") == path.read_bytes()


# --------------------------------------------------------------------------- validation


def test_missing_path_is_a_configuration_error_and_nothing_is_uploaded(
    tmp_path: Path, prefix: str, stager: Callable[..., InputStager], s3_client: Any
) -> None:
    good = write(tmp_path / "good.txt", b"fine")
    missing = tmp_path / "no" / "such.txt"
    with pytest.raises(TesConfigurationError, match=re.escape(str(missing))):
        stager().stage([str(good), str(missing)])
    assert keys(s3_client, prefix) == set()


@pytest.mark.parametrize(
    "url",
    ["", "bucket/prefix/", "http://bucket/prefix/", "s3:///prefix/", "s3://bucket/p?x=1", "gs://bucket/"],
)
def test_bad_inputs_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(TesConfigurationError, match=r"inputs_url.*s3://"):
        InputStager(url)


def test_prefix_without_trailing_slash_gets_one() -> None:
    # Building a stager touches neither S3 nor the Airflow connection.
    stager = InputStager("s3://bucket/some/prefix", "no_such_connection")
    assert (stager.bucket, stager.prefix) == ("bucket", "some/prefix/")
    assert InputStager("s3://bucket", None).prefix == ""


# --------------------------------------------------------------------------- digests


def test_digest_file_is_memoised_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "memo.bin", b"first version")
    opened: list[str] = []

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(_local_inputs, "open", counting_open, raising=False)

    assert digest_file(str(path)) == sha256(b"first version")
    assert digest_file(str(path)) == sha256(b"first version")
    assert len(opened) == 1

    # Same size, mtime put back: the ctime still gives the change away.
    st = path.stat()
    path.write_bytes(b"other version")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digest_file(str(path)) == sha256(b"other version")
    assert len(opened) == 2


def test_digest_directory_depends_on_names_and_content(tmp_path: Path) -> None:
    write(tmp_path / "a" / "x.txt", b"1")
    write(tmp_path / "b" / "y.txt", b"1")
    write(tmp_path / "c" / "x.txt", b"2")
    write(tmp_path / "d" / "x.txt", b"1")
    digests = {name: digest_directory(str(tmp_path / name))[0] for name in "abcd"}
    assert digests["a"] == digests["d"]
    assert len({digests["a"], digests["b"], digests["c"]}) == 3
    assert digest_directory(str(tmp_path / "a"))[1] == [("x.txt", sha256(b"1"), 1)]


def test_summary_line() -> None:
    staged = [
        StagedInput("/a", "s3://b/file/1", False, "1", 3_000_000, 3_000_000, False),
        StagedInput("/b", "s3://b/file/2", False, "2", 500, 0, True),
    ]
    line = StagingReport(staged, seconds=2.0).summary()
    assert line == (
        "staged 2 input(s): 1 uploaded, 1 skipped; 3.0 MB of 3.0 MB uploaded in 2.00 s (1.5 MB/s)"
    )

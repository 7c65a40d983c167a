"""B2: staging local inputs to S3 (moto's server on loopback).

* one large file: ``InputStager.stage`` (hashing included, digest memo cleared first) vs boto3's
  ``upload_file`` of the same file to the same endpoint;
* a directory of many small files: ``InputStager.stage`` vs a plain loop of ``put_object``;
* a second ``stage`` of the same inputs: bytes uploaded (must be 0) and time;
* digest rate: ``staging.digest_file`` (memo cleared) vs ``hashlib.file_digest`` over the same file.

The large file is read once before anything is timed, so every contender reads it from the page
cache. Each stager and boto3 client is made inside the timed part (their imports are not).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MachineMeter, Row, median

BUCKET = "tes-bench"
AWS_CONN_ID = "aws_bench"
MB = 1e6


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(16 * 1024**2)
    with open(path, "wb") as handle:
        written = 0
        counter = 0
        while written < size:
            # A counter in every block keeps the file from being one block repeated.
            chunk = counter.to_bytes(8, "little") + block[8 : min(len(block), size - written)]
            handle.write(chunk[: size - written])
            written += len(chunk[: size - written])
            counter += 1


def _make_tree(root: Path, count: int, rng: random.Random) -> int:
    total = 0
    per_dir = 100
    for i in range(count):
        sub = root / f"d{i // per_dir:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(512, 4096))
        (sub / f"f{i:05d}.dat").write_bytes(data)
        total += len(data)
    return total


def _boto3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _hashlib_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _secs(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "] s"


def _second_run_rows(case: str, uploaded: int, seconds: float, first_seconds: float) -> list[Row]:
    """Staging the same inputs again: nothing may be uploaded, and it should take a fraction."""
    return [
        Row(
            "B2",
            case + ", 2nd run",
            "bytes uploaded",
            float(uploaded),
            target="0 bytes",
            passed=uploaded == 0,
            backend="moto server",
        ),
        Row(
            "B2",
            case + ", 2nd run",
            "seconds",
            seconds,
            first_seconds,
            backend="moto server",
            notes="vs first run",
        ),
    ]


def run(*, quick: bool, tmp: Path, log: Any) -> tuple[list[Row], dict[str, Any]]:
    # Imported before timing: module import cost is not staging throughput.
    import airflow.providers.amazon.aws.hooks.s3  # noqa: F401

    from airflow_provider_tes import staging
    from airflow_provider_tes.staging import InputStager, digest_file
    from tests.support.stack import MotoServer

    file_size = (64 if quick else 1024) * 1024**2
    file_count = 500 if quick else 10_000
    digest_reps = 3
    file_reps = 5
    work = tmp / "b2"
    work.mkdir()
    big = work / "big.bin"
    tree = work / "tree"
    t0 = time.perf_counter()
    _make_file(big, file_size)
    tree_bytes = _make_tree(tree, file_count, random.Random(7))
    log(
        f"  B2: made a {file_size / MB:.0f} MB file and {file_count} files ({tree_bytes / MB:.1f} MB) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    expected = _hashlib_digest(big)  # also warms the page cache for everyone below

    raw: dict[str, Any] = {"file_bytes": file_size, "dir_files": file_count, "dir_bytes": tree_bytes}
    rows: list[Row] = []
    meter = MachineMeter().start()
    with MotoServer(log_path=work / "moto.log") as s3:
        s3.create_bucket(BUCKET)
        os.environ[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"] = json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3.endpoint_url, "region_name": "us-east-1"},
            }
        )

        def stage(prefix: str, path: Path) -> tuple[float, Any]:
            stager = InputStager(f"s3://{BUCKET}/{prefix}/", aws_conn_id=AWS_CONN_ID)
            started = time.perf_counter()
            report = stager.stage([str(path)])
            return time.perf_counter() - started, report

        # -- large file: boto3 and the stager take turns, each on a fresh key; medians compared --
        def boto3_upload(key: str) -> float:
            started = time.perf_counter()
            client = _boto3_client(s3.endpoint_url)
            client.upload_file(str(big), BUCKET, key)
            elapsed = time.perf_counter() - started
            client.delete_object(Bucket=BUCKET, Key=key)  # moto keeps objects in memory
            return elapsed

        # moto's first large upload in a process is much slower than the next ones (it grows its
        # memory); one untimed upload first keeps that from landing on whoever goes first.
        boto3_upload("warm-up")
        boto_times: list[float] = []
        stage_times: list[float] = []
        for rep in range(file_reps):
            boto_times.append(boto3_upload(f"boto3/big-{rep}"))
            staging._digest_identity.cache_clear()
            elapsed, report = stage(f"stager-file-{rep}", big)
            stage_times.append(elapsed)
            if rep < file_reps - 1:  # the last one stays for the second run
                key = report.staged[0].url.removeprefix(f"s3://{BUCKET}/")
                _boto3_client(s3.endpoint_url).delete_object(Bucket=BUCKET, Key=key)
        stage_s, boto_s = median(stage_times), median(boto_times)
        assert stage_s is not None
        assert boto_s is not None
        item = report.staged[0]
        if item.digest != expected or item.uploaded_bytes != file_size:
            raise RuntimeError(f"stager staged {item} (expected digest {expected}, {file_size} bytes)")
        again_s, again = stage(f"stager-file-{file_reps - 1}", big)
        again_bytes = sum(x.uploaded_bytes for x in again.staged)
        log(
            f"  B2 file: stager {_secs(stage_times)}, boto3 upload_file {_secs(boto_times)}, "
            f"second run {again_s:.3f} s / {again_bytes} bytes"
        )
        raw["file"] = {
            "stager_s": stage_times,
            "boto3_s": boto_times,
            "again_s": again_s,
            "again_bytes": again_bytes,
        }
        size_case = f"{file_size / 1024**2:.0f} MiB file"
        rows += [
            Row(
                "B2",
                size_case,
                "upload MB/s",
                file_size / stage_s / MB,
                file_size / boto_s / MB,
                target=">= 0.9x boto3",
                passed=boto_s / stage_s >= 0.9,
                backend="moto server",
                notes=f"median of {file_reps} each, taking turns; stager time includes hashing + its client",
            ),
            *_second_run_rows(size_case, again_bytes, again_s, stage_s),
        ]

        # -- directory: a plain put_object loop vs the stager --
        client = None
        started = time.perf_counter()
        client = _boto3_client(s3.endpoint_url)
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                client.put_object(Bucket=BUCKET, Key=f"loop/{path.relative_to(tree)}", Body=path.read_bytes())
        loop_s = time.perf_counter() - started
        staging._digest_identity.cache_clear()
        dir_s, dir_report = stage("stager-dir", tree)
        dir_item = dir_report.staged[0]
        if dir_item.uploaded_bytes != tree_bytes:
            raise RuntimeError(f"stager uploaded {dir_item.uploaded_bytes} of {tree_bytes} bytes")
        dir_again_s, dir_again = stage("stager-dir", tree)
        dir_again_bytes = sum(x.uploaded_bytes for x in dir_again.staged)
        log(
            f"  B2 dir: stager {dir_s:.2f} s, put_object loop {loop_s:.2f} s, "
            f"second run {dir_again_s:.3f} s / {dir_again_bytes} bytes"
        )
        raw["directory"] = {
            "stager_s": dir_s,
            "loop_s": loop_s,
            "again_s": dir_again_s,
            "again_bytes": dir_again_bytes,
        }
        dir_case = f"dir of {file_count} files"
        rows += [
            Row(
                "B2",
                dir_case,
                "files/s",
                file_count / dir_s,
                file_count / loop_s,
                backend="moto server",
                notes="stager time includes hashing and the manifest",
            ),
            *_second_run_rows(dir_case, dir_again_bytes, dir_again_s, dir_s),
        ]

    # -- digest rate (no S3 involved) --
    ours, theirs = [], []
    for _ in range(digest_reps):
        started = time.perf_counter()
        _hashlib_digest(big)
        theirs.append(time.perf_counter() - started)
        staging._digest_identity.cache_clear()
        started = time.perf_counter()
        got = digest_file(str(big))
        ours.append(time.perf_counter() - started)
        if got != expected:
            raise RuntimeError("digest_file disagrees with hashlib")
    ours_s, theirs_s = min(ours), min(theirs)
    log(f"  B2 digest: digest_file {_secs(ours)}, hashlib {_secs(theirs)}")
    raw["digest"] = {"digest_file_s": ours, "hashlib_s": theirs}
    raw["machine_cores_busy"] = meter.stop()
    rows.append(
        Row(
            "B2",
            f"{file_size / 1024**2:.0f} MiB file",
            "digest MB/s",
            file_size / ours_s / MB,
            file_size / theirs_s / MB,
            target=">= 0.8x hashlib",
            passed=theirs_s / ours_s >= 0.8,
            notes=f"best of {digest_reps}, page cache warm",
        )
    )
    return rows, raw

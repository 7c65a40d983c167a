"""The object store, against a real moto server (``moto_server`` from conftest)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_tes._s3 import S3ObjectStore
from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.storage import (
    DEFAULT_AWS_CONN_ID,
    STORE_SCHEMES,
    ObjectContentMismatchError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStoreError,
    object_store_for,
    resolve_aws_conn_id,
)

MiB = 1024**2


@pytest.fixture
def base(s3_bucket: str) -> str:
    """A fresh prefix URL per test."""
    return f"s3://{s3_bucket}/storage/{uuid.uuid4().hex}/"


@pytest.fixture
def store(s3_client: Any) -> S3ObjectStore:
    return S3ObjectStore(None, client=s3_client, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


# --------------------------------------------------------------------------- choosing a store


def test_aws_connection_id_is_resolved_in_one_order() -> None:
    assert resolve_aws_conn_id("mine", "from_tes") == "mine"
    assert resolve_aws_conn_id(None, "from_tes") == "from_tes"
    assert resolve_aws_conn_id("", None) == DEFAULT_AWS_CONN_ID == "aws_default"


@pytest.mark.parametrize("url", ["gs://bucket/x", "/tmp/x", "https://host/x"])
def test_a_scheme_without_a_store_is_a_configuration_error(url: str) -> None:
    with pytest.raises(TesConfigurationError, match=r"no object store.*s3://"):
        object_store_for(url)


def test_s3_is_served_without_touching_the_connection() -> None:
    store = object_store_for("s3://bucket/key", aws_conn_id="no_such_connection")
    assert isinstance(store, S3ObjectStore)
    assert store.aws_conn_id == "no_such_connection"
    assert "s3" in STORE_SCHEMES


# --------------------------------------------------------------------------- reading tails


def test_read_tail_through_the_airflow_connection(base: str, aws_conn: str, s3_client: Any) -> None:
    url = f"{base}stdout"
    s3_client.put_object(Bucket=split(url)[0], Key=split(url)[1], Body=b"line 1\nline 2\nlast line\n")
    store = object_store_for(url, aws_conn_id=resolve_aws_conn_id(None, aws_conn))

    assert store.read_tail(url, 10) == b"last line\n"
    assert store.read_tail(url, 10_000) == b"line 1\nline 2\nlast line\n"


def test_read_tail_tells_empty_from_missing_from_unreadable(
    base: str, store: S3ObjectStore, s3_client: Any
) -> None:
    empty = f"{base}empty"
    s3_client.put_object(Bucket=split(empty)[0], Key=split(empty)[1], Body=b"")

    assert store.read_tail(empty, 100) == b""
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        store.read_tail(f"{base}missing", 100)
    with pytest.raises(ObjectStoreError, match="NoSuchBucket") as unreadable:
        store.read_tail("s3://no-such-bucket-here/stdout", 100)
    assert not isinstance(unreadable.value, ObjectNotFoundError)
    with pytest.raises(ValueError, match="positive"):
        store.read_tail(empty, 0)


# --------------------------------------------------------------------------- objects and checksums


def test_put_bytes_records_a_checksum_that_stat_reads_back(base: str, store: S3ObjectStore) -> None:
    url = f"{base}manifest.json"
    store.put_bytes(url, b"{}")

    assert store.stat(url) == ObjectInfo(url, 2, sha256(b"{}"))
    assert (store.exists(url), store.size(url), store.checksum(url)) == (True, 2, sha256(b"{}"))
    assert store.stat(f"{base}nothing") is None
    assert (store.exists(f"{base}nothing"), store.size(f"{base}nothing")) == (False, None)


def test_an_object_written_by_another_tool_has_no_checksum(
    base: str, store: S3ObjectStore, s3_client: Any
) -> None:
    url = f"{base}foreign"
    s3_client.put_object(Bucket=split(url)[0], Key=split(url)[1], Body=b"written elsewhere")
    assert store.stat(url) == ObjectInfo(url, len(b"written elsewhere"), None)


def test_list_sizes_under_a_prefix(base: str, store: S3ObjectStore) -> None:
    store.put_bytes(f"{base}a/1", b"x")
    store.put_bytes(f"{base}a/2", b"yy")
    store.put_bytes(f"{base}b", b"zzz")
    assert store.list_sizes(f"{base}a/") == {f"{base}a/1": 1, f"{base}a/2": 2}
    assert store.list_sizes(f"{base}nothing/") == {}


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["one request", "multipart"])
def test_upload_file_records_the_verified_digest(
    tmp_path: Path, base: str, store: S3ObjectStore, s3_client: Any, size: int
) -> None:
    data = os.urandom(size)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    url = f"{base}file/{sha256(data)}"

    store.upload_file(url, str(path), size=size, sha256=sha256(data))

    assert store.stat(url) == ObjectInfo(url, size, sha256(data))
    bucket, key = split(url)
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["one request", "multipart"])
@pytest.mark.parametrize("change", ["other bytes", "shorter", "longer"])
def test_upload_file_refuses_bytes_that_do_not_hash_to_the_key(
    tmp_path: Path, base: str, store: S3ObjectStore, s3_client: Any, size: int, change: str
) -> None:
    data = os.urandom(size)
    path = tmp_path / "data.bin"
    changed = {"other bytes": data[:-1] + bytes([data[-1] ^ 1]), "shorter": data[:-1], "longer": data + b"!"}
    path.write_bytes(changed[change])
    url = f"{base}file/{sha256(data)}"

    with pytest.raises(ObjectContentMismatchError, match="changed while it was being uploaded"):
        store.upload_file(url, str(path), size=size, sha256=sha256(data))

    assert store.stat(url) is None
    assert not s3_client.list_multipart_uploads(Bucket=split(url)[0]).get("Uploads")


def test_file_urls_are_read_where_the_worker_shares_the_file_system(tmp_path: Path) -> None:
    path = tmp_path / "stdout"
    path.write_bytes(b"x" * 10 + b"tail")
    url = f"file://{path}"
    store = object_store_for(url)
    assert store.read_tail(url, 4) == b"tail"
    assert store.size(url) == 14
    with pytest.raises(ObjectNotFoundError):
        store.read_tail(f"file://{tmp_path}/missing", 4)
    with pytest.raises(TesConfigurationError, match="stages to s3:// only"):
        store.put_bytes(url, b"no")

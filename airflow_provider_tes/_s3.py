"""S3 behind :class:`~airflow_provider_tes.storage.ObjectStore`, through the amazon provider's S3Hook.

Kept apart from :mod:`airflow_provider_tes.storage` so that boto3 is imported only when a task
really reaches object storage, never while DAG files are parsed. Why uploads verify what they
send is said in :mod:`airflow_provider_tes.storage`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from airflow_provider_tes.exceptions import TesConfigurationError
from airflow_provider_tes.storage import (
    DEFAULT_AWS_CONN_ID,
    IN_MEMORY_UPLOAD_BUDGET,
    SHA256_METADATA_KEY,
    ObjectContentMismatchError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); the key may be empty (a whole bucket)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise TesConfigurationError(f"{url!r} is not an s3://bucket/key URL")
    return parts.netloc, parts.path.lstrip("/")


class _ByteBudget:
    """Blocks while holding ``n`` more bytes would exceed the limit (a single holder may use all of it)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._free = limit
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, count: int) -> Iterator[None]:
        count = min(count, self._limit)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= count)
            self._free -= count
        try:
            yield
        finally:
            with self._changed:
                self._free += count
                self._changed.notify_all()


class _VerifiedStream:
    """A non-seekable read of ``size`` bytes whose last read fails unless they are all the file holds
    and hash to ``sha256``.

    Non-seekable, so the transfer reads it once, in order, into the part bodies it sends: the
    hash covers exactly the bytes uploaded, and the failure comes before the last part is handed
    over, so the multipart upload is aborted instead of completed.
    """

    def __init__(self, handle: Any, path: str, size: int, sha256: str) -> None:
        self._handle = handle
        self._path = path
        self._left = size
        self._expected = sha256
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, amount: int = -1) -> bytes:
        if self._left == 0:
            return b""
        amount = self._left if amount < 0 else min(amount, self._left)
        data: bytes = self._handle.read(amount)
        self._left -= len(data)
        self._hash.update(data)
        if not data or self._left == 0:
            grown = len(self._handle.read(1)) if data else 0
            _check_content(self._path, self._hash.hexdigest(), self._expected, missing=self._left - grown)
        return data


def _check_content(path: str, actual: str, expected: str, *, missing: int = 0) -> None:
    """``missing``: bytes expected but not read (negative: read beyond the expected size)."""
    if missing or actual != expected:
        raise ObjectContentMismatchError(
            f"{path} changed while it was being uploaded: the bytes read "
            + (f"differ in number by {-missing}" if missing else f"hash to {actual}, not {expected}")
        )


def _sha256_from_checksum(value: str | None) -> str | None:
    """Hex digest from a full-object ``ChecksumSHA256`` (composite ones end in ``-<parts>``)."""
    if not value or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


class S3ObjectStore(ObjectStore):
    """S3 (and S3-compatible stores) through the amazon provider's ``S3Hook``.

    Files of at least ``multipart_threshold`` bytes go through boto3's managed multipart transfer
    one at a time with ``max_workers`` parts in flight, which saturates the link without holding
    ``max_workers`` x large files in memory; smaller ones are read whole and sent in one request,
    within :data:`IN_MEMORY_UPLOAD_BUDGET`.
    """

    scheme = "s3"

    def __init__(
        self,
        aws_conn_id: str | None = DEFAULT_AWS_CONN_ID,
        *,
        max_workers: int = 8,
        multipart_threshold: int = 64 * 1024**2,
        multipart_chunksize: int = 16 * 1024**2,
        client: Any = None,
    ) -> None:
        if max_workers < 1 or multipart_threshold < 1 or multipart_chunksize < 1:
            raise TesConfigurationError(
                "max_workers, multipart_threshold and multipart_chunksize must be positive"
            )
        self.aws_conn_id = aws_conn_id
        self.max_workers = max_workers
        self.multipart_threshold = multipart_threshold
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_workers,
        )
        # Parts read from a stream wait in memory for a thread: no more than there are threads.
        self._transfer_config.max_in_memory_upload_chunks = max_workers
        self._client: S3Client | None = client
        self._lock = threading.Lock()
        self._multipart_gate = threading.Semaphore(1)
        self._memory = _ByteBudget(IN_MEMORY_UPLOAD_BUDGET)

    # ----------------------------------------------------------------- ObjectStore

    def connect(self) -> None:
        self._s3()

    def stat(self, url: str) -> ObjectInfo | None:
        bucket, key = split_s3_url(url)
        with _calling(f"cannot check {url}"):
            try:
                head = self._s3().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            except ClientError as exc:
                if _not_found(exc):
                    return None
                raise
        recorded = (head.get("Metadata") or {}).get(SHA256_METADATA_KEY, "").lower()
        sha256 = _sha256_from_checksum(head.get("ChecksumSHA256")) or (
            recorded if _HEX_SHA256.fullmatch(recorded) else None
        )
        return ObjectInfo(url, head["ContentLength"], sha256)

    def list_sizes(self, prefix_url: str) -> dict[str, int]:
        bucket, prefix = split_s3_url(prefix_url)
        with _calling(f"cannot list {prefix_url}"):
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            objects = (obj for page in pages for obj in page.get("Contents", []))
            return {f"s3://{bucket}/{obj['Key']}": obj["Size"] for obj in objects}

    def put_bytes(self, url: str, data: bytes) -> None:
        self._put(url, data, hashlib.sha256(data).digest())

    def upload_file(self, url: str, path: str, *, size: int, sha256: str) -> None:
        if size < self.multipart_threshold:
            with self._memory.hold(size), _calling(f"cannot read {path}"), open(path, "rb") as handle:
                data = handle.read(size + 1)
            digest = hashlib.sha256(data).digest()
            _check_content(path, digest.hex(), sha256, missing=size - len(data))
            self._put(url, data, digest)
            return
        bucket, key = split_s3_url(url)
        with self._multipart_gate, _calling(f"cannot upload {path} to {url}"), open(path, "rb") as handle:
            self._s3().upload_fileobj(
                cast("IO[bytes]", _VerifiedStream(handle, path, size, sha256)),
                bucket,
                key,
                ExtraArgs={"Metadata": {SHA256_METADATA_KEY: sha256}},
                Config=self._transfer_config,
            )

    def read_tail(self, url: str, max_bytes: int) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        bucket, key = split_s3_url(url)
        with _calling(f"cannot read {url}"):
            try:
                answer = self._s3().get_object(Bucket=bucket, Key=key, Range=f"bytes=-{max_bytes}")
            except ClientError as exc:
                if _not_found(exc):
                    raise ObjectNotFoundError(f"{url} does not exist") from None
                # A suffix range is unsatisfiable only for an empty object.
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""
                raise
            return bytes(answer["Body"].read())

    # ----------------------------------------------------------------- S3

    def _put(self, url: str, data: bytes, digest: bytes) -> None:
        bucket, key = split_s3_url(url)
        with _calling(f"cannot upload to {url}"):
            self._s3().put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
                Metadata={SHA256_METADATA_KEY: digest.hex()},
            )

    def _s3(self) -> S3Client:
        """The client, made on first use so that building a store needs no Airflow connection."""
        with self._lock:
            if self._client is None:
                self._client = _client_from_connection(self.aws_conn_id, self.max_workers)
            return self._client


def _not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES


@contextlib.contextmanager
def _calling(action: str) -> Iterator[None]:
    """Turn any failure of a storage call (or of reading a file for it) into ObjectStoreError."""
    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError, OSError) as exc:
        raise ObjectStoreError(f"{action}: {exc}") from exc


def _client_from_connection(aws_conn_id: str | None, max_workers: int) -> S3Client:
    """S3 client from the Airflow connection, with a connection pool sized for our threads.

    The pool (botocore's default is 10) must cover ``max_workers`` calling threads plus the
    ``max_workers`` part uploads of the one multipart transfer that may run beside them, or urllib3
    drops connections and logs a warning for each.  The connection's own botocore config is kept.
    """
    # Imported on use: operator modules import this one while DAG files are parsed, where the amazon
    # provider's import cost would be paid for nothing.
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id)
    config = hook.config.merge(Config(max_pool_connections=max(10, 2 * max_workers + 2)))
    client: S3Client = hook.get_client_type(region_name=hook.region_name, config=config)
    return client

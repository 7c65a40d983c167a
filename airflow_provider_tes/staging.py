"""Content-addressed staging of local inputs to S3, so a remote TES server can read them.

A TES executor runs far from the Airflow worker and can only fetch inputs from object storage,
so local files and directories are uploaded first.  Keys are derived from the content, never from
the local name, which is what makes re-running a DAG cheap: bytes that are already in the bucket
are found by their digest and not sent again, and two inputs with the same bytes share one object.

Why SHA-256: it is strong enough that a digest match can stand in for a byte comparison, and on
the machines this was tuned on (x86-64 with SHA-NI, OpenSSL 3) hashlib's SHA-256 ran at about
570-750 MB/s against 310-420 MB/s for BLAKE2b, so it is also the faster choice.  The digest is
the bare hex string; the algorithm is implied by this module (and recorded in every directory
manifest), so changing it later means a new layout, not a silent mix of digests.

Bucket layout under the ``inputs_url`` prefix::

    file/<digest>                 one object per distinct file content
    directory/<digest>/<relpath>  the tree of a staged directory, as Funnel downloads it
    manifests/<digest>.json       the directory's manifest, written last: the completion marker

Why the marker lives apart from the tree: Funnel's GenericS3 backend calls a key a directory when
any other key starts with it, so no key may be a string-prefix of another; ``file/<d>.meta`` next
to ``file/<d>`` would turn the file into a directory.  Why it is written last: a directory counts
as staged only once its marker exists, so an interrupted upload is finished on the next run, which
lists the tree once and sends only what is missing.  Existing objects are never overwritten.

Empty (sub)directories are recorded in the manifest and so change the digest, but S3 has no
directories and Funnel does not recreate them; no placeholder keys are written for them (a
``dir/`` key would itself be a string-prefix of the keys inside it).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import hashlib
import itertools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from airflow_provider_tes.exceptions import TesConfigurationError, TesStagingError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

HASH_ALGORITHM = "sha256"
#: Files below this size are read into memory and sent with one PutObject: for directories of
#: thousands of small files the managed transfer's per-file thread set-up costs more than the upload.
SMALL_OBJECT_LIMIT = 8 * 1024**2
MANIFEST_FORMAT = "airflow-provider-tes/directory-manifest/v1"

_READ_CHUNK = 4 * 1024**2
#: Bounds the per-process digest memo (an entry is a few hundred bytes).
_DIGEST_MEMO_SIZE = 131_072
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_T = TypeVar("_T")


@dataclass(frozen=True)
class StagedInput:
    """Where one local input now lives in the bucket, and what it cost to put it there."""

    source: str
    url: str
    is_directory: bool
    digest: str
    size_bytes: int
    uploaded_bytes: int
    skipped: bool


@dataclass
class StagingReport:
    """Outcome of one :meth:`InputStager.stage` call, kept for the task log."""

    staged: list[StagedInput]
    seconds: float

    def summary(self) -> str:
        """One log line: it makes slow or unexpectedly large stagings visible in the task log."""
        skipped = sum(item.skipped for item in self.staged)
        uploaded = sum(item.uploaded_bytes for item in self.staged)
        total = sum(item.size_bytes for item in self.staged)
        rate = uploaded / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (
            f"staged {len(self.staged)} input(s): {len(self.staged) - skipped} uploaded, {skipped} skipped; "
            f"{_format_bytes(uploaded)} of {_format_bytes(total)} uploaded in {self.seconds:.2f} s "
            f"({rate:.1f} MB/s)"
        )


def _format_bytes(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


class _FileIdentity(NamedTuple):
    """What must stay equal for a remembered digest to still describe the file.

    ctime is included beyond size and mtime because tools that restore mtimes (``cp -p``,
    ``rsync -t``) cannot restore ctime.
    """

    realpath: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


def _identity(realpath: str, st: os.stat_result) -> _FileIdentity:
    return _FileIdentity(realpath, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True)
class _LocalFile:
    relpath: str  # posix, relative to the staged directory; "" for a single-file input
    identity: _FileIdentity


@dataclass(frozen=True)
class _LocalInput:
    """A validated local input: a single file is a tree with one file at relpath ""."""

    source: str
    is_directory: bool
    files: list[_LocalFile]
    directories: list[str]


@dataclass(frozen=True)
class _Blob:
    """One object the bucket must hold, from a local file or from memory."""

    key: str
    size: int
    identity: _FileIdentity | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class _Plan:
    """An input with its digest resolved, ready to be compared with the bucket."""

    source: str
    is_directory: bool
    digest: str
    url: str
    blobs: list[_Blob]
    marker: _Blob | None  # directories only: the manifest, written after the tree

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.blobs)


# --------------------------------------------------------------------------- local side


def _stat(path: str) -> os.stat_result:
    """``os.stat`` following symlinks, with the failures users make turned into config errors."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise TesConfigurationError(
            f"input path {path!r} does not exist (or is a dangling symlink)"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TesConfigurationError(f"input path {path!r} is a symlink loop") from None
        raise TesConfigurationError(f"input path {path!r} cannot be read: {exc.strerror}") from None


@functools.lru_cache(maxsize=_DIGEST_MEMO_SIZE)
def _digest_identity(identity: _FileIdentity) -> str:
    """Hash a file once per identity: re-running a DAG in the same worker must not re-read inputs."""
    digest = hashlib.new(HASH_ALGORITHM)
    buffer = bytearray(max(1, min(identity.size, _READ_CHUNK)))
    view = memoryview(buffer)
    try:
        with open(identity.realpath, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
            after = os.fstat(handle.fileno())
    except OSError as exc:
        raise TesConfigurationError(f"input file {identity.realpath!r} cannot be read: {exc}") from None
    if _identity(identity.realpath, after) != identity:
        raise TesStagingError(f"input file {identity.realpath!r} changed while it was being hashed")
    return digest.hexdigest()


def digest_file(path: str) -> str:
    """Hex digest of a file's content (symlinks followed), memoised for unchanged files."""
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise TesConfigurationError(f"input path {path!r} is not a regular file")
    return _digest_identity(_identity(os.path.realpath(path), st))


def _checked_relpath(relpath: str, shown: str) -> str:
    """S3 keys are UTF-8: a name that is not (an undecodable byte name) cannot be staged."""
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        raise TesConfigurationError(f"input path {shown!r} has a name that is not valid UTF-8") from None
    return relpath


def _scan_directory(root: str) -> tuple[list[_LocalFile], list[str]]:
    """Walk a tree following symlinks, refusing links back to an ancestor (they never end)."""
    root_st = _stat(root)
    files: list[_LocalFile] = []
    directories: list[str] = []
    stack = [(os.path.realpath(root), "", frozenset({(root_st.st_dev, root_st.st_ino)}))]
    while stack:
        real_dir, rel_dir, ancestors = stack.pop()
        try:
            entries = list(os.scandir(real_dir))
        except OSError as exc:
            raise TesConfigurationError(f"directory {real_dir!r} cannot be listed: {exc.strerror}") from None
        for entry in entries:
            rel = _checked_relpath(f"{rel_dir}{entry.name}", os.path.join(root, rel_dir, entry.name))
            shown = os.path.join(root, rel)
            st = _stat(entry.path)
            real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_dir, entry.name)
            if stat.S_ISDIR(st.st_mode):
                node = (st.st_dev, st.st_ino)
                if node in ancestors:
                    raise TesConfigurationError(
                        f"input path {shown!r} is a symlink loop (points to {real!r})"
                    )
                directories.append(rel)
                stack.append((real, f"{rel}/", ancestors | {node}))
            elif stat.S_ISREG(st.st_mode):
                files.append(_LocalFile(rel, _identity(real, st)))
            else:
                raise TesConfigurationError(f"input path {shown!r} is neither a regular file nor a directory")
    return files, directories


def _local_input(path: str) -> _LocalInput:
    """Validate one input path up front, so a typo fails the task before anything is uploaded."""
    source = os.path.abspath(path)
    st = _stat(source)
    if stat.S_ISDIR(st.st_mode):
        files, directories = _scan_directory(source)
        return _LocalInput(source, True, files, directories)
    if stat.S_ISREG(st.st_mode):
        return _LocalInput(source, False, [_LocalFile("", _identity(os.path.realpath(source), st))], [])
    raise TesConfigurationError(f"input path {source!r} is neither a regular file nor a directory")


def _manifest(files: Sequence[_LocalFile], digests: Sequence[str], directories: Sequence[str]) -> bytes:
    """Canonical manifest bytes; their digest is the directory's digest, so the marker is verifiable."""
    entries = sorted(
        [(f.relpath, "file", d) for f, d in zip(files, digests, strict=True)]
        + [(rel, "directory", "") for rel in directories]
    )
    document = {"format": MANIFEST_FORMAT, "algorithm": HASH_ALGORITHM, "entries": entries}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _bytes_digest(data: bytes) -> str:
    return hashlib.new(HASH_ALGORITHM, data).hexdigest()


def digest_directory(path: str) -> tuple[str, list[tuple[str, str, int]]]:
    """Digest of a directory's manifest, and the (relpath, digest, size) of every file in it."""
    tree = _local_input(path)
    if not tree.is_directory:
        raise TesConfigurationError(f"input path {tree.source!r} is not a directory")
    digests = [_digest_identity(f.identity) for f in tree.files]
    entries = sorted((f.relpath, d, f.identity.size) for f, d in zip(tree.files, digests, strict=True))
    return _bytes_digest(_manifest(tree.files, digests, tree.directories)), entries


def _prefix_conflicts(keys: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs where one key is a string-prefix of another (adjacent once sorted)."""
    ordered = sorted(keys)
    return [(a, b) for a, b in itertools.pairwise(ordered) if b.startswith(a)]


# --------------------------------------------------------------------------- remote side


def _parse_inputs_url(inputs_url: str) -> tuple[str, str]:
    parts = urlsplit(inputs_url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise TesConfigurationError(
            f"inputs_url must be an s3:// URL naming a bucket and an optional prefix, "
            f"like 's3://bucket/tes/inputs/'; got {inputs_url!r}"
        )
    prefix = parts.path.lstrip("/")
    return parts.netloc, prefix if not prefix or prefix.endswith("/") else f"{prefix}/"


def _not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES


@contextlib.contextmanager
def _remote(action: str) -> Iterator[None]:
    """Turn any failure while talking to S3 (or re-reading a file for it) into TesStagingError."""
    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError, OSError) as exc:
        raise TesStagingError(f"{action}: {exc}") from exc


def _gather(pool: ThreadPoolExecutor, calls: Sequence[Callable[[], _T]]) -> list[_T]:
    """Run calls in the pool; on the first failure cancel what has not started and re-raise it."""
    futures = [pool.submit(call) for call in calls]
    wait(futures, return_when=FIRST_EXCEPTION)
    for future in futures:
        if future.done() and future.exception() is not None:
            for other in futures:
                other.cancel()
            future.result()
    return [future.result() for future in futures]


class InputStager:
    """Stage local inputs under ``inputs_url`` so a TES task can download them.

    Uploads run on up to ``max_workers`` threads.  Files of at least ``multipart_threshold`` bytes go
    through boto3's managed multipart transfer one at a time (with ``max_workers`` parts in flight),
    which saturates the link without holding ``max_workers`` x chunks of memory per file.
    """

    def __init__(
        self,
        inputs_url: str,
        aws_conn_id: str | None = "aws_default",
        *,
        max_workers: int = 8,
        multipart_threshold: int = 64 * 1024**2,
        multipart_chunksize: int = 16 * 1024**2,
        client: Any = None,
    ) -> None:
        self.bucket, self.prefix = _parse_inputs_url(inputs_url)
        if max_workers < 1 or multipart_threshold < 1 or multipart_chunksize < 1:
            raise TesConfigurationError(
                "max_workers, multipart_threshold and multipart_chunksize must be positive"
            )
        self.aws_conn_id = aws_conn_id
        self.max_workers = max_workers
        self._client: S3Client | None = client
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_workers,
        )
        self._small_limit = min(SMALL_OBJECT_LIMIT, multipart_threshold)
        self._multipart_threshold = multipart_threshold
        self._multipart_gate = threading.Semaphore(1)
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- public API

    def stage(self, paths: Sequence[str]) -> StagingReport:
        """Make every path available in the bucket; returns where each one is and what was sent."""
        started = time.perf_counter()
        inputs = [_local_input(path) for path in paths]
        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="tes-staging")
        try:
            # Making the client from the Airflow connection takes 0.1-0.3 s: done while the
            # inputs are hashed. A failure here is raised again by the first use below.
            pool.submit(self._s3)
            staged = self._sync(self._plan(inputs, pool), pool)
        finally:
            # On failure (or the task being killed) start nothing new; running uploads finish.
            pool.shutdown(wait=True, cancel_futures=True)
        report = StagingReport(staged, time.perf_counter() - started)
        log.info("%s", report.summary())
        return report

    def stage_bytes(self, data: bytes, *, suffix: str = "") -> StagedInput:
        """Stage in-memory content (e.g. a command script too large to inline in the task).

        The object key is ``file/<digest>`` whatever ``suffix`` is, so the same bytes staged from a
        file share the object and no key ever extends another; ``suffix`` only labels the source.
        """
        digest = _bytes_digest(data)
        blob = _Blob(self._file_key(digest), len(data), data=data)
        plan = self._file_plan(f"<bytes>{suffix}", blob, digest)
        return self._result(plan, [self._ensure(blob)])

    # ----------------------------------------------------------------- planning

    def _file_key(self, digest: str) -> str:
        return f"{self.prefix}file/{digest}"

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _file_plan(self, source: str, blob: _Blob, digest: str) -> _Plan:
        return _Plan(source, False, digest, self._url(blob.key), [blob], None)

    def _plan(self, inputs: Sequence[_LocalInput], pool: ThreadPoolExecutor) -> list[_Plan]:
        """Digest every local file of every input at once, so hashing uses the whole pool."""
        identities = [f.identity for item in inputs for f in item.files]
        digests = iter(_gather(pool, [functools.partial(_digest_identity, i) for i in identities]))
        plans = []
        for item in inputs:
            file_digests = [next(digests) for _ in item.files]
            if item.is_directory:
                plans.append(self._directory_plan(item, file_digests))
            else:
                identity, digest = item.files[0].identity, file_digests[0]
                blob = _Blob(self._file_key(digest), identity.size, identity)
                plans.append(self._file_plan(item.source, blob, digest))
        return plans

    def _directory_plan(self, item: _LocalInput, digests: Sequence[str]) -> _Plan:
        manifest = _manifest(item.files, digests, item.directories)
        digest = _bytes_digest(manifest)
        tree = f"{self.prefix}directory/{digest}/"
        blobs = [_Blob(f"{tree}{f.relpath}", f.identity.size, f.identity) for f in item.files]
        conflicts = _prefix_conflicts([blob.key[len(tree) :] for blob in blobs])
        if conflicts:
            log.warning(
                "%s: %d file name(s) are a string-prefix of another (e.g. %r and %r); Funnel's GenericS3 "
                "backend will mistake such files for directories",
                item.source,
                len(conflicts),
                *conflicts[0],
            )
        marker = _Blob(f"{self.prefix}manifests/{digest}.json", len(manifest), data=manifest)
        return _Plan(item.source, True, digest, self._url(tree), blobs, marker)

    # ----------------------------------------------------------------- syncing with the bucket

    def _sync(self, plans: Sequence[_Plan], pool: ThreadPoolExecutor) -> list[StagedInput]:
        """Upload what is missing, then write directory markers, each only after its tree is complete."""
        pending = _gather(pool, [functools.partial(self._pending, plan) for plan in plans])
        # Directory files were just compared with a listing; a single file still needs its HEAD.
        data = self._write_all(
            pool,
            [(i, blob, not plans[i].is_directory) for i, (blobs, _) in enumerate(pending) for blob in blobs],
        )
        markers = self._write_all(
            pool, [(i, plan.marker, False) for i, plan in enumerate(plans) if plan.marker and pending[i][1]]
        )
        return [self._result(plan, data[i], markers[i]) for i, plan in enumerate(plans)]

    def _write_all(
        self, pool: ThreadPoolExecutor, jobs: Sequence[tuple[int, _Blob, bool]]
    ) -> collections.defaultdict[int, list[int | None]]:
        """Write each distinct key once, however many inputs share it; results grouped by input.

        Inputs with the same content map to the same key; writing it twice would overwrite it.
        """
        unique: dict[str, tuple[int, _Blob, bool]] = {}
        for job in jobs:
            unique.setdefault(job[1].key, job)
        calls = [
            functools.partial(self._ensure if check else self._put, blob)
            for _, blob, check in unique.values()
        ]
        grouped: collections.defaultdict[int, list[int | None]] = collections.defaultdict(list)
        for (i, _, _), written in zip(unique.values(), _gather(pool, calls), strict=True):
            grouped[i].append(written)
        return grouped

    def _result(
        self, plan: _Plan, data: Sequence[int | None], marker: Sequence[int | None] = ()
    ) -> StagedInput:
        """Describe a staged input from what each of its writes did (bytes sent, None: already there).

        ``uploaded_bytes`` counts the input's own bytes; a marker write only clears ``skipped``.
        """
        uploaded = sum(size or 0 for size in data)
        skipped = all(size is None for size in [*data, *marker])
        if skipped:
            log.info("%s already staged at %s", plan.source, plan.url)
        else:
            log.info("staged %s at %s (%d of %d bytes uploaded)", plan.source, plan.url, uploaded, plan.size)
        return StagedInput(
            plan.source, plan.url, plan.is_directory, plan.digest, plan.size, uploaded, skipped
        )

    def _pending(self, plan: _Plan) -> tuple[list[_Blob], bool]:
        """Blobs that may need writing, and whether a directory marker is due.

        A file is checked with HEAD when it is written; a directory is complete when its marker
        exists, and otherwise compared with one listing of its tree.
        """
        if plan.marker is None:
            return plan.blobs, False
        if self._remote_size(plan.marker.key) is not None:
            return [], False
        tree = plan.url.removeprefix(f"s3://{self.bucket}/")
        remote = self._list_sizes(tree)
        expected = {blob.key: blob.size for blob in plan.blobs}
        for key, size in remote.items():
            if expected.get(key) != size:
                raise TesStagingError(
                    f"{self._url(key)} ({size} bytes) is not part of {plan.source!r} as it is now "
                    f"(expected {expected.get(key, 'no object')}); refusing to overwrite or ignore it"
                )
        return [blob for blob in plan.blobs if blob.key not in remote], True

    def _remote_size(self, key: str) -> int | None:
        with _remote(f"cannot check {self._url(key)}"):
            try:
                return self._s3().head_object(Bucket=self.bucket, Key=key)["ContentLength"]
            except ClientError as exc:
                if _not_found(exc):
                    return None
                raise

    def _list_sizes(self, prefix: str) -> dict[str, int]:
        with _remote(f"cannot list {self._url(prefix)}"):
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}

    def _ensure(self, blob: _Blob) -> int | None:
        """Write unless an object of the right size is already there; never overwrite another one."""
        size = self._remote_size(blob.key)
        if size is None:
            return self._put(blob)
        if size != blob.size:
            raise TesStagingError(
                f"{self._url(blob.key)} exists with {size} bytes, not {blob.size}; refusing to overwrite it"
            )
        return None

    def _put(self, blob: _Blob) -> int:
        source = blob.identity.realpath if blob.identity else "data"
        with _remote(f"cannot upload {source} to {self._url(blob.key)}"):
            if blob.identity is None or blob.size < self._small_limit:
                self._s3().put_object(Bucket=self.bucket, Key=blob.key, Body=self._body(blob))
            else:
                self._upload_file(blob, blob.identity)
        return blob.size

    def _body(self, blob: _Blob) -> bytes:
        """The bytes to send, re-checking that a file still is what was hashed."""
        if blob.identity is None:
            assert blob.data is not None
            return blob.data
        with open(blob.identity.realpath, "rb") as handle:
            data = handle.read()
            _unchanged(blob.identity, os.fstat(handle.fileno()))
        return data

    def _upload_file(self, blob: _Blob, identity: _FileIdentity) -> None:
        """Managed (multipart) upload; the object is removed again if the file changed meanwhile."""
        gate = self._multipart_gate if blob.size >= self._multipart_threshold else contextlib.nullcontext()
        with gate:
            self._s3().upload_file(identity.realpath, self.bucket, blob.key, Config=self._transfer_config)
        try:
            _unchanged(identity, os.stat(identity.realpath))
        except TesStagingError:
            self._s3().delete_object(Bucket=self.bucket, Key=blob.key)
            raise

    def _s3(self) -> S3Client:
        """The client, made on first use so that building a stager needs no Airflow connection."""
        with self._lock:
            if self._client is None:
                self._client = _client_from_connection(self.aws_conn_id, self.max_workers)
            return self._client


def _unchanged(identity: _FileIdentity, st: os.stat_result) -> None:
    if _identity(identity.realpath, st) != identity:
        raise TesStagingError(f"input file {identity.realpath!r} changed while it was being staged")


def _client_from_connection(aws_conn_id: str | None, max_workers: int) -> S3Client:
    """S3 client from the Airflow connection, with a connection pool sized for our threads.

    The pool (botocore's default is 10) must cover the ``max_workers`` staging threads plus the
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

"""Content-addressed staging of local inputs to object storage, so a remote TES server can read them.

A TES executor runs far from the Airflow worker and can only fetch inputs from object storage,
so local files and directories are uploaded first.  Keys are derived from the content, never from
the local name, which is what makes re-running a DAG cheap: bytes that are already in the bucket
are found by their digest and not sent again, and two inputs with the same bytes share one object.
Which local paths may be staged, how trees are walked and how files are hashed lives in
``_local_inputs``; every call to the bucket goes through :mod:`airflow_provider_tes.storage`.

Bucket layout under the ``inputs_url`` prefix::

    file/<digest>                 one object per distinct file content
    directory/<digest>/<relpath>  the tree of a staged directory, as Funnel downloads it
    manifests/<digest>.json       the directory's manifest, written last: the completion marker

Why the marker lives apart from the tree: Funnel's GenericS3 backend calls a key a directory when
any other key starts with it, so no key may be a string-prefix of another; ``file/<d>.meta`` next
to ``file/<d>`` would turn the file into a directory.  Why it is written last: a directory counts
as staged only once its marker exists, so an interrupted upload is finished on the next run, which
lists the tree once and sends only what is missing.

Why a content address is checked by checksum, not size: an object at ``file/<digest>`` is trusted
by every later run, so one wrong object (planted, or left by an older version that could upload a
file changed after hashing) would be served forever.  Every object is written with its SHA-256
(see :mod:`airflow_provider_tes.storage`, which also refuses bytes that changed since hashing);
before an upload is skipped the object's SHA-256 must match, and one that does not (or has none,
like objects staged by earlier versions of this provider) is replaced with a warning.  A complete directory is
vouched for by its marker alone, whose SHA-256 is the directory's digest: a second run costs one
HEAD however large the tree.

Empty (sub)directories are recorded in the manifest and so change the digest, but S3 has no
directories and Funnel does not recreate them; no placeholder keys are written for them (a
``dir/`` key would itself be a string-prefix of the keys inside it).
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from airflow_provider_tes._local_inputs import (
    HASH_ALGORITHM,
    MANIFEST_FORMAT,
    MAX_DIRECTORY_ENTRIES,
    _digest_identity,
    _FileIdentity,
    _LocalInput,
    bytes_digest,
    check_local_input,
    digest_directory,
    digest_file,
    local_input,
    manifest,
    prefix_conflicts,
)
from airflow_provider_tes.arguments import STAGING_SCHEMES
from airflow_provider_tes.exceptions import TesConfigurationError, TesStagingError
from airflow_provider_tes.storage import (
    ObjectContentMismatchError,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    object_store_for,
)

__all__ = [
    "HASH_ALGORITHM",
    "MANIFEST_FORMAT",
    "MAX_DIRECTORY_ENTRIES",
    "InputStager",
    "StagedInput",
    "StagingReport",
    "check_local_input",
    "digest_directory",
    "digest_file",
]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class _Blob:
    """One object the bucket must hold, from a local file or from memory."""

    url: str
    size: int
    digest: str
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


def _parse_inputs_url(inputs_url: str) -> str:
    """The prefix URL, ending in ``/``, under which inputs are staged."""
    parts = urlsplit(inputs_url)
    if parts.scheme not in STAGING_SCHEMES or not parts.netloc or parts.query or parts.fragment:
        raise TesConfigurationError(
            f"inputs_url must be an s3:// URL naming a bucket and an optional prefix, "
            f"like 's3://bucket/tes/inputs/'; got {inputs_url!r}"
        )
    prefix = parts.path.lstrip("/")
    prefix = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
    return f"{parts.scheme}://{parts.netloc}/{prefix}"


@contextmanager
def _remote(action: str) -> Iterator[None]:
    """Turn a storage failure into TesStagingError, naming what staging was doing."""
    try:
        yield
    except ObjectContentMismatchError as exc:
        # The memo may hold a digest of bytes the file no longer has: hash afresh next time.
        _digest_identity.cache_clear()
        raise TesStagingError(f"{action}: {exc}; nothing was stored, run the task again") from exc
    except ObjectStoreError as exc:
        raise TesStagingError(f"{action}: {exc}") from exc


def _warn_replacing(blob: _Blob, found: ObjectInfo) -> None:
    """An object at a content address that does not vouch for that content is replaced, loudly."""
    log.warning(
        "%s is not the content it is named by (%s, %d bytes; expected sha256 %s, %d bytes): replacing it",
        blob.url,
        f"sha256 {found.sha256}" if found.sha256 else "no SHA-256 checksum",
        found.size,
        blob.digest,
        blob.size,
    )


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

    Uploads run on up to ``max_workers`` threads; ``multipart_threshold`` and
    ``multipart_chunksize`` shape the store's large-file transfers (see
    :class:`~airflow_provider_tes._s3.S3ObjectStore`).  ``client`` replaces the client made
    from ``aws_conn_id`` (tests and benchmarks share one).  ``allowed_roots``, when given, are the
    only local directories inputs may come from (see :func:`check_local_input`, which every
    input passes, with or without them, before anything is uploaded).  A directory input may
    hold at most ``max_directory_entries`` files and directories, counted through symlinks.
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
        allowed_roots: Sequence[str] | None = None,
        max_directory_entries: int = MAX_DIRECTORY_ENTRIES,
    ) -> None:
        self.inputs_url = _parse_inputs_url(inputs_url)
        parts = urlsplit(self.inputs_url)
        self.bucket, self.prefix = parts.netloc, parts.path.lstrip("/")
        self.aws_conn_id = aws_conn_id
        self.max_workers = max_workers
        self.allowed_roots = None if allowed_roots is None else list(allowed_roots)
        self.max_directory_entries = max_directory_entries
        self._store: ObjectStore = object_store_for(
            self.inputs_url,
            aws_conn_id=aws_conn_id,
            max_workers=max_workers,
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            client=client,
        )

    # ----------------------------------------------------------------- public API

    def stage(self, paths: Sequence[str]) -> StagingReport:
        """Make every path available in the bucket; returns where each one is and what was sent."""
        started = time.perf_counter()
        inputs = [
            local_input(path, allowed_roots=self.allowed_roots, max_entries=self.max_directory_entries)
            for path in paths
        ]
        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="tes-staging")
        try:
            # Making the client from the Airflow connection takes 0.1-0.3 s: done while the
            # inputs are hashed. A failure here is raised again by the first use below.
            pool.submit(self._store.connect)
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
        digest = bytes_digest(data)
        blob = _Blob(self._file_url(digest), len(data), digest, data=data)
        plan = self._file_plan(f"<bytes>{suffix}", blob)
        return self._result(plan, [self._ensure(blob)])

    # ----------------------------------------------------------------- planning

    def _file_url(self, digest: str) -> str:
        return f"{self.inputs_url}file/{digest}"

    def _file_plan(self, source: str, blob: _Blob) -> _Plan:
        return _Plan(source, False, blob.digest, blob.url, [blob], None)

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
                blob = _Blob(self._file_url(digest), identity.size, digest, identity)
                plans.append(self._file_plan(item.source, blob))
        return plans

    def _directory_plan(self, item: _LocalInput, digests: Sequence[str]) -> _Plan:
        document = manifest(item.files, digests, item.directories)
        digest = bytes_digest(document)
        tree = f"{self.inputs_url}directory/{digest}/"
        blobs = [
            _Blob(f"{tree}{f.relpath}", f.identity.size, d, f.identity)
            for f, d in zip(item.files, digests, strict=True)
        ]
        conflicts = prefix_conflicts([blob.url[len(tree) :] for blob in blobs])
        if conflicts:
            log.warning(
                "%s: %d file name(s) are a string-prefix of another (e.g. %r and %r); Funnel's GenericS3 "
                "backend will mistake such files for directories",
                item.source,
                len(conflicts),
                *conflicts[0],
            )
        marker = _Blob(f"{self.inputs_url}manifests/{digest}.json", len(document), digest, data=document)
        return _Plan(item.source, True, digest, tree, blobs, marker)

    # ----------------------------------------------------------------- syncing with the bucket

    def _sync(self, plans: Sequence[_Plan], pool: ThreadPoolExecutor) -> list[StagedInput]:
        """Upload what is missing, then write directory markers, each only after its tree is complete."""
        pending = _gather(pool, [functools.partial(self._pending, plan) for plan in plans])
        data = self._write_all(
            pool, [(i, blob, check) for i, (jobs, _) in enumerate(pending) for blob, check in jobs]
        )
        markers = self._write_all(
            pool, [(i, plan.marker, False) for i, plan in enumerate(plans) if plan.marker and pending[i][1]]
        )
        return [self._result(plan, data[i], markers[i]) for i, plan in enumerate(plans)]

    def _write_all(
        self, pool: ThreadPoolExecutor, jobs: Sequence[tuple[int, _Blob, bool]]
    ) -> collections.defaultdict[int, list[int | None]]:
        """Write each distinct object once, however many inputs share it; results grouped by input.

        ``check`` says whether the bucket must be asked first (:meth:`_ensure`) or the object is
        known to be missing (:meth:`_put`).  Inputs with the same content map to the same object;
        writing it twice would only send it twice.
        """
        unique: dict[str, tuple[int, _Blob, bool]] = {}
        for job in jobs:
            unique.setdefault(job[1].url, job)
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

    def _pending(self, plan: _Plan) -> tuple[list[tuple[_Blob, bool]], bool]:
        """Objects that may need writing (each with whether to check the bucket first), and whether a
        directory marker is due.

        A single file is checked when it is written.  A directory is complete when its marker
        exists with the checksum of the manifest (the directory's digest); otherwise its tree is
        listed once: missing objects are sent, objects of the wrong size replaced, and the others
        checked like single files.  An object that is no part of the tree is refused, never deleted.
        """
        if plan.marker is None:
            return [(blob, True) for blob in plan.blobs], False
        with _remote(f"cannot check {plan.marker.url}"):
            marker = self._store.stat(plan.marker.url)
        if marker is not None and marker.sha256 == plan.digest:
            return [], False
        if marker is not None:
            _warn_replacing(plan.marker, marker)
        with _remote(f"cannot list {plan.url}"):
            remote = self._store.list_sizes(plan.url)
        expected = {blob.url: blob.size for blob in plan.blobs}
        for url, remote_size in remote.items():
            if url not in expected:
                raise TesStagingError(
                    f"{url} ({remote_size} bytes) is not part of {plan.source!r} as it is now; "
                    "refusing to overwrite or ignore it"
                )
        jobs = []
        for blob in plan.blobs:
            size = remote.get(blob.url)
            if size is not None and size != blob.size:
                _warn_replacing(blob, ObjectInfo(blob.url, size, None))
            jobs.append((blob, size == blob.size))
        return jobs, True

    def _ensure(self, blob: _Blob) -> int | None:
        """Write unless the object is there with the right checksum; replace one that is not."""
        with _remote(f"cannot check {blob.url}"):
            info = self._store.stat(blob.url)
        if info is not None and info.sha256 == blob.digest and info.size == blob.size:
            return None
        if info is not None:
            _warn_replacing(blob, info)
        return self._put(blob)

    def _put(self, blob: _Blob) -> int:
        """Send one object; the store refuses file bytes that no longer hash to the digest."""
        source = blob.identity.realpath if blob.identity else "data"
        with _remote(f"cannot upload {source} to {blob.url}"):
            if blob.identity is None:
                assert blob.data is not None
                self._store.put_bytes(blob.url, blob.data)
            else:
                self._store.upload_file(blob.url, blob.identity.realpath, size=blob.size, sha256=blob.digest)
        return blob.size

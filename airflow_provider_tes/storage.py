"""The one owner of object storage used by the provider: staging inputs and reading log tails.

Callers name objects by URL (``s3://bucket/key``) and get an :class:`ObjectStore` for it from
:func:`object_store_for`; they never build a client, parse a bucket out of a URL or interpret a
provider's error codes.  That keeps the operator and the stager free of S3 and leaves room for
other schemes (``gs://``, ``file://``): a new store registers its scheme in ``_STORES`` and no
caller changes.  A scheme without a store is a configuration error, raised before anything runs.

S3 is reached through the amazon provider's ``S3Hook``, so credentials, endpoint, region and the
connection's botocore config come from the Airflow connection as every other AWS task gets them.
The AWS connection id is resolved in one place, :func:`resolve_aws_conn_id`.

Why uploads take the expected SHA-256 and hash what they send: staging names objects by their
content, so an object whose bytes differ from its name poisons every later run that finds it.
A file can change between being hashed and being sent in ways its metadata does not show (a
write through a shared mmap keeps size and times), so the only proof is the bytes that go on the
wire: single-request uploads hash the buffer they send, multipart uploads hash the stream while
its parts are read, and a mismatch fails the upload before the object exists (the multipart
upload is aborted, never completed).  The digest is sent as ``ChecksumSHA256``, which S3 checks
against the body it receives, and recorded as ``x-amz-meta-sha256`` (multipart objects only get
a composite checksum from S3); moto stores either without checking them, hence the local check.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from airflow_provider_tes.exceptions import ObjectContentMismatchError as ObjectContentMismatchError
from airflow_provider_tes.exceptions import ObjectNotFoundError as ObjectNotFoundError
from airflow_provider_tes.exceptions import ObjectStoreError as ObjectStoreError
from airflow_provider_tes.exceptions import TesConfigurationError

DEFAULT_AWS_CONN_ID = "aws_default"
#: Metadata key of the SHA-256 an uploader verified against the bytes it sent.
SHA256_METADATA_KEY = "sha256"
#: Single-request uploads hold the whole body in memory; together they never hold more than this.
IN_MEMORY_UPLOAD_BUDGET = 128 * 1024**2


def resolve_aws_conn_id(explicit: str | None, from_connection: str | None) -> str:
    """The AWS connection to use: the operator's argument, else the TES connection's, else the default."""
    return explicit or from_connection or DEFAULT_AWS_CONN_ID


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object.

    ``sha256`` is the hex SHA-256 of the content as the store vouches for it: the checksum S3
    verified on upload, or the digest the provider's uploader verified before completing a
    multipart upload; ``None`` when the object carries neither (e.g. written by another tool).
    """

    url: str
    size: int
    sha256: str | None


class ObjectStore(ABC):
    """Objects addressed by URL; thread-safe.  Every failure raises :class:`ObjectStoreError`."""

    scheme: str

    def connect(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Set up the connection now rather than on first use (e.g. while the caller hashes inputs)."""

    @abstractmethod
    def stat(self, url: str) -> ObjectInfo | None:
        """The object's size and checksum, or ``None`` when it does not exist."""

    @abstractmethod
    def list_sizes(self, prefix_url: str) -> dict[str, int]:
        """URL -> size of every object whose URL starts with ``prefix_url``."""

    @abstractmethod
    def put_bytes(self, url: str, data: bytes) -> None:
        """Store ``data`` at ``url`` with its SHA-256, replacing any object there."""

    @abstractmethod
    def upload_file(self, url: str, path: str, *, size: int, sha256: str) -> None:
        """Store the file's content at ``url`` if the bytes sent are ``size`` bytes hashing to ``sha256``.

        Raises :class:`ObjectContentMismatchError`, leaving no new object, when they are not.
        """

    @abstractmethod
    def read_tail(self, url: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` bytes of the object (all of it when shorter; ``b""`` when empty).

        Raises :class:`ObjectNotFoundError` when there is no object and :class:`ObjectStoreError`
        when it cannot be read, so that "could not read" is never mistaken for "empty".
        """

    def exists(self, url: str) -> bool:
        return self.stat(url) is not None

    def size(self, url: str) -> int | None:
        info = self.stat(url)
        return None if info is None else info.size

    def checksum(self, url: str) -> str | None:
        """Hex SHA-256 the store vouches for (see :class:`ObjectInfo`), ``None`` if none or no object."""
        info = self.stat(url)
        return None if info is None else info.sha256


def _s3_store(aws_conn_id: str | None, **options: Any) -> ObjectStore:
    # Imported on use: the operator imports this module while DAG files are parsed, where
    # boto3's import cost would be paid for nothing.
    from airflow_provider_tes._s3 import S3ObjectStore

    return S3ObjectStore(aws_conn_id, **options)


class LocalFileStore(ObjectStore):
    """``file://`` URLs: what a TES server with local storage (Funnel's ``file://``) wrote, read
    where the worker shares that file system (HPC clusters, the local test stack).

    Read-only: staging writes only to stores every TES server can fetch from (S3), so writing
    here is refused rather than half supported.
    """

    def __init__(self, **_options: Any) -> None:
        pass

    @staticmethod
    def _path(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise TesConfigurationError(f"{url!r} is not a file:///path URL of this machine")
        return unquote(parts.path)

    def stat(self, url: str) -> ObjectInfo | None:
        try:
            size = os.stat(self._path(url)).st_size
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ObjectStoreError(f"cannot read {url}: {err.strerror}") from None
        return ObjectInfo(url=url, size=size, sha256=None)

    def list_sizes(self, prefix_url: str) -> dict[str, int]:
        root = self._path(prefix_url)
        found: dict[str, int] = {}
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                found["file://" + quote(path)] = os.stat(path).st_size
        return found

    def put_bytes(self, url: str, data: bytes) -> None:
        raise TesConfigurationError(f"{url!r}: the provider stages to s3:// only, not to file://")

    def upload_file(self, url: str, path: str, *, size: int, sha256: str) -> None:
        raise TesConfigurationError(f"{url!r}: the provider stages to s3:// only, not to file://")

    def read_tail(self, url: str, max_bytes: int) -> bytes:
        path = self._path(url)
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - max_bytes))
                return handle.read(max_bytes)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{url} does not exist on this worker") from None
        except OSError as err:
            raise ObjectStoreError(f"cannot read {url}: {err.strerror}") from None


_STORES: dict[str, Callable[..., ObjectStore]] = {"s3": _s3_store, "file": LocalFileStore}
#: URL schemes :func:`object_store_for` can serve.
STORE_SCHEMES = frozenset(_STORES)


def object_store_for(url: str, *, aws_conn_id: str | None = None, **options: Any) -> ObjectStore:
    """The store that serves ``url``'s scheme; ``options`` are passed to its constructor.

    ``aws_conn_id`` is used by S3 only (resolve it with :func:`resolve_aws_conn_id`).
    """
    scheme = urlsplit(url).scheme
    factory = _STORES.get(scheme)
    if factory is None:
        raise TesConfigurationError(
            f"no object store for {scheme + '://' if scheme else 'a URL without scheme'} "
            f"(supported: {', '.join(f'{s}://' for s in sorted(_STORES))})"
        )
    if scheme == "s3":
        return factory(aws_conn_id, **options)
    return factory(**options)


def read_text_tail(url: str, max_bytes: int, *, aws_conn_id: str | None = None) -> str:
    """The end of the object at ``url`` as text; raises :class:`TesError` when it cannot be read."""
    store = object_store_for(url, aws_conn_id=aws_conn_id)
    return store.read_tail(url, max_bytes).decode("utf-8", "replace")

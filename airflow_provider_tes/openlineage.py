"""OpenLineage facets of a TES task: what it read and what it wrote.

The common OpenLineage provider is optional. Everything it provides is imported inside
:func:`lineage_for_task`, which returns ``None`` when it is not installed, so the provider
does not depend on it.

Datasets follow the OpenLineage naming conventions for object stores: ``s3://bucket/key``
becomes namespace ``s3://bucket`` and name ``key`` (likewise ``gs://``, ``abfss://`` ...);
URLs with a host (``http(s)://``, ``ftp://``, ``drs://``) become namespace
``scheme://host[:port]`` and name the path. A trailing ``/`` (a DIRECTORY) is dropped from
the name. Credentials in the URL (``user:password@``),
query strings and fragments (e.g. the signature of a presigned URL) are never copied into a
dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

__all__ = ["dataset_identifier", "lineage_for_task"]

#: Result keys (the operator's XCom ``return_value``) naming what every task writes.
_RESULT_OUTPUT_KEYS = ("work_dir_url", "stdout_url", "stderr_url")


def dataset_identifier(url: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of a TES input/output URL, or ``None`` when it names no dataset."""
    if not isinstance(url, str) or not url.strip():
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if not scheme:
        return None
    if scheme == "file":
        # As the common IO provider names local files: namespace "file" (or file://host).
        return (f"file://{host}" if host else "file"), parts.path.rstrip("/") or "/"
    if not host:
        return None
    authority = f"{host}:{port}" if port is not None else host
    namespace = f"{scheme}://{authority}"
    # A DIRECTORY is one dataset whether its URL ends in "/" or not (the work dir is sent as
    # ".../work" and reported as ".../work/").
    path = parts.path.rstrip("/")
    if scheme in ("http", "https", "ftp", "ftps", "drs"):
        return namespace, path or "/"
    # Object stores (s3, gs, az, abfss, ...): the bucket is the namespace, the key the name.
    return namespace, path.lstrip("/") or "/"


def _without_credentials(url: str) -> str:
    """``url`` without ``user:password@``, query or fragment."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl().rstrip("/")


def _identifiers(urls: Iterable[Any]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for url in urls:
        ident = dataset_identifier(url)
        if ident is not None:
            seen.setdefault(ident, None)
    return list(seen)


def _entries(task_body: Mapping[str, Any] | None, key: str) -> list[Mapping[str, Any]]:
    value = (task_body or {}).get(key) or []
    return [item for item in value if isinstance(item, Mapping)]


def input_urls(task_body: Mapping[str, Any] | None) -> list[str]:
    """URLs the task reads: ``inputs[].url``; inline ``content`` inputs are not datasets."""
    return [
        item["url"]
        for item in _entries(task_body, "inputs")
        if item.get("content") is None and isinstance(item.get("url"), str)
    ]


def output_urls(task_body: Mapping[str, Any] | None, result: Mapping[str, Any] | None) -> list[str]:
    """URLs the task writes: ``outputs[].url`` plus the result's work dir, stdout and stderr."""
    urls = [item["url"] for item in _entries(task_body, "outputs") if isinstance(item.get("url"), str)]
    for key in _RESULT_OUTPUT_KEYS:
        value = (result or {}).get(key)
        if isinstance(value, str):
            urls.append(value)
    return urls


def lineage_for_task(
    task_body: Mapping[str, Any] | None,
    result: Mapping[str, Any] | None = None,
    *,
    tes_base_url: str | None = None,
) -> OperatorLineage[Any, Any] | None:
    """OpenLineage facets of one TES task, or ``None`` without the OpenLineage provider.

    ``task_body`` is the TES task as sent (``TesTask.to_request()``); ``result`` is the
    operator's return value (``work_dir_url``/``stdout_url``/``stderr_url``/``tes_task_id``),
    ``None`` when the task produced none. With ``tes_base_url`` and a ``tes_task_id`` in the
    result, the run also gets an ``externalQuery`` facet pointing at the TES task.
    """
    try:
        from airflow.providers.common.compat.openlineage.facet import Dataset, ExternalQueryRunFacet
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None

    inputs = [Dataset(namespace=ns, name=name) for ns, name in _identifiers(input_urls(task_body))]
    outputs = [Dataset(namespace=ns, name=name) for ns, name in _identifiers(output_urls(task_body, result))]
    run_facets: dict[str, Any] = {}
    tes_task_id = (result or {}).get("tes_task_id")
    if tes_base_url and isinstance(tes_task_id, str) and tes_task_id:
        run_facets["externalQuery"] = ExternalQueryRunFacet(
            externalQueryId=tes_task_id, source=_without_credentials(tes_base_url)
        )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)

"""Who a TES task belongs to in Airflow, and where its outputs go: the one home of both.

A TES server knows nothing of Airflow, so everything the provider must find again later is
written into the task itself when it is built: its name, its tags, its output folder. Three
readers depend on the same rules and so must not each keep their own copy of them:

* a new try of a task instance looks for an earlier try's task that is still running
  (reattach) and needs its try number, attempt and output folder back from the task;
* an ambiguous create looks the task up by its name and tags before resending it;
* the shared poller lists tasks by the tag every submitted task carries (:data:`COALESCE_TAG`).

Names and tags are predictable, so they cannot say on their own whose a task is: another
Airflow deployment running the same DAG (staging next to prod), or anyone else allowed to
submit to the same TES server, can make a task with the same name and tags. So every
submitted task also carries its deployment's name and a tag only a holder of the tenant
secret can make (:class:`Tenant`); reattach and the ambiguous-create lookup adopt only tasks
whose tag verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_tes.redaction import mask

if TYPE_CHECKING:
    from airflow_provider_tes.connection import TesConnection

#: Every task the operator submits carries this tag (with the DAG id as value); the shared
#: poller asks the server for the tasks that have it, whatever the value.
COALESCE_TAG = "dag_id"
#: The name of the Airflow deployment that submitted the task (see :class:`Tenant`).
DEPLOYMENT_TAG = "deployment"
#: HMAC-SHA256 of the task's identity, keyed by the tenant secret (see :class:`Tenant`).
IDENTITY_MAC_TAG = "identity_hmac"
#: ``"false"`` on a task submitted with ``wait_for_completion=False``: no Airflow try waits for
#: it (whatever the DAG does next does), so ``airflow tes cleanup`` leaves it while its DAG run
#: is active.
WAITS_TAG = "airflow_waits"

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_INSTANCE_KEYS = ("dag_id", "task_id", "run_id", "map_index")
_FOLDER_ENTRIES = ("work", "stdout", "stderr", "exit_code")


@dataclass(frozen=True)
class TaskIdentity:
    """One try of one Airflow task instance; the source of a TES task's unique name and tags.

    The name is ``<label>-<digest of dag/task/run/map index>-t<try>[-p<k>]``: readable at a
    glance, unique per task instance try (the digest covers run ids that do not survive
    slugging), and with a prefix shared by every try so a new try can find earlier ones.
    """

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    try_number: int = 1
    label: str | None = None

    @classmethod
    def from_task_instance(cls, ti: Any, label: str | None = None) -> TaskIdentity:
        map_index = getattr(ti, "map_index", -1)
        return cls(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=-1 if map_index is None else int(map_index),
            try_number=int(getattr(ti, "try_number", 1) or 1),
            label=label,
        )

    @property
    def instance_prefix(self) -> str:
        key = "\0".join([self.dag_id, self.task_id, self.run_id, str(self.map_index)])
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        label = _SLUG.sub("_", self.label or f"{self.dag_id}.{self.task_id}")[:80].strip("_") or "task"
        if self.map_index >= 0 and not self.label:
            label = f"{label}.{self.map_index}"
        return f"{label}-{digest}-t"

    def name(self, attempt: int = 0) -> str:
        """Name of the ``attempt``-th submission (0 first, then one per preemption)."""
        return f"{self.instance_prefix}{self.try_number}" + (f"-p{attempt}" if attempt else "")

    def instance_tags(self) -> dict[str, str]:
        """Tags shared by every try of this task instance."""
        return {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "map_index": str(self.map_index),
        }

    def tags(self, attempt: int = 0) -> dict[str, str]:
        return {**self.instance_tags(), "try_number": str(self.try_number), "attempt": str(attempt)}

    def with_try(self, try_number: int) -> TaskIdentity:
        return replace(self, try_number=try_number)

    def matches(self, tags: Mapping[str, Any] | None) -> bool:
        """Whether a task with these tags belongs to this task instance (any try)."""
        have = tags or {}
        return all(str(have.get(k, "")) == v for k, v in self.instance_tags().items())

    def submission_of(self, tags: Mapping[str, Any] | None) -> tuple[TaskIdentity, int] | None:
        """Read back which try and attempt of this task instance a task with ``tags`` is.

        ``None`` when the tags belong to another task instance or do not say their try.
        """
        if not self.matches(tags):
            return None
        assert tags is not None
        try:
            try_number = int(str(tags.get("try_number", "")))
            attempt = int(str(tags.get("attempt", "0") or 0))
        except ValueError:
            return None
        return self.with_try(try_number), attempt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskIdentity:
        return cls(**{k: data[k] for k in (*_INSTANCE_KEYS, "try_number", "label") if k in data})


@dataclass(frozen=True)
class OutputFolder:
    """``{outputs_url}/{name}-{UTC %Y%m%d-%H%M%S}/``: where a task's standard outputs land.

    Fixed at the first submission and kept across preemption resubmissions, so every attempt
    of a task instance writes to the same place (as the sprocket TES backend does).
    """

    url: str
    work: str = field(init=False, repr=False, compare=False)
    stdout: str = field(init=False, repr=False, compare=False)
    stderr: str = field(init=False, repr=False, compare=False)
    exit_code: str = field(init=False, repr=False, compare=False)

    @classmethod
    def new(cls, outputs_url: str, name: str, when: datetime) -> OutputFolder:
        return cls(f"{outputs_url.rstrip('/')}/{name}-{when.strftime('%Y%m%d-%H%M%S')}/")

    def __post_init__(self) -> None:
        for entry in _FOLDER_ENTRIES:  # the URL of each standard output, e.g. folder.stdout
            object.__setattr__(self, entry, self.url + entry)

    @classmethod
    def of_output(cls, stdout_url: str | None) -> OutputFolder | None:
        """The folder of a task whose stdout output goes to ``stdout_url`` (the inverse of :attr:`stdout`)."""
        if not stdout_url or not stdout_url.endswith("/stdout"):
            return None
        return cls(stdout_url.removesuffix("stdout"))


# -- tenancy ------------------------------------------------------------------------------------------

#: What the identity tag covers, in this order (with the deployment name first).
_SIGNED_TAGS = ("dag_id", "task_id", "run_id", "map_index", "try_number", "attempt")
_MAC_VERSION = "v1"
_KEY_CONTEXT = b"airflow-provider-tes tenant key v1"
_PLACEHOLDER = re.compile(r"\{[A-Z_]+\}")  # an unfilled airflow.cfg template value, e.g. {FERNET_KEY}
#: The key of a process that found no secret: what it signs verifies nowhere else.
_PROCESS_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class Tenant:
    """Whose tasks these are: a deployment's name and the key that signs its tasks' identity.

    Every submitted task carries ``deployment`` (:data:`DEPLOYMENT_TAG`) and an HMAC-SHA256
    over the deployment, DAG id, task id, run id, map index, try number and attempt
    (:data:`IDENTITY_MAC_TAG`). A task is adopted (reattach, ambiguous-create lookup) only when
    both are this tenant's: without the secret the tag cannot be made, and two deployments
    sharing a secret are still kept apart by their names.

    The deployment name is ``[tes] deployment_name`` (``AIRFLOW__TES__DEPLOYMENT_NAME``); by
    default ``airflow-`` and 12 hex digits derived from the secret, stable as long as it is.
    Deployments that share a secret and a TES server must set distinct names.

    The secret is the first of: the TES connection's extra ``tenant_secret``; ``[tes]
    tenant_secret`` (``AIRFLOW__TES__TENANT_SECRET``); ``[core] fernet_key`` (its first key),
    which a deployment that sets it already keeps secret and which differs between deployments
    (prod and staging may well share a TES login); last, the connection's own credential
    (password, token or client secret), which other users of the server do not hold. Every
    worker must see the same one, or the workers cannot verify each other's tasks (they then
    submit anew: safe, not shared). The secret is never sent: a key derived from it signs. A
    deployment with none of these (no auth, nothing configured) signs with a key of its own
    process, so no other process adopts what it submits: retries submit anew.

    Rotating the secret (or the name) means tasks submitted before no longer verify: a new try
    submits a new task instead of reattaching to one still running, and an ambiguous create
    made just before the rotation may be sent twice. Waiting for a task is by its id and is
    unaffected. Tasks submitted by provider versions without this tag are never adopted.

    What it does not stop: a task's tags can be read by whoever may list the server's tasks,
    and copied onto a task of their own for the same identity (a replay). Keep the listing of
    tasks private to their owners on shared servers.
    """

    deployment: str
    key: bytes = field(repr=False)
    #: Where the key came from, for messages (never the secret itself).
    source: str = "given"

    @property
    def durable(self) -> bool:
        """Whether other processes of this deployment can verify what this one signs."""
        return self.key != _PROCESS_KEY

    @classmethod
    def of_connection(cls, settings: TesConnection) -> Tenant:
        """The tenant of tasks submitted through ``settings`` (the TES connection) from here."""
        source, secret = "the connection's extra 'tenant_secret'", settings.tenant_secret
        if not secret:
            source, secret = "[tes] tenant_secret", _config("tes", "tenant_secret")
            if secret:
                mask(secret)
        if not secret:
            fernet = _config("core", "fernet_key")
            source, secret = "[core] fernet_key", fernet.split(",")[0].strip() if fernet else None
        if not secret:
            source, secret = "the connection's credential", settings.secret
        key = _PROCESS_KEY
        if secret:
            key = hmac.new(secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest()
        else:
            source = "a key of this process (no tenant secret is configured)"
        name = _config("tes", "deployment_name")
        if not name:
            derived = hmac.new(key, b"deployment name", hashlib.sha256).hexdigest()[:12]
            name = f"airflow-{derived}" if secret else "airflow"
        return cls(deployment=name, key=key, source=source)

    def tags(self, identity: TaskIdentity, attempt: int = 0) -> dict[str, str]:
        """The tenant tags of submission ``attempt`` of ``identity`` (added to its identity tags)."""
        return {DEPLOYMENT_TAG: self.deployment, IDENTITY_MAC_TAG: self._mac(identity.tags(attempt))}

    def owns(self, tags: Mapping[str, Any] | None) -> bool:
        """Whether a task with ``tags`` was submitted by this tenant: its name and a verifying tag."""
        have = {k: str(v) for k, v in (tags or {}).items()}
        if have.get(DEPLOYMENT_TAG) != self.deployment or IDENTITY_MAC_TAG not in have:
            return False
        if any(key not in have for key in _SIGNED_TAGS):
            return False
        return hmac.compare_digest(self._mac(have).encode(), have[IDENTITY_MAC_TAG].encode())

    def adopts(
        self, identity: TaskIdentity, tags: Mapping[str, Any] | None
    ) -> tuple[TaskIdentity, int] | None:
        """:meth:`TaskIdentity.submission_of`, for a task of this tenant only."""
        submission = identity.submission_of(tags)
        return submission if submission is not None and self.owns(tags) else None

    def _mac(self, tags: Mapping[str, str]) -> str:
        message = json.dumps([_MAC_VERSION, self.deployment, *(tags[key] for key in _SIGNED_TAGS)])
        return f"{_MAC_VERSION}:{hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()}"


def _config(section: str, key: str) -> str | None:
    """An Airflow configuration value; unset, blank and unfilled template values are ``None``."""
    from airflow.sdk import conf

    value = conf.get(section, key, fallback=None)
    value = str(value).strip() if value is not None else ""
    return None if not value or _PLACEHOLDER.fullmatch(value) else value

"""Who a TES task belongs to in Airflow, and where its outputs go: the one home of both.

A TES server knows nothing of Airflow, so everything the provider must find again later is
written into the task itself when it is built: its name, its tags, its output folder. Three
readers depend on the same rules and so must not each keep their own copy of them:

* a new try of a task instance looks for an earlier try's task that is still running
  (reattach) and needs its try number, attempt and output folder back from the task;
* an ambiguous create looks the task up by its name and tags before resending it;
* the shared poller lists tasks by the tag every submitted task carries (:data:`COALESCE_TAG`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

#: Every task the operator submits carries this tag (with the DAG id as value); the shared
#: poller asks the server for the tasks that have it, whatever the value.
COALESCE_TAG = "dag_id"

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

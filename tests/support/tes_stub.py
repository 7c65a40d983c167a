"""An in-memory TES server: the calls the provider makes, answered from a dict.

Why: creating 10,000 tasks in Funnel takes too long for the benchmark, and the proxy's own tests
want an upstream whose every request they can see. It answers ListTasks (state, name prefix and
tag filters, paging), GetTask (MINIMAL: id and state), CreateTask, CancelTask and service-info;
``rewrite_state`` really changes a task's state. Rules of the loopback core apply as anywhere.

``funnel_sized``: answer listings and FULL views with whole tasks of about Funnel's size (~850
bytes; Funnel v0.12.2 sends whole tasks in a tag-filtered MINIMAL listing), so that a benchmark
measures the client's parsing of what a real server sends, not of a two-field stub answer.
``follow(task_id)`` makes a task RUNNING with an executor stdout that grows by one numbered line
per second (what Funnel shows in the FULL view, of one task or in a listing, while a task runs),
for the live-log benchmark and tests.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from tests.support.loopback import LoopbackServer
from tests.support.rules import Answer, Request, Rule, json_answer

TERMINAL_STATES = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})


class TesStub(LoopbackServer):
    """Tasks by id (``tasks``); new ones get ``id_format.format(n)`` and ``initial_state``."""

    def __init__(
        self,
        *,
        initial_state: str = "QUEUED",
        id_format: str = "stub{:08d}",
        rules: Iterable[Rule] = (),
        funnel_sized: bool = False,
    ) -> None:
        super().__init__(rules)
        self.initial_state = initial_state
        self.id_format = id_format
        self.funnel_sized = funnel_sized
        self.tasks: dict[str, dict[str, Any]] = {}
        #: Per task, the JSON of everything but id and state (written once: answers stay cheap).
        self._rest: dict[str, bytes] = {}
        #: Tasks whose stdout grows, and since when (see :meth:`follow`).
        self._followed: dict[str, float] = {}
        self._ids = itertools.count(1)

    def follow(self, task_id: str) -> None:
        with self.lock:
            self.tasks[task_id]["state"] = "RUNNING"
            self._followed[task_id] = time.monotonic()

    def rewrite_state(self, task_id: str, state: str) -> None:
        with self.lock:
            self.tasks[task_id]["state"] = state

    def clear_rewrites(self) -> None:
        """Every task back to the initial state (the stub's idea of a task that never starts)."""
        with self.lock:
            for task in self.tasks.values():
                task["state"] = self.initial_state

    async def backend(self, request: Request) -> Answer:
        rest = request.path.split("/ga4gh/tes/v1", 1)[-1].strip("/")
        with self.lock:
            if rest == "service-info":
                return json_answer(200, {"id": "stub", "name": "TES stub", "version": "1"})
            if rest == "tasks" and request.method == "POST":
                doc = request.json() or {}
                task_id = self.id_format.format(next(self._ids))
                self.tasks[task_id] = {
                    "id": task_id,
                    "state": self.initial_state,
                    "name": doc.get("name") or "",
                    "tags": doc.get("tags") or {},
                }
                self._rest[task_id] = _funnel_rest(doc) if self.funnel_sized else b""
                return json_answer(200, {"id": task_id})
            if rest == "tasks" and request.method == "GET":
                return self._list(request.query)
            if rest.endswith(":cancel") and request.method == "POST":
                task = self.tasks.get(unquote(rest.removeprefix("tasks/").removesuffix(":cancel")))
                if task is not None and task["state"] not in TERMINAL_STATES:
                    task["state"] = "CANCELED"
                return json_answer(200, {})
            if rest.startswith("tasks/") and request.method == "GET":
                task = self.tasks.get(unquote(rest.removeprefix("tasks/")))
                if task is None:
                    return json_answer(404, {"message": "no such task"})
                if (request.query.get("view") or ["MINIMAL"])[0] == "MINIMAL":
                    return json_answer(200, {"id": task["id"], "state": task["state"]})
                return Answer(200, self._whole(task, full=True), [("Content-Type", "application/json")])
        return json_answer(404, {"message": "no route"})

    def _list(self, query: dict[str, list[str]]) -> Answer:
        state = next(iter(query.get("state", [])), None)
        name_prefix = (query.get("name_prefix") or [""])[0]
        keys = query.get("tag_key", [])
        values = query.get("tag_value", [])
        filters = list(zip(keys, values + [""] * (len(keys) - len(values)), strict=True))
        page_size = min(2047, int((query.get("page_size") or ["256"])[0]))
        start = int((query.get("page_token") or ["0"])[0] or 0)
        matched = [
            t
            for t in self.tasks.values()
            if (state is None or t["state"] == state)
            and t["name"].startswith(name_prefix)
            and all(k in t["tags"] and (not v or t["tags"][k] == v) for k, v in filters)
        ]
        page = matched[start : start + page_size]
        token = str(start + page_size) if start + page_size < len(matched) else ""
        if not self.funnel_sized:
            return json_answer(
                200, {"tasks": [{"id": t["id"], "state": t["state"]} for t in page], "next_page_token": token}
            )
        full = (query.get("view") or ["MINIMAL"])[0] == "FULL"
        body = b'{"tasks":[' + b",".join(self._whole(t, full=full) for t in page) + b'],"next_page_token":'
        return Answer(200, body + json.dumps(token).encode() + b"}", [("Content-Type", "application/json")])

    def _whole(self, task: dict[str, Any], *, full: bool = False) -> bytes:
        head = json.dumps({"id": task["id"], "state": task["state"]}).encode()[:-1]
        rest = self._rest.get(task["id"], b"")
        since = self._followed.get(task["id"])
        if full and since is not None:
            lines = "".join(f"line {n}\n" for n in range(1, int(time.monotonic() - since) + 1))
            executor = {"stdout": lines, "stderr": "", "start_time": "2026-01-01T00:00:00Z"}
            logs = {"logs": [{"logs": [executor]}]}
            rest += b"," + json.dumps(logs).encode()[1:-1]
        return head + (b"," + rest if rest else b"") + b"}"


def _funnel_rest(doc: dict[str, Any]) -> bytes:
    """A task's fields besides id and state as Funnel keeps them (~850 bytes with both)."""
    rest = {
        "name": doc.get("name") or "",
        "description": "",
        "inputs": [],
        "outputs": [
            {"url": "s3://bench/outputs/stdout", "path": "/mnt/task/stdout", "type": "FILE"},
            {"url": "s3://bench/outputs/stderr", "path": "/mnt/task/stderr", "type": "FILE"},
        ],
        "resources": {"cpu_cores": 1, "ram_gb": 1.0, "disk_gb": 10.0, "preemptible": False},
        "executors": [
            {
                "image": "alpine:3.20",
                "command": ["/bin/sh", "-c", "true"],
                "workdir": "/mnt/task/work",
                "stdout": "/mnt/task/stdout",
                "stderr": "/mnt/task/stderr",
            }
        ],
        "volumes": ["/mnt/task/work"],
        "tags": doc.get("tags") or {},
        "creation_time": "2026-01-01T00:00:00.000000000Z",
    }
    body = json.dumps(rest).encode()[1:-1]
    return body + b',"logs":[]' + b" " * max(0, 800 - len(body))

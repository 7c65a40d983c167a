"""Other TES servers' documented behaviour, played by the proxy in front of Funnel.

Why: only Funnel runs here, yet the provider must tell the truth on TESK, Azure TES, a bare
spec-minimal server or behind a gateway. Each personality is a short list of rules of the
loopback servers (:mod:`tests.support.rules`) that rewrite what Funnel is sent or answers, and
each rule says where the fact comes from. Use::

    proxy = TesProxy(funnel.url, personality="tesk").start()   # or proxy.use("tesk")

``PERSONALITIES`` names them all; :func:`personality_rules` makes a fresh set (rules count their
uses, so two proxies never share one).

Sources: the TES 1.1 OpenAPI document (``task_execution_service.openapi.yaml``); TESK's API
server (github.com/elixir-cloud-aai/tesk-api: ``TesKubernetesConverter.java``,
``TesServiceImpl.java``); Azure TES (github.com/microsoft/ga4gh-tes: ``src/Tes/Models/
TesResources.cs``, ``src/TesApi.Web/Controllers/TaskServiceApi.cs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.rules import (
    TASK_READS_PATH,
    TASKS_PATH,
    Answer,
    Request,
    Rewrite,
    Rule,
    json_answer,
    tes_call,
)


def _tasks_in(doc: Any, request: Request) -> list[dict[str, Any]]:
    """The task documents of a GetTask or ListTasks answer."""
    if not isinstance(doc, dict):
        return []
    if tes_call(request.method, request.path) == "get":
        return [doc]
    return [t for t in doc.get("tasks") or [] if isinstance(t, dict)]


def _executor_logs(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        log
        for task_log in task.get("logs") or []
        if isinstance(task_log, dict)
        for log in task_log.get("logs") or []
        if isinstance(log, dict)
    ]


def _bad_request(message: str) -> Answer:
    # ASP.NET Core's BadRequest(string) writes the string as text/plain.
    return Answer(400, message.encode(), [("Content-Type", "text/plain; charset=utf-8")])


# -- minimal ------------------------------------------------------------------------------------
# TES 1.1 OpenAPI, components/schemas: tesTask requires only `executors`, tesExecutor only `image`
# and `command`, tesListTasksResponse only `tasks`; `logs` (so every executor log and
# `system_logs`), `name`, `tags`, `resources`, `inputs`, `outputs`, `creation_time` and
# `next_page_token` are optional. `id` and `state` stay: the `view` parameter defines a MINIMAL
# task as exactly those two (no `executors` then), so a server answers them in every view.


def _minimal_task(task: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {key: task[key] for key in ("id", "state") if key in task}
    if task.get("executors") and isinstance(task["executors"], list):  # Funnel's MINIMAL: []
        kept["executors"] = [
            {key: ex[key] for key in ("image", "command") if key in ex}
            for ex in task["executors"]
            if isinstance(ex, dict)
        ]
    return kept


def _minimal_answer(doc: Any, request: Request) -> Any:
    if not isinstance(doc, dict):
        return doc
    if tes_call(request.method, request.path) == "get":
        return _minimal_task(doc)
    listed: dict[str, Any] = {"tasks": [_minimal_task(t) for t in _tasks_in(doc, request)]}
    if doc.get("next_page_token"):  # optional, but a server with more pages must say so
        listed["next_page_token"] = doc["next_page_token"]
    return listed


def _minimal() -> list[Rule]:
    return [Rule(Rewrite(body=_minimal_answer), method="GET", path=TASK_READS_PATH, name="minimal")]


# -- tesk ---------------------------------------------------------------------------------------
# tesk-api TesKubernetesConverter.extractExecutorLogFromK8sJobAndPod: an executor log is start
# and end time, the exit code of the pod's container, and `stdout` set to "" ("workaround for
# py-tes compatibility"); `stderr` is never set. (In the FULL view TesServiceImpl.getTask puts the
# pod log, stdout and stderr merged, into `stdout`; served here in every view is the BASIC one,
# the case a client must survive.)
# TesKubernetesConverter.fromTesExecutorToK8sJob maps `cpu_cores` and `ram_gb` to the executor
# container's requests and limits; fromTesTaskToK8sJob passes `disk_gb` on as the size of the
# task's volume; `preemptible`, `zones` and `backend_parameters` are used nowhere. The rule drops
# those from the task Funnel stores, so the task read back shows what was honoured (TESK itself
# echoes the submitted task from an annotation).
TESK_RESOURCES = ("cpu_cores", "ram_gb", "disk_gb")


def _tesk_honoured_resources(request: Request) -> Request:
    doc = request.json()
    if not isinstance(doc, dict) or not isinstance(doc.get("resources"), dict):
        return request
    doc["resources"] = {k: v for k, v in doc["resources"].items() if k in TESK_RESOURCES}
    return request.with_json(doc)


def _tesk_executor_logs(doc: Any, request: Request) -> Any:
    for task in _tasks_in(doc, request):
        for log in _executor_logs(task):
            log.pop("stderr", None)
            log["stdout"] = ""
    return doc


def _tesk() -> list[Rule]:
    return [
        Rule(
            Rewrite(request=_tesk_honoured_resources), method="POST", path=TASKS_PATH, name="tesk resources"
        ),
        Rule(Rewrite(body=_tesk_executor_logs), method="GET", path=TASK_READS_PATH, name="tesk logs"),
    ]


# -- azure --------------------------------------------------------------------------------------
# microsoft/ga4gh-tes src/Tes/Models/TesResources.cs: `CpuCores` is a `long?`, so a fractional
# cpu_cores does not bind and the request is refused (400) before anything is stored;
# `SupportedBackendParameters { vm_size, workflow_execution_identity }` (also what service-info
# lists as tesResources_backend_parameters).
# src/TesApi.Web/Controllers/TaskServiceApi.cs CreateTaskAsync: cpu_cores, ram_gb, disk_gb must
# be > 0 (400); backend_parameters keys that repeat case-insensitively are a 400; keys are
# lower-cased; unsupported keys are a 400 when backend_parameters_strict is true, else removed
# before the task is stored ("Backends shall not store or return unsupported keys").
AZURE_BACKEND_PARAMETERS = ("vm_size", "workflow_execution_identity")


def _azure_create(request: Request) -> Rewrite | None:
    doc = request.json()
    resources = doc.get("resources") if isinstance(doc, dict) else None
    if not isinstance(resources, dict):
        return None
    cpu = resources.get("cpu_cores")
    if cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, int | float) or cpu != int(cpu):
            return Rewrite(answer=_bad_request(f"resources.cpu_cores: {cpu!r} is not a valid integer"))
        resources["cpu_cores"] = int(cpu)
    for key in ("cpu_cores", "ram_gb", "disk_gb"):
        if isinstance(resources.get(key), int | float) and resources[key] <= 0:
            return Rewrite(answer=_bad_request(f"{key} must be greater than zero"))
    params = resources.get("backend_parameters")
    if isinstance(params, dict):
        lowered = {str(k).lower(): v for k, v in params.items()}
        if len(lowered) != len(params):
            return Rewrite(answer=_bad_request("Duplicate backend_parameters were specified"))
        unsupported = [k for k in lowered if k not in AZURE_BACKEND_PARAMETERS]
        if unsupported and resources.get("backend_parameters_strict") is True:
            return Rewrite(
                answer=_bad_request(
                    "backend_parameters_strict is set to true and unsupported backend_parameters "
                    f"were specified: {','.join(unsupported)}"
                )
            )
        resources["backend_parameters"] = {k: v for k, v in lowered.items() if k not in unsupported}
    return Rewrite(request=lambda r: r.with_json(doc))


def _azure() -> list[Rule]:
    return [Rule(_azure_create, method="POST", path=TASKS_PATH, name="azure create")]


# -- tag_blind ----------------------------------------------------------------------------------
# tesk-api TesServiceImpl.listTasks takes name prefix, page size, page token and view (the name
# prefix marked "Unsupported") and Azure TES's TaskServiceApi.ListTasks takes the same four: neither
# knows TES 1.1's tag_key/tag_value, so a tag-filtered listing returns every task, other
# deployments' included.


def _tag_blind() -> list[Rule]:
    return [
        Rule(
            Rewrite(request=lambda r: r.without_query("tag_key", "tag_value")),
            method="GET",
            path=TASKS_PATH,
            name="tag blind",
        )
    ]


# -- list_forbidden -----------------------------------------------------------------------------
# Not a server but a deployment (issue 10's reproduction): a gateway in front of the TES server
# that routes and authorises GET /tasks/{id} but refuses the ListTasks route with 403.


def _list_forbidden() -> list[Rule]:
    forbidden = json_answer(403, {"message": "ListTasks is not permitted through this gateway"})
    return [Rule(Rewrite(answer=forbidden), method="GET", path=TASKS_PATH, name="list forbidden")]


PERSONALITIES: dict[str, Callable[[], list[Rule]]] = {
    "minimal": _minimal,
    "tesk": _tesk,
    "azure": _azure,
    "tag_blind": _tag_blind,
    "list_forbidden": _list_forbidden,
}


def personality_rules(name: str) -> list[Rule]:
    """A fresh set of the rules that make up personality ``name``."""
    try:
        return PERSONALITIES[name]()
    except KeyError:
        raise ValueError(f"unknown personality {name!r}; known: {sorted(PERSONALITIES)}") from None

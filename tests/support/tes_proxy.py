"""A proxy in front of a real TES server (normally Funnel) that lies on purpose.

Why: Funnel is the only TES server here, and it never preempts, never fails at the network
level and answers in one dialect. The proxy adds what the provider must survive elsewhere, each
as rules (:mod:`tests.support.rules`) of the shared loopback server (:mod:`tests.support.loopback`):

* **preemption** -- ``proxy.preempt(n, name_prefix)`` marks the next ``n`` tasks created
  through it: right after the create answer comes back the proxy cancels them upstream (with the
  client's ``Authorization``) and from then on reports them ``PREEMPTED``;
* **states** -- ``proxy.rewrite_state(task_id, "SYSTEM_ERROR")``: GetTask reports that state, and
  a ListTasks filtered by another state leaves the task out, as a server would once it moved on;
* **personalities** -- ``TesProxy(url, personality="tesk")`` or ``proxy.use("tesk")``: another
  server's documented dialect, as rules (:mod:`tests.support.personalities`);
* **faults** -- ``proxy.set_faults(rate, kinds, methods=..., path_regex=..., limit=...)`` with a
  seeded RNG, the kinds being

  ======================  ===========================================================
  ``"500"`` ``"502"``     answer that status (JSON ``{"message": "injected"}``),
  ``"503"``               request NOT forwarded
  ``"429"``               answer 429 with ``Retry-After: 1``, request NOT forwarded
  ``"reset"``             abort the connection (TCP RST), no answer, NOT forwarded
  ``"delay"``             forward, then wait ``proxy.delay_seconds`` before answering
  ``"truncate"``          forward, then answer with half the body but the full
                          Content-Length, then close
  ``"drop_response"``     forward (the server does the work!), then close the
                          connection without answering -- the ambiguous create
  ======================  ===========================================================

Usage::

    with TesProxy(funnel.url, seed=1) as proxy:
        hook_url = proxy.base_url            # http://127.0.0.1:PORT/ga4gh/tes/v1
        proxy.preempt(1, name_prefix="preemptible-")
        proxy.set_faults(0.3, ["503", "reset"], methods=["GET"])

Records: ``proxy.seen`` (every request as the client sent it, bodies included:
:class:`~tests.support.rules.Request`), ``proxy.seen_calls("create")`` (those of one TES
call); ``proxy.requests`` (method, path-with-query) of each; ``proxy.created`` (task id, request
body dict as sent) for every successful create; ``proxy.preempted_ids``;
``proxy.cancelled_ids`` (upstream cancels the proxy issued and that succeeded);
``proxy.fault_log`` (method, path, kind) for every injected fault; ``proxy.stats`` --
``requests``, ``forwarded``, ``connections``, ``upstream_errors``, ``injected_total`` and
``injected`` (a dict kind -> count).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from tests.support.loopback import ForwardingServer
from tests.support.personalities import personality_rules
from tests.support.rules import TASK_READS_PATH, Answer, Request, Rewrite, Rule, json_answer, tes_call

FAULT_KINDS = ("500", "502", "503", "429", "reset", "delay", "truncate", "drop_response")


def fault(kind: str, delay_seconds: float = 3.0) -> Rewrite:
    """The rewrite that injects one fault kind (see the module docstring)."""
    if kind in ("500", "502", "503"):
        return Rewrite(answer=json_answer(int(kind), {"message": "injected"}))
    if kind == "429":
        return Rewrite(answer=json_answer(429, {"message": "injected"}, {"Retry-After": "1"}))
    if kind == "reset":
        return Rewrite(delivery="reset")
    if kind == "delay":
        return Rewrite(delay=delay_seconds)
    if kind == "truncate":
        return Rewrite(delivery="truncate")
    if kind == "drop_response":
        return Rewrite(delivery="drop")
    raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")


def report_states(states: Mapping[str, str]) -> Rewrite:
    """GetTask/ListTasks answers that report ``states`` (task id -> state) for those tasks; a
    ListTasks filtered by ``state`` leaves out the tasks whose reported state is another."""

    def body(doc: Any, request: Request) -> Any:
        if not isinstance(doc, dict):
            return doc
        if tes_call(request.method, request.path) == "get":
            if str(doc.get("id")) in states:
                doc["state"] = states[str(doc["id"])]
            return doc
        wanted = request.query.get("state", [None])[0]
        listed = []
        for entry in doc.get("tasks") or []:
            state = states.get(str(entry.get("id"))) if isinstance(entry, dict) else None
            if state is not None:
                if wanted and state != wanted:
                    continue
                entry["state"] = state
            listed.append(entry)
        if "tasks" in doc:
            doc["tasks"] = listed
        return doc

    return Rewrite(body=body)


class TesProxy(ForwardingServer):
    """Fault-injecting, state-rewriting proxy in front of a TES server; see the module docstring."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        personality: str | None = None,
        max_upstream_connections: int = 64,
    ) -> None:
        self.seed = seed
        self.delay_seconds: float = 3.0
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.preempted_ids: list[str] = []
        self.cancelled_ids: list[str] = []
        self.fault_log: list[tuple[str, str, str]] = []
        self._rng = random.Random(seed)
        self._fault_rule: Rule | None = None
        self._preempt_rules: list[list[Any]] = []  # [remaining, name_prefix | None]
        self._state_overrides: dict[str, str] = {}
        self.personality: str | None = None
        self._personality_rules: list[Rule] = []
        super().__init__(upstream, max_upstream_connections=max_upstream_connections)
        # Rules run in order: faults (they may answer in the server's place), the personality, then
        # the states the test set (last, so they hold whatever the personality did to the answer).
        self._states_rule = self.add_rule(
            Rule(self._reported_states, method="GET", path=TASK_READS_PATH, name="states")
        )
        self.use(personality)

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.method, r.target) for r in self.seen]

    # --- configuration --------------------------------------------------------------------------
    def use(self, personality: str | None) -> None:
        """Answer like another TES server from now on (None: like the upstream itself)."""
        rules = personality_rules(personality) if personality else []
        with self.lock:
            for rule in self._personality_rules:
                self.remove_rule(rule)
            at = self.rules.index(self._states_rule)
            self.rules[at:at] = rules
            self.personality, self._personality_rules = personality, rules

    def preempt(self, count: int, name_prefix: str | None = None) -> None:
        """Preempt the next ``count`` tasks created through the proxy (whose name starts with
        ``name_prefix``, if given): cancel them upstream and report them as PREEMPTED."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self.lock:
            self._preempt_rules.append([count, name_prefix])

    def rewrite_state(self, task_id: str, state: str) -> None:
        """Report ``state`` for ``task_id`` in every GetTask / ListTasks response from now on."""
        with self.lock:
            self._state_overrides[task_id] = state

    def clear_rewrites(self) -> None:
        with self.lock:
            self._state_overrides.clear()
            self._preempt_rules.clear()

    def set_faults(
        self,
        rate: float,
        kinds: Iterable[str],
        *,
        methods: Iterable[str] | None = None,
        path_regex: str | None = None,
        limit: int | None = None,
    ) -> None:
        """Inject one of ``kinds`` (chosen at random) into each matching request with probability
        ``rate``.  ``methods`` restricts to those HTTP methods; ``path_regex`` is ``re.search``-ed
        against the request path (without query string); ``limit`` caps the number of faults
        injected by this configuration."""
        kinds = list(kinds)
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; known: {FAULT_KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if not kinds:
            raise ValueError("kinds must not be empty")
        allowed = {m.upper() for m in methods} if methods is not None else None
        path_re = re.compile(path_regex) if path_regex is not None else None

        def coin(request: Request) -> Rewrite | None:
            if allowed is not None and request.method not in allowed:
                return None
            if path_re is not None and not path_re.search(request.path):
                return None
            if self._rng.random() >= rate:
                return None
            kind: str = self._rng.choice(kinds)
            self.stats["injected"][kind] += 1
            self.stats["injected_total"] += 1
            self.fault_log.append((request.method, request.path, kind))
            return fault(kind, self.delay_seconds)

        with self.lock:
            self.clear_faults()
            self._fault_rule = Rule(coin, times=limit, name="faults")
            self.rules.insert(0, self._fault_rule)

    def clear_faults(self) -> None:
        with self.lock:
            if self._fault_rule is not None:
                self.remove_rule(self._fault_rule)
                self._fault_rule = None

    def reset_records(self) -> None:
        """Empty the records and zero the counters (configuration is kept)."""
        with self.lock:
            super().reset_records()
            self.created.clear()
            self.preempted_ids.clear()
            self.cancelled_ids.clear()
            self.fault_log.clear()
            self.stats.update(cancel_errors=0, injected_total=0, injected=dict.fromkeys(FAULT_KINDS, 0))

    # --- the proxy's own work -------------------------------------------------------------------
    def _reported_states(self, request: Request) -> Rewrite | None:
        with self.lock:
            overrides = dict(self._state_overrides)
        return report_states(overrides) if overrides else None

    async def on_backend_answer(self, received: Request, answer: Answer) -> None:
        if tes_call(received.method, received.path) == "create" and 200 <= answer.status < 300:
            await self._on_create(received, answer)

    async def _on_create(self, request: Request, answer: Answer) -> None:
        """Record the create (as the client sent it); preempt the task when an order covers it."""
        try:
            task_id = json.loads(answer.body).get("id")
        except (ValueError, AttributeError):
            return
        if not task_id:
            return
        body = request.json()
        body = body if isinstance(body, dict) else {}
        name = body.get("name") or ""
        with self.lock:
            self.created.append((task_id, body))
            order = next(
                (o for o in self._preempt_rules if o[0] > 0 and (o[1] is None or name.startswith(o[1]))), None
            )
            if order is None:
                return
            order[0] -= 1
            self.preempted_ids.append(task_id)
            self._state_overrides[task_id] = "PREEMPTED"
        headers = {"Content-Type": "application/json"}
        if "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        cancel = Request(
            "POST", f"{request.path.rstrip('/')}/{task_id}:cancel", httpx.Headers(headers), b"{}"
        )
        for _attempt in range(3):
            try:
                result = await self.call_upstream(cancel)
            except Exception:
                continue
            if result.status < 500:
                if result.status < 300:
                    with self.lock:
                        self.cancelled_ids.append(task_id)
                else:
                    self.bump("cancel_errors")
                return
        self.bump("cancel_errors")

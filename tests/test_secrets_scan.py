"""No secret leaves its box: a real Airflow runs deferring TES tasks through every kind of
credential, fails some on purpose, and every place a secret could end up is searched.

Why one run of one DAG (``tests/dags/tes_test_secrets.py``) and not a test per credential: the
places that leak are shared (one metadata DB, one triggerer, one log folder) and a running
Airflow costs most of the time, so one run with every credential side by side is both the
cheapest and the closest to a real deployment. The scheduler, triggerer, dag-processor and
api-server are real processes (:class:`~tests.support.airflow_services.AirflowServices`).

The credentials, all random per run:

* a bearer JWT minted by the test OIDC provider, pasted with a trailing newline (``cat
  token.txt``), in front of Funnel through the JWT gateway -- and a second one in the password
  field, which the gateway starts refusing while its task is deferred (an error event);
* OAuth2 client credentials against the same provider: every access token it issues is a secret
  too (tokens live a few seconds, so the worker and the triggerer each fetch several);
* Funnel's second user, whose password holds '/', '@' and ':', directly and through a fault
  proxy that answers some reads with 503 (retry warnings in the worker and the triggerer);
* a token the gateway never accepts, a server that answers only 503, a TES task that does not
  exist (exceptions in the worker), an OAuth2 client secret that is wrong, a token with a control
  character (exceptions in process);
* two executor env values shaped like secrets (``sk-live-`` + 32 hex): one from an Airflow
  Variable (so Airflow's masker knows it), one from a connection extra that no masker knows --
  whatever hides that one, it is not Airflow's masking.

The places searched:

* every file under the Airflow home: task logs (worker and trigger parts), the scheduler,
  triggerer, dag-processor and api-server logs, the metadata DB file (free pages included);
* the metadata DB sampled twice a second while the run goes on -- trigger kwargs (decrypted with
  the Fernet key), ``task_instance.next_method``/``next_kwargs`` (the trigger events), XCom -- so
  rows Airflow deletes or clears later are seen while they exist; and at the end the same tables,
  ``task_instance_history`` and the rendered template fields;
* the REST API: task instances, their logs and XCom entries, as a user would read them;
* the output of ``airflow connections test`` for each connection;
* in process: ``str``, ``repr``, traceback and pickle of every exception the hook, the trigger and
  the connection raise on the same error paths (with their ``__cause__``/``__context__`` chains),
  trigger event payloads, the log events emitted (retry warnings), reprs of hooks, settings and
  auth objects.

Each secret is looked for raw and in the forms it takes in transit: URL-quoted, form-quoted,
JSON- and repr-escaped, base64, inside a Basic header (``user:password``, also form-encoded as
RFC 6749 sends client credentials), with its trailing newline as h11 quoted it, and 16-character
fragments (a message cut short still leaks). A planted leak of every secret, through the same
collectors, must be found, so the scan cannot pass by looking nowhere.
"""

from __future__ import annotations

import base64
import json
import pickle
import re
import shutil
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import structlog.testing
from cryptography.fernet import Fernet, MultiFernet

from airflow_provider_tes.exceptions import (
    TesAuthError,
    TesConfigurationError,
    TesError,
    TesNotFoundError,
    TesServerUnavailableError,
)
from airflow_provider_tes.hooks.tes import TesHook
from airflow_provider_tes.models import TesExecutor, TesState, TesTask
from airflow_provider_tes.triggers.tes import TesTaskTrigger
from tests.support.airflow_env import TEST_DAGS, AirflowEnv, aws_connection
from tests.support.airflow_services import TERMINAL_TI_STATES, AirflowServices
from tests.support.oidc import JwtGateway, OidcProvider
from tests.support.rules import Request, Rewrite, Rule, json_answer
from tests.support.tes_proxy import TesProxy

pytestmark = pytest.mark.funnel

DAG_ID = "tes_test_secrets"
#: Connections whose tasks defer (each must be seen in a trigger's kwargs).
DEFERRING = ("tes_sec_bearer", "tes_sec_oauth2", "tes_sec_basic", "tes_sec_flaky", "tes_sec_revoked")
EXPECTED_STATES = {
    "bearer_op": "success",
    "oauth2_op": "success",
    "basic_op": "success",
    "flaky_op": "success",
    "bearer_sensor": "success",
    "oauth2_sensor": "success",
    "basic_sensor": "success",
    "revoked_op": "failed",
    "wrong_token_op": "failed",
    "down_op": "failed",
    "missing_sensor": "failed",
}
SENSORS = ("bearer_sensor", "oauth2_sensor", "basic_sensor")
TOKEN_LIFETIME = 6.0  # seconds an OAuth2 access token lives: several are issued during the run


# -- secrets and the forms they take ------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """One credential; ``login`` makes its HTTP Basic forms (``login:value``) needles too."""

    name: str
    value: str
    login: str | None = None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _fragments(value: str) -> list[str]:
    """16-character pieces that only this secret has (for a JWT: of its payload and signature;
    every JWT of one issuer starts with the same header)."""
    if value.count(".") == 2 and value.startswith("eyJ"):
        _, payload, signature = value.split(".")
        return [payload[-16:], signature[:16], signature[-16:]]
    if len(value) < 32:
        return []
    return [value[:16], value[len(value) // 2 - 8 : len(value) // 2 + 8], value[-16:]]


def needles(secret: Secret) -> dict[str, bytes]:
    """Every form of ``secret`` to look for, by a name that says which form."""
    v = secret.value
    forms = {
        "raw": v,
        "URL-quoted": quote(v, safe=""),
        "URL-quoted as a path": quote(v),
        "form-quoted": quote_plus(v),
        "JSON-escaped": json.dumps(v)[1:-1],
        "JSON-escaped with \\/": json.dumps(v)[1:-1].replace("/", "\\/"),
        "repr-escaped": repr(v)[1:-1],
        "base64": _b64(v),
        "with its newline, JSON-escaped": json.dumps(v + "\n")[1:-1],
        "with its newline, as h11 quotes a header": repr(f"Bearer {v}\n".encode()),
    }
    if secret.login is not None:
        forms["Basic header"] = _b64(f"{secret.login}:{v}")
        forms["Basic header, form-encoded (RFC 6749)"] = _b64(f"{quote_plus(secret.login)}:{quote_plus(v)}")
    for number, fragment in enumerate(_fragments(v)):
        forms[f"fragment {number}"] = fragment
    return {f"{secret.name} ({kind})": form.encode() for kind, form in forms.items()}


@dataclass(frozen=True)
class Leak:
    secret: str  # its name
    what: str  # "<secret> (<form>)"
    where: str
    needle: bytes = field(repr=False)  # never printed: it is the secret

    def __str__(self) -> str:
        return f"{self.what} in {self.where}"


def find_leaks(secrets_: list[Secret], places: Mapping[str, bytes]) -> list[Leak]:
    """Every form of every secret found anywhere."""
    wanted: dict[bytes, tuple[str, str]] = {}
    for secret in secrets_:
        for what, needle in needles(secret).items():
            wanted.setdefault(needle, (secret.name, what))
    return [
        Leak(name, what, where, needle)
        for where, data in places.items()
        for needle, (name, what) in wanted.items()
        if needle in data
    ]


def leak_shapes(secret: Secret) -> str:
    """How each secret would look had it leaked the ways this provider's ancestors leaked."""
    v = secret.value
    shapes = [
        f"LocalProtocolError: Illegal header value {(f'Bearer {v}' + chr(10)).encode()!r}",
        json.dumps({"event": {"status": "error", "message": f"token {v[: len(v) // 2 + 8]}..."}}),
        f"GET https://tes.example/ga4gh/tes/v1/tasks?token={quote(v, safe='')}",
    ]
    if secret.login is not None:
        shapes.append(f"Authorization: Basic {_b64(f'{secret.login}:{v}')}")
    return "\n".join(shapes)


# -- an OIDC provider that remembers every token it signs --------------------------------------------


class RecordingOidcProvider(OidcProvider):
    """The test OIDC provider, keeping every token it issued (they are all secrets)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.minted: list[str] = []
        super().__init__(*args, **kwargs)

    def issue(
        self, subject: str | None = None, scope: str | None = None, lifetime: float | None = None
    ) -> str:
        token = super().issue(subject, scope, lifetime)
        with self.lock:
            self.minted.append(token)
        return token


# -- the metadata DB ---------------------------------------------------------------------------------


def read_db(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a read-only query; a locked DB (Airflow is writing) reads as no rows."""
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2) as db:
            return list(db.execute(sql, params).fetchall())
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            return []
        raise


def as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")


#: What may hold a secret while a run goes on, and is deleted (trigger) or cleared (next_kwargs) later.
LIVE_QUERIES = {
    "trigger": "SELECT id, classpath, kwargs FROM trigger",
    "task_instance": "SELECT task_id, state, next_method, next_kwargs FROM task_instance WHERE dag_id = ?",
    "xcom": "SELECT task_id, key, value FROM xcom WHERE dag_id = ?",
}
#: The same and more, once at the end.
FINAL_QUERIES = {
    **LIVE_QUERIES,
    "task_instance_history": "SELECT task_id, state, next_method, next_kwargs FROM task_instance_history "
    "WHERE dag_id = ?",
    "rendered_task_instance_fields": "SELECT task_id, rendered_fields FROM rendered_task_instance_fields "
    "WHERE dag_id = ?",
}


def decrypt_kwargs(raw: Any, fernet: MultiFernet) -> bytes:
    """A trigger row's kwargs as Airflow wrote them, decrypted (Airflow encrypts them with Fernet)."""
    text = as_bytes(raw)
    return text if text.startswith(b"{") else fernet.decrypt(text)


def db_places(db_path: Path, queries: Mapping[str, str], fernet: MultiFernet) -> dict[str, bytes]:
    """Each row of each query, as one place (trigger kwargs decrypted)."""
    found: dict[str, bytes] = {}
    for table, sql in queries.items():
        for row in read_db(db_path, sql, *([DAG_ID] if "?" in sql else [])):
            if table == "trigger":
                found[f"trigger {row[0]} ({row[1]}) kwargs"] = decrypt_kwargs(row[2], fernet)
            else:
                found[f"{table} {' '.join(str(c) for c in row[:2])}"] = b"\x00".join(as_bytes(c) for c in row)
    return found


class DbSampler:
    """Copies, twice a second, the rows Airflow deletes or clears later, while they exist."""

    def __init__(self, db_path: Path, fernet: MultiFernet) -> None:
        self.db_path = db_path
        self.fernet = fernet
        self.places: dict[str, bytes] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        for where, data in db_places(self.db_path, LIVE_QUERIES, self.fernet).items():
            key = f"sampled {where}"
            if data != self.places.get(key):  # keep every distinct version of a row
                key = f"{key} #{len([k for k in self.places if k.startswith(key)])}"
            self.places[key] = data
        self.samples += 1

    def __enter__(self) -> DbSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()


def home_files(home: Path) -> dict[str, bytes]:
    """Every file under an Airflow home: logs, service logs, the metadata DB and its journal."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


# -- exceptions and other in-process texts -----------------------------------------------------------


@dataclass
class Evidence:
    """Texts seen in this process that must hold no secret, by where they came from."""

    places: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # what -> exception type

    def text(self, what: str, value: Any) -> None:
        self.places[what] = value if isinstance(value, bytes) else as_bytes(value)

    def error(self, what: str, err: BaseException) -> None:
        """str, repr, traceback and pickle of ``err``, and str/repr of its whole chain."""
        self.errors[what] = type(err).__name__
        self.text(f"{what}: str", str(err))
        self.text(f"{what}: repr", repr(err))
        self.text(f"{what}: traceback", "".join(traceback.format_exception(err)))
        self.text(f"{what}: pickle", pickle.dumps(err))
        seen: set[int] = set()
        chain: list[BaseException] = [err]
        while chain:
            current = chain.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            self.text(f"{what}: chained {type(current).__name__} {len(seen)}", f"{current!s}\n{current!r}")
            chain += [e for e in (current.__cause__, current.__context__) if e is not None]

    def expect_error(self, what: str, call: Callable[[], Any], kind: type[BaseException] = TesError) -> None:
        with pytest.raises(kind) as info:
            call()
        self.error(what, info.value)


# -- the stack ---------------------------------------------------------------------------------------


@dataclass
class Box:
    env: AirflowEnv
    services: AirflowServices
    funnel: Any
    idp: RecordingOidcProvider
    gateway: JwtGateway
    revocable: JwtGateway
    flaky: TesProxy
    down: TesProxy
    connections: dict[str, str]
    secrets: dict[str, Secret]
    fernet: MultiFernet
    revoked_answers: int = 0

    def revoke(self, request: Request) -> Rewrite:
        """The revocable gateway's answer once its token is revoked (a rule of it)."""
        self.revoked_answers += 1
        return Rewrite(answer=json_answer(401, {"code": 16, "message": "token revoked"}))

    def all_secrets(self) -> list[Secret]:
        """The fixed secrets and every token the OIDC provider has issued so far."""
        with self.idp.lock:
            minted = list(self.idp.minted)
        known = {s.value for s in self.secrets.values()}
        issued = [t for t in dict.fromkeys(minted) if t not in known]
        return [*self.secrets.values(), *(Secret(f"issued token {n}", t) for n, t in enumerate(issued))]


def _tes(host: str, outputs_url: str, **fields: Any) -> str:
    extra = {"outputs_url": outputs_url, "aws_conn_id": "aws_default", "poll_interval": 1}
    extra.update(fields.pop("extra", {}))
    return json.dumps({"conn_type": "tes", "host": host, **fields, "extra": extra})


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, funnel: Any, moto_server: Any, s3_bucket: str
) -> Iterator[Box]:
    """Everything of the run: the OIDC provider, gateways and proxies in front of the session
    Funnel, the connections, and a running Airflow that reads them."""
    client_secret = "cs-" + uuid.uuid4().hex + "+/="
    env_value = "sk-live-" + uuid.uuid4().hex
    unmasked_env_value = "sk-live-" + uuid.uuid4().hex
    with ExitStack() as stack:
        idp = stack.enter_context(
            RecordingOidcProvider(
                client_id="airflow-tes-secrets", client_secret=client_secret, lifetime=TOKEN_LIFETIME
            )
        )
        impostor = stack.enter_context(OidcProvider(client_id="airflow-tes-secrets"))  # another key
        upstream = (funnel.user, funnel.password)
        gateway = stack.enter_context(JwtGateway(funnel.base_url, idp, upstream))
        revocable = stack.enter_context(JwtGateway(funnel.base_url, idp, upstream))
        flaky = stack.enter_context(TesProxy(funnel.url, seed=5))
        flaky.set_faults(0.3, ["503"], methods=["GET"])
        down = stack.enter_context(TesProxy(funnel.url, seed=6))
        down.set_faults(1.0, ["503"])

        bearer_token = idp.issue(subject="bearer-user", lifetime=3600)
        revoked_token = idp.issue(subject="revoked-user", lifetime=3600)
        wrong_token = impostor.issue(subject="impostor", lifetime=3600)
        second = {"login": funnel.second_user, "password": funnel.second_password}
        outputs = f"s3://{s3_bucket}/secrets/outputs/"
        connections = {
            "tes_sec_bearer": _tes(gateway.base_url, outputs, extra={"token": bearer_token + "\n"}),
            "tes_sec_oauth2": _tes(
                gateway.base_url,
                outputs,
                login=idp.client_id,
                password=client_secret,
                extra={"auth_type": "oauth2", "token_url": idp.token_url},
            ),
            "tes_sec_basic": _tes(funnel.base_url, outputs, **second),
            "tes_sec_flaky": _tes(flaky.base_url, outputs, **second, extra={"retries": 8}),
            "tes_sec_revoked": _tes(
                revocable.base_url,
                outputs,
                password=revoked_token + "\n",
                extra={"auth_type": "bearer", "retries": 1},
            ),
            "tes_sec_wrong": _tes(
                gateway.base_url, outputs, extra={"token": wrong_token + "\n", "retries": 0}
            ),
            "tes_sec_down": _tes(down.base_url, outputs, **second, extra={"retries": 1}),
            "aws_default": aws_connection(moto_server.endpoint_url),
            "tes_sec_app": json.dumps({"conn_type": "generic", "extra": {"opaque": unmasked_env_value}}),
        }
        fernet_key = Fernet.generate_key().decode()
        env = AirflowEnv(
            home=tmp_path_factory.mktemp("airflow-secrets"),
            dags_folder=TEST_DAGS,
            connections=connections,
            extra_env={
                "AIRFLOW__CORE__FERNET_KEY": fernet_key,
                "AIRFLOW_VAR_TES_SEC_SERVICE_API_KEY": env_value,
            },
        )
        env.migrate()
        services = stack.enter_context(AirflowServices(env))
        yield Box(
            env=env,
            services=services,
            funnel=funnel,
            idp=idp,
            gateway=gateway,
            revocable=revocable,
            flaky=flaky,
            down=down,
            connections=connections,
            secrets={
                "bearer": Secret("bearer token (pasted with a newline)", bearer_token),
                "revoked": Secret("revoked bearer token (pasted with a newline)", revoked_token),
                "wrong": Secret("wrong bearer token", wrong_token),
                "client": Secret("OAuth2 client secret", client_secret, login=idp.client_id),
                "wrong client": Secret(
                    "wrong OAuth2 client secret", client_secret[::-1], login=idp.client_id
                ),
                "password": Secret("password with / @ :", funnel.second_password, login=funnel.second_user),
                "admin": Secret("Funnel admin password", funnel.password, login=funnel.user),
                "env": Secret("executor env value (a Variable, masked by Airflow)", env_value),
                "unmasked env": Secret("executor env value (known to no masker)", unmasked_env_value),
            },
            fernet=MultiFernet([Fernet(fernet_key.encode())]),
        )


# -- the run -----------------------------------------------------------------------------------------


def _states(box: Box, run_id: str) -> dict[str, str | None]:
    rows = read_db(
        box.env.db_path,
        "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
        DAG_ID,
        run_id,
    )
    return dict(rows)


def _wait(
    box: Box, run_id: str, what: str, done: Callable[[dict[str, str | None]], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        states = _states(box, run_id)
        if done(states):
            return
        box.services._check_alive()
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {states}\n{box.services.logs(tail=4000)}")


def _wait_deferral_processed(box: Box, run_id: str, task_ids: tuple[str, ...], timeout: float = 120) -> None:
    """Wait until the scheduler processed the executor's report that these tasks' deferring runs
    ended. Airflow 3.3 fails a task instance whose trigger fired before that (the late report of
    the first run contradicts the resumed one), so a watched task must not end earlier."""
    wanted = {
        f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{DAG_ID}', "
        f"task_id='{task_id}', run_id='{run_id}'"
        for task_id in task_ids
    }
    log = box.services.log_dir / "scheduler.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if all(line in text for line in wanted):
            return
        time.sleep(0.5)
    raise AssertionError(f"the scheduler never processed the deferral of {task_ids}")


def _run_the_dag(box: Box, sampler: DbSampler, admin: TesHook) -> str:
    """Trigger the DAG, revoke the revocable token once its task waits in the triggerer, end the
    watched task once every sensor waits there, and wait for every task instance to end."""
    watched = admin.create_task(
        TesTask(
            name=f"secrets-watched-{uuid.uuid4().hex[:8]}",
            executors=[TesExecutor(image="alpine:3.20", command=["sleep", "300"])],
        )
    )
    run_id = box.services.trigger(
        DAG_ID, conf={"watched": watched, "missing": "no-such-task-" + uuid.uuid4().hex}
    )
    revoked_id: str | None = None
    try:
        _wait(box, run_id, "revoked_op to defer", lambda s: s.get("revoked_op") == "deferred", 240)
        box.revocable.add_rule(Rule(box.revoke, name="revoked"))
        revoked_id = box.env.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'revoked_op' "
            "AND key = 'tes_task_id'",
            DAG_ID,
            run_id,
        )[0][0]
        _wait(
            box, run_id, "the sensors to defer", lambda s: all(s.get(t) == "deferred" for t in SENSORS), 240
        )
        _wait_deferral_processed(box, run_id, SENSORS)
        admin.cancel_task(watched)
        _wait(
            box,
            run_id,
            "every task instance to end",
            lambda s: len(s) == len(EXPECTED_STATES) and all(v in TERMINAL_TI_STATES for v in s.values()),
            240,
        )
    finally:
        for tes_id in (watched, json.loads(revoked_id) if revoked_id else None):
            if tes_id and admin.get_task(tes_id).state in {
                TesState.QUEUED,
                TesState.INITIALIZING,
                TesState.RUNNING,
            }:
                admin.cancel_task(tes_id)
    assert sampler.samples > 0
    return run_id


def _api_places(box: Box, run_id: str) -> dict[str, bytes]:
    """What the REST API serves about the run: task instances, their logs, their XCom entries."""
    found: dict[str, bytes] = {}
    base = f"{box.services.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"
    with httpx.Client(timeout=30) as client:

        def get(path: str, **params: Any) -> httpx.Response:
            response = client.get(f"{base}{path}", params=params, headers={"Accept": "application/json"})
            assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
            found[f"API GET {path}"] = response.content
            return response

        get("")
        for task_id in EXPECTED_STATES:
            get(f"/{task_id}")
            get(f"/{task_id}/logs/1", full_content="true")
            entries = get(f"/{task_id}/xcomEntries").json().get("xcom_entries", [])
            for entry in entries:
                get(f"/{task_id}/xcomEntries/{entry['key']}")
    return found


def _cli_places(box: Box) -> dict[str, bytes]:
    """``airflow connections test`` of the credentials that reach a server (two at a time)."""
    conn_ids = ["tes_sec_bearer", "tes_sec_oauth2", "tes_sec_basic", "tes_sec_wrong"]
    with ThreadPoolExecutor(2) as pool:
        procs = list(
            pool.map(lambda c: box.env.run("connections", "test", c, check=False, timeout=300), conn_ids)
        )
    found: dict[str, bytes] = {}
    for conn_id, proc in zip(conn_ids, procs, strict=True):
        found[f"airflow connections test {conn_id}"] = as_bytes(proc.stdout + "\n" + proc.stderr)
    assert "Connection success" in procs[0].stdout + procs[0].stderr, procs[0].stdout + procs[0].stderr
    assert "Connection success" in procs[1].stdout + procs[1].stderr, procs[1].stdout + procs[1].stderr
    return found


def _in_process(box: Box, monkeypatch: pytest.MonkeyPatch) -> Evidence:
    """The same error paths in this process, so the exception objects themselves are searched."""
    evidence = Evidence()
    for conn_id, value in box.connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
    oauth2 = json.loads(box.connections["tes_sec_oauth2"])
    monkeypatch.setenv(
        "AIRFLOW_CONN_TES_SEC_OAUTH2_WRONG",
        json.dumps({**oauth2, "password": box.secrets["wrong client"].value}),
    )
    control = json.loads(box.connections["tes_sec_bearer"])
    token = box.secrets["bearer"].value
    control["extra"]["token"] = token[:20] + "\t" + token[20:]
    monkeypatch.setenv("AIRFLOW_CONN_TES_SEC_CONTROL_CHAR", json.dumps(control))

    def hook(conn_id: str) -> TesHook:
        return TesHook(conn_id, retry_min_wait=0.01, retry_max_wait=0.05)

    for conn_id in ("tes_sec_bearer", "tes_sec_oauth2", "tes_sec_basic", "tes_sec_flaky"):
        with hook(conn_id) as h:
            ok, message = h.test_connection()
            assert ok, message
            evidence.text(f"{conn_id}: test_connection", message)
            settings = h.settings
            for obj in (h, settings, settings.httpx_auth(), h.get_conn()):
                evidence.text(f"{conn_id}: repr {type(obj).__name__}", f"{obj!r}\n{obj!s}")
    with hook("tes_sec_wrong") as h:
        evidence.expect_error("wrong token", h.get_service_info, TesAuthError)
        evidence.text("wrong token: test_connection", h.test_connection()[1])
    with hook("tes_sec_revoked") as h:
        evidence.expect_error("revoked token", lambda: h.get_task("whatever"), TesAuthError)
    with hook("tes_sec_down") as h:
        evidence.expect_error("503", lambda: h.get_task("whatever"), TesServerUnavailableError)
    with hook("tes_sec_basic") as h:
        evidence.expect_error("missing task", lambda: h.get_task("no-such-task"), TesNotFoundError)
    with hook("tes_sec_oauth2_wrong") as h:
        evidence.expect_error("wrong client secret", h.get_service_info, TesAuthError)
    box.idp.fail_next(503, count=20)
    try:
        with hook("tes_sec_oauth2") as h:
            evidence.expect_error("token endpoint 503", h.get_service_info)
    finally:
        box.idp.rules.clear()
    evidence.expect_error(
        "control character", lambda: hook("tes_sec_control_char").settings, TesConfigurationError
    )
    for conn_id in ("tes_sec_revoked", "tes_sec_down"):
        trigger = TesTaskTrigger("no-such-task", conn_id, poll_interval=0.1, outage_budget=0.5)
        event = trigger.wait_here()
        payload = json.dumps(event.to_trigger_event().payload)  # what Airflow would store
        evidence.text(f"trigger event via {conn_id}", f"{event!r}\n{payload}")
        evidence.text(f"trigger {conn_id} serialized", repr(trigger.serialize()))
    return evidence


# -- the run and what it left -----------------------------------------------------------------------


@dataclass
class Run:
    """One run of the DAG and every place it may have left a secret in."""

    run_id: str
    states: dict[str, str | None]
    places: dict[str, bytes]
    sampled: dict[str, bytes]
    evidence: Evidence
    seconds: dict[str, float]

    def joined(self, prefix: str) -> bytes:
        return b"\n".join(v for k, v in self.places.items() if k.startswith(prefix))


@pytest.fixture(scope="module")
def run(box: Box) -> Run:
    seconds: dict[str, float] = {}
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(
            "AIRFLOW_CONN_TES_SEC_ADMIN",
            json.dumps(
                {
                    "conn_type": "tes",
                    "host": box.funnel.base_url,
                    "login": box.funnel.user,
                    "password": box.funnel.password,
                }
            ),
        )
        with (
            TesHook("tes_sec_admin") as admin,
            DbSampler(box.env.db_path, box.fernet) as sampler,
            ThreadPoolExecutor(1) as pool,
        ):
            cli = pool.submit(_cli_places, box)
            run_id = _run_the_dag(box, sampler, admin)
            seconds["DAG run"] = time.monotonic() - started
            cli_places = cli.result()
        collecting = time.monotonic()
        places: dict[str, bytes] = dict(sampler.places)
        places.update(
            {f"final {k}": v for k, v in db_places(box.env.db_path, FINAL_QUERIES, box.fernet).items()}
        )
        places.update({f"home file {k}": v for k, v in home_files(box.env.home).items()})
        places.update(_api_places(box, run_id))
        places.update(cli_places)
        with structlog.testing.capture_logs() as logged:
            evidence = _in_process(box, monkeypatch)
        places.update(evidence.places)
        places.update({f"in-process log event {n}": as_bytes(event) for n, event in enumerate(logged)})
        seconds["collecting"] = time.monotonic() - collecting
    return Run(
        run_id=run_id,
        states=_states(box, run_id),
        places=places,
        sampled=sampler.places,
        evidence=evidence,
        seconds=seconds,
    )


#: Bytes a token, password or encoded form is made of: a leak is masked up to its ends ('=' only
#: ends one, so "KEY=" before a leak stays readable).
_SECRETISH = re.compile(rb"[A-Za-z0-9._~+/=%:@-]+")
_SECRETISH_START = re.compile(rb"[A-Za-z0-9._~+/%:@-]+")


def _masked_context(data: bytes, needle: bytes, name: str, secrets_: list[Secret]) -> str:
    """Text around the first ``needle`` in ``data`` with the leak and every other secret in it
    masked: safe to print.

    The leak is masked as far as the secret-like run around it goes (a fragment's whole token),
    and other secrets are masked in a wide slice before the context is cut from it, so none cut
    in half at the context's edge survives in part.
    """
    at = data.index(needle)
    runs = _SECRETISH_START.finditer(data, max(0, at - 4000))
    start = min(at, next((m.start() for m in runs if m.end() > at), at))
    end = _SECRETISH.match(data, at + len(needle) - 1)
    stop = end.end() if end else at + len(needle)
    wide = data[max(0, start - 4000) : start] + b"\x00" + data[stop : stop + 4000]
    for secret in secrets_:
        for form in sorted(needles(secret).values(), key=len, reverse=True):
            wide = wide.replace(form, b"<" + secret.name.encode() + b">")
    at = wide.index(b"\x00")
    context = wide[max(0, at - 160) : at + 160].replace(b"\x00", b"<" + name.encode() + b">", 1)
    return context.decode("utf-8", "replace")


# -- the tests ---------------------------------------------------------------------------------------


def test_every_path_ran(run: Run, box: Box) -> None:
    """What the scan relies on happened: deferrals through every credential, trigger events
    (an error among them), retries, worker-side failures, issued OAuth2 tokens."""
    assert run.states == EXPECTED_STATES, box.services.logs(tail=8000)
    triggers = b"\n".join(v for k, v in run.sampled.items() if k.startswith("sampled trigger "))
    for conn_id in DEFERRING:
        assert f'"{conn_id}"'.encode() in triggers, f"no trigger of {conn_id} was seen in the DB"
    events = b"\n".join(v for k, v in run.sampled.items() if k.startswith("sampled task_instance "))
    assert b"execute_complete" in events and b'"terminal"' in events, (
        "no trigger event was seen in next_kwargs"
    )
    assert b'"error"' in events and b"TesAuthError" in events, "the revoked token's error event was not seen"
    assert run.joined("sampled xcom ") and run.joined("final xcom ")
    assert run.joined("final rendered_task_instance_fields "), "no rendered fields were written"
    logs = run.joined("home file logs/")
    assert b"Submitted TES task" in logs
    for error in (b"TesAuthError", b"TesServerUnavailableError", b"TesNotFoundError"):
        assert error in logs, f"{error.decode()} is in no task log"
    assert any(".trigger." in k for k in run.places), "no trigger log file was written"
    assert box.flaky.stats["injected_total"] > 0, "the fault proxy injected nothing"
    assert b"TES request failed" in logs, "no retry warning in the task logs"
    assert b"TES request failed" in run.joined("in-process log event "), "no retry warning in process"
    for service in ("triggerer", "scheduler", "api-server", "dag-processor"):
        assert run.places[f"home file service-logs/{service}.log"], f"the {service} wrote nothing"
    assert any(k.startswith("home file ") and k.endswith("airflow.db") for k in run.places)
    assert sum(k.startswith("API GET ") for k in run.places) > 3 * len(EXPECTED_STATES)
    assert sum(k.startswith("airflow connections test ") for k in run.places) == 4
    assert box.idp.tokens_issued >= 3, box.idp.requests
    assert box.gateway.rejected > 0 and box.revoked_answers > 0
    assert run.evidence.errors == {
        "wrong token": "TesAuthError",
        "revoked token": "TesAuthError",
        "503": "TesServerUnavailableError",
        "missing task": "TesNotFoundError",
        "wrong client secret": "TesAuthError",
        "token endpoint 503": run.evidence.errors["token endpoint 503"],
        "control character": "TesConfigurationError",
    }


def test_no_secret_in_any_place(run: Run, box: Box) -> None:
    """Zero hits: no form of any secret in any place. A hit is reported with its place and masked
    context (never the secret itself)."""
    secrets_ = box.all_secrets()
    leaks = find_leaks(secrets_, run.places)
    print(
        f"\n[secrets] DAG run {run.seconds['DAG run']:.0f}s, collecting {run.seconds['collecting']:.0f}s; "
        f"scanned {len(run.places)} places ({sum(len(v) for v in run.places.values()) / 1e6:.1f} MB) for "
        f"{len(secrets_)} secrets ({box.idp.tokens_issued} OAuth2 tokens issued, "
        f"{box.flaky.stats['injected_total']} 503s injected): {len(leaks)} hits"
    )
    # One line per secret and place (its first form found, the others named), with masked context.
    report: dict[tuple[str, str], list[Leak]] = {}
    for leak in leaks:
        report.setdefault((leak.secret, leak.where), []).append(leak)
    lines = [
        f"{first} (also: {', '.join(leak.what for leak in rest) or 'no other form'}):\n"
        f"    ...{_masked_context(run.places[first.where], first.needle, first.secret, secrets_)}..."
        for first, *rest in report.values()
    ]
    assert not lines, "\n".join(lines)


def test_a_planted_secret_is_found(run: Run, box: Box, tmp_path: Path) -> None:
    """The control: a leak of every secret, planted in a copy of the Airflow home (a task log, a
    trigger event in ``next_kwargs``, an encrypted trigger row), is found by the same collectors."""
    secrets_ = box.all_secrets()
    planted_home = tmp_path / "home"
    shutil.copytree(box.env.home / "logs", planted_home / "logs")
    shutil.copy2(box.env.db_path, planted_home / "airflow.db")
    shapes = "\n".join(leak_shapes(s) for s in secrets_)
    log_file = next(p for p in sorted((planted_home / "logs").rglob("*.log")) if p.is_file())
    log_file.write_text(log_file.read_text() + shapes)
    planted_db = planted_home / "airflow.db"
    with sqlite3.connect(planted_db) as db:
        db.execute("UPDATE task_instance SET next_kwargs = ? WHERE dag_id = ?", (json.dumps(shapes), DAG_ID))
        db.execute(
            "INSERT INTO trigger (classpath, kwargs, created_date) VALUES (?, ?, CURRENT_TIMESTAMP)",
            ("planted", box.fernet.encrypt(json.dumps({"m": shapes}).encode()).decode()),
        )
    planted = {
        **{f"home file {k}": v for k, v in home_files(planted_home).items() if k.startswith("logs/")},
        **db_places(planted_db, FINAL_QUERIES, box.fernet),
    }
    found = find_leaks(secrets_, planted)
    for secret in secrets_:
        for place in ("home file logs/", "trigger ", "task_instance "):
            assert any(hit.secret == secret.name and hit.where.startswith(place) for hit in found), (
                f"a planted {secret.name} in {place} was not found"
            )
    # and each form on its own: a secret that only leaked URL-quoted or in a Basic header is found
    for secret in secrets_:
        for what, form in needles(secret).items():
            assert find_leaks([secret], {"planted": b"..." + form + b"..."}), f"{what} is not found"

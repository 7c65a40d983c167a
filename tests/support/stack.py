"""Real integration-test stack: a moto S3 server and a Funnel TES server.

Plain Python (no pytest import) so that tests, benchmarks and ad-hoc scripts
can all use it::

    with MotoServer() as s3, FunnelServer(find_funnel_binary(), workdir, s3.endpoint_url,
                                          "admin", "secret") as funnel:
        httpx.get(f"{funnel.base_url}/service-info", auth=(funnel.user, funnel.password))

Funnel (the GA4GH reference TES server, built from source by
``scripts/build-funnel.sh``) runs with its ``local`` compute backend; each
executor is run on this host by ``scripts/docker-shim`` inside private mount and
pid namespaces (root needed).  Everything listens on, and is only ever
addressed through, 127.0.0.1 -- except that Funnel binds its HTTP and gRPC
ports on all interfaces (not configurable in v0.12.2).

Facts about Funnel v0.12.2 that shape the config written here:

* The config file is parsed with protojson into an *empty* config: Funnel's
  built-in defaults are NOT merged in, so every section the server touches has
  to be present (a missing ``Worker.LogTailSize`` silently drops executor
  stdout/stderr, a missing storage section is a nil dereference, ...).
  Unknown keys are an error.  Durations are protobuf JSON strings (``"0.5s"``,
  never ``"500ms"``); timeouts are ``{"duration": "30s"}`` or ``{"disabled": true}``.
  Logger keys are lower-case proto names (``level``, ``output_file``).
* JSON is YAML, so the config is written as JSON (no YAML dependency).
* The rendered container templates are split on whitespace with no quoting,
  hence the ``urlquery``-encoded arguments understood by the project's shim.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import REPO_ROOT

SCRIPTS_DIR = REPO_ROOT / "scripts"
BUILD_FUNNEL_SCRIPT = SCRIPTS_DIR / "build-funnel.sh"
DOCKER_SHIM = SCRIPTS_DIR / "docker-shim"

FUNNEL_VERSION = os.environ.get("FUNNEL_VERSION", "v0.12.2")

LOOPBACK = "127.0.0.1"

#: Funnel's second basic-auth user (not an admin; ``TaskAccess`` is ``All``). Its password holds
#: '/', '@' and ':', the characters that break naive URL and ``user:password`` handling, so the
#: secrets scan can follow a password that a careless quote or split would mangle or expose.
SECOND_USER = "tes-second"


def awkward_password() -> str:
    """A random password containing '/', '@' and ':' among random text."""
    part = secrets.token_urlsafe
    return f"{part(6)}/{part(6)}@{part(6)}:{part(6)}"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _wait_for_http(
    url: str, proc: subprocess.Popen[Any], timeout: float, what: str, log_hint: str = ""
) -> None:
    """Poll ``url`` until it answers with any HTTP status below 500."""
    deadline = time.monotonic() + timeout
    last_err: object = None
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise RuntimeError(f"{what} exited with status {rc} during start-up{log_hint}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:  # an HTTP answer means it is up
            if exc.code < 500:
                return
            last_err = exc
        except (urllib.error.URLError, OSError) as exc:
            last_err = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not answer {url} within {timeout}s ({last_err}){log_hint}")


def _terminate(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaps."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class MotoServer:
    """``python -m moto.server`` on a free loopback port (S3 and friends, in memory)."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(
        self,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.port = port or free_port()
        self.host = LOOPBACK
        self.endpoint_url = f"http://{self.host}:{self.port}"
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def start(self) -> MotoServer:
        if self._proc is not None:
            return self
        env = dict(os.environ)
        # moto itself must never be tempted to reach real AWS.
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=self.region,
        )
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out: Any = self._log_file
        else:
            out = subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        try:
            _wait_for_http(f"{self.endpoint_url}/moto-api/", self._proc, self.start_timeout, "moto server")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _terminate(self._proc)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def client(self, service: str = "s3") -> Any:
        """A boto3 client talking to this server."""
        import boto3  # only needed by callers that touch S3 directly

        make_client: Any = boto3.client  # the stubs only take literal service names
        return make_client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def create_bucket(self, name: str) -> str:
        self.client("s3").create_bucket(Bucket=name)
        return name

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_funnel_binary(bin_dir: str | os.PathLike[str] | None = None) -> str:
    """Path of a Funnel binary of ``FUNNEL_VERSION``, building it if needed.

    ``$FUNNEL_BINARY`` short-circuits everything.  Otherwise
    ``scripts/build-funnel.sh`` is run (it is a no-op when the binary in
    ``bin_dir`` / ``$FUNNEL_BIN_DIR`` / ``$(go env GOPATH)/bin`` already reports
    the right version) and its printed path is returned.
    """
    explicit = os.environ.get("FUNNEL_BINARY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"FUNNEL_BINARY={explicit} is not an executable")
        return explicit
    cmd = ["bash", str(BUILD_FUNNEL_SCRIPT)]
    if bin_dir is not None:
        cmd.append(str(bin_dir))
    env = dict(os.environ, FUNNEL_VERSION=FUNNEL_VERSION)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"scripts/build-funnel.sh failed ({res.returncode}):\n{res.stderr[-4000:]}")
    path = res.stdout.strip().splitlines()[-1]
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"build-funnel.sh printed {path!r}, which is not an executable")
    return path


# The container templates.  Funnel renders these with Go's text/template, splits
# the result on whitespace (no quoting) and, for RunCommand, strips the literal
# "{{.Command}}" and appends the executor argv instead (a one-element command
# becomes ["/bin/sh", "-c", cmd]).  Values are urlquery-encoded so that spaces
# survive the split; scripts/docker-shim decodes the *-enc options.
RUN_TEMPLATE = (
    "run -i "
    "{{if .Name}}--name {{.Name}}{{end}} "
    "{{if .Workdir}}--workdir-enc {{urlquery .Workdir}}{{end}} "
    "{{range .Volumes}}--volume-enc {{urlquery .HostPath}}:{{urlquery .ContainerPath}}:"
    "{{if .Readonly}}ro{{else}}rw{{end}} {{end}} "
    "{{range $k, $v := .Env}}--env-enc {{urlquery $k}}={{urlquery $v}} {{end}} "
    "--image {{urlquery .Image}} -- {{.Command}}"
)
PULL_TEMPLATE = "pull {{.Image}}"
STOP_TEMPLATE = "rm -f {{.Name}}"


class FunnelServer:
    """A Funnel server (``funnel server run``) with its own workdir, ports and DB.

    ``compute="local"`` runs tasks through the docker shim; ``compute="noop"``
    (Funnel's do-nothing backend) accepts tasks and leaves them QUEUED forever.
    Besides the admin ``user``/``password`` there is always ``second_user`` with
    ``second_password`` (random, with '/', '@' and ':' in it, unless given).
    """

    def __init__(
        self,
        binary: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        s3_endpoint: str | None,
        user: str = "admin",
        password: str = "admin",
        *,
        compute: str = "local",
        s3_key: str = "testing",
        s3_secret: str = "testing",
        s3_region: str = "us-east-1",
        extra_users: list[dict[str, Any]] | None = None,
        polling_rate: str = "0.5s",
        log_update_rate: str = "0.5s",
        log_level: str = "info",
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        oidc: dict[str, Any] | None = None,
        second_password: str | None = None,
    ) -> None:
        if compute not in ("local", "noop"):
            raise ValueError(f"unsupported compute backend {compute!r} (local or noop)")
        self.binary = str(binary)
        self.workdir = Path(workdir).resolve()
        self.s3_endpoint = s3_endpoint
        self.user = user
        self.password = password
        self.second_user = SECOND_USER
        self.second_password = second_password or awkward_password()
        self.compute = compute
        self.s3_key, self.s3_secret, self.s3_region = s3_key, s3_secret, s3_region
        self.extra_users = list(extra_users or [])
        self.polling_rate = polling_rate
        self.log_update_rate = log_update_rate
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.oidc = dict(oidc) if oidc else None  # Server.OidcAuth (ServiceConfigURL, ClientId, ...)

        self.http_port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self.http_port:
            self.rpc_port = free_port()
        self.host = LOOPBACK
        self.url = f"http://{self.host}:{self.http_port}"
        self.base_url = f"{self.url}/ga4gh/tes/v1"

        self.config_path = self.workdir / "funnel-config.yml"
        self.log_path = self.workdir / "funnel.log"  # Funnel's own log (Logger.output_file)
        self.stdout_path = self.workdir / "funnel.stdout"  # anything printed before/besides it
        self.task_workdir = self.workdir / "work"  # Worker.WorkDir
        self.db_path = self.workdir / "funnel.db"
        self.local_storage_dir = self.workdir / "local-storage"  # LocalStorage.AllowedDirs
        self.shim_state_dir = self.workdir / "docker-shim-state"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout_file: Any = None

    # -- config -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The complete Funnel v0.12.2 config (no built-in defaults get merged)."""
        users = [
            {"User": self.user, "Password": self.password, "Admin": True},
            {"User": self.second_user, "Password": self.second_password},
            *self.extra_users,
        ]
        generic_s3: list[dict[str, Any]] = []
        if self.s3_endpoint:
            generic_s3.append(
                {
                    "Endpoint": self.s3_endpoint,
                    "Key": self.s3_key,
                    "Secret": self.s3_secret,
                    "Region": self.s3_region,
                }
            )
        return {
            "Database": "boltdb",
            "Compute": self.compute,
            "EventWriters": ["boltdb", "log"],
            "Logger": {
                "level": self.log_level,
                "formatter": "text",
                "output_file": str(self.log_path),
                "text_format": {"full_timestamp": True, "disable_colors": True},
            },
            "Server": {
                "ServiceName": "Funnel",
                "HostName": self.host,
                "HTTPPort": str(self.http_port),
                "RPCPort": str(self.rpc_port),
                "BasicAuth": users,
                "DisableHTTPCache": True,
                "TaskAccess": "All",
                **({"OidcAuth": self.oidc} if self.oidc else {}),
            },
            "RPCClient": {
                "ServerAddress": f"{self.host}:{self.rpc_port}",
                # The worker (in-process for local compute) talks gRPC to the
                # server and needs credentials once BasicAuth is on; without
                # them tasks stay QUEUED forever.
                "Credential": {"User": self.user, "Password": self.password},
                "Timeout": {"duration": "30s"},
                "MaxRetries": 3,
            },
            "Scheduler": {
                "ScheduleRate": "1s",
                "ScheduleChunk": 10,
                "NodePingTimeout": {"duration": "60s"},
                "NodeInitTimeout": {"duration": "300s"},
                "NodeDeadTimeout": {"duration": "300s"},
            },
            "Node": {"Timeout": {"disabled": True}, "UpdateRate": "5s", "Resources": {}},
            "Worker": {
                "WorkDir": str(self.task_workdir),
                "PollingRate": self.polling_rate,
                "LogUpdateRate": self.log_update_rate,
                "LogTailSize": 10000,
                "LeaveWorkDir": False,
                "MaxParallelTransfers": 10,
                "Container": {
                    # Worker.DriverCommand (top level) exists but is unused by
                    # the v0.12.2 worker; Container.DriverCommand is what runs.
                    "DriverCommand": str(DOCKER_SHIM),
                    "RunCommand": RUN_TEMPLATE,
                    "PullCommand": PULL_TEMPLATE,
                    "StopCommand": STOP_TEMPLATE,
                },
            },
            "BoltDB": {"Path": str(self.db_path)},
            "LocalStorage": {"AllowedDirs": [str(self.local_storage_dir)]},
            "HTTPStorage": {"Timeout": {"duration": "30s"}},
            "AmazonS3": {"Disabled": True},
            "GenericS3": generic_s3,
            "GoogleStorage": {"Disabled": True},
            "Swift": {"Disabled": True},
            "FTPStorage": {"Disabled": True},
        }

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_API_VERSION"] = "1.43"  # the worker then skips its `docker version` probe
        env["DOCKER_SHIM_STATE_DIR"] = str(self.shim_state_dir)
        # Never let the S3/GCS SDKs pick up real credentials from the environment.
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS"):
            env.pop(var, None)
        env.update(
            AWS_ACCESS_KEY_ID=self.s3_key,
            AWS_SECRET_ACCESS_KEY=self.s3_secret,
            AWS_DEFAULT_REGION=self.s3_region,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> FunnelServer:
        if self._proc is not None:
            return self
        for d in (self.workdir, self.task_workdir, self.local_storage_dir, self.shim_state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        self.config_path.chmod(0o600)  # it holds the passwords
        self._stdout_file = open(self.stdout_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [self.binary, "server", "run", "--config", str(self.config_path)],
            cwd=self.workdir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._stdout_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # keep terminal signals (Ctrl-C) for the test runner
        )
        try:
            _wait_for_http(
                f"{self.url}/healthz",
                self._proc,
                self.start_timeout,
                "funnel server",
                log_hint=f"\n--- funnel output ---\n{self.read_logs(tail=4000)}",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server, then kill any executor it left running."""
        _terminate(self._proc, self.stop_timeout)
        self._proc = None
        if self._stdout_file is not None:
            self._stdout_file.close()
            self._stdout_file = None
        self.kill_executors()

    def kill_executors(self) -> list[int]:
        """SIGKILL the executor process trees recorded by the docker shim."""
        killed: list[int] = []
        if not self.shim_state_dir.is_dir():
            return killed
        for pid_file in self.shim_state_dir.glob("*.pid"):
            try:
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"unshare" not in cmdline or str(self.shim_state_dir).encode() not in cmdline:
                continue  # stale pid file, pid reused by something else
            # unshare runs with --kill-child: its death takes the pid namespace down.
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            for p in [*map(int, children), pid]:
                try:
                    os.kill(p, signal.SIGKILL)
                    killed.append(p)
                except ProcessLookupError:
                    pass
        return killed

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def read_logs(self, tail: int | None = None) -> str:
        parts = []
        for p in (self.stdout_path, self.log_path):
            if p.exists():
                text = p.read_text(errors="replace")
                if tail is not None:
                    text = text[-tail:]
                parts.append(f"==> {p.name} <==\n{text}")
        return "\n".join(parts)

    def copy_logs(self, dest: str | os.PathLike[str]) -> Path:
        """Copy config (passwords redacted), logs and shim state into ``dest``."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for p in (self.stdout_path, self.log_path):
            if p.exists():
                shutil.copy2(p, dest / p.name)
        if self.config_path.exists():
            text = self.config_path.read_text()
            oidc_secret = (self.oidc or {}).get("ClientSecret", "")
            passwords = {self.password, self.second_password, oidc_secret}
            for secret in passwords | {u.get("Password", "") for u in self.extra_users}:
                if secret:
                    text = text.replace(secret, "***")
            (dest / self.config_path.name).write_text(text)
        return dest

    @contextlib.contextmanager
    def serving(self, request: Any, name: str) -> Iterator[FunnelServer]:
        """Run for a fixture's scope; when any test of the session failed, keep the logs under
        ``tests/artifacts/<name>-<timestamp>/``."""
        self.start()
        try:
            yield self
        finally:
            self.stop()
            if request.session.testsfailed:
                artifacts = REPO_ROOT / "tests" / "artifacts" / time.strftime(f"{name}-%Y%m%d-%H%M%S")
                print(
                    f"\n[stack] tests failed; Funnel logs copied to {self.copy_logs(artifacts)}",
                    file=sys.stderr,
                )

    def __enter__(self) -> FunnelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

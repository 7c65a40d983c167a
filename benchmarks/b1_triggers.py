"""B1: triggerer scale. N TesTaskTriggers in one process vs N naive per-task pollers.

For each N a fresh TES backend holds N QUEUED tasks tagged ``dag_id`` (Funnel with
``compute="noop"``, or the loopback stub when creating N tasks in Funnel would take too long).
Every request of the pollers goes through a counting proxy (Funnel) or is counted by the stub.

Per N two child processes are measured, one after the other, so that CPU seconds and peak RSS
belong to one measurement each:

* ``product``: N ``TesTaskTrigger`` runs in one event loop (they share one hook and poller);
* ``baseline``: N trigger-shaped pollers, each with its own ``TesHook`` (own ``httpx.AsyncClient``)
  doing one GET per task per interval, the way a trigger without the shared poller would.

After a warm-up (every task polled once) the child measures a window; meanwhile the parent flips
a sample of tasks to COMPLETE at spread-out times and the child records when each event arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from benchmarks.common import REPO_ROOT, MachineMeter, Row, cpu_seconds, peak_rss_mb, percentile

CONN_ID = "tes_bench"
CREATE_CONN_ID = "tes_bench_create"
DAG_TAG = "bench_b1"
USER, PASSWORD = "bench", "bench-pw"
#: Switch to the stub when creating the tasks in Funnel is projected to take longer than this.
MAX_FUNNEL_CREATE_SECONDS = 180.0
CREATE_THREADS = 32
READY_TIMEOUT = 600.0


# ================================================================================ child process


class PerTaskGetTrigger(BaseTrigger):
    """Baseline (benchmark only, not product code): own hook, one GET per task per interval.

    What a trigger without the shared poller does; ``answered`` collects the tasks that got a
    first answer (for the warm-up).
    """

    def __init__(
        self, tes_task_id: str, tes_conn_id: str, poll_interval: float, answered: set[str] | None = None
    ) -> None:
        super().__init__()
        self.tes_task_id = tes_task_id
        self.tes_conn_id = tes_conn_id
        self.poll_interval = poll_interval
        self.answered = answered if answered is not None else set()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # Required by BaseTrigger; the benchmark runs these in-process and never stores them.
        kwargs = {"tes_task_id": self.tes_task_id, "tes_conn_id": self.tes_conn_id}
        return f"{__name__}.PerTaskGetTrigger", {**kwargs, "poll_interval": self.poll_interval}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_tes.exceptions import TesError
        from airflow_provider_tes.hooks.tes import TesHook
        from airflow_provider_tes.models import TesState, TesView

        last = None
        async with TesHook(self.tes_conn_id) as hook:
            while True:
                try:
                    task = await hook.a_get_task(self.tes_task_id, view=TesView.MINIMAL)
                except TesError as err:
                    self.log.warning("Poll of TES task %s failed: %s", self.tes_task_id, err)
                else:
                    self.answered.add(self.tes_task_id)
                    state = task.state or TesState.UNKNOWN
                    if state != last:
                        self.log.info("TES task %s is %s", self.tes_task_id, state.value)
                        last = state
                    if state.is_terminal:
                        yield TriggerEvent({"tes_task_id": self.tes_task_id, "state": state.value})
                        return
                await asyncio.sleep(self.poll_interval)


async def _child_main(args: argparse.Namespace, ids: list[str], control: Any) -> dict[str, Any]:
    from airflow_provider_tes.triggers.polling import SharedStatusPoller
    from airflow_provider_tes.triggers.tes import TesTaskTrigger

    events: dict[str, tuple[float, str | None]] = {}
    answered: set[str] = set()
    started = time.monotonic()

    rng = random.Random(1)

    async def consume(runner: AsyncIterator[Any], task_id: str) -> None:
        # Deferred tasks reach a triggerer over time, not all at once: starts are spread
        # over one interval (the same way for both modes).
        await asyncio.sleep(rng.uniform(0, args.interval))
        async for event in runner:
            events[task_id] = (time.time(), event.payload.get("state"))

    rounds: list[tuple[float, float]] = []
    if args.mode == "product":
        # Instrumentation only: how long each poll round (listing + GETs) takes.
        original = SharedStatusPoller.poll_once

        async def timed_poll_once(self: SharedStatusPoller) -> None:
            started = time.perf_counter()
            await original(self)
            rounds.append((time.time(), time.perf_counter() - started))

        SharedStatusPoller.poll_once = timed_poll_once  # type: ignore[method-assign]
        runners = [
            consume(TesTaskTrigger(tes_task_id=i, tes_conn_id=CONN_ID, poll_interval=args.interval).run(), i)
            for i in ids
        ]
    else:
        runners = [consume(PerTaskGetTrigger(i, CONN_ID, args.interval, answered).run(), i) for i in ids]
    tasks = [asyncio.create_task(r) for r in runners]

    def poller() -> Any:
        return next(iter(SharedStatusPoller._registry.values()), None)

    ready = False
    deadline = time.monotonic() + READY_TIMEOUT
    first_round = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if args.mode == "product":
            p = poller()
            if p is None or len(p.watches) < len(ids):
                continue
            first_round = first_round or p.rounds
            if p.rounds >= first_round + 2:
                ready = True
                break
        elif len(answered) >= len(ids):
            ready = True
            break
    startup = time.monotonic() - started
    if args.mode == "baseline":
        await asyncio.sleep(args.interval)  # let the first burst of GETs settle into its cadence

    p = poller()
    rounds0 = p.rounds if p is not None else 0
    cpu0, wall0 = cpu_seconds(), time.time()
    control.write(f"WINDOW_START {wall0}\n")
    control.flush()
    await asyncio.sleep(args.window)
    cpu1, wall1 = cpu_seconds(), time.time()
    control.write(f"WINDOW_END {wall1}\n")
    control.flush()
    p = poller()
    result = {
        "mode": args.mode,
        "n": len(ids),
        "ready": ready,
        "startup_s": startup,
        "window_s": wall1 - wall0,
        "cpu_s": cpu1 - cpu0,
        "peak_rss_mb": peak_rss_mb(),
        "rounds": (p.rounds - rounds0) if p is not None else None,
        "round_s": sorted(d for at, d in rounds if wall0 <= at <= wall1),
        "events": {k: v for k, v in events.items()},
        "tasks_done": sum(t.done() for t in tasks),
        "task_errors": [repr(t.exception())[:300] for t in tasks if t.done() and t.exception()][:5],
    }
    return result


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["product", "baseline"], required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    # Per-request INFO lines of httpx would swamp the log of the per-task baseline; both sides
    # log what the trigger itself logs.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    control = os.fdopen(args.control_fd, "w", buffering=1)
    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(_child_main(args, Path(args.ids).read_text().split(), control))
    except BaseException as err:
        result = {"error": f"{type(err).__name__}: {err}"}
    Path(args.out).write_text(json.dumps(result))
    control.write("DONE\n")
    control.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Tearing down thousands of pollers and clients is not part of the measurement.
    os._exit(0)


# ================================================================================ parent


def _task(i: int) -> Any:
    from airflow_provider_tes.models import TesExecutor, TesTask

    return TesTask(
        name=f"bench-b1-{i:06d}",
        tags={"dag_id": DAG_TAG, "task_id": f"t{i}"},
        executors=[TesExecutor(image="alpine:3.20", command=["true"])],
    )


def _create(hook: Any, start: int, count: int) -> list[str]:
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        return list(pool.map(lambda i: hook.create_task(_task(i)), range(start, start + count)))


def _conn_json(base_url: str, interval: float) -> str:
    return json.dumps(
        {
            "conn_type": "tes",
            "host": base_url,
            "login": USER,
            "password": PASSWORD,
            # Plain HTTP on loopback: verify=false only spares each client loading the CA bundle
            # (~60 ms of CPU per httpx client here), which would make the per-task baseline worse.
            "extra": {"verify": False, "poll_interval": interval},
        }
    )


class _Backend:
    """Funnel (noop compute) behind the counting proxy, or the stub; holds the N tasks."""

    def __init__(self, n: int, tmp: Path, choice: str, interval: float, log: Any) -> None:
        self.n, self.tmp, self.choice, self.interval, self.log = n, tmp, choice, interval, log
        self.funnel: Any = None
        self.server: Any = None
        self.kind = ""
        self.ids: list[str] = []
        self.create_s = 0.0
        self.create_note = ""

    def __enter__(self) -> _Backend:
        from airflow_provider_tes.hooks.tes import TesHook

        if self.choice in ("auto", "funnel"):
            from tests.support.stack import FunnelServer, find_funnel_binary
            from tests.support.tes_proxy import TesProxy

            workdir = Path(tempfile.mkdtemp(prefix=f"funnel-{self.n}-", dir=self.tmp))
            self.funnel = FunnelServer(
                find_funnel_binary(), workdir, None, USER, PASSWORD, compute="noop", log_level="warn"
            ).start()
            os.environ[f"AIRFLOW_CONN_{CREATE_CONN_ID.upper()}"] = _conn_json(self.funnel.base_url, 1)
            hook = TesHook(CREATE_CONN_ID, max_concurrency=CREATE_THREADS)
            started = time.perf_counter()
            probe = min(self.n, 500)
            self.ids = _create(hook, 0, probe)
            rate = probe / (time.perf_counter() - started)
            projected = self.n / rate
            if self.choice == "auto" and projected > MAX_FUNNEL_CREATE_SECONDS:
                self.create_note = (
                    f"Funnel created {rate:.0f} tasks/s: {self.n} would take {projected:.0f} s > "
                    f"{MAX_FUNNEL_CREATE_SECONDS:.0f} s, so the stub was used"
                )
                self.log(f"  B1 N={self.n}: {self.create_note}")
                hook.close()
                self.funnel.stop()
                self.funnel = None
            else:
                self.ids += _create(hook, probe, self.n - probe)
                self.create_s = time.perf_counter() - started
                hook.close()
                self.kind = "funnel(noop)+proxy"
                self.server = TesProxy(self.funnel.url).start()
        if self.funnel is None:
            from tests.support.tes_stub import TesStub

            self.server = TesStub().start()
            os.environ[f"AIRFLOW_CONN_{CREATE_CONN_ID.upper()}"] = _conn_json(self.server.base_url, 1)
            hook = TesHook(CREATE_CONN_ID, max_concurrency=CREATE_THREADS)
            started = time.perf_counter()
            self.ids = _create(hook, 0, self.n)
            self.create_s = time.perf_counter() - started
            hook.close()
            self.kind = "stub"
        self.log(
            f"  B1 N={self.n}: created {len(self.ids)} tasks in {self.create_s:.1f} s "
            f"({len(self.ids) / max(self.create_s, 1e-9):.0f}/s) on {self.kind}"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
        if self.funnel is not None:
            self.funnel.stop()


def _measure(
    backend: _Backend, mode: str, interval: float, window: float, flips: list[tuple[float, str]], tmp: Path
) -> dict[str, Any]:
    """Run one child; flip ``(offset, task id)`` to COMPLETE during its window."""
    ids_path = tmp / f"ids-{backend.n}.txt"
    ids_path.write_text("\n".join(backend.ids))
    out_path = tmp / f"result-{backend.n}-{mode}.json"
    log_path = tmp / f"child-{backend.n}-{mode}.log"
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = _conn_json(backend.server.base_url, interval)
    env.setdefault("AIRFLOW_HOME", str(tmp / "airflow-home"))
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.b1_triggers",
        "--child",
        "--mode",
        mode,
        "--ids",
        str(ids_path),
        "--interval",
        str(interval),
        "--window",
        str(window),
        "--control-fd",
        str(write_fd),
        "--out",
        str(out_path),
    ]
    backend.server.clear_rewrites()
    backend.server.reset_counts()
    flipped: dict[str, float] = {}
    counts: dict[str, int] = {}
    meter = MachineMeter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        stop_flips = threading.Event()
        flipper: threading.Thread | None = None
        limit = time.monotonic() + READY_TIMEOUT + window + 300
        try:
            with os.fdopen(read_fd) as control:
                for line in control:
                    word = line.split()[0] if line.strip() else ""
                    if word == "WINDOW_START":
                        backend.server.reset_counts()
                        meter.start()
                        t0 = time.monotonic()

                        def flip(t0: float = t0) -> None:
                            for offset, task_id in flips:
                                if stop_flips.wait(max(0.0, t0 + offset - time.monotonic())):
                                    return
                                backend.server.rewrite_state(task_id, "COMPLETE")
                                flipped[task_id] = time.time()

                        flipper = threading.Thread(target=flip, daemon=True)
                        flipper.start()
                    elif word == "WINDOW_END":
                        counts = backend.server.snapshot_counts()
                        meter.stop()
                        stop_flips.set()
                    elif word == "DONE":
                        break
                    if time.monotonic() > limit:
                        break
            proc.wait(timeout=max(1.0, limit - time.monotonic()))
        finally:
            stop_flips.set()
            if flipper is not None:
                flipper.join(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not out_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"B1 child {mode} N={backend.n} produced no result; log tail:\n{tail}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    if "error" in result:
        raise RuntimeError(f"B1 child {mode} N={backend.n} failed: {result['error']}")
    events = result.pop("events")
    delays = [events[t][0] - at for t, at in flipped.items() if t in events]
    result.update(
        requests=counts,
        requests_total=sum(counts.values()),
        flipped=len(flipped),
        events_for_flipped=len(delays),
        unexpected_events=len([t for t in events if t not in flipped]),
        delay_p50=percentile(delays, 50),
        delay_p99=percentile(delays, 99),
        delay_max=max(delays) if delays else None,
        machine_cores_busy=meter.cores_busy,
        round_p50=percentile(result.get("round_s") or [], 50),
        round_max=max(result.get("round_s") or [0.0]),
        # Polls achieved per tracked task per interval (1.0 = keeping up).
        polls_per_task_interval=counts.get("get", 0)
        / max(1, len(backend.ids))
        / (result["window_s"] / interval),
    )
    return result


def run(
    *, quick: bool, tmp: Path, log: Any, backend_choice: str = "auto", sizes: list[int] | None = None
) -> tuple[list[Row], dict[str, Any]]:
    interval = 2.0 if quick else 10.0
    window = 10.0 if quick else 60.0
    sizes = sizes or ([200] if quick else [1000, 5000, 10000])
    rng = random.Random(42)
    rows: list[Row] = []
    raw: dict[str, Any] = {"interval_s": interval, "window_s": window, "runs": {}}
    for n in sizes:
        with _Backend(n, tmp, backend_choice, interval, log) as backend:
            k = max(10, min(100, n // 10))
            last = max(1.0, window - interval - 2.0)
            offsets = sorted(rng.uniform(0.5, last) for _ in range(k))
            flips = list(zip(offsets, rng.sample(backend.ids, k), strict=True))
            results = {}
            for mode in ("product", "baseline"):
                log(f"  B1 N={n}: measuring {mode} ({window:.0f} s window, {interval:.0f} s interval)")
                results[mode] = _measure(backend, mode, interval, window, flips, tmp)
                r = results[mode]
                log(
                    f"    startup {r['startup_s']:.1f} s, cpu {r['cpu_s']:.2f} s / {r['window_s']:.1f} s, "
                    f"rss {r['peak_rss_mb']:.0f} MB, requests {r['requests']}, "
                    f"delay p50/p99 {r['delay_p50']}/{r['delay_p99']}, events {r['events_for_flipped']}"
                    f"/{r['flipped']}, machine busy {r['machine_cores_busy']:.2f} cores"
                )
            raw["runs"][str(n)] = {
                "backend": backend.kind,
                "create_s": backend.create_s,
                "create_note": backend.create_note,
                **results,
            }
            rows += _rows(n, backend, results, interval, quick)
    return rows, raw


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rows(n: int, backend: _Backend, res: dict[str, Any], interval: float, quick: bool) -> list[Row]:
    prod, base = res["product"], res["baseline"]
    case = f"N={n} @{interval:.0f}s"
    kind = backend.kind
    notes = []
    for r in (prod, base):
        if not r["ready"]:
            notes.append(f"{r['mode']} not fully warmed up after {READY_TIMEOUT:.0f}s")
        if r["unexpected_events"]:
            notes.append(f"{r['mode']}: {r['unexpected_events']} unexpected events")
    note = "; ".join(notes)

    def per_min_per_1k(r: dict[str, Any]) -> float:
        return float(r["cpu_s"] / (r["window_s"] / 60.0) / (n / 1000.0))

    cycles = prod["window_s"] / interval
    rows = [
        Row(
            "B1",
            case,
            "CPU s/min/1k tasks",
            per_min_per_1k(prod),
            per_min_per_1k(base),
            ratio_kind="baseline/value",
            target=">= 5x less",
            passed=per_min_per_1k(base) >= 5 * per_min_per_1k(prod),
            backend=kind,
            notes="; ".join(
                x
                for x in (
                    note,
                    f"baseline made {base['polls_per_task_interval']:.2f} GETs/task/interval "
                    "(1.00 = kept up)",
                )
                if x
            ),
        ),
        Row(
            "B1",
            case,
            "cores used",
            prod["cpu_s"] / prod["window_s"],
            base["cpu_s"] / base["window_s"],
            ratio_kind="baseline/value",
            backend=kind,
        ),
        Row(
            "B1",
            case,
            "peak RSS MB",
            prod["peak_rss_mb"],
            base["peak_rss_mb"],
            ratio_kind="baseline/value",
            backend=kind,
        ),
        Row(
            "B1",
            case,
            "HTTP requests/cycle",
            prod["requests_total"] / cycles,
            base["requests_total"] / cycles,
            ratio_kind="baseline/value",
            backend=kind,
            extra={
                "product": prod["requests"],
                "baseline": base["requests"],
                "product_rounds": prod["rounds"],
            },
        ),
        Row(
            "B1",
            case,
            "event delay p50 s",
            prod["delay_p50"],
            base["delay_p50"],
            backend=kind,
            notes=f"{prod['events_for_flipped']}/{prod['flipped']} events (baseline "
            f"{base['events_for_flipped']}/{base['flipped']}); product poll round p50 "
            f"{_num(prod['round_p50'])} s, max {_num(prod['round_max'])} s",
        ),
        Row(
            "B1",
            case,
            "event delay p99 s",
            prod["delay_p99"],
            base["delay_p99"],
            target=f"<= {interval + 1:.0f} s",
            passed=(
                prod["delay_p99"] is not None
                and prod["delay_p99"] <= interval + 1.0
                and prod["events_for_flipped"] == prod["flipped"]
            ),
            backend=kind,
        ),
    ]
    if n >= 10000 or quick:
        cores = prod["cpu_s"] / prod["window_s"]
        scale = " (quick scale)" if quick else ""
        rows[1].target = "<= 0.2 core" + scale
        rows[1].passed = cores <= 0.2
        rows[2].target = "<= 300 MB" + scale
        rows[2].passed = prod["peak_rss_mb"] <= 300
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        raise SystemExit("run the benchmarks with: python -m benchmarks.run")

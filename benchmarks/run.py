"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--only b1,b2,b3]``.

Every figure is shown as a ratio against a baseline measured in the same run on the same machine,
because the absolute numbers depend on a machine that is shared (other processes may be running).
The table is printed and everything (with the raw measurements) is written to
``benchmarks/results/latest.json``.

* B1 triggerer scale: N TesTaskTriggers in one process vs N per-task pollers sharing one client.
* B2 staging: InputStager vs boto3 upload_file / a put_object loop; second run; digest vs hashlib.
* B3 submit overhead: TesTaskOperator.execute up to the deferral vs py-tes create_task.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, MachineMeter, Row, machine_snapshot


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.01 or value == 0:
        text = f"{value:.2f}"
    else:
        text = f"{value:.4f}"
    return text + unit


def table(rows: list[Row]) -> str:
    header = ["bench", "case", "metric", "value", "baseline", "ratio", "target", "result", "backend / notes"]
    lines = []
    for r in rows:
        ratio = r.ratio
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        if ratio is not None and r.ratio_kind == "baseline/value":
            ratio_text += " less"
        result = "" if r.passed is None else ("pass" if r.passed else "MISS")
        notes = "; ".join(x for x in (r.backend, r.notes) if x)
        lines.append(
            [r.bench, r.case, r.metric, _fmt(r.value), _fmt(r.baseline), ratio_text, r.target, result, notes]
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    widths[-1] = len(header[-1])

    def render(cells: list[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [render(header), "-+-".join("-" * w for w in widths)]
    out += [render(line) for line in lines]
    return "\n".join(out)


BASELINES = {
    "B1": "baseline = the same N tasks polled by N trigger-shaped loops sharing one TesHook (one pooled "
    "client, the connection's 10-request cap), one GET per task per interval; 'x less' = baseline / value; "
    "live-log rows: baseline = the same run's product with logs off",
    "B2": "baseline = boto3 upload_file (file), a plain put_object loop (directory), hashlib.file_digest "
    "(digest); throughput ratios are value / baseline (higher is better)",
    "B3": "baseline = py-tes HTTPClient.create_task of the same task body against the same Funnel; "
    "ratio = operator / py-tes median wall time (lower is better)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (a few minutes)")
    parser.add_argument("--only", default="b1,b2,b3", help="comma-separated subset of b1,b2,b3")
    parser.add_argument(
        "--b1-backend",
        choices=["auto", "funnel", "stub"],
        default="stub",
        help="B1 TES backend: the stub (Funnel-sized answers; default), Funnel (noop compute) behind "
        "the counting proxy, or auto: Funnel unless creating N tasks there takes > 3 min",
    )
    parser.add_argument("--b1-sizes", default="", help="override B1 task counts, e.g. 1000,10000")
    parser.add_argument(
        "--b1-modes", default="", help="B1 children to run (default all), e.g. product for a quick look"
    )
    parser.add_argument(
        "--b1-repeat",
        type=int,
        default=0,
        help="B1: measure the product modes this many times, taking turns, and compare medians "
        "(default 5 at 10,000 tasks, 3 below, 1 with --quick)",
    )
    parser.add_argument("--output", default=str(RESULTS_DIR / "latest.json"))
    args = parser.parse_args(argv)
    selected = [x.strip().lower() for x in args.only.split(",") if x.strip()]

    # Ending the run with SIGTERM still stops Funnel, moto and the child processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    # Airflow (structlog) logs to stdout; only the report goes there: everything else is sent to
    # stderr by pointing file descriptor 1 at it, and the report is written to a copy of the old one.
    sys.stdout.flush()
    report = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    for name in ("airflow_provider_tes", "airflow.providers.amazon", "botocore", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    machine = machine_snapshot()
    _log(
        f"benchmarks ({'quick' if args.quick else 'full'}): {machine['cores']} cores, "
        f"{machine['mem_gib']} GiB, "
        f"load average {machine['loadavg']}, {machine['cores_busy_1s']} cores busy before start. "
        "The machine is shared: other processes may be running, so compare ratios, not absolute figures."
    )
    tmp = Path(tempfile.mkdtemp(prefix="tes-bench-"))
    os.environ.setdefault("AIRFLOW_HOME", str(tmp / "airflow-home"))
    (tmp / "airflow-home").mkdir(exist_ok=True)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    errors: dict[str, str] = {}
    meter = MachineMeter().start()
    try:
        for name in selected:
            _log(f"== {name.upper()}")
            t0 = time.monotonic()
            try:
                if name == "b1":
                    from benchmarks import b1_triggers

                    sizes = [int(x) for x in args.b1_sizes.split(",") if x.strip()] or None
                    modes = [x.strip() for x in args.b1_modes.split(",") if x.strip()] or None
                    new_rows, raw[name] = b1_triggers.run(
                        quick=args.quick,
                        tmp=tmp,
                        log=_log,
                        backend_choice=args.b1_backend,
                        sizes=sizes,
                        modes=modes,
                        repeat=args.b1_repeat or None,
                    )
                elif name == "b2":
                    from benchmarks import b2_staging

                    new_rows, raw[name] = b2_staging.run(quick=args.quick, tmp=tmp, log=_log)
                elif name == "b3":
                    from benchmarks import b3_submit

                    new_rows, raw[name] = b3_submit.run(quick=args.quick, tmp=tmp, log=_log)
                else:
                    raise ValueError(f"unknown benchmark {name!r}")
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {err}"
                _log(traceback.format_exc())
                continue
            rows += new_rows
            _log(f"   {name.upper()} took {time.monotonic() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine["cores_busy_during_run"] = round(meter.stop(), 2)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    print(file=report)
    print(
        f"airflow-provider-tes benchmarks ({'quick' if args.quick else 'full'} run, "
        f"{time.time() - started:.0f} s) on {machine['cores']} cores / {machine['mem_gib']} GiB; "
        f"load average {machine['loadavg']} at start, {machine['loadavg_end']} at end; "
        f"{machine['cores_busy_during_run']} cores busy on average (all processes).",
        file=report,
    )
    print(
        "Shared machine: other processes may be running. Every figure is compared with a baseline\n"
        "measured in the same run on the same machine; read the ratios.",
        file=report,
    )
    for name in selected:
        key = name.upper()
        if key in BASELINES:
            print(f"  {key}: {BASELINES[key]}", file=report)
    print(file=report)
    print(table(rows), file=report)
    for name, err in errors.items():
        print(f"\n{name.upper()} FAILED: {err}", file=report)
    misses = [r for r in rows if r.passed is False]
    print(
        f"\ntargets: {sum(r.passed is True for r in rows)} pass, {len(misses)} miss"
        + (f", {len(errors)} benchmark(s) failed" if errors else ""),
        file=report,
    )

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "baselines": {k: v for k, v in BASELINES.items() if k.lower() in selected},
        "rows": [r.as_dict() for r in rows],
        "errors": errors,
        "raw": raw,
    }
    text = json.dumps(doc, indent=2, default=str) + "\n"
    out.write_text(text)
    # Also kept by mode, so a quick run does not hide the last full one.
    (out.parent / f"{doc['mode']}.json").write_text(text)
    (out.parent / f"{doc['mode']}.txt").write_text(table(rows) + "\n")
    print(f"results written to {out} (and {doc['mode']}.json)", file=report)
    report.flush()
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

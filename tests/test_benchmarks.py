"""The benchmarks still measure what they say (``make bench`` is not part of ``make test``).

Why: B3 once stopped measuring anything without a test noticing: when ``deferrable`` began to
follow ``[operators] default_deferrable`` (off by default), its operator waited in the worker
for a task the noop Funnel never runs, and the whole ``make bench`` hung there. These runs are
small and assert that each side was measured, never how fast it was (speed is for the
benchmark's own same-run ratios).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from benchmarks import b1_triggers, b3_submit


@pytest.mark.funnel
@pytest.mark.timeout(300)
def test_b3_measures_the_operator_up_to_its_deferral_and_py_tes(tmp_path: Path) -> None:
    rows, raw = b3_submit.run(quick=True, tmp=tmp_path, log=lambda message: None)
    assert len(raw["operator_s"]) == len(raw["pytes_s"]) == 10
    submit = rows[0]
    assert submit.metric == "submit ms"
    assert submit.value is not None and submit.value > 0
    assert submit.baseline is not None and submit.baseline > 0
    assert raw["task_body"]["executors"], "the body the operator sent was captured for py-tes"


def test_b1_followed_tasks_run_until_the_wave() -> None:
    """Live-log tasks must keep running (and printing) through quiet and churn, and end with
    everyone else in the wave, or the live-log rows would compare different workloads."""
    ids = [f"t{i}" for i in range(1000)]
    extra = [f"x{i}" for i in range(200)]
    followed = ids[:: b1_triggers.FOLLOW_ONE_IN]
    plan = b1_triggers._flip_plan(ids, extra, followed, 10.0, 60.0, random.Random(1))
    ended_early = {task_id for phase in ("quiet", "churn") for _, task_id in plan[phase]}
    wave = [task_id for _, task_id in plan["wave"]]
    assert not ended_early & set(followed)
    assert set(followed) <= set(wave)
    assert len(wave) == len(set(wave)), "each task ends once"
    assert not ended_early & set(wave)

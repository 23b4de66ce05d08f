"""``bench/study.py``'s accounting of a study's core-seconds, on a timeline worked by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports bench/common.py as a sibling
    try:
        spec = importlib.util.spec_from_file_location("bench_study", BENCH / "study.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_core_seconds_are_split_by_where_they_went(bench):
    def run(role, start, end, train=20.0, evals=2.0, init=3.0, elapsed=22.0, held=None):
        return bench.RunTimes(role, start, end, 1.0, train, evals, init, elapsed,
                              held if held is not None else end - start - 3.0)

    # 2 cores, 100 s: the reference alone 10-40, trials A 40-70 and B 41-75 together, C 71-90
    runs = [run("reference", 10, 40), run("trial", 40, 70), run("trial", 41, 75), run("trial", 71, 90)]
    parts = bench.account(runs, wall_s=100.0, cores=2.0)
    assert parts["idle: before the first run"] == pytest.approx(2 * 10)
    assert parts["idle: reference alone"] == pytest.approx(1 * 30)
    assert parts["idle: between runs"] == pytest.approx(1 + 1)  # 40-41 (A alone), 70-71 (B alone)
    assert parts["idle: tail"] == pytest.approx(1 * 15)  # 75-90: C alone after the last start
    assert parts["idle: after the last run"] == pytest.approx(2 * 10)
    # in each run: steps = train - evals; setup = held - elapsed - init; Ray = open - held
    assert parts["optimizer steps"] == pytest.approx(4 * 18)
    assert parts["evaluations at reports"] == pytest.approx(4 * 2)
    assert parts["step-0 evaluation"] == pytest.approx(4 * 3)
    assert parts["reporting and checkpoints"] == pytest.approx(4 * 2)
    assert parts["setting up (data, model)"] == pytest.approx((27 - 25) + (27 - 25) + (31 - 25) + (16 - 25))
    assert parts["Ray starting and stopping the trial"] == pytest.approx(4 * 3)
    assert sum(parts.values()) == pytest.approx(2 * 100)  # every core-second, once


def test_a_reference_beside_the_trials_is_not_idle_time(bench):
    runs = [bench.RunTimes("reference", 0, 50, 1, 40, 1, 1, 45, 48),
            bench.RunTimes("trial", 0, 50, 1, 40, 1, 1, 45, 48)]
    parts = bench.account(runs, wall_s=50.0, cores=2.0)
    assert sum(v for k, v in parts.items() if k.startswith("idle")) == 0

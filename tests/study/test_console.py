"""The console a person reads during a study: one line per trial event, a progress line with
totals, elapsed time, ETA and the best trial so far; plain text off a terminal."""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

from study.run.console import StudyConsole, duration, trial_label, tune_trial_name


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def trial(i, method, scope, seed, status="RUNNING", **result):
    config = {"router.method": method, "router.scope": scope, "train.seed": seed, "train.steps": 300}
    return SimpleNamespace(trial_id=f"abc_{i:05d}", config=config, status=status, last_result=result,
                           error_msg=None, error_file=None)


def test_events_and_progress_read_as_sentences():
    out, clock = io.StringIO(), Clock()
    console = StudyConsole(study_name="quick", total=4, steps=300, objective="cmi_lift/layer1",
                           mode="max", concurrency=2, stream=out, clock=clock)
    a = trial(0, "lbl", "global_batch", 1)
    b = trial(1, "eb", "micro_batch", 0)
    for t in (a, b):
        console.on_trial_start(0, [a, b], t)
    clock.now += 10
    console.on_trial_result(0, [a, b], a, {"step": 100, "purity": 0.3})  # within 60 s: silent
    clock.now += 80
    a.last_result = {"step": 300, "cmi_lift/layer1": 0.081, "purity": 0.312, "load_entropy": 0.98,
                     "gap_purity": 0.688}
    a.status = "TERMINATED"
    console.on_trial_complete(0, [a, b], a)
    b.last_result = {"step": 100, "cmi_lift/layer1": 0.01, "purity": 0.2}
    b.status = "TERMINATED"
    clock.now += 30
    console.on_trial_complete(0, [a, b], b)  # ASHA stopped it at step 100 of 300
    lines = out.getvalue().splitlines()
    assert lines == [
        "[quick 1/4] done  lbl global_batch s1  cmi_lift/layer1 +0.081  purity 0.312  load_entropy 0.980  (1m30s)",
        "[quick] 1/4 done, 1 running, 0 failed | 1m30s elapsed, ETA 3m00s | "  # 90 s a trial, 3 left, 2 at a time
        "best cmi_lift/layer1 +0.081 (lbl global_batch s1, gap_purity 0.688)",
        "[quick 2/4] stopped early at step 100/300  eb micro_batch s0  cmi_lift/layer1 +0.010  purity 0.200  (2m00s)",
        "[quick] 1/4 done, 0 running, 0 failed, 1 stopped early | 2m00s elapsed, ETA 1m45s | "  # mean 105 s
        "best cmi_lift/layer1 +0.081 (lbl global_batch s1, gap_purity 0.688)",
    ]
    assert "\033[" not in out.getvalue()  # a StringIO is no terminal: no colour codes


def test_a_long_silence_prints_a_heartbeat_and_a_failure_its_reason(tmp_path):
    out, clock = io.StringIO(), Clock()
    console = StudyConsole(study_name="s", total=2, steps=300, objective="purity", mode="max",
                           stream=out, clock=clock)
    t = trial(0, "sh", "global_batch", 2)
    clock.now += 65
    console.on_trial_result(0, [t], t, {"step": 150, "purity": 0.31})
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: sinkhorn diverged\n")
    t.error_file, t.status = str(error), "ERROR"
    console.on_trial_error(0, [t], t)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[s] sh global_batch s2: step 150/300  purity +0.310")
    assert lines[1] == "[s 1/2] FAILED  sh global_batch s2: RuntimeError: sinkhorn diverged"
    assert lines[2].startswith("[s] 0/2 done, 0 running, 1 failed | 1m05s elapsed, ETA 1m05s")


def test_a_restored_console_keeps_its_elapsed_time():
    clock = Clock()
    console = StudyConsole(study_name="s", total=2, steps=10, objective="purity", mode="max",
                           stream=io.StringIO(), clock=clock)
    clock.now += 125
    restored = pickle.loads(pickle.dumps(console))  # Tune's experiment state
    assert 124 <= restored.clock() - restored.started <= 126


def test_names_and_durations():
    config = {"router.method": "lbl", "router.scope": "window", "router.balance_window": 8,
              "router.capacity_factor": 1.0, "train.seed": 2}
    assert trial_label(config) == "lbl window8 cap1 s2"
    assert tune_trial_name(SimpleNamespace(config=config, trial_id="ab12_00003")) == "lbl-window8-cap1-s2_ab12_00003"
    assert [duration(s) for s in (5, 65, 3700)] == ["5s", "1m05s", "1h01m"]


def test_a_resumed_study_counts_the_trials_that_ended_before():
    """After `moe-study resume`, Tune's trial list holds the trials that ended in the first
    process: the counts and the best come from it, so nothing is counted twice or forgotten."""
    out, clock = io.StringIO(), Clock()
    console = StudyConsole(study_name="s", total=3, steps=300, objective="purity", mode="max",
                           stream=out, clock=clock)
    before = trial(0, "lbl", "global_batch", 0, status="TERMINATED", step=300, purity=0.4)
    failed = trial(1, "eb", "micro_batch", 0, status="ERROR")
    now = trial(2, "eb", "global_batch", 1, step=300, purity=0.3)
    console.on_trial_complete(0, [before, failed, now], now)  # Tune may still say RUNNING here
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[s 3/3] done  eb global_batch s1")
    assert lines[1].startswith("[s] 2/3 done, 0 running, 1 failed |")
    assert lines[1].endswith("best purity +0.400 (lbl global_batch s0)")

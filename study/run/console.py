"""What a person reads while a study runs: one line per trial event and a progress line.

``[quick 3/12] done  lbl global_batch s1  cmi_lift/layer1 +0.081  purity 0.312  (84 s)``
``[quick] 3/12 done, 2 running, 0 failed | 4m10s elapsed, ETA 9m | best cmi_lift/layer1 +0.081
(lbl global_batch s1, gap_purity 0.688)``

Library chatter (Tune's tables, its logger files' hints, Optuna's info logs, Ray's worker
output) is off unless ``verbose`` (``moe-study run -v``): ``quiet_libraries``. Lines are plain
text; colour only on a terminal.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Mapping, TextIO

from ray.tune import Callback

from study import naming

HEARTBEAT_S = 60.0
"""A trial's intermediate report is printed when the console has been silent this long."""
_SHOWN_METRICS = (naming.PURITY, naming.LOAD_ENTROPY)


def quiet_libraries(verbose: bool) -> None:
    """Turn library chatter off (or leave it on with ``verbose``), before Ray and Tune start."""
    # Tune's default result loggers: TensorBoard's is not installed (a hint on every study, and
    # "invalid value" warnings); the CSV and JSON ones are added back by the runner
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if verbose:
        return
    # Tune's boxed "Configuration for experiment" and "View detailed results here": the old
    # output flow prints nothing at verbose=0, the new one does
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "A new study created in memory", ...
    for name in ("ray.tune", "ray.train", "ray.air", "ray.data", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)  # snapshot warnings, deprecation notes


def trial_label(config: Mapping[str, Any]) -> str:
    """``lbl global_batch s1`` (``window8`` for a window scope, ``cap1`` with a capacity)."""
    return " ".join(naming.setting_parts(config))


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


class StudyConsole(Callback):
    """Tune callback printing the study's progress for a person (driver side)."""

    def __init__(self, *, study_name: str, total: int, steps: int, objective: str, mode: str,
                 concurrency: int = 1, stream: TextIO | None = None, clock=time.time):
        self.study_name, self.total, self.steps = study_name, total, steps
        self.concurrency = max(1, concurrency)
        self.durations: list[float] = []  # of the trials that ended in this process
        self.objective, self.mode = objective, mode
        self.stream = stream or sys.stdout
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.trial_started: dict[str, float] = {}

    # Tune pickles callbacks into its experiment state: the stream stays behind (stdout again
    # when restored), and the time so far travels as a duration (clocks differ by process)
    def __getstate__(self):
        state = self.__dict__.copy()
        state["stream"], state["clock"] = None, None
        state["elapsed"] = self.clock() - self.started
        state["trial_started"] = {}
        return state

    def __setstate__(self, state):
        elapsed = state.pop("elapsed")
        self.__dict__.update(state)
        self.stream, self.clock = sys.stdout, time.time
        self.started = self.last_line = self.clock() - elapsed

    # -- output -------------------------------------------------------------------------------
    def _colour(self, text: str, code: str) -> str:
        isatty = getattr(self.stream, "isatty", None)
        return f"\033[{code}m{text}\033[0m" if isatty is not None and isatty() else text

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
        self.last_line = self.clock()

    def _metrics_text(self, result: Mapping[str, Any]) -> str:
        parts = []
        for name in (self.objective, *_SHOWN_METRICS):
            value = result.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value) and name not in [p.split()[0] for p in parts]:
                parts.append(f"{name} {value:+.3f}" if name == self.objective else f"{name} {value:.3f}")
        return "  ".join(parts)

    # -- Tune hooks -----------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.trial_started.setdefault(trial.trial_id, self.clock())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.clock() - self.last_line < HEARTBEAT_S:
            return
        step = result.get(naming.STEP, "?")
        self._print(f"[{self.study_name}] {trial_label(trial.config)}: step {step}/{self.steps}  "
                    f"{self._metrics_text(result)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        steps = self._steps(trial)
        step = int(result.get(naming.STEP, 0) or 0)
        if step < steps:
            event = self._colour("stopped early", "33") + f" at step {step}/{steps}"
        else:
            event = self._colour("done", "32")
        tally = self._tally(trials, trial, "TERMINATED")
        took = self.clock() - self.trial_started.get(trial.trial_id, self.started)
        self.durations.append(took)
        self._print(f"{self._prefix(tally)} {event}  {trial_label(trial.config)}  "
                    f"{self._metrics_text(result)}  ({duration(took)})")
        self._progress(tally)

    def on_trial_error(self, iteration, trials, trial, **info):
        tally = self._tally(trials, trial, "ERROR")
        self.durations.append(self.clock() - self.trial_started.get(trial.trial_id, self.started))
        reason = _last_error_line(trial)
        self._print(f"{self._prefix(tally)} {self._colour('FAILED', '31')}  {trial_label(trial.config)}: {reason}")
        self._progress(tally)

    # -- counts, from Tune's trials (a resumed study's list holds the trials that ended before) -
    def _steps(self, trial) -> int:
        return int(trial.config.get("train.steps", self.steps))

    def _tally(self, trials, current, current_status: str) -> dict:
        """Trials done (full length), stopped early, failed and running, and the best done trial
        by the objective; ``current`` counts as ``current_status`` (its event is being told)."""
        tally = {"done": 0, "stopped": 0, "failed": 0, "running": 0, "best": None}
        for t in trials:
            status = current_status if t is current else t.status
            if status == "RUNNING":
                tally["running"] += 1
            elif status == "ERROR":
                tally["failed"] += 1
            elif status == "TERMINATED":
                result = t.last_result or {}
                if int(result.get(naming.STEP, 0) or 0) < self._steps(t):
                    tally["stopped"] += 1
                    continue
                tally["done"] += 1
                value = result.get(self.objective)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    best = tally["best"]
                    if best is None or (value < best[0] if self.mode == "min" else value > best[0]):
                        tally["best"] = (float(value), trial_label(t.config),
                                         float(result.get(naming.GAP_PURITY, math.nan)))
        return tally

    def _prefix(self, tally: dict) -> str:
        ended = tally["done"] + tally["stopped"] + tally["failed"]
        return f"[{self.study_name} {ended}/{self.total}]"

    def _progress(self, tally: dict) -> None:
        elapsed = self.clock() - self.started
        ended = tally["done"] + tally["stopped"] + tally["failed"]
        remaining = max(0, self.total - ended)
        # the trials left, run `concurrency` at a time, at the mean length of those that ended
        mean = sum(self.durations) / len(self.durations) if self.durations else 0.0
        eta = f", ETA {duration(mean * math.ceil(remaining / self.concurrency))}" if mean and remaining else ""
        best = ""
        if tally["best"] is not None:
            value, label, gap = tally["best"]
            gap_text = f", gap_purity {gap:.3f}" if math.isfinite(gap) and self.objective != naming.GAP_PURITY else ""
            best = f" | best {self.objective} {value:+.3f} ({label}{gap_text})"
        self._print(f"[{self.study_name}] {tally['done']}/{self.total} done, {tally['running']} running, "
                    f"{tally['failed']} failed" + (f", {tally['stopped']} stopped early" if tally["stopped"] else "")
                    + f" | {duration(elapsed)} elapsed{eta}{best}")


def _last_error_line(trial) -> str:
    from study.run.tracking import trial_error_text

    lines = [ln.strip() for ln in trial_error_text(trial).splitlines() if ln.strip()]
    return (lines[-1] if lines else "no error recorded")[:200]


def tune_trial_name(trial) -> str:
    """Tune's name and folder name of a trial: its settings and Tune's id (short and readable,
    where Tune's own are ~200 characters of config keys)."""
    return f"{trial_label(trial.config).replace(' ', '-')}_{trial.trial_id}"

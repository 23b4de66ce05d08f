"""The study's reference-router trial: reused, run before the search, or run beside it.

The reference router (each domain to its own experts) is the upper bound every trial's gaps are
measured against (``trainables.metrics.gaps``). A trial can only compute its gaps while it runs
if the reference has finished first, and that costs a study one trial's time with every other
core idle. The search needs the gaps during the run only when a gap is an objective, ASHA's
metric or a constraint (``StudySpec.trials_need_reference``). Otherwise the reference runs
**beside** the first trials, as a second Tune run of the same driver on the same cluster, and
when it has finished the driver writes each trial's gaps into its MLflow run afterwards
(``fill_gaps``), at every step the trial reported the gap's metric. ``fill_gaps`` only writes
runs that have no gaps yet, so a resumed study fills what an interrupted one did not.

A finished reference with the same config (``StudySpec.reference_key``) is reused from any
experiment of the tracking store, in either case; a resumed study reuses its own.
"""

from __future__ import annotations

import threading
import time

from ray.tune import Callback, Stopper

from study import naming
from study.run import storage as study_storage
from study.run.runner import (StudyFailed, _Background, _result_loggers, _spool,
                              _with_resources, fit_noting_interrupt, trial_context)
from study.spec.types import StudySpec
from trainables.metric_names import GAPS

KEPT = (naming.VAL_LOSS, naming.PURITY, naming.NMI, naming.REFERENCE_AGREEMENT)
"""What a study keeps of its reference run: the metrics the gaps are taken against."""


def find_reference(tracking_uri: str, key: str) -> tuple[str, dict] | None:
    """A FINISHED reference run with config key ``key`` in any experiment: (run id, metrics)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return None
    runs = client.search_runs(
        exps,
        filter_string=f"tags.{naming.TAG_ROLE} = '{naming.ROLE_REFERENCE}' AND "
        f"tags.{naming.TAG_CONFIG_HASH} = {naming.filter_literal(key)} AND attributes.status = 'FINISHED'",
        max_results=1,
    )
    if not runs:
        return None
    m = runs[0].data.metrics
    return runs[0].info.run_id, {k: m[k] for k in KEPT if k in m}


def reused_reference(spec: StudySpec, state: dict) -> dict[str, float] | None:
    """The metrics of a finished reference run with this spec's reference config, when the spec
    allows reuse and MLflow holds one."""
    if not spec.reference.reuse:
        return None
    found = find_reference(state["tracking_uri"], spec.reference_key())
    if found is None:
        return None
    print(f"[{state['name']}] reusing reference run {found[0]}", flush=True)
    return found[1]


def run_reference(spec: StudySpec, state: dict, *, stop: threading.Event | None = None,
                  started: threading.Event | None = None) -> dict[str, float] | None:
    """Run the reference trial now, as its own Tune run (``<storage>/<name>/reference``).

    Its metrics; None when ``stop`` was set before it finished (the search beside it was
    interrupted: the study resumes and runs it again). KeyboardInterrupt when Ctrl-C stopped
    it, StudyFailed when the trial failed."""
    from ray import tune

    from study.run.tracking import StudyTracker
    from study.run.trial import trial_function

    tracker = StudyTracker(
        tracking_uri=state["tracking_uri"], experiment_id=state["experiment_id"],
        parent_run_id=state["parent_run_id"], study_name=state["name"],
        role=naming.ROLE_REFERENCE, spool_path=_spool(state),
    )
    storage_path, storage_filesystem = study_storage.tune_location(state["storage"], state["name"])
    tuner = tune.Tuner(
        _with_resources(trial_function, spec),
        param_space=trial_context(spec, config_hash=spec.reference_key()).tune_config(
            spec.reference_config().to_flat()),
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(
            name="reference", storage_path=storage_path, storage_filesystem=storage_filesystem,
            callbacks=[tracker, *_result_loggers(), *([_SetWhenStarted(started)] if started else [])],
            verbose=0, failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            stop=None if stop is None else _StopWhenSet(stop),
        ),
    )
    if stop is None:
        grid, interrupted = fit_noting_interrupt(tuner)
    else:  # in a thread: Tune leaves SIGINT to the main thread's run, which sets ``stop``
        grid, interrupted = tuner.fit(), False
    if interrupted:
        raise KeyboardInterrupt
    if stop is not None and stop.is_set():
        return None
    result = grid[0]
    if result.error is not None:
        raise StudyFailed(f"the reference-router trial failed: {result.error}")
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(f"[{state['name']}] reference: val_loss {metrics.get(naming.VAL_LOSS, float('nan')):.4f} "
          f"purity {metrics.get(naming.PURITY, float('nan')):.3f}", flush=True)
    return {k: metrics[k] for k in KEPT if k in metrics}


_EVENTS: dict[str, threading.Event] = {}
"""This driver's signals between the search and the reference's Tune run, by name: Tune pickles
its stoppers and callbacks with the experiment's state, and an Event does not pickle. Unpickled
elsewhere (a restored experiment) a name finds no event, and the signal is never given."""


class _EventByName:
    def __init__(self, event: threading.Event):
        self.key = f"{id(event):x}"
        _EVENTS[self.key] = event

    def is_set(self) -> bool:
        event = _EVENTS.get(self.key)
        return event is not None and event.is_set()

    def set(self) -> None:
        if self.key in _EVENTS:
            _EVENTS[self.key].set()


class _StopWhenSet(Stopper):
    """Stops the reference's Tune run when the search beside it was interrupted."""

    def __init__(self, event: threading.Event):
        self.event = _EventByName(event)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.event.is_set()

    def stop_all(self) -> bool:
        return self.event.is_set()


class _SetWhenStarted(Callback):
    """Tells the search it may start: the reference trial holds its resources."""

    def __init__(self, event: threading.Event):
        self.event = _EventByName(event)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.event.set()


class ReferenceBeside:
    """The reference trial in a thread of the driver, while the search runs in the main one.

    ``join()`` waits for it and gives its metrics (None if it was stopped), or raises what the
    run raised (StudyFailed when the reference trial failed)."""

    def __init__(self, spec: StudySpec, state: dict):
        import ray

        self.stop_event, self.started = threading.Event(), threading.Event()
        self._need = {k: v for k, v in spec.resources.per_trial().items() if v > 0}
        self._free_before = ray.available_resources()
        self._thread = _Background(run_reference, spec, state, stop=self.stop_event,
                                   started=self.started, thread_name="moe-study-reference")

    def wait_started(self, timeout_s: float) -> bool:
        """Wait until the reference trial holds its resources (or its run ended), at most
        ``timeout_s``.

        The search must not start first: it would take every free CPU, and Tune hands a
        finished trial's actor straight to the next trial (``reuse_actors``), so the reference
        would wait for the whole search and run alone at its end. Its resources are held once
        Tune's placement group for it is ready, seconds before its worker process has started
        and imported the trainable (Tune's ``on_trial_start``): the search's trials start
        meanwhile. A cluster that must first launch a node for it does not hold the search
        longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.started.wait(0.2):
            if self._holds_resources() or self.ended:
                return not self.ended or self.started.is_set()
            if time.monotonic() > deadline:
                return False
        return True

    def _holds_resources(self) -> bool:
        """Ray's free resources fell by the reference's need since it was started (nothing else
        of this study runs yet; another job on a shared cluster can only make this early)."""
        import ray

        free = ray.available_resources()
        return all(self._free_before.get(k, 0.0) - free.get(k, 0.0) >= need - 1e-9
                   for k, need in self._need.items())

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def ended(self) -> bool:
        return self._thread.ended

    def join(self) -> dict[str, float] | None:
        """Wait for the run (Ctrl-C still reaches the main thread, which then stops it)."""
        self._thread.wait()
        return self._thread.outcome()


def fill_gaps(tracking_uri: str, experiment_id: str, parent_run_id: str, reference: dict[str, float]) -> int:
    """Write the gaps to ``reference`` into every trial run of the study that has none yet, at
    each step the trial reported the gap's metric (the same values a trial that knew the
    reference would have reported). The number of runs written."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    filled = 0
    for run in _trial_runs(client, experiment_id, parent_run_id):
        if any(gap in run.data.metrics for gap, _, _ in GAPS):
            continue
        # gap = sign x (metric - reference), as trainables.metrics.gaps, at every logged point
        rows = [Metric(key=gap, value=sign * (m.value - reference[metric]), timestamp=m.timestamp,
                       step=m.step)
                for gap, metric, sign in GAPS if metric in reference and metric in run.data.metrics
                for m in client.get_metric_history(run.info.run_id, metric)]
        for start in range(0, len(rows), 1000):  # MLflow's limit per batch
            client.log_batch(run.info.run_id, metrics=rows[start:start + 1000])
        filled += bool(rows)
    return filled


def _trial_runs(client, experiment_id: str, parent_run_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{naming.TAG_PARENT_RUN} = {naming.filter_literal(parent_run_id)} "
                          f"AND tags.{naming.TAG_ROLE} = '{naming.ROLE_TRIAL}'",
            max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs

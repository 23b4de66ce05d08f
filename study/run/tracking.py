"""MLflow tracking of a study from the Ray Tune driver: one nested child run per trial.

Why driver-side: the driver sees every result anyway, so it logs each report with ONE
``log_batch`` call (MLflowLoggerCallback makes one call per metric key: ~150 ms a report on
sqlite), the trial processes need no MLflow connection, and a retried or resumed trial finds
its run again by the ``moe_study.trial_id`` tag instead of opening a duplicate.

Outages: every write goes through ``_DeliveryQueue``; a write that fails stays queued (in
order) and is retried at the next event; what is still undelivered when the study stops is
spooled to a JSONL file beside the Tune experiment and delivered by ``moe-study resume``.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from study import naming
from study.naming import trial_params
from study.run.storage import StorageFile, as_storage_file
from study.run.trial_context import TrialContext

log = logging.getLogger(__name__)

HEATMAP_FILE = "routing_heatmap.png"
TUNE_AUTO_KEYS = {
    "time_this_iter_s", "time_total_s", "timestamp", "pid", "iterations_since_restore",
    "time_since_restore", "timesteps_since_restore", "timesteps_total", "episodes_total",
    "experiment_id", "date", "hostname", "node_ip", "checkpoint_dir_name", "should_checkpoint",
}

# keys of a Tune result that are not metrics
_SKIP_RESULT_KEYS = {naming.STEP, "count_table", "domains", "done", "training_iteration", "trial_id", "node_id",
                     "mix_hash", "routing_counts"}


def metric_items(result: dict) -> dict[str, float]:
    """The numeric metrics of a trial report, without Tune's own bookkeeping keys."""
    out = {}
    for k, v in result.items():
        if k in _SKIP_RESULT_KEYS or k in TUNE_AUTO_KEYS or k.startswith(("config", "_")):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def logged_params(tune_config: dict) -> dict:
    """The trial's whole resolved config as flat params, so defaults the spec did not set
    (e.g. data.domains_per_micro_batch) are recorded too; a searched param whose condition did
    not hold stays absent rather than showing an unused default."""
    from trainables.config import TrialConfig

    own = trial_params(tune_config)
    inactive = set(TrialContext.from_tune_config(tune_config).search_keys) - set(own)
    full = TrialConfig.from_flat(own, check=False).to_flat()
    return {k: v for k, v in full.items() if k not in inactive}


class _DeliveryQueue:
    """Ordered MLflow writes that survive a tracking outage, delivered off the driver loop.

    ``put`` only appends: a background thread delivers in order (and draws the routing heatmaps),
    so neither a slow store nor a figure holds up Tune's driver loop and with it the start of the
    next trial. A write that fails stays first in line and is retried every second. ``drain``
    (at the study's end, and at interpreter exit as a safety net) stops the thread, retries
    until its timeout and spools what is left.
    """

    RETRY_S = 1.0

    def __init__(self, client: MlflowClient, spool_path: StorageFile | Path | None, resolve=None,
                 render=None):
        self.client = client
        self.spool_path = as_storage_file(spool_path)  # local or on the study's remote storage
        self.resolve = resolve  # trial id -> MLflow run id, opening the run when needed
        self.render = render  # (kind, count table, domains) -> path of the artifact file to log
        self.pending: list[tuple[str, dict]] = []
        self.last_error: str | None = None
        self.delivered = 0
        self.busy_s = 0.0
        """Seconds spent delivering (MLflow calls, figures), failed attempts included."""
        self.logged_steps: dict[str, set[int]] = {}
        """Per run the steps it holds metrics at, for runs the resolver registered: a report at
        a step already there (replayed after a restore, or from a trial rerun from scratch) is
        not logged again."""
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def put(self, op: str, **kwargs) -> dict:
        """Queue a write; returns its arguments, the handle ``wait_for`` takes."""
        with self._cv:
            self.pending.append((op, kwargs))
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._deliver_forever, name="mlflow-delivery",
                                                daemon=True)
                self._thread.start()
                atexit.register(self.drain, 10.0)
            self._cv.notify_all()
        return kwargs

    def wait_for(self, handle: dict, timeout_s: float) -> bool:
        """Block until the write ``put`` returned ``handle`` for (and all before it) is delivered;
        False when the store is failing (the write stays queued) or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while any(kw is handle for _, kw in self.pending):
                left = deadline - time.monotonic()
                if left <= 0 or self.last_error is not None or self._thread is None:
                    return False
                self._cv.wait(min(left, self.RETRY_S))
        return True

    def snapshot(self) -> list[tuple[str, dict]]:
        with self._cv:
            return list(self.pending)

    def _deliver_forever(self) -> None:
        while True:
            with self._cv:
                while not self.pending and not self._closing:
                    self._cv.wait()
                if self._closing:
                    return
            if not self.flush():
                with self._cv:
                    if not self._closing:
                        self._cv.wait(self.RETRY_S)

    def flush(self) -> bool:
        """Deliver in order until the queue is empty (True) or a write fails (False)."""
        while True:
            with self._cv:
                if not self.pending:
                    return True
                op, kwargs = self.pending[0]
            t0 = time.perf_counter()
            try:
                self._apply(op, kwargs)
            except Exception as exc:  # noqa: BLE001 - any transport/server error: keep and retry
                if self.last_error is None:
                    log.warning("MLflow write failed, will retry: %s", exc)
                self.last_error = str(exc)
                return False
            finally:
                self.busy_s += time.perf_counter() - t0
            with self._cv:
                self.pending.pop(0)
                self.delivered += 1
                self.last_error = None
                self._cv.notify_all()

    def _apply(self, op: str, kw: dict) -> None:
        c = self.client
        if op == "open":
            self.resolve(kw["trial"], kw)
            return
        run_id = self.resolve(kw["trial"], None)
        if op == "batch":
            metrics, seen = kw.get("metrics", {}), self.logged_steps.get(run_id)
            if seen is not None and kw["step"] in seen:
                metrics = {}  # this run has that step already
            if metrics or kw.get("params") or kw.get("tags"):
                c.log_batch(
                    run_id,
                    metrics=[Metric(k, v, kw["ts"], kw["step"]) for k, v in metrics.items()],
                    params=[Param(k, str(v)[:6000]) for k, v in kw.get("params", {}).items()],
                    tags=[RunTag(k, str(v)[:5000]) for k, v in kw.get("tags", {}).items()],
                )
            if metrics and seen is not None:  # after the write: a failed one is retried whole
                seen.add(kw["step"])
        elif op == "artifact":
            c.log_artifact(run_id, kw["path"], kw.get("artifact_path"))
        elif op in ("count_table", "heatmap", "routing_counts"):  # files are written here, off the driver loop
            if "path" not in kw:
                kw["path"] = self.render(op, kw["table"], kw["domains"])
            c.log_artifact(run_id, kw["path"])
        elif op == "terminate":
            c.set_terminated(run_id, status=kw["status"])
        else:  # pragma: no cover - programming error
            raise ValueError(op)

    def stop(self, timeout_s: float) -> None:
        """Stop the delivery thread (after the write it is in, or ``timeout_s``)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def drain(self, timeout_s: float) -> bool:
        """Deliver everything, retrying until ``timeout_s`` has passed; spool the rest."""
        deadline = time.monotonic() + timeout_s
        self.stop(timeout_s)
        while not self.flush():
            if time.monotonic() > deadline:
                self.spool()
                return False
            time.sleep(self.RETRY_S)
        return True

    def spool(self) -> None:
        with self._cv:
            pending, self.pending = self.pending, []
        if not pending or self.spool_path is None:
            return
        # artifact files stay in their temp dirs until delivered
        self.spool_path.append_text("".join(json.dumps({"op": op, **kw}, default=str) + "\n"
                                            for op, kw in pending))
        log.warning("%d MLflow writes spooled to %s", len(pending), self.spool_path)

    def replay_spool(self) -> int:
        """Deliver writes a previous driver spooled (``moe-study resume``)."""
        if self.spool_path is None or not self.spool_path.exists():
            return 0
        lines = self.spool_path.read_text().splitlines()
        for line in lines:
            rec = json.loads(line)
            self.pending.append((rec.pop("op"), rec))
        delivered = self.flush()
        if delivered:
            self.spool_path.unlink()
        return len(lines)


def render_routing_artifacts(kind: str, table: list, domains: list[str]) -> str:
    """The expert x domain ``count_table`` (Parquet), its ``heatmap`` (PNG) or the raw
    ``routing_counts`` (Parquet), in a temporary folder; returns the file's path."""
    import numpy as np

    d = tempfile.mkdtemp(prefix="moe-study-artifacts-")
    if kind == "routing_counts":  # ``table``: RoutingCounts.to_sparse()
        from trainables.routing_counts import RoutingCounts, write_routing_counts

        return str(write_routing_counts(os.path.join(d, naming.ROUTING_COUNTS_FILE),
                                        RoutingCounts.from_sparse(table), domains))
    n_LED = np.asarray(table)
    if kind == "count_table":
        from trainables.count_table import write_count_table

        return str(write_count_table(os.path.join(d, naming.COUNT_TABLE_FILE), n_LED, domains))
    from study.run.heatmaps import routing_heatmap, save_figure

    return str(save_figure(routing_heatmap(n_LED.sum(axis=0), domains, title="all layers"),
                           os.path.join(d, HEATMAP_FILE)))


class StudyTracker(Callback):
    """Tune callback: child run per trial (nested under the study's parent run)."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        role: str = naming.ROLE_TRIAL,
        spool_path: StorageFile | Path | None = None,
        objective: str | None = None,
        mode: str = "min",
        progress: bool = True,
    ):
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.study_name, self.role = parent_run_id, study_name, role
        self.client = MlflowClient(tracking_uri)
        self.queue = _DeliveryQueue(self.client, spool_path, self._resolve, render_routing_artifacts)
        self.run_ids: dict[str, str] = {}
        self.opened: set[str] = set()
        self.final: dict[str, dict] = {}
        self.objective, self.mode, self.progress = objective, mode, progress
        self.counts = {"done": 0, "failed": 0}
        self.best: tuple[float, str] | None = None

    # Tune pickles callbacks into its experiment state (for Tuner.restore); an MLflow client
    # holds connections, so it is rebuilt on unpickling and pending writes travel as data.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["client"] = None
        state["queue"] = (self.queue.spool_path, self.queue.snapshot())
        return state

    def __setstate__(self, state):
        spool_path, pending = state.pop("queue")
        self.__dict__.update(state)
        self.client = MlflowClient(self.tracking_uri)
        self.queue = _DeliveryQueue(self.client, spool_path, self._resolve, render_routing_artifacts)
        self.queue.pending = list(pending)

    # -- run lookup: a retried/restored trial continues its run ------------------------------
    def _run_for(self, trial) -> str:
        """Queue the opening of the trial's run (once); return the key later writes use.

        Opening goes through the delivery queue like every write, so a tracking outage at a
        trial's start delays its run instead of failing the study.
        """
        if trial.trial_id not in self.opened:
            self.opened.add(trial.trial_id)
            cfg = logged_params(trial.config)
            self.queue.put(
                "open", trial=trial.trial_id, role=self.role, config_hash=TrialContext.from_tune_config(trial.config).config_hash,
                params={k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in cfg.items()},
            )
        return trial.trial_id

    def _resolve(self, trial_id: str, open_kw: dict | None) -> str:
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{naming.TAG_TRIAL_ID} = '{trial_id}' "
            f"AND tags.{naming.TAG_STUDY} = '{self.study_name}'",
            max_results=1,
        )
        if existing:
            run_id = existing[0].info.run_id
            if existing[0].info.status != "RUNNING" and open_kw is not None:
                self.client.update_run(run_id, status="RUNNING")
            # what an earlier driver logged: reports given again are not logged twice
            self.queue.logged_steps[run_id] = {
                m.step for m in self.client.get_metric_history(run_id, naming.VAL_LOSS)
            }
        elif open_kw is None:
            raise RuntimeError(f"no MLflow run for trial {trial_id}")
        else:
            params, role = open_kw["params"], open_kw.get("role", self.role)
            tags = {
                naming.TAG_PARENT_RUN: self.parent_run_id,
                "mlflow.runName": f"{role}-{trial_id}",
                naming.TAG_ROLE: role,
                naming.TAG_STUDY: self.study_name,
                naming.TAG_TRIAL_ID: trial_id,
                naming.TAG_METHOD: params.get("router.method", ""),
                naming.TAG_SCOPE: params.get("router.scope", ""),
            }
            if open_kw.get("config_hash"):
                tags[naming.TAG_CONFIG_HASH] = open_kw["config_hash"]
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            self.queue.logged_steps[run_id] = set()
            items = list(params.items())
            for i in range(0, len(items), 90):  # MLflow takes at most 100 params a batch
                self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in items[i : i + 90]])
        self.run_ids[trial_id] = run_id
        return run_id

    # -- Tune callback hooks ------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = self._run_for(trial)
        if trial.trial_id not in self.final:  # Tune updates last_result after this call
            self._log_restored_result(trial, key)
        step = int(result.get(naming.STEP, result.get("training_iteration", 0)))
        self.queue.put(
            "batch", trial=key, metrics=metric_items(result), ts=int(time.time() * 1000), step=step
        )
        self.final[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._run_for(trial)
        result = self.final.get(trial.trial_id)
        if result is None:  # restored at its last report, finished without a new one
            result = self._log_restored_result(trial, key)
        table, domains = result.get("count_table"), result.get("domains")
        if table and domains:
            self.queue.put("count_table", trial=key, table=table, domains=list(domains))
        if result.get("routing_counts") and domains:
            self.queue.put("routing_counts", trial=key, table=result["routing_counts"], domains=list(domains))
        stopped_early = int(result.get(naming.STEP, 0)) < int(trial.config.get("train.steps", 0))
        self.queue.put(
            "batch", trial=key, metrics={}, ts=0, step=0,
            tags={naming.TAG_STOPPED_EARLY: str(stopped_early).lower(), **_result_tags(result)},
        )
        self._deliver_before_returning(self.queue.put("terminate", trial=key, status="FINISHED"))
        if table and domains:  # the picture only: drawn after, the report does not need it
            self.queue.put("heatmap", trial=key, table=table, domains=list(domains))
        self.counts["done"] += 1
        self._update_best(trial, result)
        self._print_progress(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._run_for(trial)
        error = _trial_error_text(trial)
        self.queue.put(
            "batch", trial=key, metrics={}, ts=0, step=0,
            tags={naming.TAG_ERROR: error[-4000:] or "trial failed"},
        )
        self._deliver_before_returning(self.queue.put("terminate", trial=key, status="FAILED"))
        self.counts["failed"] += 1
        self._print_progress(trials)

    def on_experiment_end(self, trials, **info):
        self.close()
        # one line a benchmark (bench/orchestration.py) and a curious user can read
        print(f"[{self.study_name}] tracking: {self.queue.delivered} MLflow writes in "
              f"{self.queue.busy_s:.2f} s", flush=True)

    def close(self, timeout_s: float | None = None) -> bool:
        """Deliver what is pending, waiting out a short tracking outage; spool the rest."""
        if timeout_s is None:
            timeout_s = float(os.environ.get("MOE_STUDY_TRACKING_DRAIN_S", "120"))
        return self.queue.drain(timeout_s)

    # -- helpers ------------------------------------------------------------------------------
    def _log_restored_result(self, trial, key: str) -> dict:
        """Log the result a restored trial came back with, unless its run already has it.

        That result goes with the checkpoint the trial resumes from. A driver killed after
        Tune saved both but before the tracker delivered the report would otherwise leave a
        hole in the run's curves. (A trial restored at its last step gives its last report
        again: ``trainables.training.train``.) A fresh trial has no result: nothing to do.
        """
        restored = trial.last_result or {}
        metrics = metric_items(restored)
        if metrics and naming.STEP in restored:  # skipped on delivery if the run has that step
            self.queue.put("batch", trial=key, metrics=metrics, ts=int(time.time() * 1000),
                           step=int(restored[naming.STEP]))
        return restored

    def _deliver_before_returning(self, handle: dict) -> None:
        """A trial's end is written before Tune moves on (and saves its state): a driver killed
        later cannot leave a trial finished in Tune but open in MLflow. A failing store does not
        hold the study up: the write stays queued and is retried, spooled at worst."""
        self.queue.wait_for(handle, timeout_s=float(os.environ.get("MOE_STUDY_TRACKING_WAIT_S", "30")))

    def _update_best(self, trial, result: dict) -> None:
        if not self.objective or self.objective not in result:
            return
        value = float(result[self.objective])
        better = self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0])
        if better:
            self.best = (value, trial.trial_id)

    def _print_progress(self, trials) -> None:
        if not self.progress:
            return
        running = sum(1 for t in trials if t.status == "RUNNING")
        best = f", best {self.objective}={self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(
            f"[{self.study_name}] {self.role}s: {self.counts['done']} done, {running} running, "
            f"{self.counts['failed']} failed{best}",
            flush=True,
        )


def _result_tags(result: dict) -> dict[str, str]:
    """Tags a finished trial's run takes from its last result: where it ran, which text."""
    tags = {}
    if result.get("node_id"):
        tags[naming.TAG_NODE] = str(result["node_id"])
    if result.get("mix_hash"):
        tags[naming.TAG_MIX_HASH] = str(result["mix_hash"])
    return tags


def _trial_error_text(trial) -> str:
    for attr in ("error_msg",):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text()
    return "trial failed"


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create (once, in the driver, before trials start) or fetch the study's experiment."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name)


def check_tracking_reachable(tracking_uri: str) -> None:
    """Fail fast, before any trial runs, when the tracking server does not answer."""
    MlflowClient(tracking_uri).search_experiments(max_results=1)


def start_parent_run(tracking_uri: str, experiment_id: str, study_name: str, spec_dict: dict,
                     tags: dict[str, Any]) -> str:
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id,
        tags={naming.TAG_ROLE: naming.ROLE_STUDY, naming.TAG_STUDY: study_name,
              "mlflow.runName": f"study-{study_name}", **{k: str(v) for k, v in tags.items()}},
    )
    with tempfile.TemporaryDirectory() as d:
        import yaml

        p = os.path.join(d, "spec.yaml")
        with open(p, "w") as f:
            yaml.safe_dump(spec_dict, f, sort_keys=False)
        client.log_artifact(run.info.run_id, p)
    return run.info.run_id


__all__ = [
    "StudyTracker", "ensure_experiment", "start_parent_run", "check_tracking_reachable",
    "metric_items", "mlflow",
]

"""MLflow tracking of a study from the Ray Tune driver: one nested child run per trial.

Why driver-side: the driver sees every result anyway, so it logs each report with ONE
``log_batch`` call (MLflowLoggerCallback makes one call per metric key: ~150 ms a report on
sqlite), the trial processes need no MLflow connection, and a retried or resumed trial finds
its run again by the ``moe_study.trial_id`` tag instead of opening a duplicate.

Outages: every write goes through ``_DeliveryQueue``; a write that fails for want of a server
(a connection failure, a 5xx) stays queued (in order) and is retried at the next event; what is
still undelivered when the study stops is spooled to a JSONL file in the study's folder and
delivered by ``moe-study resume``. A write MLflow refuses (a 4xx: a metric key it does not
allow...) is no outage: it is set aside in ``mlflow-rejected.jsonl`` beside the spool, counted
in the run's ``moe_study.rejected_writes`` tag, and the queue moves on (docs/faults.md).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from study import naming
from study.naming import trial_params
from study.run.mlflow_layout import provenance_tags, run_name
from study.run.storage import StorageFile, as_storage_file
from trainables.metric_names import GAPS
from study.run.trial_context import TrialContext

log = logging.getLogger(__name__)

HEATMAP_FILE = "routing_heatmap.png"
REJECTED_FILE = "mlflow-rejected.jsonl"
"""Beside the spool, in the study's folder: every write MLflow refused, one JSON object a line."""
ARTIFACT_DIR = "mlflow-artifacts"
"""Beside the spool: the figures and tables drawn for MLflow, until they are delivered."""
_ARTIFACT_PREFIX = "moe-study-artifacts-"
_OPS = {"open", "batch", "artifact", "count_table", "heatmap", "routing_counts", "terminate"}
_RETRIED_4XX = {401, 403, 408, 409, 429, 499}
"""4xx statuses that are retried all the same: they come and go (408 timeout, 409 conflict, 429
rate limit, 499 cancelled) or a user fixes them without the write being wrong (401/403)."""
TUNE_AUTO_KEYS = {
    "time_this_iter_s", "time_total_s", "timestamp", "pid", "iterations_since_restore",
    "time_since_restore", "timesteps_since_restore", "timesteps_total", "episodes_total",
    "experiment_id", "date", "hostname", "node_ip", "checkpoint_dir_name", "should_checkpoint",
}

# keys of a Tune result that are not metrics
_SKIP_RESULT_KEYS = {naming.STEP, "count_table", "domains", "done", "training_iteration", "trial_id", "node_id",
                     "node_type", "mix_hash", "routing_counts"}


class WriteRejected(Exception):
    """A write that cannot succeed however often it is tried (its trial has no run, its file is
    gone, its figure cannot be drawn)."""


def is_rejection(exc: BaseException) -> bool:
    """Whether MLflow refused the write itself, so trying again cannot help.

    A file or sqlite store raises ``MlflowException`` with the error code (INVALID_PARAMETER_VALUE
    for a key it does not allow); a tracking server answers with an HTTP status that the client
    raises as ``RestException`` (the code from the JSON body) or as ``MlflowException`` with the
    code of the status. ``get_http_status_code`` reads both: a 4xx is a rejection, except
    ``_RETRIED_4XX`` and ENDPOINT_NOT_FOUND. A connection failure or a timeout is an ``MlflowException`` with no code
    ("API request to ... failed with exception ..."), read as 500: an outage, like every 5xx and
    every other exception.
    """
    if isinstance(exc, WriteRejected):
        return True
    if not isinstance(exc, MlflowException) or exc.error_code == "ENDPOINT_NOT_FOUND":
        return False  # (a 404 with no MLflow answer: a proxy or a wrong URL, not this write)
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status not in _RETRIED_4XX


def _error_text(exc: BaseException) -> str:
    """The error as the rejected-writes file keeps it: with MLflow's error code."""
    text = str(exc)
    code = getattr(exc, "error_code", None)
    return text if not code or text.startswith(str(code)) else f"{code}: {text}"


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


_SPOOL_REWRITE = threading.RLock()
"""Held while a spool file is read and rewritten: the reference's tracker and the search's run
in one driver at once when the reference runs beside the first trials (``study.run.reference``),
and both spool to the study's one file."""


class _DeliveryQueue:
    """Ordered MLflow writes that survive a tracking outage, delivered off the driver loop.

    ``put`` only appends: a background thread delivers in order (and draws the routing heatmaps),
    so neither a slow store nor a figure holds up Tune's driver loop and with it the start of the
    next trial. A write that fails for want of a server stays first in line and is retried every
    second; one MLflow refuses (``is_rejection``) is set aside and the queue moves on. ``drain``
    (at the study's end, and at interpreter exit as a safety net) stops the thread, retries
    until its timeout and spools what is left.

    Files live in the study's folder (the spool's): the spool, ``mlflow-rejected.jsonl``, the
    spool's unreadable lines (``<spool>.corrupt``) and the artifacts drawn for MLflow
    (``mlflow-artifacts/``, each removed once delivered), so a reboot loses none of them.
    """

    RETRY_S = 1.0

    def __init__(self, client: MlflowClient, spool_path: StorageFile | Path | None, resolve=None,
                 render=None):
        self.client = client
        self.spool_path = as_storage_file(spool_path)  # local or on the study's remote storage
        self.resolve = resolve  # trial id -> MLflow run id, opening the run when needed
        self.render = render  # (kind, count table, domains, folder) -> path of the artifact file to log
        self.pending: list[tuple[str, dict]] = []
        self.last_error: str | None = None
        self.delivered = 0
        """Writes that reached MLflow (whole, or all but what it refused of a batch)."""
        self.rejected = 0
        """Writes (whole, or a batch's single metrics, params or tags) MLflow refused: set aside."""
        self.busy_s = 0.0
        """Seconds spent delivering (MLflow calls, figures), failed attempts included."""
        self.logged_steps: dict[str, set[int]] = {}
        """Per run the steps it holds metrics at, for runs the resolver registered: a report at
        a step already there (replayed after a restore, or from a trial rerun from scratch) is
        not logged again."""
        self.rejections: dict[str, int] = {}
        """Per run the writes set aside, the value of its ``TAG_REJECTED_WRITES`` tag."""
        self.rejected_keys: dict[tuple[str, str], str] = {}
        """(``metrics``/``params``/``tags``, key) MLflow refused once, with its error: later
        batches set them aside without asking again."""
        self._run_id: str | None = None  # the run of the write being delivered
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    @property
    def rejected_path(self) -> StorageFile | None:
        return None if self.spool_path is None else self.spool_path.with_name(REJECTED_FILE)

    @property
    def artifact_dir(self) -> Path | None:
        """Where artifact files wait for delivery: beside a local spool; on remote storage, the
        system's temporary folder (a file to upload must be local)."""
        local = None if self.spool_path is None else self.spool_path.local_path()
        return None if local is None else local.with_name(ARTIFACT_DIR)

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
        """Block until the write ``put`` returned ``handle`` for (and all before it) is delivered
        or set aside; False when the store is failing (the write stays queued) or ``timeout_s``
        passes."""
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
        """Deliver in order until the queue is empty (True) or a write fails for want of a
        server (False: it stays first in line). A write MLflow refuses is set aside."""
        while True:
            with self._cv:
                if not self.pending:
                    return True
                op, kwargs = self.pending[0]
            t0 = time.perf_counter()
            self._run_id, follow_up = None, None
            try:
                delivered = self._apply(op, kwargs)
            except Exception as exc:  # noqa: BLE001 - sorted below: refused, or an outage
                if not is_rejection(exc):
                    if self.last_error is None:
                        log.warning("MLflow write failed, will retry: %s", exc)
                    self.last_error = str(exc)
                    return False
                delivered = False
                self._set_aside(op, kwargs, _error_text(exc), self._run_id)
                if self._run_id is not None and op != "batch":  # the tag says so on the run
                    follow_up = ("batch", {"trial": kwargs["trial"], "metrics": {}, "ts": 0, "step": 0,
                                           "tags": {naming.TAG_REJECTED_WRITES: str(self.rejections[self._run_id])},
                                           "bookkeeping": True})
            finally:
                self.busy_s += time.perf_counter() - t0
            with self._cv:
                self.pending.pop(0)
                if follow_up is not None:
                    self.pending.insert(0, follow_up)
                self.delivered += bool(delivered) and not kwargs.get("bookkeeping")
                self.last_error = None
                self._cv.notify_all()

    def _apply(self, op: str, kw: dict) -> bool:
        """One write; False when MLflow refused all of it (a batch whose every item it refused)."""
        c = self.client
        if op == "open":
            run_id = self._run_id = self.resolve(kw["trial"], kw)
            if kw.get("created"):  # a run this driver created: its params (left after an outage)
                while kw.get("params"):
                    chunk = dict(list(kw["params"].items())[:90])  # MLflow takes 100 params a batch
                    self._batch(run_id, {"trial": kw["trial"], "ts": 0, "step": 0, "params": dict(chunk)})
                    for k in chunk:
                        kw["params"].pop(k, None)
            return True
        run_id = self._run_id = self.resolve(kw["trial"], None)
        if op == "batch":
            seen = self.logged_steps.get(run_id)
            if seen is not None and kw["step"] in seen:
                kw["metrics"] = {}  # this run has that step already
            had_metrics = bool(kw.get("metrics"))
            asked, delivered = self._batch(run_id, kw)
            if had_metrics and seen is not None:  # after the write: a failed one is retried
                seen.add(kw["step"])
            return asked == 0 or delivered > 0
        if op == "artifact":
            if not os.path.isfile(kw["path"]):
                raise WriteRejected(f"artifact file {kw['path']} is gone")
            c.log_artifact(run_id, kw["path"], kw.get("artifact_path"))
        elif op in ("count_table", "heatmap", "routing_counts"):  # files are written here, off the driver loop
            if "path" not in kw or not os.path.isfile(kw["path"]):  # (gone: drawn again)
                kw["path"] = self._render(op, kw)
            c.log_artifact(run_id, kw["path"])
            preview = Path(kw["path"]).with_suffix(".csv")
            if op == "count_table" and preview.is_file():
                c.log_artifact(run_id, str(preview))
            self._remove_drawn(kw["path"])
        elif op == "terminate":
            c.set_terminated(run_id, status=kw["status"])
        else:  # pragma: no cover - programming error
            raise ValueError(op)
        return True

    # -- batches: what MLflow refuses of one is set aside, the rest delivered -----------------------
    _FIELDS = ("metrics", "params", "tags")

    def _batch(self, run_id: str, kw: dict) -> tuple[int, int]:
        """Log a batch's metrics, params and tags; (items asked, items delivered).

        When MLflow refuses the batch, its items are sent one at a time to find the ones it
        refuses; those are set aside (and their keys remembered, so later batches leave them out
        without asking), the rest delivered. What is delivered or set aside leaves ``kw``: a
        retry after an outage, or the spool, carries only the rest.
        """
        items = [(f, k) for f in self._FIELDS for k in (kw.get(f) or {})
                 if (f, k) != ("tags", naming.TAG_REJECTED_WRITES)]
        for f, k in items:
            if (f, k) in self.rejected_keys:
                self._set_aside_item(run_id, kw, f, k, self.rejected_keys[(f, k)])
        try:
            return len(items), self._log(run_id, kw)
        except Exception as exc:
            if not is_rejection(exc):
                raise
        delivered = 0
        for f, k in [(f, k) for f in self._FIELDS for k in list(kw.get(f) or {})
                     if (f, k) != ("tags", naming.TAG_REJECTED_WRITES)]:
            try:
                self._log(run_id, {"ts": kw.get("ts", 0), "step": kw.get("step", 0), f: {k: kw[f][k]}})
            except Exception as exc:
                if not is_rejection(exc):
                    raise  # an outage: ``kw`` holds what is left
                self.rejected_keys[(f, k)] = _error_text(exc)
                log.warning("MLflow refused %s %r; it is set aside (in %s) for every run: %s",
                            f[:-1], k, self.rejected_path or "no file", exc)
                self._set_aside_item(run_id, kw, f, k, self.rejected_keys[(f, k)])
                continue
            del kw[f][k]
            delivered += 1
        try:
            self._log(run_id, kw)  # the run's TAG_REJECTED_WRITES
        except Exception as exc:
            if not is_rejection(exc):
                raise
            log.warning("could not tag MLflow run %s with its rejected writes: %s", run_id, exc)
            kw.get("tags", {}).pop(naming.TAG_REJECTED_WRITES, None)
        return len(items), delivered

    def _log(self, run_id: str, kw: dict) -> int:
        """One ``log_batch`` of what ``kw`` holds; the number of items, the rejection tag aside."""
        metrics, params, tags = (kw.get(f) or {} for f in self._FIELDS)
        if not (metrics or params or tags):
            return 0
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, kw["ts"], kw["step"]) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
        )
        for f in self._FIELDS:
            kw[f] = {}
        return len(metrics) + len(params) + len(tags) - (naming.TAG_REJECTED_WRITES in tags)

    def _set_aside_item(self, run_id: str, kw: dict, field: str, key: str, error: str) -> None:
        value = kw[field].pop(key)
        self._set_aside("batch", {"trial": kw.get("trial"), "ts": kw.get("ts", 0), "step": kw.get("step", 0),
                                  field: {key: value}}, error, run_id, quiet=True)
        kw.setdefault("tags", {})[naming.TAG_REJECTED_WRITES] = str(self.rejections[run_id])

    def _set_aside(self, op: str, kw: dict, error: str, run_id: str | None, quiet: bool = False) -> None:
        """Keep a write MLflow refused in ``mlflow-rejected.jsonl``, say so, count it for its run."""
        self.rejected += 1
        if run_id is not None:
            self.rejections[run_id] = self.rejections.get(run_id, 0) + 1
        where = self.rejected_path
        if not quiet:
            log.warning("MLflow refused a write (%s of trial %s); it is set aside%s: %s", op,
                        kw.get("trial"), f" in {where}" if where else "", error)
        if where is None:
            return
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "op": op,
                  "run_id": run_id, "error": error, **kw}
        try:
            where.append_text(json.dumps(record, default=str) + "\n")
        except OSError as exc:
            log.error("could not write the rejected MLflow write to %s (%s): %s", where, exc,
                      json.dumps(record, default=str)[:2000])

    # -- artifacts drawn for MLflow --------------------------------------------------------------
    def _render(self, op: str, kw: dict) -> str:
        try:
            return self.render(op, kw["table"], kw["domains"], self.artifact_dir)
        except OSError:
            raise  # a full disk, say: tried again
        except Exception as exc:  # noqa: BLE001 - the same table fails the same way next time
            raise WriteRejected(f"could not draw the {op}: {exc!r}") from exc

    def _remove_drawn(self, path: str) -> None:
        """Remove the folder ``render`` drew a delivered file in (and ``mlflow-artifacts/`` once
        it is empty)."""
        folder = Path(path).parent
        if folder.name.startswith(_ARTIFACT_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)
            if self.artifact_dir is not None and folder.parent == self.artifact_dir:
                try:
                    self.artifact_dir.rmdir()
                except OSError:
                    pass  # not empty: other artifacts wait for delivery

    # -- the end of a study, and the next driver ---------------------------------------------------
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

    def spool(self) -> bool:
        """Add what is undelivered to the spool file (after what an earlier driver left there).

        The whole file is rewritten atomically (``StorageFile.write_text``) and the writes leave
        ``pending`` only once it is on disk: when that fails (a full disk) they stay pending and
        the earlier spool stays as it was. False then."""
        with self._cv:
            pending = list(self.pending)
        if not pending:
            return True
        if self.spool_path is None:
            log.warning("%d MLflow writes undelivered, and no spool file to keep them in", len(pending))
            return False
        try:
            with _SPOOL_REWRITE:  # another tracker of this driver may rewrite the same spool
                lines = [json.dumps(rec, default=str) for rec in self._read_spool()]
                lines += [json.dumps({"op": op, **kw}, default=str) for op, kw in pending]
                self.spool_path.write_text("".join(line + "\n" for line in lines))
        except OSError as exc:
            log.error("could not spool %d undelivered MLflow writes to %s (%s); they stay pending",
                      len(pending), self.spool_path, exc)
            return False
        with self._cv:
            done = {id(p) for p in pending}
            self.pending = [p for p in self.pending if id(p) not in done]
        log.warning("%d MLflow writes spooled to %s", len(pending), self.spool_path)
        return True

    def _read_spool(self) -> list[dict]:
        """The spool's records. A line that is none (a driver killed mid-write by an older
        version, a damaged disk) is moved to ``<spool>.corrupt`` with a warning, and the spool
        rewritten without it, instead of blocking every resume."""
        if self.spool_path is None or not self.spool_path.exists():
            return []
        records, bad = [], []
        for line in self.spool_path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and rec.get("op") in _OPS and ("trial" in rec or rec["op"] == "artifact"):
                records.append(rec)
            else:
                bad.append(line)
        if bad:
            corrupt = self.spool_path.with_name(self.spool_path.name + ".corrupt")
            try:
                corrupt.append_text("".join(line + "\n" for line in bad))
                self.spool_path.write_text("".join(json.dumps(r) + "\n" for r in records))
            except OSError as exc:  # the lines stay where they are, and are skipped
                log.error("could not move unreadable lines of %s to %s: %s", self.spool_path, corrupt, exc)
            else:
                log.warning("%d unreadable line(s) of the MLflow spool %s moved to %s", len(bad),
                            self.spool_path, corrupt)
        return records

    def replay_spool(self) -> int:
        """Deliver writes a previous driver spooled (``moe-study resume``); returns how many
        reached MLflow. Those MLflow refuses are set aside (``rejected``); what an outage stops
        stays in the spool, alone."""
        if self.spool_path is None or not self.spool_path.exists():
            return 0
        before = self.delivered
        with self._cv:
            self.pending.extend((rec.pop("op"), rec) for rec in self._read_spool())
        if self.flush():
            self.spool_path.unlink(missing_ok=True)
        else:
            rest = self.snapshot()
            try:
                self.spool_path.write_text("".join(
                    json.dumps({"op": op, **kw}, default=str) + "\n" for op, kw in rest))
                with self._cv:
                    self.pending = []
            except OSError as exc:  # the old spool stays: delivered writes are given again
                log.error("could not rewrite the MLflow spool %s: %s", self.spool_path, exc)
        return self.delivered - before


def render_routing_artifacts(kind: str, table: list, domains: list[str], folder: Path | None = None) -> str:
    """The expert x domain ``count_table`` (Parquet), its ``heatmap`` (PNG) or the raw
    ``routing_counts`` (Parquet), in a new folder under ``folder`` (the study's
    ``mlflow-artifacts/``; the system's temporary folder when None); returns the file's path."""
    import numpy as np

    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    d = tempfile.mkdtemp(prefix=_ARTIFACT_PREFIX, dir=folder)
    if kind == "routing_counts":  # ``table``: RoutingCounts.to_sparse()
        from trainables.routing_counts import RoutingCounts, write_routing_counts

        return str(write_routing_counts(os.path.join(d, naming.ROUTING_COUNTS_FILE),
                                        RoutingCounts.from_sparse(table), domains))
    n_LED = np.asarray(table)
    if kind == "count_table":
        from study.run.mlflow_layout import count_table_csv
        from trainables.count_table import write_count_table

        path = write_count_table(os.path.join(d, naming.COUNT_TABLE_FILE), n_LED, domains)
        count_table_csv(n_LED, domains, Path(path).with_suffix(".csv"))  # previewable in the UI
        return str(path)
    from study.run.heatmaps import layer_heatmaps, save_figure

    return str(save_figure(layer_heatmaps(n_LED, domains), os.path.join(d, HEATMAP_FILE)))


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
    ):
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.study_name, self.role = parent_run_id, study_name, role
        self.client = MlflowClient(tracking_uri)
        self.queue = _DeliveryQueue(self.client, spool_path, self._resolve, render_routing_artifacts)
        self.run_ids: dict[str, str] = {}
        self.opened: set[str] = set()
        self.final: dict[str, dict] = {}

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
        # by the study's parent run (an id MLflow made), never by the study's name: a name is
        # the user's text, and a filter cannot hold every text (naming.filter_literal)
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{naming.TAG_PARENT_RUN} = {naming.filter_literal(self.parent_run_id)} "
            f"AND tags.{naming.TAG_TRIAL_ID} = {naming.filter_literal(trial_id)}",
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
            try:  # writes an earlier driver set aside: the run's count goes on from there
                self.queue.rejections[run_id] = int(existing[0].data.tags.get(naming.TAG_REJECTED_WRITES, 0))
            except ValueError:
                pass
        elif open_kw is None:  # its opening was refused (set aside), or the run was deleted
            raise WriteRejected(f"no MLflow run for trial {trial_id}")
        else:
            params, role = open_kw["params"], open_kw.get("role", self.role)
            tags = {
                naming.TAG_PARENT_RUN: self.parent_run_id,
                "mlflow.runName": run_name(role, params),
                naming.TAG_ROLE: role,
                naming.TAG_STUDY: self.study_name,
                naming.TAG_TRIAL_ID: trial_id,
                **provenance_tags(),
            }
            if open_kw.get("config_hash"):
                tags[naming.TAG_CONFIG_HASH] = open_kw["config_hash"]
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            self.queue.logged_steps[run_id] = set()
            open_kw["created"] = True  # the queue logs its params next (what is left of them after an outage)
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
        metrics = metric_items(result)
        if self.role == naming.ROLE_REFERENCE:  # its gaps to itself: 0, in the same columns
            metrics.update({gap: 0.0 for gap, metric, _ in GAPS if metric in metrics})
        self.queue.put("batch", trial=key, metrics=metrics, ts=int(time.time() * 1000), step=step)
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
        # a reference stopped before its end (the search beside it was interrupted) is no
        # reference: never FINISHED, so no study reuses it (study.run.reference)
        status = "KILLED" if stopped_early and self.role == naming.ROLE_REFERENCE else "FINISHED"
        self._deliver_before_returning(self.queue.put("terminate", trial=key, status=status))
        if table and domains:  # the picture only: drawn after, the report does not need it
            self.queue.put("heatmap", trial=key, table=table, domains=list(domains))

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._run_for(trial)
        error = trial_error_text(trial)
        self.queue.put(
            "batch", trial=key, metrics={}, ts=0, step=0,
            tags={naming.TAG_ERROR: error[-4000:] or "trial failed"},
        )
        self._deliver_before_returning(self.queue.put("terminate", trial=key, status="FAILED"))

    def on_experiment_end(self, trials, **info):
        self.close()
        # one line a benchmark (bench/orchestration.py) and a curious user can read
        print(f"[{self.study_name}] tracking: {self.queue.delivered} MLflow writes in "
              f"{self.queue.busy_s:.2f} s", flush=True)
        if self.queue.rejected:
            print(f"[{self.study_name}] MLflow refused {self.queue.rejected} writes; they are set aside in "
                  f"{self.queue.rejected_path or 'no file'} (runs tagged {naming.TAG_REJECTED_WRITES})",
                  flush=True)

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


class OptunaRecorder(Callback):
    """Tune callback: the study's Optuna copy (``study.run.optuna_store``) gets one trial per
    Tune trial that ends, with the first objective's reports as intermediate values. Pickled
    with Tune's experiment state like the tracker, so a resumed study writes on into the same
    Optuna study. A write that fails is reported and skipped: the study goes on."""

    def __init__(self, copy, study_name: str):
        self.copy, self.study_name = copy, study_name
        objective = copy.objective
        self.metric = objective["metric"][0]
        # what the Optuna trial needs of a result (not the count tables a last result carries)
        self.keys = {*objective["metric"], *(objective.get("constraints") or {}), naming.STEP, "time_total_s"}
        self.reports: dict[str, dict[int, float]] = {}
        self.last: dict[str, dict] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Tune updates trial.last_result after the callbacks: the last result is kept here
        self.last[trial.trial_id] = {k: result[k] for k in self.keys if k in result}
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and naming.STEP in result:
            self.reports.setdefault(trial.trial_id, {})[int(result[naming.STEP])] = float(value)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error=trial_error_text(trial) or "trial failed")

    def _record(self, trial, error: str | None = None) -> None:
        try:
            result = self.last.pop(trial.trial_id, None) or trial.last_result  # restored: Tune's
            self.copy.record(trial.trial_id, trial.config, result,
                             intermediate=self.reports.pop(trial.trial_id, None), error=error)
        except Exception as exc:  # noqa: BLE001 - the Optuna copy must not end the study
            print(f"[{self.study_name}] could not add trial {trial.trial_id} to the Optuna study "
                  f"{self.copy.study_name} in {self.copy.storage_url}: {type(exc).__name__}: {exc}",
                  flush=True)


def _result_tags(result: dict) -> dict[str, str]:
    """Tags a finished trial's run takes from its last result: where it ran, which text."""
    tags = {}
    if result.get("node_id"):
        tags[naming.TAG_NODE] = str(result["node_id"])
    if result.get("node_type"):
        tags[naming.TAG_NODE_TYPE] = str(result["node_type"])
    if result.get("mix_hash"):
        tags[naming.TAG_MIX_HASH] = str(result["mix_hash"])
    return tags


def trial_error_text(trial) -> str:
    for attr in ("error_msg",):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text()
    return "trial failed"


def check_tracking_reachable(tracking_uri: str) -> None:
    """Fail fast, before any trial runs, when the tracking server does not answer."""
    MlflowClient(tracking_uri).search_experiments(max_results=1)


__all__ = [
    "OptunaRecorder", "StudyTracker", "check_tracking_reachable",
    "metric_items", "mlflow",
]

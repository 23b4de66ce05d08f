"""``moe-study studies`` (alias ``list``): the studies kept under a storage root, each with its
state and trial counts.

A study is a folder ``<root>/<name>/`` holding ``study.json`` (``study.run.runner``). Its state:
``running`` while a process holds its lock (``study.run.study_lock``; on remote storage the lock
lives in this machine's cache, so only a driver on this machine is seen); otherwise the status
of its MLflow parent run: ``finished``, ``failed``, ``interrupted`` (killed, or left ``RUNNING``
by a driver that is gone: ``moe-study resume`` continues it); ``unknown`` when the store cannot
say (missing, unreachable, the parent run gone) and the ``note`` says why. Trial counts come from
the parent's trial runs (finished full-length, stopped early by the scheduler, failed, running),
or from the ``trials_*`` metrics logged on the parent at the study's end when its trial runs are
gone.

Reads only: a sqlite store is opened read-only and never created (a missing file is "store
missing"), a tracking server is asked through its REST API with a short timeout, a file store
that is not there is not made; MLflow itself is imported only for other store kinds.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any
from urllib.parse import urlparse

from trainables.errors import ConfigError, name_problem

from study import naming
from study.results import fast_queries

STATES = ("running", "finished", "failed", "interrupted", "unknown")
_STATE_OF_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "interrupted"}
TABLE_COLUMNS = {"study": "study", "state": "state", "trials_finished": "finished",
                 "trials_stopped_early": "stopped", "trials_failed": "failed",
                 "trials_running": "running", "tracking_uri": "tracking", "note": "note"}
"""The table's columns (json and csv have every field): field -> header."""
_TIMEOUT_S = 10.0


class StoreProblem(Exception):
    """The tracking store cannot tell (the message says why, for the ``note`` column)."""


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """One row per study under the storage root (``--storage``, else $MOE_STUDY_STORAGE, else
    ./runs), sorted by name; ConfigError when the root is not there."""
    from study.run import runner
    from study.run import storage as study_storage
    from study.run.study_lock import live_holder

    root = runner.storage_root(storage)
    names = study_storage.folder_names(root)
    if names is None:
        raise ConfigError(f"--storage {root}: no such folder; studies are kept where `moe-study run` "
                          "put them (--storage, else $MOE_STUDY_STORAGE, else ./runs)")
    if study_storage.is_uri(root):  # a driver of this machine starting a study, before study.json
        locks = runner.lock_folder(root, "_").parent
        names = sorted(set(names) | set(os.listdir(locks) if locks.is_dir() else ()))
    stores = _Stores()
    rows = []
    for name in names:
        if name_problem(name):
            continue
        holder = live_holder(runner.lock_folder(root, name))
        state_file = runner.state_file(root, name)
        if not state_file.exists():
            if holder is not None:
                rows.append(_row(name, "running", holder=holder, note="starting (no study.json yet)"))
            continue
        rows.append(_study_row(root, name, state_file, holder, stores))
    return rows


def _row(name: str, state: str, **fields: Any) -> dict[str, Any]:
    from study.run.study_lock import holder_text

    holder = fields.pop("holder", None)
    row = {"study": name, "state": state, "trials_finished": None, "trials_stopped_early": None,
           "trials_failed": None, "trials_running": None, "tracking_uri": None, "note": "",
           "mlflow_status": None, "experiment_id": None, "parent_run_id": None,
           "held_by": holder_text(holder) if holder is not None else None}
    row.update(fields)
    return row


def _study_row(root: str, name: str, state_file: Any, holder: dict | None, stores: "_Stores") -> dict[str, Any]:
    from study.run import runner
    from study.run import storage as study_storage

    live = "running" if holder is not None else None
    try:
        state = runner.read_state(state_file, name)
    except ConfigError as err:
        why = err.problems[0].split(str(state_file), 1)[-1].split("; it is written")[0].strip(" :")
        return _row(name, live or "unknown", holder=holder,
                    note=f"study.json unreadable: {why[:80]}{'...' if len(why) > 80 else ''}")
    row = _row(name, live or "unknown", holder=holder, tracking_uri=state["tracking_uri"],
               experiment_id=state["experiment_id"], parent_run_id=state["parent_run_id"])
    try:
        status, counts = stores.parent_run(state["tracking_uri"], state["experiment_id"], state["parent_run_id"])
    except StoreProblem as problem:
        row["note"] = str(problem)
        return row
    row.update(counts, mlflow_status=status)
    if live:
        return row
    if status in _STATE_OF_STATUS:
        row["state"] = _STATE_OF_STATUS[status]
    elif status == "RUNNING" and not study_storage.is_uri(root):
        row["state"] = "interrupted"
        row["note"] = "its driver is gone"
    elif status == "RUNNING":
        row["note"] = "RUNNING in MLflow, no driver of it on this machine"
    else:
        row["note"] = f"parent run {status}"
    if row["state"] == "interrupted":
        row["note"] = "; ".join(filter(None, [row["note"], f"moe-study resume {name}"]))
    return row


# -- the tracking store, read only ------------------------------------------------------------------
class _Stores:
    """Reads parent runs from the stores the studies name; a store that failed once is not asked
    again (a down server costs one timeout, not one per study)."""

    def __init__(self) -> None:
        self.broken: dict[str, str] = {}

    def parent_run(self, uri: str, experiment_id: str, run_id: str) -> tuple[str, dict[str, int | None]]:
        """(the parent run's status, trial counts); StoreProblem when the store cannot say."""
        if uri in self.broken:
            raise StoreProblem(self.broken[uri])
        try:
            scheme = urlparse(uri).scheme
            if scheme == "sqlite":
                status, children, metrics = _sqlite_parent(uri, run_id)
            elif scheme in ("http", "https"):
                status, children, metrics = _rest_parent(uri, experiment_id, run_id)
            else:
                status, children, metrics = _client_parent(uri, experiment_id, run_id)
        except _StoreDown as down:
            self.broken[uri] = str(down)
            raise StoreProblem(str(down)) from None
        return status, trial_counts(children, metrics)


class _StoreDown(StoreProblem):
    """The whole store cannot be read (not one run of it)."""


def trial_counts(children: list[tuple[str, str | None]], metrics: dict[str, float]) -> dict[str, int | None]:
    """Counts of the trial runs ``(status, stopped-early tag)``; without any, the ``trials_*``
    metrics the study logged on its parent run at its end (``mlflow_layout.study_outcome``)."""
    if not children and any(k.startswith("trials_") for k in metrics):
        def metric(key: str) -> int | None:
            return int(metrics[key]) if key in metrics else None

        return {"trials_finished": metric("trials_finished"), "trials_stopped_early": metric("trials_stopped_early"),
                "trials_failed": metric("trials_failed"), "trials_running": None}
    return naming.count_trials(children)


def _sqlite_parent(uri: str, run_id: str):
    path = fast_queries.sqlite_store_file(uri)
    if path is None:
        raise _StoreDown("not a store file (in-memory sqlite)")
    if not os.path.isfile(path):
        raise _StoreDown(f"store missing ({os.path.abspath(path)} does not exist)")
    try:
        db = fast_queries.connect_read_only(path)
        try:
            found = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            if found is None:
                raise StoreProblem(f"parent run {run_id} not in the store")
            children = db.execute(
                "SELECT r.status, (SELECT t.value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ?) "
                "FROM runs r WHERE r.lifecycle_stage = 'active' "
                "AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?) "
                "AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?)",
                (naming.TAG_STOPPED_EARLY, naming.TAG_PARENT_RUN, run_id, naming.TAG_ROLE, naming.ROLE_TRIAL),
            ).fetchall()
            metrics = dict(db.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ? "
                                      "AND key LIKE 'trials%'", (run_id,)).fetchall())
        finally:
            db.close()
    except sqlite3.Error as err:
        raise _StoreDown(f"not a readable MLflow store ({err})") from None
    return found[0], [tuple(c) for c in children], metrics


def _rest_parent(uri: str, experiment_id: str, run_id: str):
    base = uri.rstrip("/")
    timeout = min(_TIMEOUT_S, float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", _TIMEOUT_S)))
    try:
        got = fast_queries._call(base, "GET", "runs/get", {"run_id": run_id}, timeout=timeout)
        if got is None:
            raise StoreProblem(f"parent run {run_id} not in the store")
        run = got.get("run", {})
        status = run.get("info", {}).get("status")
        metrics = {m["key"]: float(m["value"]) for m in run.get("data", {}).get("metrics", [])}
        children, token = [], None
        while True:
            body = {"experiment_ids": [experiment_id], "max_results": 50000,
                    "filter": f"tags.`{naming.TAG_PARENT_RUN}` = {naming.filter_literal(run_id)} "
                              f"and tags.`{naming.TAG_ROLE}` = '{naming.ROLE_TRIAL}'"}
            if token:
                body["page_token"] = token
            page = fast_queries._call(base, "POST", "runs/search", body, timeout=timeout) or {}
            for r in page.get("runs", []):
                tags = {t["key"]: t["value"] for t in r.get("data", {}).get("tags", [])}
                children.append((r.get("info", {}).get("status"), tags.get(naming.TAG_STOPPED_EARLY)))
            token = page.get("next_page_token")
            if not token:
                break
    except fast_queries._Unsupported:
        raise _StoreDown("tracking server unreachable") from None
    return status, children, metrics


def _client_parent(uri: str, experiment_id: str, run_id: str):
    """Any other store, through MlflowClient; a local file store that is not there is not made."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if not os.path.isdir(path):
            raise _StoreDown(f"store missing ({path} does not exist)")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(_TIMEOUT_S)))
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(uri)
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise StoreProblem(f"parent run {run_id} not in the store") from None
            raise
        children = [
            (r.info.status, r.data.tags.get(naming.TAG_STOPPED_EARLY))
            for r in client.search_runs(
                [experiment_id], max_results=50000,
                filter_string=f"tags.`{naming.TAG_PARENT_RUN}` = {naming.filter_literal(run_id)} "
                              f"and tags.`{naming.TAG_ROLE}` = '{naming.ROLE_TRIAL}'")
        ]
    except StoreProblem:
        raise
    except Exception as err:  # noqa: BLE001 - any store error: the listing goes on
        raise _StoreDown(f"tracking store unreadable ({type(err).__name__})") from None
    return run.info.status, children, dict(run.data.metrics)


def format_studies(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The rows as ``moe-study studies`` prints them: a table of ``TABLE_COLUMNS``, or every field
    as json or csv."""
    from study.results.queries import format_rows

    if not rows:
        return {"table": "(no studies)", "json": "[]", "csv": ",".join(_row("", "").keys()) + "\n"}[fmt]
    if fmt != "table":
        return format_rows(rows, fmt)
    return format_rows([{header: r.get(key) for key, header in TABLE_COLUMNS.items()} for r in rows], "table")

"""``moe-study best`` without importing MLflow: the same query, read straight from the store.

Importing ``mlflow`` takes 1.5-2.5 s on a laptop-class CPU, ten times the query itself over
10,000 runs (BENCHMARKS.md, "Result queries"). For the two stores a study normally uses, the
query runs without it, with identical results (tests compare both paths on one store):

- ``sqlite:`` stores: one SQL query over MLflow's tables (``runs``, ``tags``, ``params``,
  ``latest_metrics``), ordered the way MLflow's own store orders (NaN last, then start time
  descending, then run id);
- ``http(s)://`` tracking servers: MLflow's REST API (``runs/search`` with the same filter
  string ``MlflowClient.search_runs`` would send).

Anything else (another store, a raw MLflow ``--where`` filter on sqlite, a store whose schema
this module does not recognise) returns None and the caller goes through ``MlflowClient``.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlparse

from trainables.errors import ConfigError

from study import naming


@dataclass(frozen=True)
class Clause:
    """One ``--where`` shorthand clause: a param (text) or metric (number) comparison."""

    kind: str  # "param" | "metric"
    key: str
    op: str  # = != > >= < <=
    value: Any

    def mlflow(self) -> str:
        """The clause in MLflow's filter grammar; a param value is quoted by
        ``naming.filter_literal`` (ValueError for a value holding both kinds of quote)."""
        if self.kind == "param":
            return f"params.`{self.key}` {self.op} {naming.filter_literal(self.value)}"
        return f"metrics.`{self.key}` {self.op} {self.value!r}"


@dataclass
class Query:
    """What ``best_runs`` asks: finished runs of one experiment, best ``top`` by ``by``."""

    experiment: str
    by: str
    ascending: bool
    top: int
    include_reference: bool
    clauses: list[Clause] = field(default_factory=list)
    raw_where: str | None = None
    """An MLflow filter fragment (only the REST path can pass it on)."""
    include_stopped: bool = False
    """Rank trials the scheduler stopped early too (their metrics are from an earlier step: an
    early ``gap_purity`` is lower than any finished trial's, so they would head the list)."""
    role: str = naming.ROLE_TRIAL
    """Which runs one search returns: trial runs, or (``references()``) the reference runs that
    ``include_reference`` merges into the ranking."""
    config_hash: str | None = None
    """A reference search in every experiment for the run of this config hash: the reference a
    study of this experiment reused from another one (``naming.TAG_REFERENCE_KEY``)."""

    @property
    def gap_ranked(self) -> bool:
        """Ranked by a gap to the reference: a reference run's value is 0 by definition (studies
        before the tracker logged it leave it out)."""
        return self.by in naming.GAP_METRICS

    @property
    def needs_metric(self) -> bool:
        """Whether a run must have logged ``by`` (all but reference runs ranked by a gap)."""
        return not (self.role == naming.ROLE_REFERENCE and self.gap_ranked)

    def references(self, config_hash: str | None = None) -> "Query":
        """The search for the reference runs ``include_reference`` ranks with the trials: finished
        reference runs passing the same ``--where``, without the stopped-early tag (older
        reference runs lack it), and with or without the metric when ranked by a gap."""
        return replace(self, role=naming.ROLE_REFERENCE, include_reference=False, config_hash=config_hash)

    def filter_string(self) -> str:
        parts = [f"tags.`{naming.TAG_ROLE}` = '{self.role}'", "attributes.status = 'FINISHED'"]
        if self.needs_metric:
            parts.append(f"metrics.`{self.by}` >= -1e308")
        if self.role == naming.ROLE_TRIAL and not self.include_stopped:
            parts.append(f"tags.`{naming.TAG_STOPPED_EARLY}` != 'true'")
        if self.config_hash is not None:
            parts.append(f"tags.`{naming.TAG_CONFIG_HASH}` = {naming.filter_literal(self.config_hash)}")
        parts += [c.mlflow() for c in self.clauses]
        if self.raw_where:
            parts.append(self.raw_where)
        return " and ".join(parts)

    def order_by(self) -> str:
        if self.role == naming.ROLE_REFERENCE:  # ranked by merge_references, newest first here
            return "attributes.start_time DESC"
        return f"metrics.`{self.by}` {'ASC' if self.ascending else 'DESC'}"

    def study_runs_filter(self) -> str:
        """The parent runs of the experiment (whose tags name a reused reference)."""
        return f"tags.`{naming.TAG_ROLE}` = '{naming.ROLE_STUDY}'"


def reference_metrics(run: Any) -> dict[str, float]:
    """A run's metrics, with the gaps a reference run leaves out set to 0 (its gaps to itself)."""
    metrics = dict(run.data.metrics)
    if run.data.tags.get(naming.TAG_ROLE) == naming.ROLE_REFERENCE:
        for gap in naming.GAP_METRICS:
            metrics.setdefault(gap, 0.0)
    return metrics


def merge_references(query: Query, trials: list[Any], references: list[Any]) -> list[Any]:
    """The ``top`` best of the trial runs (ranked by the store) and the reference runs, by
    ``query.by``; a reference run first where it ties with a trial (the sort is stable)."""
    def key(run: Any) -> float:
        value = reference_metrics(run)[query.by]
        return value if query.ascending else -value

    return sorted([*references, *trials], key=key)[:query.top]


def search_with_references(query: Query, search_one, reference_keys) -> list[Any]:
    """What ``best`` ranks, on any store: ``search_one(query)`` returns the runs of one search
    (a ``Query`` of one role), ``reference_keys()`` the reference keys on the experiment's parent
    runs. With ``include_reference``, the experiment's own reference runs, or where it has
    none (a study that reused another's reference), the newest finished reference run of each
    key, are merged into the ranking."""
    trials = search_one(replace(query, include_reference=False))
    if not query.include_reference:
        return trials
    references = search_one(query.references())
    if not references:
        for key in sorted(set(reference_keys())):
            references += search_one(replace(query.references(key), top=1))
    return merge_references(query, trials, references)


def search(tracking_uri: str, query: Query) -> tuple[list[Any], dict[str, dict[str, str]]] | None:
    """(runs shaped like MLflow's ``Run``, tags of their parent runs), or None: use MlflowClient."""
    scheme = urlparse(tracking_uri).scheme
    try:
        if scheme == "sqlite" and query.raw_where is None:
            return _search_sqlite(tracking_uri, query)
        if scheme in ("http", "https"):
            return _search_rest(tracking_uri, query)
    except _Unsupported:
        return None
    return None


class _Unsupported(Exception):
    """This path cannot answer (unknown schema, missing experiment, ...): the caller falls back."""


def _run_view(run_id: str, name: str, params: dict, metrics: dict, tags: dict) -> Any:
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, run_name=name),
                           data=SimpleNamespace(params=params, metrics=metrics, tags=tags))


# -- sqlite ------------------------------------------------------------------------------------
_OPS = {"=", "!=", ">", ">=", "<", "<="}
MLFLOW_TABLES = ("experiments", "runs", "tags", "params", "latest_metrics")
"""Tables every MLflow sqlite store has (what tells a store from another sqlite file)."""


def sqlite_store_file(tracking_uri: str) -> str | None:
    """The file of a ``sqlite:`` store URI as SQLAlchemy reads it (``sqlite:///relative``,
    ``sqlite:////absolute``; percent-escapes decoded, the query string dropped); None for another
    store kind or an in-memory database."""
    if urlparse(tracking_uri).scheme != "sqlite":
        return None
    rest = tracking_uri[len("sqlite:"):]
    if not rest.startswith("///"):
        return None
    path = unquote(rest[3:].split("?", 1)[0])
    return None if not path or path == ":memory:" else path


def connect_read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to an existing sqlite file: never creates or changes it.

    The file URI comes from ``Path.as_uri()``, which escapes ``#`` and ``?`` in the path: written
    by hand (``f"file:{path}?mode=ro"``) a ``#`` starts a URI fragment that swallows
    ``?mode=ro``, and sqlite opens (and creates) the path cut at the ``#`` for writing.
    """
    return sqlite3.connect(Path(os.path.abspath(path)).as_uri() + "?mode=ro", uri=True, timeout=5.0)


def check_store(tracking_uri: str) -> None:
    """For a ``sqlite:`` store: ConfigError unless its file exists and holds MLflow's tables, so
    that a mistyped ``--tracking-uri`` says "no such store" instead of MLflow creating a fresh
    store there (MLflow creates a missing sqlite store on first use). Other stores pass."""
    path = sqlite_store_file(tracking_uri)
    if path is None:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"--tracking-uri {tracking_uri}: no such store ({os.path.abspath(path)} "
                          "does not exist); a study's store is the one `moe-study run` wrote to")
    try:
        db = connect_read_only(path)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as err:
        raise ConfigError(f"--tracking-uri {tracking_uri}: {path} is not a readable sqlite "
                          f"database ({err})") from None
    missing = [t for t in MLFLOW_TABLES if t not in tables]
    if missing:
        raise ConfigError(f"--tracking-uri {tracking_uri}: {path} is not an MLflow tracking store "
                          f"(no table {', '.join(missing)})")


def _sqlite_path(tracking_uri: str) -> str:
    path = sqlite_store_file(tracking_uri)
    if path is None or not os.path.exists(path):
        raise _Unsupported
    return path


def _search_sqlite(tracking_uri: str, q: Query):
    path = _sqlite_path(tracking_uri)
    try:
        db = connect_read_only(path)
    except sqlite3.Error:
        raise _Unsupported from None
    try:
        return _sqlite_rows(db, q)
    except sqlite3.Error:  # a schema this module does not know: let MLflow read it
        raise _Unsupported from None
    finally:
        db.close()


def _sqlite_rows(db: sqlite3.Connection, q: Query):
    exp = db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (q.experiment,)).fetchone()
    if exp is None:
        raise _Unsupported  # MlflowClient's path words the error (with a did-you-mean)

    def reference_keys() -> list[str]:
        return [row[0] for row in db.execute(
            "SELECT t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid WHERE r.experiment_id = ? "
            "AND r.lifecycle_stage = 'active' AND t.key = ? AND EXISTS (SELECT 1 FROM tags s WHERE "
            "s.run_uuid = r.run_uuid AND s.key = ? AND s.value = ?)",
            (exp[0], naming.TAG_REFERENCE_KEY, naming.TAG_ROLE, naming.ROLE_STUDY))]

    runs = search_with_references(q, lambda one: _sqlite_search(db, one, exp[0]), reference_keys)
    parents = {r.data.tags.get(naming.TAG_PARENT_RUN) for r in runs} - {None}
    parent_tags = {p: _sqlite_map(db, "tags", p) for p in parents}
    return runs, parent_tags


def _sqlite_search(db: sqlite3.Connection, q: Query, experiment_id: Any) -> list[Any]:
    """The runs of one search (one role), as MLflow's store answers ``q.filter_string()``."""
    with_metric = q.needs_metric
    sql = [
        "SELECT r.run_uuid FROM runs r",
        f"{'' if with_metric else 'LEFT '}JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = ?",
        "WHERE r.lifecycle_stage = 'active' AND r.status = 'FINISHED'",
    ]
    args: list[Any] = [q.by]
    if q.config_hash is None:  # a reused reference is looked up in every experiment
        sql.append("AND r.experiment_id = ?")
        args.append(experiment_id)
    if with_metric:
        sql.append("AND m.is_nan = 0 AND m.value >= -1e308")
    sql.append("AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?)")
    args += [naming.TAG_ROLE, q.role]
    if q.role == naming.ROLE_TRIAL and not q.include_stopped:  # as MLflow reads a tag filter: the tag must be there
        sql.append("AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value != ?)")
        args += [naming.TAG_STOPPED_EARLY, "true"]
    if q.config_hash is not None:
        sql.append("AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?)")
        args += [naming.TAG_CONFIG_HASH, q.config_hash]
    for c in q.clauses:
        if c.op not in _OPS:
            raise _Unsupported
        if c.kind == "param":
            sql.append(f"AND EXISTS (SELECT 1 FROM params p WHERE p.run_uuid = r.run_uuid "
                       f"AND p.key = ? AND p.value {c.op} ?)")
        else:
            sql.append(f"AND EXISTS (SELECT 1 FROM latest_metrics x WHERE x.run_uuid = r.run_uuid "
                       f"AND x.key = ? AND x.is_nan = 0 AND x.value {c.op} ?)")
        args += [c.key, c.value]
    if q.role == naming.ROLE_REFERENCE:
        sql.append("ORDER BY r.start_time DESC, r.run_uuid")
    else:
        sql.append(f"ORDER BY m.value {'ASC' if q.ascending else 'DESC'}, r.start_time DESC, r.run_uuid")
    sql.append("LIMIT ?")
    args.append(q.top)
    ids = [row[0] for row in db.execute(" ".join(sql), args)]
    return [_sqlite_run(db, run_id) for run_id in ids]


def _sqlite_map(db: sqlite3.Connection, table: str, run_id: str) -> dict[str, str]:
    return dict(db.execute(f"SELECT key, value FROM {table} WHERE run_uuid = ?", (run_id,)))


def _sqlite_run(db: sqlite3.Connection, run_id: str):
    name = db.execute("SELECT name FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]
    metrics = {k: (float("nan") if is_nan else float(v)) for k, v, is_nan in db.execute(
        "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,))}
    return _run_view(run_id, name, _sqlite_map(db, "params", run_id), metrics,
                     _sqlite_map(db, "tags", run_id))


# -- REST (mlflow server) ------------------------------------------------------------------------
def _search_rest(tracking_uri: str, q: Query):
    if any(os.environ.get(v) for v in ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                                        "MLFLOW_TRACKING_CLIENT_CERT_PATH")):
        raise _Unsupported  # TLS settings: leave them to MLflow's own client
    base = tracking_uri.rstrip("/")
    found = _call(base, "GET", "experiments/get-by-name", {"experiment_name": q.experiment})
    if found is None:
        raise _Unsupported  # unknown experiment: the MlflowClient path words the error
    experiment_id = found["experiment"]["experiment_id"]

    def search_one(one: Query) -> list[Any]:
        ids = [experiment_id] if one.config_hash is None else _rest_experiment_ids(base)
        body = {"experiment_ids": ids, "filter": one.filter_string(),
                "order_by": [one.order_by()], "max_results": one.top}
        answer = _call(base, "POST", "runs/search", body, where=one.raw_where) or {}
        return [_rest_run(r) for r in answer.get("runs", [])]

    def reference_keys() -> list[str]:
        body = {"experiment_ids": [experiment_id], "filter": q.study_runs_filter(), "max_results": 1000}
        parents = [_rest_run(r) for r in (_call(base, "POST", "runs/search", body) or {}).get("runs", [])]
        return [p.data.tags[naming.TAG_REFERENCE_KEY] for p in parents if naming.TAG_REFERENCE_KEY in p.data.tags]

    runs = search_with_references(q, search_one, reference_keys)
    parents = {r.data.tags.get(naming.TAG_PARENT_RUN) for r in runs} - {None}
    parent_tags = {}
    for p in sorted(parents):
        got = _call(base, "GET", "runs/get", {"run_id": p})
        parent_tags[p] = {t["key"]: t["value"] for t in (got or {}).get("run", {}).get("data", {}).get("tags", [])}
    return runs, parent_tags


def _rest_experiment_ids(base: str) -> list[str]:
    answer = _call(base, "POST", "experiments/search", {"max_results": 1000}) or {}
    return [e["experiment_id"] for e in answer.get("experiments", [])]


def _rest_run(r: dict):
    data = r.get("data", {})
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    metrics = {m["key"]: float(m["value"]) for m in data.get("metrics", [])}
    params = {p["key"]: p["value"] for p in data.get("params", [])}
    info = r.get("info", {})
    return _run_view(info.get("run_id") or info.get("run_uuid"),
                     info.get("run_name") or tags.get("mlflow.runName", ""), params, metrics, tags)


def _call(base: str, method: str, endpoint: str, payload: dict, where: str | None = None,
          timeout: float | None = None):
    """One REST call; None for RESOURCE_DOES_NOT_EXIST, ConfigError for a bad filter, _Unsupported
    when the server cannot answer (``timeout``: seconds, default $MLFLOW_HTTP_REQUEST_TIMEOUT or 120)."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    data = None
    if method == "GET":
        url += "?" + "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in payload.items())
    else:
        data = json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=_auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=timeout or float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 120))) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read() or b"{}")
        except ValueError:
            detail = {}
        code = detail.get("error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST":
            return None
        if code == "INVALID_PARAMETER_VALUE" and where:
            raise ConfigError(f"--where {where!r}: {detail.get('message', err)}") from None
        raise _Unsupported from None
    except (urllib.error.URLError, OSError, ValueError):
        raise _Unsupported from None  # unreachable: MlflowClient retries and reports it


def _auth_headers() -> dict[str, str]:
    """MLflow's client environment variables for server auth (token, or user and password)."""
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return headers

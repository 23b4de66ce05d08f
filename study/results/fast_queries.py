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
from dataclasses import dataclass, field
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

    def filter_string(self) -> str:
        role = (f"tags.`{naming.TAG_ROLE}` != '{naming.ROLE_STUDY}'" if self.include_reference
                else f"tags.`{naming.TAG_ROLE}` = '{naming.ROLE_TRIAL}'")
        parts = [role, "attributes.status = 'FINISHED'", f"metrics.`{self.by}` >= -1e308"]
        if not self.include_stopped:
            parts.append(f"tags.`{naming.TAG_STOPPED_EARLY}` != 'true'")
        parts += [c.mlflow() for c in self.clauses]
        if self.raw_where:
            parts.append(self.raw_where)
        return " and ".join(parts)

    def order_by(self) -> str:
        return f"metrics.`{self.by}` {'ASC' if self.ascending else 'DESC'}"


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
    role_op = "!=" if q.include_reference else "="
    role_value = naming.ROLE_STUDY if q.include_reference else naming.ROLE_TRIAL
    sql = [
        "SELECT r.run_uuid FROM runs r",
        "JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = ?",
        "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' AND r.status = 'FINISHED'",
        "AND m.is_nan = 0 AND m.value >= -1e308",
        f"AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value {role_op} ?)",
    ]
    args: list[Any] = [q.by, exp[0], naming.TAG_ROLE, role_value]
    if not q.include_stopped:  # as MLflow reads a tag filter: the tag must be there
        sql.append("AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value != ?)")
        args += [naming.TAG_STOPPED_EARLY, "true"]
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
    sql.append(f"ORDER BY m.value {'ASC' if q.ascending else 'DESC'}, r.start_time DESC, r.run_uuid")
    sql.append("LIMIT ?")
    args.append(q.top)
    ids = [row[0] for row in db.execute(" ".join(sql), args)]
    runs = [_sqlite_run(db, run_id) for run_id in ids]
    parents = {r.data.tags.get(naming.TAG_PARENT_RUN) for r in runs} - {None}
    parent_tags = {p: _sqlite_map(db, "tags", p) for p in parents}
    return runs, parent_tags


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
    body = {"experiment_ids": [found["experiment"]["experiment_id"]], "filter": q.filter_string(),
            "order_by": [q.order_by()], "max_results": q.top}
    answer = _call(base, "POST", "runs/search", body, where=q.raw_where) or {}
    runs = [_rest_run(r) for r in answer.get("runs", [])]
    parents = {r.data.tags.get(naming.TAG_PARENT_RUN) for r in runs} - {None}
    parent_tags = {}
    for p in sorted(parents):
        got = _call(base, "GET", "runs/get", {"run_id": p})
        parent_tags[p] = {t["key"]: t["value"] for t in (got or {}).get("run", {}).get("data", {}).get("tags", [])}
    return runs, parent_tags


def _rest_run(r: dict):
    data = r.get("data", {})
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    metrics = {m["key"]: float(m["value"]) for m in data.get("metrics", [])}
    params = {p["key"]: p["value"] for p in data.get("params", [])}
    info = r.get("info", {})
    return _run_view(info.get("run_id") or info.get("run_uuid"),
                     info.get("run_name") or tags.get("mlflow.runName", ""), params, metrics, tags)


def _call(base: str, method: str, endpoint: str, payload: dict, where: str | None = None):
    """One REST call; None for RESOURCE_DOES_NOT_EXIST, ConfigError for a bad filter."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    data = None
    if method == "GET":
        url += "?" + "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in payload.items())
    else:
        data = json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=_auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 120))) as resp:
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

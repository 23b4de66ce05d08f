"""Result queries over MLflow: the best trials of a study (``moe-study best``).

The filter, the ordering and the limit are pushed into the tracking store, so a query costs
the same for 100 or 10,000 runs. ``study.results.fast_queries`` answers for sqlite stores and tracking
servers without importing MLflow (the import alone costs more than the query); any other store,
or a raw MLflow filter on sqlite, goes through ``MlflowClient.search_runs``. Both give the same
rows.

``--where`` takes either an MLflow filter fragment (anything using ``params.``, ``metrics.``,
``tags.`` or ``attributes.``), ANDed to the study's own filter, or a shorthand of
``key<op>value`` clauses joined by ``,`` or ``and``, where ``key`` is a trial-config key
(``router.method=lbl``; ``method`` and ``scope`` are short for ``router.method`` /
``router.scope``), compared as an MLflow param, or a metric name (``purity>0.3``), compared as a
number. Params are stored as ``str(value)`` of the typed config value, so the shorthand writes a
value the way the config's type prints it (``router.capacity_factor=1`` matches ``'1.0'``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from typing import Any, Iterable, get_origin

import yaml

from trainables.config import FIXED_VALUES, flat_field_types
from trainables.errors import ConfigError, brief, did_you_mean, name_problem
from study.results import fast_queries
from study import naming
from study.results.fast_queries import Clause, Query
from study.results.records import unknown_experiment
from study.spec import safe_load

FORMATS = ("table", "json", "csv")
_MLFLOW_PREFIX = re.compile(r"\b(params?|metrics?|tags?|attr|attributes?|run|datasets?)\.", re.I)
_CLAUSE = re.compile(r"^\s*(?P<key>[A-Za-z0-9_./-]+)\s*(?P<op>!=|>=|<=|==|=|>|<)\s*(?P<value>.*?)\s*$")
_SHORT_KEYS = {"method": "router.method", "scope": "router.scope"}
MAX_TOP = 50_000
"""MLflow's most runs of one ``search_runs`` page (``SEARCH_MAX_RESULTS_THRESHOLD``): a tracking
server refuses more, so every store kind is held to it."""


def best_runs(
    tracking_uri: str,
    experiment: str,
    top: int = 10,
    by: str = naming.GAP_PURITY,
    where: str | None = None,
    include_reference: bool = False,
    mode: str | None = None,
    include_stopped: bool = False,
    show_cost: bool = False,
) -> list[dict[str, Any]]:
    """The ``top`` finished trial runs of an experiment, best first by metric ``by``.

    Runs that did not log ``by`` are left out, and so are trials the scheduler stopped early
    unless ``include_stopped`` (their last metrics are from an earlier step). Each row holds
    ``run_id``, ``trial`` (run name), ``method``, ``scope``, the metrics of
    ``naming.SUMMARY_METRICS`` (and ``by``), and the study's searched params; with
    ``show_cost`` also what the run held (``cpu_h``, ``gpu_h``) and, when its study's spec has a
    price table, what that cost (``cost`` in ``currency``).
    """
    check_experiment_name(experiment)
    problem = naming.metric_problem(by)
    if problem:
        raise ConfigError(f"--by: {problem}")
    mode = mode or naming.metric_mode(by)
    if mode not in ("min", "max"):
        raise ConfigError(f"mode: expected min or max (got {mode!r})")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"--top: expected a positive integer (got {top!r})")
    if top > MAX_TOP:
        raise ConfigError(f"--top: at most {MAX_TOP:,}, MLflow's limit for one search (got {top:,})")
    clauses, raw_where = parse_where(where) if where else ([], None)
    query = Query(experiment, by, mode == "min", top, include_reference, clauses, raw_where, include_stopped)

    fast_queries.check_store(tracking_uri)  # a mistyped sqlite store: "no such store", none made
    fast = fast_queries.search(tracking_uri, query)
    if fast is not None:
        runs, parent_tags = fast
        search_keys = _search_keys(runs, parent_tags.get)
        rows = [_row(run, by, search_keys) for run in runs]
    else:
        runs, rows = _search_with_client(tracking_uri, query)
    if show_cost:
        _add_cost(tracking_uri, runs, rows)
    return rows


COST_FIELDS = ("cpu_h", "gpu_h", "cost", "currency")
"""The fields ``best --show-cost`` adds to each row."""


def _add_cost(tracking_uri: str, runs: list, rows: list[dict[str, Any]]) -> None:
    """Each row's CPU- and GPU-hours, and its money under the price table of its study's spec
    (the parent run's spec artifact; read through MLflow, which only this option imports)."""
    from mlflow import MlflowClient

    from study.results.cost import run_money
    from study.results.records import study_spec

    client = MlflowClient(tracking_uri)
    prices: dict[str, Any] = {}
    for run, row in zip(runs, rows):
        metrics = run.data.metrics
        for field, metric in (("cpu_h", naming.COST_CPU_S), ("gpu_h", naming.COST_GPU_S)):
            value = metrics.get(metric)
            row[field] = None if value is None or not math.isfinite(value) else value / 3600
        parent = run.data.tags.get(naming.TAG_PARENT_RUN)
        if parent and parent not in prices:
            spec = study_spec(client, parent)
            prices[parent] = spec.cost if spec is not None else None
        table = prices.get(parent)
        if table is not None and row["cpu_h"] is not None:
            row["cost"], _ = run_money(metrics, run.data.tags, table)
            row["currency"] = table.currency
        else:
            row["cost"] = row["currency"] = None


def _best_runs_with_client(tracking_uri: str, query: Query) -> list[dict[str, Any]]:
    """The same query through ``MlflowClient`` (any store MLflow supports; imports MLflow)."""
    return _search_with_client(tracking_uri, query)[1]


def _search_with_client(tracking_uri: str, query: Query) -> tuple[list, list[dict[str, Any]]]:
    """``_best_runs_with_client``'s runs and their rows."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(query.experiment)
    if exp is None:
        raise ConfigError(unknown_experiment(client, query.experiment, tracking_uri))
    where = query.raw_where or " and ".join(c.mlflow() for c in query.clauses)

    def search_one(one: Query) -> list:
        ids = ([exp.experiment_id] if one.config_hash is None
               else [e.experiment_id for e in client.search_experiments(max_results=1000)])
        try:
            return list(client.search_runs(ids, filter_string=one.filter_string(),
                                           order_by=[one.order_by()], max_results=one.top))
        except MlflowException as err:
            if err.error_code == "INVALID_PARAMETER_VALUE" and where:
                raise ConfigError(f"--where {where!r}: {err.message}") from None
            raise

    def reference_keys() -> list[str]:
        parents = client.search_runs([exp.experiment_id], filter_string=query.study_runs_filter(),
                                     max_results=1000)
        return [p.data.tags[naming.TAG_REFERENCE_KEY] for p in parents
                if naming.TAG_REFERENCE_KEY in p.data.tags]

    runs = fast_queries.search_with_references(query, search_one, reference_keys)

    def parent_tags(run_id: str) -> dict[str, str] | None:
        try:
            return client.get_run(run_id).data.tags
        except Exception:  # a deleted parent run: fall back to what varies
            return None

    search_keys = _search_keys(runs, parent_tags)
    return runs, [_row(run, query.by, search_keys) for run in runs]


def check_experiment_name(experiment: str, what: str = "EXPERIMENT") -> None:
    """An experiment name a study can have (``trainables.errors.name_problem``): the same rule as
    the study names and ``tracking.experiment`` of a spec."""
    problem = name_problem(experiment)
    if problem:
        raise ConfigError(f"{what} {brief(experiment)}: the experiment name {problem}")


def translate_where(where: str) -> str:
    """An MLflow filter fragment from ``--where`` (see the module docstring)."""
    clauses, raw = parse_where(where)
    return raw if raw is not None else " and ".join(c.mlflow() for c in clauses)


def parse_where(where: str) -> tuple[list[Clause], str | None]:
    """``--where`` as shorthand clauses, or (``[]``, the text) when it is an MLflow filter."""
    if _MLFLOW_PREFIX.search(where):
        return [], where
    clauses = [c for c in _split_clauses(where) if c.strip()]
    if not clauses:
        raise ConfigError(f"--where {where!r}: empty filter")
    return [_translate_clause(c, where) for c in clauses], None


def _split_clauses(where: str) -> list[str]:
    """``where`` cut at ``,`` and `` and `` outside brackets and quotes, so a list value
    (``data.domains=[english, c]``) stays one clause."""
    parts, depth, quote, start = [], 0, "", 0
    i = 0
    while i < len(where):
        ch = where[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"" and where[:i].rstrip()[-1:] in ("", *"=<>!,[{("):
            quote = ch  # a quoted value; an apostrophe inside a word opens nothing
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(0, depth - 1)
        elif depth == 0:
            if ch == ",":
                parts.append(where[start:i])
                start = i + 1
            else:
                m = re.compile(r"\s+and\s+", re.I).match(where, i)
                if m and i > start:
                    parts.append(where[start:i])
                    start = i = m.end()
                    continue
        i += 1
    parts.append(where[start:])
    return parts


def _translate_clause(clause: str, where: str) -> Clause:
    m = _CLAUSE.match(clause)
    if not m:
        raise ConfigError(
            f"--where {where!r}: cannot read {clause.strip()!r}; expected key=value "
            "(e.g. router.method=lbl, purity>0.3) or an MLflow filter such as "
            "params.`router.method` = 'lbl'"
        )
    key, op, text = m["key"], m["op"], m["value"].strip("'\"")
    op = "=" if op == "==" else op
    key = _SHORT_KEYS.get(key, key)
    types = flat_field_types()
    if key in types:
        if op not in ("=", "!="):
            raise ConfigError(f"--where {where!r}: params are text, compare {key} with = or != only")
        value = _param_text(text, types[key])
        allowed = FIXED_VALUES.get(key)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"--where {where!r}: {key} has no value {brief(value)}, expected one of "
                              f"{list(allowed)}{did_you_mean(value, allowed)}")
        try:
            naming.filter_literal(value)
        except ValueError as err:
            raise ConfigError(f"--where {where!r}: {err}") from None
        return Clause("param", key, op, value)
    if not naming.metric_problem(key):
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"--where {where!r}: metric {key} needs a number (got {text!r})") from None
        return Clause("metric", key, op, number)
    hint = did_you_mean(key, [*types, *naming.METRIC_MODES, *_SHORT_KEYS])
    raise ConfigError(f"--where {where!r}: {key!r} is neither a trial-config key nor a metric{hint}")


def _param_text(text: str, typ: Any) -> str:
    """How MLflow stored the param: ``str()`` of the value in the config's own type."""
    try:
        value = safe_load(text) if text else text
    except yaml.YAMLError:
        return text
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(float(value))
    if typ is int and isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))
    if typ is bool and isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, dict)) and get_origin(typ) is type(value):
        return str(value)  # list and mapping params are stored as their Python repr
    return text



def _search_keys(runs: list, parent_tags) -> list[str]:
    """The studies' searched keys, from the tag on each parent run (``parent_tags(run id)``:
    its tags, None when it is gone)."""
    keys: list[str] = []
    parents = {r.data.tags.get(naming.TAG_PARENT_RUN) for r in runs} - {None}
    for parent in sorted(parents):
        tag = (parent_tags(parent) or {}).get(naming.TAG_SEARCH_KEYS, "")
        keys += [k for k in tag.split(",") if k and k not in keys]
    if not keys:  # no tag: show the params that differ between the rows
        all_keys = sorted({k for r in runs for k in r.data.params})
        keys = [k for k in all_keys if len({r.data.params.get(k) for r in runs}) > 1]
    return [k for k in keys if k not in (naming.TAG_METHOD, naming.TAG_SCOPE, SEED_KEY)]


SEED_KEY = "train.seed"
"""Every row's ``seed`` column (so not one of the searched-param columns when it is searched)."""


def _row(run: Any, by: str, search_keys: list[str]) -> dict[str, Any]:
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "trial": run.info.run_name,
        "method": params.get(naming.TAG_METHOD, tags.get(naming.TAG_METHOD)),
        "scope": params.get(naming.TAG_SCOPE, tags.get(naming.TAG_SCOPE)),
        "seed": params.get(SEED_KEY),
    }
    metrics = fast_queries.reference_metrics(run)  # a reference run's gaps are 0
    for name in ([by] if by not in naming.SUMMARY_METRICS else []) + list(naming.SUMMARY_METRICS):
        row[name] = metrics.get(name)
    for key in search_keys:
        row[key] = params.get(key)
    return row


# -- output formats ---------------------------------------------------------------------------
def format_rows(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """Rows as an aligned text table, a JSON list or CSV (header included)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}, expected one of {list(FORMATS)}")
    columns = _columns(rows)
    if fmt == "json":
        return json.dumps([{k: _json_value(r.get(k)) for k in columns} for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
        return out.getvalue()
    if not rows:
        return "(no finished runs match)"
    return _table(columns, [[_cell(r.get(k)) for k in columns] for r in rows])


def _table(header: list[str], body: list[list[str]]) -> str:
    cells = [header, *body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


TABLE_WIDTH = 120
"""Most characters a line of the ``best`` table takes (json and csv keep every field)."""
_TABLE_METRICS = (naming.VAL_LOSS, naming.lift_of(naming.PURITY), naming.lift_of(naming.CMI), naming.PURITY,
                  naming.CMI, naming.GAP_PURITY, naming.GAP_LOSS, naming.LOAD_ENTROPY, naming.MAX_VIO,
                  naming.REFERENCE_AGREEMENT, naming.NMI, naming.DEAD_EXPERT_FRACTION, naming.DROPPED_FRACTION)
"""The metric columns of the ``best`` table, most wanted first: as many as fit are shown."""
_SHORT = {naming.REFERENCE_AGREEMENT: "ref_agree", naming.DEAD_EXPERT_FRACTION: "dead",
          naming.DROPPED_FRACTION: "dropped", naming.LOAD_ENTROPY: "load_ent"}
_MAX_TRIAL = 28


def format_best(rows: list[dict[str, Any]], by: str, fmt: str = "table", width: int = TABLE_WIDTH) -> str:
    """``best_runs`` rows as ``moe-study best`` prints them: json and csv as ``format_rows``
    (every field); the table ranked for a person, at most ``width`` characters a line: ``#``,
    the ``by`` metric, trial, method, scope, seed, then the searched params and the summary
    metrics (most wanted first) that fit, and the run id's first 8 characters last. A last line
    names the fields left out."""
    if fmt != "table" or not rows:
        return format_rows(rows, fmt)

    def cells(key: str) -> list[str]:
        return [_short_cell(r.get(key)) for r in rows]

    trials = [_cell(r.get("trial")) for r in rows]
    trials = [t if len(t) <= _MAX_TRIAL else t[:_MAX_TRIAL - 1] + "~" for t in trials]
    head = [("#", [str(i) for i in range(1, len(rows) + 1)]), (by, cells(by)),
            ("trial", trials), ("method", cells("method")), ("scope", cells("scope")),
            ("seed", cells("seed")), *_cost_columns(rows)]
    tail = [("run", [str(r.get("run_id") or "-")[:8] for r in rows])]
    fixed = {"run_id", "trial", "method", "scope", "seed", by, *COST_FIELDS}
    params = [k for k in _columns(rows) if k not in fixed and k not in naming.SUMMARY_METRICS]
    metrics = [m for m in _TABLE_METRICS if m != by and any(r.get(m) is not None for r in rows)]
    headers = _param_headers(params)
    candidates = [*metrics[:3], *params, *metrics[3:]]  # the order of preference

    def line_width(columns: list[tuple[str, list[str]]]) -> int:
        return sum(max(len(h), *(len(v) for v in vals)) for h, vals in columns) + 2 * (len(columns) - 1)

    chosen: set[str] = set()
    for key in candidates:
        trying = [*head, *[(headers.get(k, _SHORT.get(k, k)), cells(k)) for k in candidates
                           if k in chosen or k == key], *tail]
        if line_width(trying) <= width:
            chosen.add(key)
    body = [*head,
            *[(headers[k], cells(k)) for k in params if k in chosen],
            *[(_SHORT.get(m, m), cells(m)) for m in metrics if m in chosen],
            *tail]
    text = _table([h for h, _ in body], [list(row) for row in zip(*(v for _, v in body))])
    left_out = [k for k in candidates if k not in chosen]
    if left_out:
        note = f"({len(left_out)} more column{'s' if len(left_out) > 1 else ''} in --format json or csv"
        text += "\n" + textwrap.fill(f"{note}: {', '.join(left_out)})", width, break_on_hyphens=False)
    return text


def _cost_columns(rows: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """``--show-cost`` columns: CPU-h, GPU-h (when any run held a GPU), and the money, headed by
    its currency (each cell carries its own where the studies priced in several)."""
    if not any("cpu_h" in r for r in rows):
        return []
    columns = [("CPU-h", [_cell(r.get("cpu_h")) for r in rows])]
    if any(r.get("gpu_h") for r in rows):
        columns.append(("GPU-h", [_cell(r.get("gpu_h")) for r in rows]))
    currencies = {r["currency"] for r in rows if r.get("currency")}
    if currencies:
        one = len(currencies) == 1
        columns.append((next(iter(currencies)) if one else "cost", [
            "-" if r.get("cost") is None else f"{r['cost']:.4g}" + ("" if one else f" {r['currency']}")
            for r in rows]))
    return columns


def _short_cell(v: Any) -> str:
    """A table cell; a param that reads as a number (params are text) at 4 significant digits."""
    if isinstance(v, str):
        try:
            number = float(v)
        except ValueError:
            return v
        return f"{number:.4g}" if math.isfinite(number) and len(v) > 6 else v
    return _cell(v)


def _param_headers(keys: list[str]) -> dict[str, str]:
    """A searched param's column header: the last part of its key where that is unique
    (``router.lbl_coef`` -> ``lbl_coef``)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (n if last.count(n) == 1 else k) for k, n in zip(keys, last)}


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return columns or ["run_id", "trial", "method", "scope"]


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

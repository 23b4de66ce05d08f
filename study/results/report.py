"""``moe-study report EXPERIMENT``: a Markdown report with figures of one study's MLflow runs.

``write_report`` reads the experiment through ``MlflowClient`` (``report_data``), computes the
tables and findings (``report_stats``, ``report_findings``), draws the figures (``report_figures`` with ``plots``) and
writes ``report.md`` plus PNGs into one folder:

1. header: studies, trial counts (finished / stopped early / failed), the reference run;
2. leaderboard: the best full-length trials by ``gap_purity`` under the reference row;
3. method x scope table: mean and 95 % t-interval over seeds per (method, scope, capacity,
   domains per micro-batch), with what training did to the step-0 router (lift);
4. per layer: the specialisation metrics of each MoE layer next to their mean; then what each
   searched setting does to the objective: hyperparameter importance (fANOVA) for a searched
   study, main effects for a grid (``study.results.importance``);
5. figures: Pareto plot of the gaps, routing heatmaps of the reference, best and worst trial
   (one figure per MoE layer), purity learning curves, mean purity bars;
6. findings computed from the numbers (paired over seeds, Holm-adjusted), each with a verdict.

Only trials that ran all of ``train.steps`` are ranked and averaged by default: a trial the
scheduler stopped early was measured at an earlier step and would compare unfairly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from trainables.errors import ConfigError

from study import naming
from study.results.compare import compare_markdown, compare_metrics
from study.results.fast_queries import check_store
from study.results.queries import check_experiment_name
from study.results.records import RunRecord, StudyRuns, distinct_configs, load_study_runs
from study.results.figures import (
    BARS_FILE, CURVES_FILE, EXPERT_CHOICE, FIGURE_FILES, HEATMAPS_FILE, PARETO_FILE, WINDOW_FILE,
    bars_figure, curves_figure, heatmap_figures, pareto_figure, window_figure,
)
from study.results.findings import INTERACTION_SHOWN, Finding, finding_metrics, findings
from study.results.importance import importance_markdown
from study.results.stats import Estimate, capacity_label, cell_estimates, group_cells, layer_count, varying_params
from study.results.verdict import ranked_cells, verdict_markdown
from trainables.metric_names import definition

REPORT_FILE = "report.md"

LEADERBOARD_TOP = 20
HISTORY_CAP = 200
"""At most this many runs get a metric-history call for the learning curves."""
PURITY_LIFT, CMI_LIFT = naming.lift_of(naming.PURITY), naming.lift_of(naming.CMI)
LEADERBOARD_METRICS = (
    naming.PURITY, PURITY_LIFT, naming.CMI, CMI_LIFT, naming.REFERENCE_AGREEMENT,
    naming.LOAD_ENTROPY, naming.MAX_VIO, naming.DEAD_EXPERT_FRACTION, naming.DROPPED_FRACTION,
    naming.VAL_LOSS, naming.GAP_LOSS, naming.GAP_PURITY,
)
TABLE_METRICS = (
    naming.PURITY, PURITY_LIFT, naming.CMI, CMI_LIFT, naming.lift_of(naming.SHARED_PURITY),
    naming.EXCESS_PURITY, naming.REFERENCE_AGREEMENT, naming.LOAD_ENTROPY, naming.MAX_VIO,
    naming.DEAD_EXPERT_FRACTION, naming.GAP_LOSS,
)
LAYER_TABLE_METRICS = (naming.PURITY, PURITY_LIFT, naming.CMI, CMI_LIFT, naming.SHARED_PURITY,
                       naming.EXCESS_PURITY)
REFERENCE_METRICS = (
    naming.VAL_LOSS, naming.PURITY, naming.NMI, naming.REFERENCE_AGREEMENT, naming.CMI,
    naming.SHARED_PURITY, naming.EXCESS_PURITY, naming.LOAD_ENTROPY, naming.MAX_VIO,
    naming.DEAD_EXPERT_FRACTION,
)
ERASED = "balancing erased structure"
LEARNED = "specialised"
LOSS_METRICS = (naming.VAL_LOSS, naming.GAP_LOSS)
EC_MARK = "†"
EC_NOTE = (f"{EC_MARK} `ec` (expert choice) picks tokens per expert across the whole sequence, "
           "which leaks future tokens in a causal LM: its `val_loss` and `gap_loss` are not "
           "comparable with the other methods (its routing metrics are).")


def default_out_dir(experiment: str) -> Path:
    return Path("report-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment))


def write_report(
    experiment: str,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    *,
    top: int = LEADERBOARD_TOP,
    include_stopped_early: bool = False,
    history_cap: int = HISTORY_CAP,
    compare: Sequence[str] = (),
) -> Path:
    """Write ``report.md`` and its PNG figures into ``out_dir``; return the report's path.

    Raises ``ConfigError`` when the experiment does not exist or has no finished trial run.
    """
    from mlflow import MlflowClient

    if not isinstance(top, int) or top < 1:
        raise ConfigError(f"top: expected a positive integer (got {top!r})")
    check_experiment_name(experiment)
    for name in compare:
        check_experiment_name(name, "--compare")
    uri = tracking_uri or naming.default_tracking_uri()
    check_store(uri)  # a mistyped sqlite store: "no such store", none made
    client = MlflowClient(uri)
    runs = load_study_runs(client, experiment, uri)
    others = [load_study_runs(client, name, uri) for name in compare]  # bad names fail before writing
    out = Path(out_dir) if out_dir else default_out_dir(experiment)
    out.mkdir(parents=True, exist_ok=True)
    # a figure this run cannot draw must not survive from an earlier report in the same folder
    for old in [*(out / name for name in FIGURE_FILES), *out.glob(HEATMAPS_FILE.format(layer="*"))]:
        old.unlink(missing_ok=True)

    ranked, ranked_note = _ranked_trials(runs, include_stopped_early)
    by, ascending = _ranking_metric(ranked, runs.objective)
    ranked.sort(key=lambda r: _sort_value(r, by, ascending))
    # statistics count each distinct config once (a repeated config with the same seed is the
    # same measurement); the leaderboard and the Pareto plot still show every run
    independent, repeats = distinct_configs(ranked)
    figures = {
        PARETO_FILE: pareto_figure(ranked, out / PARETO_FILE),
        **heatmap_figures(client, runs.reference, ranked, by, out),
        CURVES_FILE: curves_figure(client, independent, runs.reference, history_cap, out / CURVES_FILE),
        BARS_FILE: bars_figure(independent, runs.reference, out / BARS_FILE, by),
        WINDOW_FILE: window_figure(independent, out / WINDOW_FILE),
    }
    judged = finding_metrics(independent, runs.objective)
    items = findings(independent, runs.reference, judged, margin=runs.equivalence_margin)
    best_cell = ranked_cells(independent, by, ascending)[:1]
    histories = _histories(client, best_cell[0][2] if best_cell else [], by)
    sections = [
        header_markdown(runs, uri),
        verdict_markdown(independent, runs.reference, items, by, ascending, histories,
                         paid=[*runs.trials, *([] if runs.reference_source else runs.references)],
                         prices=runs.spec.cost if runs.spec is not None else None),
        leaderboard_markdown(ranked, runs.reference, by, ascending, top, ranked_note,
                             constraints=runs.constraints, cpus_per_trial=runs.cpus_per_trial),
        cell_table_markdown(independent, repeats, objective=by),
        per_layer_markdown(independent),
        importance_markdown(runs, independent, by),
        figures_markdown(figures),
        findings_markdown(items, runs.equivalence_margin, judged),
        *(compare_markdown(runs, other, metric) for other in others for metric in compare_metrics(runs)),
        failures_markdown(runs.trials),
        metrics_markdown([by, *LEADERBOARD_METRICS, *TABLE_METRICS, *LAYER_TABLE_METRICS,
                          *judged]),
    ]
    path = out / REPORT_FILE
    path.write_text("\n\n".join(s for s in sections if s).rstrip() + "\n")
    return path


def _histories(client, runs: Sequence[RunRecord], metric: str) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of ``metric`` per run: the learning curve the verdict reads."""
    out = {}
    for run in runs:
        try:
            out[run.run_id] = [(m.step, m.value) for m in client.get_metric_history(run.run_id, metric)]
        except Exception:  # noqa: BLE001 - a curve the store cannot give: the verdict goes without
            out[run.run_id] = []
    return out


# -- which trials are compared ----------------------------------------------------------------
def _ranked_trials(runs: StudyRuns, include_stopped_early: bool) -> tuple[list[RunRecord], str]:
    full = runs.full_length_trials
    if include_stopped_early:
        return list(runs.finished_trials), "Trials stopped early by the scheduler are included."
    if not full:
        return list(runs.finished_trials), (
            "No trial ran the full `train.steps`: the scheduler stopped all of them, so the "
            "stopped trials are shown, each measured at the step it stopped.")
    skipped = len(runs.finished_trials) - len(full)
    return list(full), (
        "Only trials that ran the full `train.steps` are ranked and averaged"
        + (f"; left out: {skipped} stopped early by the scheduler." if skipped else "."))


def _ranking_metric(ranked: Sequence[RunRecord], objective: str = "") -> tuple[str, bool]:
    """The study's objective in its direction when the trials report it; else ``gap_purity``
    ascending, or ``purity`` descending when no trial has a gap (no reference)."""
    if objective and any(math.isfinite(r.metric(objective)) for r in ranked):
        return objective, naming.metric_mode(objective) == "min"
    if any(math.isfinite(r.metric(naming.GAP_PURITY)) for r in ranked):
        return naming.GAP_PURITY, True
    return naming.PURITY, False


def _sort_value(run: RunRecord, by: str, ascending: bool) -> tuple:
    v = run.metric(by)
    return (not math.isfinite(v), v if ascending else -v, run.name)


# -- Markdown sections ------------------------------------------------------------------------
def _num(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _estimate(e: Estimate | None, n_cell: int) -> str:
    if e is None:
        return "–"
    if e.half_width is None:
        return f"{e.mean:.3f} (n=1)"
    suffix = f" (n={e.n})" if e.n != n_cell else ""
    return f"{e.mean:.3f} ± {e.half_width:.3f}{suffix}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def header_markdown(runs: StudyRuns, uri: str) -> str:
    trials = runs.trials
    full = sum(t.full_length for t in trials)
    early = sum(t.finished and t.stopped_early for t in trials)
    failed = sum(t.status == "FAILED" for t in trials)
    other = len(trials) - full - early - failed
    study_names = sorted({s.tags.get(naming.TAG_STUDY, s.name) for s in runs.studies})
    lines = [
        f"# Routing study report: {runs.experiment}",
        "",
        f"- MLflow experiment `{runs.experiment}` (id {runs.experiment_id}) in `{_without_credentials(uri)}`",
        f"- studies (parent runs): {len(runs.studies)}"
        + (f" ({', '.join(study_names)})" if study_names else ""),
        f"- trials: {len(trials)}: {full} finished the full `train.steps`, {early} stopped early "
        f"by the scheduler, {failed} failed"
        + (f", {other} unfinished (running or killed)" if other else ""),
    ]
    lines += mix_hash_lines(runs) + composition_lines(runs) + code_lines(runs)
    ref = runs.reference
    if ref is None:
        lines.append("- reference run: none found, so there are no gaps to the upper bound")
        return "\n".join(lines)
    source = f", {runs.reference_source}" if runs.reference_source else ""
    lines += [
        f"- reference run (the upper bound: each domain routed to its own experts): "
        f"`{ref.name}` ({ref.run_id}{source})",
        "",
        _table(list(REFERENCE_METRICS), [[_num(ref.metric(m)) for m in REFERENCE_METRICS]]),
    ]
    if len(runs.references) > 1:
        lines += ["", f"{len(runs.references)} finished reference runs; the newest is shown."]
    return "\n".join(lines)


def composition_lines(runs: StudyRuns) -> list[str]:
    """Which domains the trials trained on and how their optimizer steps were composed."""
    trials = runs.finished_trials
    domains = sorted({t.params.get("data.domains", "") for t in trials} - {""})
    steps = sorted({t.params.get("data.step_composition", "independent (not logged)") for t in trials})
    lines = [f"- step composition (`data.step_composition`): {', '.join(f'`{s}`' for s in steps)}"]
    if domains:
        lines.insert(0, f"- domains (`data.domains`): {'; '.join(domains)}")
    return lines


def code_lines(runs: StudyRuns) -> list[str]:
    """Which code the study ran on, from its parent runs' provenance tags."""
    versions = sorted({(s.tags.get(naming.TAG_CODE_VERSION), s.tags.get(naming.TAG_GIT_COMMIT),
                        s.tags.get(naming.TAG_TORCH_VERSION)) for s in runs.studies} - {(None, None, None)},
                      key=str)
    if not versions:
        return ["- code: not recorded (studies run before provenance tags were)"]
    text = "; ".join(f"moe-routing-study {v or '?'} (git commit `{c or '?'}`), torch {t or '?'}"
                     for v, c, t in versions)
    return [f"- code: {text}" + (" (**the studies of this experiment ran on different code**)"
                                 if len(versions) > 1 else "")]


def mix_hash_lines(runs: StudyRuns) -> list[str]:
    """Which text the study trained on, and a warning when its runs did not all train on the same."""
    hashes = runs.mix_hashes
    if not hashes:
        return ["- data mix: not recorded (runs logged before mix hashes were)"]
    if len(hashes) == 1:
        return [f"- data mix: content hash `{hashes[0]}` (`moe-study data describe` prints it "
                "for a config)"]
    return [f"- **warning: the runs of this study trained on {len(hashes)} different data mixes** "
            f"({', '.join(f'`{h}`' for h in hashes)}): their numbers, and the gaps to the reference, "
            "mix the settings with the text"]


def _without_credentials(uri: str) -> str:
    """``http://user:secret@host`` -> ``http://host``: a report gets shared."""
    return re.sub(r"//[^/@]*@", "//", uri)


def leaderboard_markdown(ranked: Sequence[RunRecord], reference: RunRecord | None, by: str,
                         ascending: bool, top: int, note: str, *, constraints: dict | None = None,
                         cpus_per_trial: float | None = None) -> str:
    metrics = [m for m in dict.fromkeys([by, *LEADERBOARD_METRICS])]
    header = ["#", "run", "method", "scope", "capacity", "domains/micro-batch", "seed", *metrics,
              "train s", "CPU s"] + (["constraints"] if constraints else [])
    rows = []
    if reference is not None:
        rows.append(["ref", f"**{reference.name} (reference, upper bound)**", "reference", "–",
                     "–", reference.domains_per_micro_batch, reference.seed,
                     *[_num(_reference_value(reference, m)) for m in metrics],
                     *_cost_cells(reference, cpus_per_trial)] + (["–"] if constraints else []))
    for i, r in enumerate(ranked[:top], start=1):
        rows.append([str(i), r.name, r.method, r.scope, capacity_label(r.capacity),
                     r.domains_per_micro_batch, r.seed, *[_metric_cell(r, m) for m in metrics],
                     *_cost_cells(r, cpus_per_trial)]
                    + ([constraint_cell(r, constraints)] if constraints else []))
    header, rows, same = drop_constant_columns(header, rows, SETTING_COLUMNS, skip_rows=1 if reference else 0)
    header, rows = drop_empty_columns(header, rows, metrics, skip_rows=1 if reference else 0)
    order = "ascending" if ascending else "descending"
    why = {naming.GAP_PURITY: "", naming.PURITY: " (no trial has `gap_purity`: no reference run)"}.get(
        by, " (the study's objective)")
    parts = [
        "## Leaderboard",
        "",
        f"Top {min(top, len(ranked))} of {len(ranked)} trials by `{by}` ({order}){why}. {note} "
        "The reference row on top is the reference router: each domain sent to its own experts, "
        "the upper bound of purity; it is not a trial and is not ranked. *train s*: seconds the "
        "trial trained; *CPU s*: its wall seconds times the CPUs it held"
        + (f"; *constraints*: the spec's objective constraints "
           f"({', '.join(f'`{m}` {_bound_text(b)}' for m, b in constraints.items())}) at the last step"
           if constraints else "") + ".",
        "",
        _table(header, rows),
    ]
    if same:
        parts += ["", "The same in every trial: " + "; ".join(same) + "."]
    if any(r.method == EXPERT_CHOICE for r in ranked[:top]):
        parts += ["", EC_NOTE]
    return "\n".join(parts)


SETTING_COLUMNS = ("capacity", "domains/micro-batch", "seed", "constraints")
"""Columns left out of a table when every trial has the same value (named under the table)."""


def drop_constant_columns(header: Sequence[str], rows: Sequence[Sequence[str]], droppable: Sequence[str],
                          skip_rows: int = 0) -> tuple[list[str], list[list[str]], list[str]]:
    """Leave out the ``droppable`` columns whose value is the same in every row (from
    ``skip_rows`` on: the reference row does not count); return what was left out as
    ``column value`` texts."""
    body = rows[skip_rows:]
    drop = [i for i, name in enumerate(header)
            if name in droppable and body and len({row[i] for row in body}) == 1]
    same = [f"{header[i]} {body[0][i]}" for i in drop]
    keep = [i for i in range(len(header)) if i not in drop]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows], same


def drop_empty_columns(header: Sequence[str], rows: Sequence[Sequence[str]], droppable: Sequence[str],
                       skip_rows: int = 0) -> tuple[list[str], list[list[str]]]:
    """Leave out the ``droppable`` columns no trial row has a value in (metrics the runs did not
    log, e.g. a study from before the metric existed)."""
    body = rows[skip_rows:]
    keep = [i for i, name in enumerate(header)
            if name not in droppable or not body or any(row[i] != "–" for row in body)]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _cost_cells(run: RunRecord, cpus_per_trial: float | None) -> list[str]:
    train_s, elapsed = run.metric(naming.TRAIN_S), run.metric(naming.ELAPSED_S)
    cpu_s = elapsed * cpus_per_trial if cpus_per_trial and math.isfinite(elapsed) else math.nan
    return [_whole(train_s), _whole(cpu_s)]


def _whole(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.0f}"


def _bound_text(bound: dict) -> str:
    return " and ".join(f">= {bound['min']:g}" if k == "min" else f"<= {bound['max']:g}"
                        for k in bound if k in ("min", "max"))


def constraint_cell(run: RunRecord, constraints: dict) -> str:
    """``met``, or which constraint the run's final metrics miss and by how much."""
    missed = []
    for metric, bound in constraints.items():
        value = run.metric(metric)
        if not math.isfinite(value):
            continue
        if "min" in bound and value < bound["min"]:
            missed.append(f"`{metric}` {value:.3f} < {bound['min']:g}")
        if "max" in bound and value > bound["max"]:
            missed.append(f"`{metric}` {value:.3f} > {bound['max']:g}")
    return "missed: " + ", ".join(missed) if missed else "met"


def _reference_value(reference: RunRecord, metric: str) -> float:
    """The reference's own metric; its gaps are 0 by definition (it does not log them)."""
    value = reference.metric(metric)
    base = {naming.GAP_LOSS: naming.VAL_LOSS, naming.GAP_PURITY: naming.PURITY}.get(metric)
    if base and not math.isfinite(value) and math.isfinite(reference.metric(base)):
        return 0.0
    return value


def _metric_cell(run: RunRecord, metric: str) -> str:
    text = _num(run.metric(metric))
    if run.method == EXPERT_CHOICE and metric in LOSS_METRICS and text != "–":
        return text + EC_MARK
    return text


def learned_metric(objective: str) -> str:
    """The lift whose interval above 0 makes a cell *specialised*: the study's objective when it
    is a lift (``*_lift`` or ``*_lift/layerN``), which the Verdict judges the best cell by, so
    the two cannot disagree; else ``cmi_lift``, the mean over layers."""
    if objective and naming.base_metric(objective).endswith(naming.LIFT_SUFFIX):
        return objective
    return CMI_LIFT


def _learned_why(learned: str) -> str:
    if naming.base_metric(learned).startswith(naming.CMI):
        return "routing learned domain information the current byte does not give"
    return f"training added to the untrained router's `{learned.replace(naming.LIFT_SUFFIX, '')}`"


def cell_table_markdown(ranked: Sequence[RunRecord], repeats: dict[str, str] | None = None,
                        objective: str = "") -> str:
    """``objective``: the metric the report ranks by (the study's objective when its trials
    report it); a lift objective decides *training did* (``learned_metric``)."""
    cells = group_cells(ranked)
    learned = learned_metric(objective)
    # the label's own interval gets a column (a per-layer objective is not among TABLE_METRICS)
    metrics = list(dict.fromkeys([*TABLE_METRICS, learned]))
    header = ["method", "scope", "capacity", "domains/micro-batch", "n", "training did", *metrics]
    rows, pooled = [], []
    for key, members in cells.items():
        estimates = cell_estimates(members, metrics)
        ec = key.method == EXPERT_CHOICE
        rows.append([
            key.method + (f" {EC_MARK}" if ec else ""), key.scope, capacity_label(key.capacity),
            key.domains_per_micro_batch, str(len(members)),
            lift_verdict(estimates[PURITY_LIFT], estimates[learned]),
            *[_estimate(estimates[m], len(members)) + (EC_MARK if ec and m in LOSS_METRICS
                                                       and estimates[m] is not None else "")
              for m in metrics],
        ])
        varying = varying_params(members, ignore=("train.seed",))
        if varying:
            pooled.append(f"{key.method} / {key.scope}: {', '.join(f'`{k}`' for k in varying)}")
    parts = [
        "## Method x scope",
        "",
        "Mean ± half-width of the 95% confidence interval over the runs of each cell (Student's "
        "t with n-1 degrees of freedom); `n=1` means a single run and no interval. Full-length "
        "trials only (as in the leaderboard). `_lift` is the final value minus the same trial's "
        "value before its first update (same seed, same evaluation set): what training added. "
        f"*training did*: **{ERASED}** when the interval of `{PURITY_LIFT}` lies below 0 (the "
        f"step-0 router was purer), **{LEARNED}** when the interval of `{learned}` lies above 0 "
        f"({_learned_why(learned)}), *not shown* "
        "otherwise. Raw `purity` includes what the byte alone gives away (an untrained router "
        "already separates scripts); `cmi` does not.",
        "",
        _table(header, rows),
        "",
        _training_did_note(learned, objective),
    ]
    if any(k.method == EXPERT_CHOICE for k in cells):
        parts += ["", EC_NOTE]
    if repeats:
        same = ", ".join(f"{name} (= {kept})" for name, kept in repeats.items())
        parts += ["", f"{len(repeats)} run(s) repeat another run's exact config, seed included, "
                      f"and are counted once: {same}."]
    if pooled:
        parts += ["", "Cells that pool more than seeds (these params differ between their runs, "
                      "so the interval covers them too): " + "; ".join(pooled) + "."]
    return "\n".join(parts)


def _training_did_note(learned: str, objective: str) -> str:
    """The line under the table naming the metrics *training did* read."""
    read = " and ".join(f"`{m}`" for m in dict.fromkeys([PURITY_LIFT, learned]))
    why = (" (the study's objective, which the Verdict judges too)" if learned == objective
           else " (means over layers)")
    return f"*training did* read {read}{why}."


def lift_verdict(purity_lift: Estimate | None, learned_lift: Estimate | None) -> str:
    """What training did to the step-0 router, from the cell's lift intervals: ``purity_lift``
    below 0 erased structure, ``learned_lift`` (``learned_metric``) above 0 specialised."""
    parts = []
    if purity_lift is not None and purity_lift.half_width is not None and purity_lift.high < 0:
        parts.append(ERASED)
    if learned_lift is not None and learned_lift.half_width is not None and learned_lift.low > 0:
        parts.append(LEARNED)
    if not parts:
        known = [e for e in (purity_lift, learned_lift) if e is not None]
        if not known:
            return "–"
        return "not shown (n=1)" if all(e.half_width is None for e in known) else "not shown"
    return "; ".join(parts)


def per_layer_markdown(ranked: Sequence[RunRecord]) -> str:
    """Per-layer means over each cell's seeds: layer 0's router sees mostly the current byte,
    so the mean over layers can hide what the last layer learned."""
    n_layers = layer_count(ranked)
    if n_layers == 0:
        return ""
    metrics = [m for m in LAYER_TABLE_METRICS
               if any(math.isfinite(r.metric(naming.per_layer(m, 0))) for r in ranked)]
    header = ["method", "scope", "capacity", "domains/micro-batch", "layer", *metrics]
    rows = []
    for key, members in group_cells(ranked).items():
        for layer in [*range(n_layers), None]:
            names = [m if layer is None else naming.per_layer(m, layer) for m in metrics]
            estimates = cell_estimates(members, names)
            rows.append([key.method, key.scope, capacity_label(key.capacity), key.domains_per_micro_batch,
                         "mean" if layer is None else str(layer),
                         *[_estimate(estimates[n], len(members)) for n in names]])
    return "\n".join([
        "## Per layer", "",
        "The specialisation metrics of each MoE layer (mean ± 95% interval over the cell's runs) "
        "and their mean over layers.", "", _table(header, rows)])


def figures_markdown(figures: dict[str, tuple[str, str]]) -> str:
    """``figures`` maps file name -> (caption, '') when drawn, ('', why not) when not, and
    ('', '') when the study is not of the kind the figure is for (left out silently)."""
    parts = ["## Figures"]
    for name, (caption, missing) in figures.items():
        if not (caption or missing):
            continue
        parts.append("")
        if caption:
            parts += [f"![{name}]({name})", "", caption]
        else:
            parts.append(f"_{name} not drawn: {missing}_")
    return "\n".join(parts)


def findings_markdown(items: Sequence[Finding], margin: float, metrics: Sequence[str] = ()) -> str:
    judged = ", ".join(f"`{m}`" for m in metrics) or f"`{naming.PURITY}`"
    parts = [
        "## Findings",
        "",
        f"Computed from the full-length trials, for {judged} where the runs have "
        "them (the last layer's and the study objective's included): raw purity includes what the untrained router already had, the lift is what "
        "training added to it, and `cmi` is the part of domain routing the current byte does not "
        "explain. Arms share seeds (same "
        "initialisation and data), so differences are paired by seed (mean and 95% t-interval of "
        "the per-seed differences, and how many seeds agree in sign); without shared seeds, "
        f"Welch's interval. The p-values are Holm-adjusted within each metric (one family per "
        f"metric, {_family_sizes(items)} p-values): a claim *holds* when the difference is positive and its "
        "adjusted p < 0.05, *does not hold* when it is negative and p < 0.05, and is *not shown* "
        "otherwise. \"No difference\" is only said through a paired equivalence test (TOST) with "
        f"margin ±{margin:g} (`report.equivalence_margin` in the spec). Scope against method is a "
        "two-way decomposition (method, scope, seed as block): F tests, partial eta squared, and "
        "the spread (SD) of each factor's level means; the method x scope interaction is tested "
        "with them (its p-value is in the metric's Holm family), and when it is shown the scope "
        "effect differs by method: read the cells, not only the main effects.",
        "",
    ]
    if not items:
        parts.append("No finding: the study lacks the groups a comparison needs (e.g. one method "
                     "at two scopes).")
    else:
        parts += verdict_matrix_markdown(items)
        tally = verdict_tally(items)
        if any(sum(counts.values()) > 1 for counts in tally.values()):
            parts += ["Verdicts per claim (how many of its comparisons gave each verdict):", ""]
            parts += _table(["claim", "verdicts"], [
                [topic, ", ".join(f"{verdict} {n}" for verdict, n in counts.items())]
                for topic, counts in tally.items()
            ]).splitlines()
            parts += ["", "Each comparison:", ""]
        parts += [f.markdown() for f in items]
    return "\n".join(parts)


def _family_sizes(items: Sequence[Finding]) -> str:
    sizes: dict[str, int] = {}
    for f in items:
        sizes[f.metric] = sizes.get(f.metric, 0) + len(f.p_values)
    return ", ".join(f"`{m}` {n}" for m, n in sizes.items() if n)


def _short_verdict(f: Finding) -> str:
    """The verdict without its parenthesis: "not shown (n=1, no interval)" -> "not shown"; a
    shown interaction stays said ("scope matters more than method, interaction shown")."""
    short = f.verdict.split(" (", 1)[0].split("; ", 1)[0]
    if f.kind == "effects" and INTERACTION_SHOWN in f.verdict:
        short += ", interaction shown"
    return short


def verdict_matrix_markdown(items: Sequence[Finding]) -> list[str]:
    """One row per claim and setting, one column per metric: its verdict and difference. A claim
    that holds on raw purity but not on the lift or on ``cmi`` is about how much of the untrained
    router's structure survives, not about learned specialisation."""
    metrics = list(dict.fromkeys(f.metric for f in items))
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for f in items:
        if f.kind == "effects":
            continue
        cell = _short_verdict(f)
        if f.comparison is not None:
            cell += f" ({f.comparison.estimate.mean:+.3f})"
        rows.setdefault((f.topic, f.context), {})[f.metric] = cell
    if not rows or len(metrics) < 2:
        return []
    return ["Verdict of each comparison on each metric (difference in brackets):", "",
            *_table(["claim", "setting", *[f"`{m}`" for m in metrics]],
                    [[topic, context, *[cells.get(m, "–") for m in metrics]]
                     for (topic, context), cells in rows.items()]).splitlines(), ""]


def verdict_tally(items: Sequence[Finding]) -> dict[str, dict[str, int]]:
    """``{topic: {verdict: count}}`` in order of first appearance ("not shown (n=1...)" counts as
    "not shown")."""
    tally: dict[str, dict[str, int]] = {}
    for f in items:
        verdict = _short_verdict(f)
        counts = tally.setdefault(f"{f.topic}, {f.metric}", {})
        counts[verdict] = counts.get(verdict, 0) + 1
    return tally


def metrics_markdown(shown: Sequence[str]) -> str:
    """One line defining each metric the report shows."""
    lines = [f"- `{m}`: {definition(m)}" for m in dict.fromkeys(shown) if definition(m)]
    if not lines:
        return ""
    return "\n".join(["## Metrics in this report", "",
                      "One line each; the formulas, and the literature they come from, are in the "
                      "moe-routing-study repository's `docs/design.md` (section Metrics) and "
                      "`docs/metrics.md`.", "", *lines])


def failures_markdown(trials: Sequence[RunRecord], limit: int = 10) -> str:
    failed = [t for t in trials if t.status == "FAILED"]
    if not failed:
        return ""
    lines = ["## Failed trials", ""]
    for t in failed[:limit]:
        last = next((ln.strip() for ln in reversed(t.error.splitlines()) if ln.strip()), "no error recorded")
        lines.append(f"- `{t.name}` ({t.method}, {t.scope}): {last[:300]}")
    if len(failed) > limit:
        lines.append(f"- ... and {len(failed) - limit} more")
    return "\n".join(lines)

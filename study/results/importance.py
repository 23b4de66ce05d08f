"""What each searched setting does to the objective, from the study's MLflow runs.

- **Hyperparameter importance** (searched studies: TPE, random, NSGA-II): the runs' searched
  params and objective become an in-memory Optuna study, and ``optuna.importance`` with its fANOVA
  evaluator (``FanovaImportanceEvaluator``, seeded: the same runs give the same numbers) says
  which share of the objective's variance each param explains on its own. It needs at least two
  searched params present in every trial and ``MIN_IMPORTANCE_TRIALS`` trials; otherwise the
  section says why there is no table.
- **Main effects** (grid studies, a factorial design): for each searched key, the mean objective
  at each of its levels with a 95 % t-interval over the runs at that level (that is, over the
  other factors' settings and the seeds), and the spread (max - min) between its level means.

Trials are the report's: full-length, each distinct config once. The study's own Optuna copy
(``study.run.optuna_store``) is named under the section for Optuna's tools.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from study import naming
from study.results.records import RunRecord, StudyRuns
from study.results.stats import mean_ci

MIN_IMPORTANCE_TRIALS = 8
"""Fewest trials fANOVA's random forest is fitted to; below it the section says so."""
FANOVA_SEED = 0


def importance_markdown(runs: StudyRuns, trials: Sequence[RunRecord], metric: str) -> str:
    """The "Hyperparameter importance" section of a searched study, the "Main effects" section
    of a grid study, or "" when the study has no searched key (or the experiment no study run)."""
    keys, grid = _search_keys(runs)
    if not keys:
        return ""
    valued = [t for t in trials if math.isfinite(t.metric(metric))]
    body = main_effects_markdown(valued, keys, metric, runs.spec) if grid else \
        fanova_markdown(valued, keys, metric, runs.spec)
    return "\n".join([body, *_optuna_lines(runs)])


def _search_keys(runs: StudyRuns) -> tuple[list[str], bool]:
    """The newest study's searched keys and whether it is a grid (from its spec, else from its
    parent run's tag and ``sampler.type`` param)."""
    if runs.spec is not None:
        return list(runs.spec.search_keys), bool(runs.spec.is_grid)
    if not runs.studies:
        return [], False
    newest = runs.studies[0]
    keys = [k for k in newest.tags.get(naming.TAG_SEARCH_KEYS, "").split(",") if k]
    return keys, newest.params.get("sampler.type") == "grid"


def _optuna_lines(runs: StudyRuns) -> list[str]:
    tags = runs.studies[0].tags if runs.studies else {}
    url, name = tags.get(naming.TAG_OPTUNA_STORAGE), tags.get(naming.TAG_OPTUNA_STUDY)
    if not (url and name):
        return []
    return ["", f"The study's Optuna copy (every trial, the real param names) is Optuna study "
                f"`{name}` in `{url}`: `optuna-dashboard {url}`, "
                f"`optuna best-trial --study-name {name} --storage {url}`."]


# -- values: MLflow's param strings back to the search space's values ------------------------
def _distributions(keys: Sequence[str], trials: Sequence[RunRecord], spec: Any) -> dict[str, Any]:
    """Each key's Optuna distribution: the spec's when known, else one that fits the values the
    runs logged (a range when they are all numbers, else their distinct strings)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if spec is not None:
        from study.spec.space import optuna_distributions

        known = optuna_distributions(spec)
        return {k: known[k] for k in keys if k in known}
    out = {}
    for key in keys:
        texts = sorted({t.params[key] for t in trials if key in t.params})
        numbers = [_number(x) for x in texts]
        if texts and all(n is not None for n in numbers) and min(numbers) < max(numbers):
            out[key] = FloatDistribution(min(numbers), max(numbers))
        elif texts:
            out[key] = CategoricalDistribution(texts)
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def param_value(text: str, distribution: Any) -> Any:
    """The value an MLflow param string stands for in ``distribution``; None when it is not one
    of its values (a run of another search space)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        for choice in distribution.choices:
            if str(choice) == text:
                return choice
        number = _number(text)
        return next((c for c in distribution.choices if number is not None and not isinstance(c, bool)
                     and isinstance(c, (int, float)) and float(c) == number), None)
    number = _number(text)
    if number is None:
        return None
    value = int(round(number)) if isinstance(distribution, IntDistribution) else number
    return value if distribution._contains(distribution.to_internal_repr(value)) else None


# -- searched studies: fANOVA -----------------------------------------------------------------
def param_importances(trials: Sequence[RunRecord], keys: Sequence[str], metric: str,
                      spec: Any = None) -> tuple[dict[str, float], list[str], int]:
    """fANOVA importances (summing to 1) of the ``keys`` present in every trial and taking at
    least two values; the keys left out (conditional, or constant); the trials used."""
    import optuna

    dists = _distributions(keys, trials, spec)
    rows = []
    for t in trials:
        params = {k: param_value(t.params[k], dists[k]) for k in dists if k in t.params}
        if any(v is None for v in params.values()):
            continue
        rows.append((params, t.metric(metric)))
    used = [k for k in dists if rows and all(k in p for p, _ in rows)
            and len({repr(p[k]) for p, _ in rows}) > 1]
    left_out = [k for k in keys if k not in used]
    if len(used) < 2 or len(rows) < MIN_IMPORTANCE_TRIALS:
        return {}, left_out, len(rows)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study()
        study.add_trials([optuna.trial.create_trial(
            params={k: p[k] for k in used}, distributions={k: dists[k] for k in used}, value=v)
            for p, v in rows])
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=FANOVA_SEED)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=used)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return dict(found), left_out, len(rows)


def fanova_markdown(trials: Sequence[RunRecord], keys: Sequence[str], metric: str, spec: Any = None) -> str:
    found, left_out, n = param_importances(trials, keys, metric, spec)
    parts = ["## Hyperparameter importance", ""]
    intro = (f"How much of the spread of `{metric}` over the {n} full-length trials each searched "
             f"param explains on its own: fANOVA (`optuna.importance.FanovaImportanceEvaluator`, a "
             f"random forest of 64 trees, seed {FANOVA_SEED}) on the runs' params and final "
             f"`{metric}`; the importances sum to 1. With few trials the forest is rough: read "
             "the order, not the digits.")
    skipped = (f" Left out: {', '.join(f'`{k}`' for k in left_out)} (a param absent from some "
               "trials, where its condition did not hold, or with one value in every trial)."
               if left_out else "")
    if not found:
        usable = len(keys) - len(left_out)
        why = (f"{n} full-length trials with `{metric}`, fewer than the {MIN_IMPORTANCE_TRIALS} "
               "fANOVA needs" if usable >= 2 else
               f"{usable} searched param{'s' if usable != 1 else ''} in every trial, fewer than two")
        return "\n".join(parts + [f"No importance computed: {why}.{skipped}"])
    rows = [[f"`{k}`", f"{v:.3f}", _tried(k, trials)] for k, v in found.items()]
    return "\n".join(parts + [intro + skipped, "", _table(["param", "importance", "values tried"], rows)])


def _tried(key: str, trials: Sequence[RunRecord]) -> str:
    texts = sorted({t.params[key] for t in trials if key in t.params})
    numbers = [_number(x) for x in texts]
    if len(texts) > 4 and all(n is not None for n in numbers):
        return f"{min(numbers):.3g} .. {max(numbers):.3g}"
    return ", ".join(texts)


# -- grids: main effects ----------------------------------------------------------------------
def main_effects(trials: Sequence[RunRecord], keys: Sequence[str], metric: str, spec: Any = None
                 ) -> dict[str, list[tuple[str, list[float]]]]:
    """``{key: [(level, values of metric at that level), ...]}`` for every key with two or more
    levels among the trials; levels in the spec's order of choices (else sorted)."""
    out = {}
    for key in keys:
        by_level: dict[str, list[float]] = {}
        for t in trials:
            if key in t.params:
                by_level.setdefault(t.params[key], []).append(t.metric(metric))
        if len(by_level) < 2:
            continue
        order = _level_order(key, spec)
        levels = sorted(by_level, key=lambda x: (order.get(x, len(order)), x))
        out[key] = [(level, by_level[level]) for level in levels]
    return out


def _level_order(key: str, spec: Any) -> Mapping[str, int]:
    if spec is None:
        return {}
    try:
        param = spec.param(key)
    except KeyError:
        return {}
    return {str(c): i for i, c in enumerate(param.choices)}


def main_effects_markdown(trials: Sequence[RunRecord], keys: Sequence[str], metric: str,
                          spec: Any = None) -> str:
    effects = main_effects(trials, keys, metric, spec)
    parts = ["## Main effects", ""]
    if not effects:
        return "\n".join(parts + [f"No main effect: no searched key took two levels among the "
                                  f"full-length trials with `{metric}`."])
    estimates = {k: [(level, mean_ci(values)) for level, values in levels] for k, levels in effects.items()}
    spread = {k: max(e.mean for _, e in est) - min(e.mean for _, e in est) for k, est in estimates.items()}
    rows = []
    for key in sorted(estimates, key=lambda k: -spread[k]):
        for i, (level, e) in enumerate(estimates[key]):
            interval = f"{e.mean:.3f}" + (" (n=1)" if e.half_width is None else f" ± {e.half_width:.3f}")
            rows.append([f"`{key}`" if i == 0 else "", level, str(e.n), interval,
                         f"{spread[key]:.3f}" if i == 0 else ""])
    unbalanced = [k for k, est in estimates.items() if len({e.n for _, e in est}) > 1]
    text = (f"The grid's factors one at a time: for each searched key, the mean final `{metric}` of "
            "the full-length trials at each of its levels, ± the half-width of its 95% t-interval "
            "over those trials (so over the other factors' settings and the seeds), and the spread "
            "(largest - smallest level mean). Factors are ordered by spread; a large spread with "
            "intervals apart is a factor that matters whatever the others are set to. The "
            "interactions are in the method x scope table and the findings.")
    if unbalanced:
        text += (" Unbalanced (levels with different numbers of trials, from `exclude` rules, "
                 "conditions or failed trials, so their means average over different settings "
                 f"of the other factors): {', '.join(f'`{k}`' for k in unbalanced)}.")
    return "\n".join(parts + [text, "", _table(["factor", "level", "n", f"mean `{metric}` ± 95%",
                                                 "spread"], rows)])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])

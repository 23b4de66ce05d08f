"""Checks of a parsed study spec against the trial config: can every trial of the study run?

A spec is checked by building trial configs and letting ``TrialConfig.validate`` judge them:

1. ``fixed`` over the defaults (problems that involve no searched key are ``fixed.`` problems);
2. one searched value at a time over that base: every choice and both ends of every range, with
   the param's ``when`` condition made true (``search.<key>.choice[i]`` problems);
3. combinations: every corner of the space (every choice x both range ends; for a grid study,
   every grid point), or a fixed sample of 256 corners when there are more, so that a searched
   top-k against a searched expert count is caught too;
4. the same configs with the reference router, when the study runs one;
5. metric names of the objective, the scheduler, the budget and the resources.
"""

from __future__ import annotations

import random
import re
from typing import Any, Mapping

from trainables.config import TrialConfig
from trainables.errors import ConfigError
from study import naming
from study.spec.parse import Problems
from study.spec.types import (
    MAX_GRID_POINTS, SearchParam, StudySpec, count_points, expand_points, grid_size, is_excluded,
    reference_flat,
)

MAX_COMBINATIONS = 256
"""Most combinations validated one by one (building a config costs ~1 ms)."""
MAX_COMBINATION_PROBLEMS = 5
"""Distinct problems shown from combinations; the rest are counted."""

_KEY_MENTION = re.compile(r"\b(?:data|model|router|train)\.[a-z_]+\b")


def check_spec(spec: StudySpec, problems: Problems, cluster_resources: Mapping[str, float] | None = None) -> None:
    checker = _ConfigChecker(spec, problems)
    checker.check_fixed()
    checker.check_probes()
    checker.check_combinations()
    if spec.reference.enabled:
        checker.check_reference()
    check_data_sources(spec, problems)
    check_objective(spec, problems)
    check_scheduler_and_budget(spec, problems)
    check_resources(spec, problems, cluster_resources)


def config_problems(flat: Mapping[str, Any]) -> list[str]:
    """Problems ``TrialConfig`` finds in a flat config (empty when it is valid)."""
    try:
        TrialConfig.from_flat(dict(flat))
    except ConfigError as err:
        return list(err.problems)
    return []


def mentioned_keys(problem: str) -> set[str]:
    return set(_KEY_MENTION.findall(problem))


def condition_values(spec: StudySpec, param: SearchParam, _seen: frozenset = frozenset()) -> dict[str, Any]:
    """Values that make ``param``'s ``when`` hold: the first allowed value of each condition key,
    with the conditions of those keys made true in turn."""
    values: dict[str, Any] = {}
    for key, allowed in param.when.items():
        if key not in spec.search_keys or key in _seen:
            continue  # a condition on a broken param, or a cycle: both reported already
        values.update(condition_values(spec, spec.param(key), _seen | {param.key}))
        values[key] = allowed[0]
    return values


def corner_points(spec: StudySpec, params: list[SearchParam] | None = None) -> list[dict[str, Any]]:
    """Every corner of the space (choices x range ends), or a fixed sample of them if too many."""
    exclude = spec.exclude if params is None else ()
    params = spec.params if params is None else params
    if count_points(params, ranges_as_ends=True) <= MAX_COMBINATIONS:
        return expand_points(params, exclude, ranges_as_ends=True)
    rng = random.Random(0)  # the same sample every time: validation is deterministic
    points = []
    for _ in range(MAX_COMBINATIONS):
        point: dict[str, Any] = {}
        for p in params:
            if p.is_active(point):
                point[p.key] = rng.choice([v for _, v in p.probe_values()])
        if not is_excluded(point, exclude):
            points.append(point)
    return points


class _ConfigChecker:
    """Builds the configs of steps 1-4 and words their problems by key path.

    A problem is attributed by the keys its message names: a problem naming only fixed keys and
    one searched key belongs to that key's value; one naming two searched keys belongs to their
    combination, and is reported with the values that produce it.
    """

    def __init__(self, spec: StudySpec, problems: Problems):
        self.spec = spec
        self.problems = problems
        self.searched = set(spec.search_keys)
        self.base_problems = config_problems(spec.fixed)  # searched keys at their defaults
        self.reported: set[str] = set()  # raw TrialConfig problems already shown

    def check_fixed(self) -> None:
        for p in self.base_problems:
            if not mentioned_keys(p) & self.searched:  # else the searched values decide it
                self.problems.append(f"fixed.{p}")
                self.reported.add(p)

    def check_probes(self) -> None:
        for param in self.spec.params:
            context = condition_values(self.spec, param)
            others = self.searched - {param.key} - set(context)
            for label, value in param.probe_values():
                for p in config_problems({**self.spec.fixed, **context, param.key: value}):
                    mentions = mentioned_keys(p)
                    if p in self.reported or mentions & others:
                        continue  # shown already, or a combination (check_combinations)
                    if param.key in mentions or p not in self.base_problems:
                        self.problems.add(f"search.{param.key}.{label}", _strip_key(p, param.key, value))
                        self.reported.add(p)

    def check_combinations(self) -> None:
        found: dict[str, dict] = {}
        for point in corner_points(self.spec):
            for p in config_problems({**self.spec.fixed, **point}):
                if p not in self.reported and p not in found:
                    found[p] = point
        self._report_combinations("search", found)

    def check_reference(self) -> None:
        """The reference router must fit every model and data the study trains."""
        spec = self.spec
        model_data = [p for p in spec.params if p.key.split(".")[0] in ("model", "data")]
        found: dict[str, dict] = {}
        for point in corner_points(spec, model_data):
            flat = {**spec.fixed, **point}
            plain = set(config_problems(reference_flat(flat) | {"router.method": "none"}))
            for p in config_problems(reference_flat(flat)):
                if p not in plain and p not in found:
                    found[p] = point
        self._report_combinations("reference", found)

    def _report_combinations(self, path: str, found: dict[str, dict]) -> None:
        for p, point in list(found.items())[:MAX_COMBINATION_PROBLEMS]:
            named = {k: v for k, v in point.items() if k in mentioned_keys(p)} or point
            where = ", ".join(f"{k}={v!r}" for k, v in named.items())
            self.problems.add(path, f"{p} (with {where})" if where else p)
            self.reported.add(p)
        if len(found) > MAX_COMBINATION_PROBLEMS:
            self.problems.add(path, f"... and {len(found) - MAX_COMBINATION_PROBLEMS} more problems of combinations")


def check_data_sources(spec: StudySpec, problems: Problems) -> None:
    """Are the data domains available on this machine (built in, extra files, packages)?"""
    from trainables.data.mix import check_sources

    try:
        data = spec.base_config().data
    except ConfigError:
        return  # the fixed problems are reported already
    try:
        found = check_sources(data)
    except ConfigError as err:
        found = err.problems
    for p in found or []:
        # the data section is set under fixed: name the path the user edits
        problems.append(f"fixed.{p}" if str(p).startswith("data.") else str(p))


def check_objective(spec: StudySpec, problems: Problems) -> None:
    domains, n_layers = _metric_context(spec)
    obj = spec.objective
    for i, name in enumerate(obj.metrics):
        path = "objective.metric" if len(obj.metrics) == 1 else f"objective.metric[{i}]"
        _check_metric(name, path, spec, domains, n_layers, problems)
    for name in obj.constraints:
        _check_metric(name, f"objective.constraints.{name}", spec, domains, n_layers, problems)


def _check_metric(name: str, path: str, spec: StudySpec, domains, n_layers, problems: Problems) -> None:
    msg = naming.metric_problem(name, domains, n_layers)
    if msg:
        problems.add(path, msg)
    elif naming.base_metric(name) in naming.GAP_METRICS and not spec.reference.enabled:
        problems.add(path, f"{name} is a gap to the reference run, but reference.enabled is false")


def _metric_context(spec: StudySpec) -> tuple[list[str] | None, int | None]:
    """Domains every trial has, and the fewest MoE layers any trial has (None when unknown)."""
    try:
        base = spec.base_config()
    except ConfigError:
        return None, None
    domains = None if "data.domains" in spec.search_keys else list(base.data.domains)
    n_layers = base.model.n_layers
    if "model.n_layers" in spec.search_keys:
        p = spec.param("model.n_layers")
        n_layers = min(p.choices) if p.is_choice else p.low
    return domains, n_layers if isinstance(n_layers, int) else None


def check_scheduler_and_budget(spec: StudySpec, problems: Problems) -> None:
    try:
        base = spec.base_config()
        steps = _fewest_steps(spec, base)
    except (ConfigError, TypeError, ValueError):
        return
    sched = spec.scheduler
    if sched.type == "asha":
        if sched.grace_period is None:
            sched.grace_period = max(1, min(base.train.eval_every, steps))
        elif sched.grace_period > steps:
            problems.add(
                "scheduler.grace_period",
                f"{sched.grace_period} steps is more than train.steps ({steps}): ASHA could stop no trial",
            )
    if spec.is_grid and not _has_problem(problems, "search", "exclude"):
        size = grid_size(spec.params, spec.exclude)  # counted, not built, when too big
        if size > MAX_GRID_POINTS:
            counted = f"more than {MAX_GRID_POINTS:,}" if size == MAX_GRID_POINTS + 1 else f"{size:,}"
            before = " (before exclude rules)" if spec.exclude else ""
            problems.add("search", f"the grid has {counted} points{before}; at most {MAX_GRID_POINTS:,} "
                         "run as a grid: fix some keys, or search them with tpe or random and a "
                         "budget.trials")
        elif size == 0:
            problems.add("exclude", "leaves no grid point to run")
        elif spec.budget.trials is not None and spec.budget.trials > size:
            problems.add(
                "budget.trials",
                f"{spec.budget.trials} is more than the {size} grid points (repeat runs are a searched "
                "train.seed choice)",
            )
    elif not spec.is_grid and spec.budget.trials is None and not _has_problem(problems, "budget.trials"):
        problems.add("budget.trials", f"required for the {spec.sampler.type} sampler (how many trials to run)")


def _fewest_steps(spec: StudySpec, base: TrialConfig) -> int:
    if "train.steps" in spec.search_keys:
        p = spec.param("train.steps")
        return int(min(p.choices) if p.is_choice else p.low)
    return base.train.steps


def check_resources(spec: StudySpec, problems: Problems, cluster: Mapping[str, float] | None) -> None:
    res = spec.resources
    try:
        device = spec.base_config().train.device
    except ConfigError:
        device = "auto"
    devices = [device]
    if "train.device" in spec.search_keys:
        devices = spec.param("train.device").choices
    if "cuda" in devices and res.gpu == 0:
        problems.add("resources.gpu", "0, but train.device is cuda: give each worker a GPU (e.g. gpu: 1)")
    if cluster is None:
        return
    for name, need in res.per_trial().items():
        have = float(cluster.get(name, 0))
        if need > have:
            what = f"{res.workers} workers x {need / res.workers:g}" if res.workers > 1 else f"{need:g}"
            problems.add(
                f"resources.{name.lower()}",
                f"a trial needs {what} {name} but the cluster has {have:g}",
            )


def _has_problem(problems: Problems, *prefixes: str) -> bool:
    return any(p.startswith(prefix) for p in problems for prefix in prefixes)


def _strip_key(problem: str, key: str, value: Any) -> str:
    """``router.method: unknown value 'foo'`` under ``search.router.method.choice[1]`` reads
    better without repeating the key; a problem about another key keeps it and names the value."""
    if problem.startswith(f"{key}: "):
        return problem[len(key) + 2 :]
    return f"with {key}={value!r}, {problem}"

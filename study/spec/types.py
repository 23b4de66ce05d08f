"""The parts of a validated study spec, as dataclasses (parsing lives in ``study.spec.parse``).

A ``StudySpec`` is what ``study.spec.load_spec`` returns. Its ``fixed`` values and the searched
``params`` use the trial config's dotted keys, so a Tune config produced from the spec goes
straight into ``TrialConfig.from_flat``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from trainables.config import TrialConfig
from study import naming

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "loguniform_int")
SAMPLERS = ("tpe", "random", "nsga2", "grid")
SCHEDULERS = ("asha", "fifo")
MODES = ("min", "max")

CONSTRAINT_PENALTY = 1000.0
"""Added to (min) or subtracted from (max) an objective value whose trial breaks a constraint.

The metrics a study ranks by (gaps, loss, purity) are O(1), so a penalised trial ranks behind
every feasible one; the violation itself is added on top, so among infeasible trials the one that
misses the constraint by less still ranks higher.
"""
UNFINISHED_PENALTY = 1.0e6
"""Added to (min) / subtracted from (max) every rescored report before a trial's last.

Tune tells Optuna a trial that ASHA stopped as COMPLETE with its last report, so cheap stopped
trials could rank first (or land on the Pareto front): ``gap_purity`` grows over training, so an
early report looks better than any finished one. With this penalty they rank behind every
finished trial, while ASHA, which compares trials at the same step, sees the same constant on all
of them.
"""


@dataclass
class SearchParam:
    """One searched trial-config key and its distribution."""

    key: str
    distribution: str
    choices: list = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    when: dict[str, list] = field(default_factory=dict)
    """Searched choice key -> allowed values: the param exists only when all of these hold."""

    @property
    def is_choice(self) -> bool:
        return self.distribution == "choice"

    @property
    def log(self) -> bool:
        return self.distribution in ("loguniform", "loguniform_int")

    @property
    def is_int(self) -> bool:
        return self.distribution in ("int", "loguniform_int")

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether the ``when`` condition holds for the values chosen so far."""
        return all(k in values and value_in(values[k], allowed) for k, allowed in self.when.items())

    def probe_values(self) -> list[tuple[str, Any]]:
        """(label, value) pairs that bound what the param can take: every choice, or both ends.

        Labels are the value's position in the YAML (``choice[1]``, ``loguniform[0]``).
        """
        if self.is_choice:
            return [(f"choice[{i}]", v) for i, v in enumerate(self.choices)]
        return [(f"{self.distribution}[0]", self.low), (f"{self.distribution}[1]", self.high)]

    def suggest(self, trial: Any) -> Any:
        """Ask an ``optuna.Trial`` for this param's value."""
        if self.is_choice:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            self.distribution: list(self.choices) if self.is_choice else [self.low, self.high]
        }
        if self.step is not None:
            d["step"] = self.step
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d


@dataclass
class Objective:
    """What a study minimises or maximises, and the floors/ceilings trials must respect."""

    metrics: list[str]
    modes: list[str]
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)
    """Metric -> ``{"min": x}`` and/or ``{"max": y}``."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Objective":
        """Inverse of ``to_dict`` (e.g. to rebuild it inside a trial from a private config key)."""
        return cls(list(d["metric"]), list(d["mode"]), copy.deepcopy(dict(d.get("constraints") or {})))

    @property
    def is_multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def rescored(self) -> bool:
        """Whether the searcher gets values other than the raw metrics (see ``scored``)."""
        return bool(self.constraints) or self.is_multi

    @property
    def search_metrics(self) -> list[str]:
        """Result keys the searcher (and ASHA, the first) optimise: the raw metrics, or their
        ``objective/`` versions when ``scored`` changes them."""
        if not self.rescored:
            return list(self.metrics)
        return [naming.OBJECTIVE_PREFIX + m for m in self.metrics]

    def violation(self, result: Mapping[str, Any]) -> float:
        """How far a result misses the constraints (0 when it meets them).

        A constraint metric missing from the result counts as met: it cannot be judged yet.
        """
        total = 0.0
        for name, bound in self.constraints.items():
            value = result.get(name)
            if value is None or value != value:  # missing or NaN
                continue
            if "min" in bound and value < bound["min"]:
                total += bound["min"] - value
            if "max" in bound and value > bound["max"]:
                total += value - bound["max"]
        return total

    def scored(self, result: Mapping[str, Any], done: bool = True) -> dict[str, float]:
        """The values to add to a Tune result under ``search_metrics``.

        A trial's last report (``done``) is moved towards "worse" by ``CONSTRAINT_PENALTY +
        violation`` when it misses a constraint; every report before it by ``UNFINISHED_PENALTY``
        alone. Constraints describe the trained router, so they are judged at the end only: early
        in training every router is still unbalanced (quick study at step 25: load entropy
        0.65-0.73 against a floor of 0.9 in all eight trials), and judging the constraint there
        made ASHA rank trials by how fast they balance instead of by the objective. Without
        constraints and with one objective this returns the metric unchanged. Metrics missing
        from the result are left out, so the searcher sees the trial as not reporting them.
        """
        if done:
            violation = self.violation(result)
            penalty = CONSTRAINT_PENALTY + violation if violation > 0 else 0.0
        else:  # (no rescoring at all: one objective without constraints is the raw metric)
            penalty = UNFINISHED_PENALTY if self.rescored else 0.0
        out: dict[str, float] = {}
        for name, key, mode in zip(self.metrics, self.search_metrics, self.modes):
            if name not in result:
                continue
            value = float(result[name])
            out[key] = value + penalty if mode == "min" else value - penalty
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"metric": list(self.metrics), "mode": list(self.modes)}
        if self.constraints:
            d["constraints"] = copy.deepcopy(self.constraints)
        return d


@dataclass
class SamplerSpec:
    type: str = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = None
    """TPE only: random trials before TPE takes over (Optuna's default 10 when unset)."""
    population_size: int | None = None
    """NSGA-II only: individuals per generation (Optuna's default 50 when unset)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class SchedulerSpec:
    type: str = "fifo"
    grace_period: int | None = None
    """ASHA: optimizer steps (the ``step`` result key) before a trial can be stopped."""
    reduction_factor: float = 2

    def to_dict(self) -> dict[str, Any]:
        if self.type == "fifo":
            return {"type": "fifo"}
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class BudgetSpec:
    trials: int | None = field(default=None, metadata={"min": 1})
    """Tune ``num_samples``; a grid study defaults to the grid size."""
    time_s: float | None = field(default=None, metadata={"above": 0})
    """Wall-clock limit of the whole study (Tune ``time_budget_s``); none when unset."""

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "time_s": self.time_s}


@dataclass
class ResourceSpec:
    cpu: float = field(default=1, metadata={"above": 0})
    """CPUs per worker."""
    gpu: float = field(default=0, metadata={"min": 0})
    """GPUs per worker; fractional values share a device (no memory isolation)."""
    workers: int = field(default=1, metadata={"min": 1})
    """Data-parallel workers per trial; > 1 runs the trial as a TorchTrainer."""
    max_concurrent: int | str = field(default="auto", metadata={"min": 1, "also": ("auto",)})
    """Trials running at once; ``auto`` lets the runner derive it from the cluster."""

    def per_trial(self) -> dict[str, float]:
        """Ray resources one trial needs in total (all workers)."""
        return {"CPU": self.cpu * self.workers, "GPU": self.gpu * self.workers}

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class ReferenceSpec:
    enabled: bool = True
    """Run (or reuse) the reference router for the study's model and data; needed for gaps."""
    reuse: bool = True
    """Reuse a finished reference run with the same config hash from MLflow instead of rerunning."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class TrackingSpec:
    uri: str | None = field(default=None, metadata={"nonempty": True})
    """MLflow tracking URI; CLI ``--tracking-uri`` overrides it; default ``./mlflow.db``."""
    experiment: str | None = field(default=None, metadata={"nonempty": True})
    """MLflow experiment name; default the study name."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class ReportSpec:
    equivalence_margin: float = field(default=0.01, metadata={"above": 0, "below": 1})
    """"No difference" is claimed only when a paired equivalence test (TOST) shows the
    difference within ±this, in the metric's own units (purity, CMI)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class NodePrice:
    """What one node of a Ray node type costs and offers (``cost.per_node_type.<name>``)."""

    per_hour: float = field(default=0, metadata={"min": 0})
    """The node's price per hour (the instance's on-demand price, say)."""
    cpu: float = field(default=0, metadata={"min": 0})
    """CPUs the node offers Ray (its ``resources`` in cluster.yaml)."""
    gpu: float = field(default=0, metadata={"min": 0})
    """GPUs the node offers Ray."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class CostSpec:
    """Prices that turn the CPU- and GPU-seconds a study held into money (the report and
    ``moe-study best --show-cost``). Not part of what a study runs: a spec's content hash leaves
    it out, so prices may change between a run and its resume."""

    per_cpu_hour: float = field(default=0, metadata={"min": 0})
    per_gpu_hour: float = field(default=0, metadata={"min": 0})
    currency: str = "USD"
    """An ISO 4217 code: three capital letters."""
    per_node_type: dict[str, NodePrice] = field(default_factory=dict)
    """Ray node type name -> its price: a run tagged with that node type is charged its share of
    the node (``study.results.cost``); any other run per CPU- and GPU-hour."""

    def to_dict(self) -> dict[str, Any]:
        return {"per_cpu_hour": self.per_cpu_hour, "per_gpu_hour": self.per_gpu_hour,
                "currency": self.currency,
                "per_node_type": {k: v.to_dict() for k, v in self.per_node_type.items()}}


@dataclass
class StudySpec:
    name: str
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Flat dotted trial-config values shared by every trial."""
    params: list[SearchParam] = field(default_factory=list)
    """Searched params, ordered so that every ``when`` key comes before the params it guards."""
    exclude: list[dict[str, list]] = field(default_factory=list)
    """Grid only: combinations left out (each maps searched choice keys to excluded values)."""
    objective: Objective = field(default_factory=lambda: Objective([naming.GAP_PURITY], ["min"]))
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    cost: CostSpec | None = None
    """The price table (optional section ``cost``); None: the study states no money."""
    source: str | None = None
    """Path the spec was loaded from (not part of its content)."""

    # -- the search space ----------------------------------------------------------------------
    @property
    def search_keys(self) -> list[str]:
        return [p.key for p in self.params]

    def param(self, key: str) -> SearchParam:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    @property
    def has_conditional_params(self) -> bool:
        return any(p.when for p in self.params)

    @property
    def is_grid(self) -> bool:
        return self.sampler.type == "grid"

    @property
    def num_trials(self) -> int:
        """Trials the study runs: ``budget.trials``, or the grid size for a grid study."""
        if self.budget.trials is not None:
            return self.budget.trials
        return grid_size(self.params, self.exclude) if self.is_grid else 1

    # -- objective and scheduling --------------------------------------------------------------
    @property
    def search_metrics(self) -> list[str]:
        return self.objective.search_metrics

    @property
    def scheduler_metric(self) -> str:
        """ASHA acts on the first objective (its ``objective/`` key when rescored)."""
        return self.objective.search_metrics[0]

    @property
    def scheduler_mode(self) -> str:
        return self.objective.modes[0]

    @property
    def trials_need_reference(self) -> bool:
        """Whether a trial must know the reference router's metrics while it runs: a gap to
        the reference is an objective, ASHA's metric or a constraint. Otherwise the reference
        can run beside the first trials and their gaps are filled in when it ends
        (``study.run.reference``)."""
        used = [*self.objective.metrics, *self.objective.constraints]
        return any(naming.base_metric(name) in naming.GAP_METRICS for name in used)

    def max_steps(self) -> int:
        """Largest ``train.steps`` any trial can have (ASHA's ``max_t``)."""
        if "train.steps" in self.search_keys:
            p = self.param("train.steps")
            return int(max(p.choices) if p.is_choice else p.high)
        return self.base_config().train.steps

    def asha_rungs(self) -> list[int]:
        """The steps at which ASHA judges trials, ascending (empty unless the scheduler is asha).

        Ray's ``ASHAScheduler`` (one bracket) puts its rungs at ``grace_period * rf**k`` below
        ``max_t``; a trial is judged at its first report at or after a rung, so the trials
        evaluate at these steps too (rounded up: a fractional rung is reached at the next step).
        """
        sched = self.scheduler
        if sched.type != "asha" or not sched.grace_period:
            return []
        max_t, grace, rf = self.max_steps(), sched.grace_period, sched.reduction_factor
        n_rungs = int(math.log(max_t / grace) / math.log(rf) + 1)  # Ray's formula, same rounding
        return sorted({math.ceil(grace * rf**k) for k in range(max(n_rungs, 0))})

    # -- trial configs -------------------------------------------------------------------------
    def base_config(self) -> TrialConfig:
        """Defaults overridden by ``fixed``; searched keys keep their defaults (not validated)."""
        return TrialConfig.from_flat(self.fixed, check=False)

    def trial_config(self, flat_params: Mapping[str, Any]) -> TrialConfig:
        """The validated config of one trial: ``fixed`` overridden by the trial's params.

        ``flat_params`` may be a whole Tune config: private keys (leading ``_``) are ignored.
        """
        return TrialConfig.from_flat({**self.fixed, **naming.trial_params(flat_params)})

    def reference_config(self, flat_params: Mapping[str, Any] | None = None) -> TrialConfig:
        """The reference-router config for a trial's model and data (its ``router.*`` dropped)."""
        flat = {**self.fixed, **naming.trial_params(flat_params or {})}
        return TrialConfig.from_flat(reference_flat(flat))

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment: ``tracking.experiment``, else the study name."""
        return self.tracking.experiment or self.name

    # -- identity ------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        """``to_dict()`` as YAML in the spec's own key order (the parent run's spec artifact)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_dict(self) -> dict[str, Any]:
        """Normalised plain form (loadable again with ``spec_from_dict``), e.g. for an artifact."""
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "fixed": copy.deepcopy(self.fixed),
            "search": {p.key: p.to_dict() for p in self.params},
            "objective": self.objective.to_dict(),
            "sampler": self.sampler.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "budget": self.budget.to_dict(),
            "resources": self.resources.to_dict(),
            "reference": self.reference.to_dict(),
            "tracking": self.tracking.to_dict(),
            "report": self.report.to_dict(),
        }
        if self.exclude:
            d["exclude"] = [{k: list(v) for k, v in rule.items()} for rule in self.exclude]
        if self.cost is not None:
            d["cost"] = self.cost.to_dict()
        return d

    # -- the reference run's identity --------------------------------------------------------
    def reference_flat_config(self) -> dict[str, Any]:
        """The reference router on the study's model and data (router settings back to default),
        as the settings that differ from the defaults: a field added to the trial config later
        (at its default) leaves the key, and the reuse of finished reference runs, unchanged."""
        defaults = TrialConfig().to_flat()
        flat = self.reference_config().to_flat()
        return {k: v for k, v in flat.items() if v != defaults.get(k, object()) or k in ALWAYS_KEYED}

    def reference_key(self) -> str:
        """Identity of a reference run: its config and the workers it trained on (the global
        batch of a 2-worker study is twice that of a 1-worker one). The runner tags it on the
        parent run (``naming.TAG_REFERENCE_KEY``) and on the reference run."""
        return _reference_hash(self.reference_flat_config(), self.resources.workers)

    def reference_keys_before_tags(self) -> list[str]:
        """Keys a study run before the parent-run tag existed may have used: today's, and the
        one formed before ``ALWAYS_KEYED`` (settings at their default were left out)."""
        flat = self.reference_flat_config()
        defaults = TrialConfig().to_flat()
        old = {k: v for k, v in flat.items() if not (k in ALWAYS_KEYED and v == defaults.get(k))}
        return list(dict.fromkeys([self.reference_key(), _reference_hash(old, self.resources.workers)]))

    def content_hash(self) -> str:
        """Hash of what the study runs: everything but its name, description, tracking, report
        and cost settings."""
        d = self.to_dict()
        for key in ("name", "description", "tracking", "report", "cost"):
            d.pop(key, None)
        text = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


ALWAYS_KEYED = frozenset({"data.step_composition"})
"""Settings whose default changed (``data.step_composition`` went from ``independent`` to
``domain_complete``): always part of the reference key, so a reference run trained under the old
default (whose key omits the setting) is never reused for a study under the new one."""


def _reference_hash(flat: Mapping[str, Any], workers: int) -> str:
    # "_workers": how the key has always been spelled (stored studies' references are found by it)
    return naming.config_hash({**flat, "_workers": workers})


# -- helpers shared by the parser, the checks and the Optuna space ------------------------------
def reference_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The reference router's flat config for a trial's data, model and training settings."""
    out = {k: v for k, v in flat.items() if not k.startswith("router.")}
    out["router.method"] = "reference"
    return out


def expand_points(
    params: Iterable[SearchParam],
    exclude: Iterable[Mapping[str, list]] = (),
    *,
    ranges_as_ends: bool = False,
) -> list[dict[str, Any]]:
    """Every combination of the params' values, respecting ``when`` and ``exclude``.

    Params are taken in order (conditions first), so a conditional param multiplies only the
    points where its condition holds: ``method in {lbl, eb}`` with ``lbl_coef in {a, b}`` when
    ``method = lbl`` gives 3 points, not 4. Range params raise unless ``ranges_as_ends``, which
    lets each range contribute its two ends (the corners the validation checks).
    """
    points: list[dict[str, Any]] = [{}]
    for p in params:
        if p.is_choice:
            values = list(p.choices)
        elif ranges_as_ends:
            values = [p.low] if p.low == p.high else [p.low, p.high]
        else:
            raise ValueError(f"{p.key}: a {p.distribution} range has no finite grid")
        expanded = []
        for point in points:
            if p.is_active(point):
                expanded.extend({**point, p.key: v} for v in values)
            else:
                expanded.append(point)
        points = expanded
    return [pt for pt in points if not is_excluded(pt, exclude)]


def is_excluded(point: Mapping[str, Any], exclude: Iterable[Mapping[str, list]]) -> bool:
    """Whether an ``exclude`` rule matches the point (every key of the rule has one of its values)."""
    return any(_matches(point, rule) for rule in exclude)


MAX_GRID_POINTS = 10_000
"""Largest grid a study may have: the points are built in memory (and each is an Optuna
trial's categorical choice), so a larger one is refused when the spec is checked."""


def count_grid(params: Iterable[SearchParam], *, cap: int = MAX_GRID_POINTS) -> int:
    """Points of the factorial of the choice params with their ``when`` conditions (``exclude``
    rules not applied, so an upper bound when there are some), counted without building them.

    Counts per combination of the values of the keys conditions look at (usually a handful):
    every other param only multiplies. Above ``cap`` distinct combinations (each at least one
    point) counting stops and ``cap + 1`` is returned: the grid is too big either way.
    """
    params = list(params)
    watched = {k for p in params for k in p.when}
    states: dict[tuple, int] = {(): 1}  # values of the watched keys so far -> points
    for p in params:
        values = list(p.choices) if p.is_choice else []
        after: dict[tuple, int] = {}
        for state, n in states.items():
            if not p.is_active(dict(state)):
                after[state] = after.get(state, 0) + n
            elif p.key in watched:
                for v in values:
                    key = state + ((p.key, v),)
                    after[key] = after.get(key, 0) + n
            else:
                after[state] = after.get(state, 0) + n * len(values)
        if len(after) > cap:
            return cap + 1
        states = after
    return sum(states.values())


def grid_size(params: Iterable[SearchParam], exclude: Iterable[Mapping[str, list]] = ()) -> int:
    """Points of a grid (conditions and exclusions applied); above ``MAX_GRID_POINTS`` the count
    of ``count_grid`` (exclusions not applied), without building a point."""
    params = list(params)
    upper = count_grid(params)
    if upper > MAX_GRID_POINTS:
        return upper
    return len(expand_points(params, exclude))


def count_points(params: Iterable[SearchParam], *, ranges_as_ends: bool = False) -> int:
    """Upper bound of ``len(expand_points(...))`` without building the points."""
    n = 1
    for p in params:
        n *= len(p.choices) if p.is_choice else (2 if ranges_as_ends else 0)
    return n


def _matches(point: Mapping[str, Any], rule: Mapping[str, list]) -> bool:
    return all(k in point and value_in(point[k], values) for k, values in rule.items())


def value_in(value: Any, allowed: Iterable[Any]) -> bool:
    """``value in allowed`` without ``True == 1`` and ``1 == 1.0`` surprises across types."""
    return any(value == a and type(value) is type(a) or _same_number(value, a) for a in allowed)


def _same_number(a: Any, b: Any) -> bool:
    numeric = (int, float)
    return (
        isinstance(a, numeric) and isinstance(b, numeric)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


__all__ = [
    "BudgetSpec", "CostSpec", "NodePrice", "Objective", "ReferenceSpec", "ResourceSpec", "SamplerSpec",
    "SchedulerSpec", "SearchParam", "StudySpec", "TrackingSpec", "expand_points",
    "reference_flat", "count_points", "count_grid", "grid_size", "MAX_GRID_POINTS", "value_in",
    "is_excluded",
]

"""Structure of a study spec: a raw YAML mapping -> the dataclasses of ``study.spec.types``.

Every function appends to a shared problem list instead of raising, so that one pass reports
every problem in a file. Each problem starts with its key path (``search.train.lr.uniform``).
What needs the trial config (value ranges, reference groups, metric names) is checked afterwards
by ``study.spec.checks``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from trainables.config import SECTIONS, TrialConfig, flat_field_types, flatten, read_fields, twice_given
from trainables.errors import ConfigError, brief, did_you_mean, name_problem
from study import naming
from study.spec.types import (
    DISTRIBUTIONS, MODES, SAMPLERS, SCHEDULERS, BudgetSpec, CostSpec, NodePrice, Objective, ReferenceSpec,
    ReportSpec, ResourceSpec, SamplerSpec, SchedulerSpec, SearchParam, StudySpec, TrackingSpec,
    value_in,
)

TOP_LEVEL_KEYS = (
    "name", "description", "fixed", "search", "exclude", "objective", "sampler", "scheduler",
    "budget", "resources", "reference", "tracking", "report", "cost",
)
PARAM_KEYS = DISTRIBUTIONS + ("step", "when")
SAMPLER_OPTIONS = {
    "tpe": ("seed", "n_startup_trials"),
    "random": ("seed",),
    "nsga2": ("seed", "population_size"),
    "grid": ("seed",),
}
SCHEDULER_OPTIONS = {"fifo": (), "asha": ("grace_period", "reduction_factor")}


class Problems(list):
    """Problems found so far, each ``"<key path>: <what is wrong>"``."""

    def add(self, path: str, message: str) -> None:
        self.append(f"{path}: {message}" if path else message)


def parse_spec(raw: Any, *, default_name: str | None, source: str | None) -> tuple[StudySpec, Problems]:
    """Parse a loaded YAML document; the spec is only meaningful when no problems were found."""
    problems = Problems()
    if not isinstance(raw, dict):
        problems.add("", f"a study spec must be a mapping of keys to values (got {_kind(raw)})")
        return StudySpec(name=default_name or "study", source=source), problems
    check_keys(problems, raw, TOP_LEVEL_KEYS, "")

    name = raw.get("name", default_name)
    if name is None:
        problems.add("name", "required (the study's name and MLflow experiment)")
        name = "study"
    elif name_problem(name):
        problems.add("name", f"the study name {name_problem(name)}")
        name = str(name)
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.add("description", f"expected a string (got {_kind(description)})")
        description = ""

    def section(key: str, empty: Any = None) -> Any:
        """A section's raw value; an empty YAML section (``budget:``) reads as the default."""
        value = raw.get(key)
        return ({} if empty is None else empty) if value is None else value

    fixed = parse_fixed(section("fixed"), problems)
    params = parse_search(raw.get("search"), fixed, problems)
    objective = parse_objective(raw.get("objective"), problems)
    sampler = parse_sampler(section("sampler"), problems)
    scheduler = parse_scheduler(section("scheduler"), problems)
    exclude = parse_exclude(section("exclude", []), params, sampler, problems)
    spec = StudySpec(
        name=name,
        description=description,
        fixed=fixed,
        params=params,
        exclude=exclude,
        objective=objective,
        sampler=sampler,
        scheduler=scheduler,
        budget=parse_budget(section("budget"), problems),
        resources=parse_resources(section("resources"), problems),
        reference=parse_reference(section("reference"), problems),
        tracking=parse_tracking(section("tracking"), problems),
        report=parse_report(section("report"), problems),
        cost=parse_cost(raw.get("cost"), problems),
        source=source,
    )
    if spec.is_grid:
        for p in params:
            if not p.is_choice:
                problems.add(
                    f"search.{p.key}.{p.distribution}",
                    "the grid sampler needs choice parameters only (list the values to try)",
                )
    return spec, problems


# -- fixed and search ----------------------------------------------------------------------------
def parse_fixed(raw: Any, problems: Problems) -> dict[str, Any]:
    """Flat dotted values that build a trial config; keys or values that cannot are dropped."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add("fixed", f"expected a mapping of trial-config keys to values (got {_kind(raw)})")
        return {}
    fixed: dict[str, Any] = {}
    for key in twice_given(raw):
        problems.add(f"fixed.{key}", "given twice (in its section and as a dotted key); give it once")
    for key, value in flatten(raw).items():
        msg = unknown_trial_key(key)
        if msg:
            problems.add(f"fixed.{key}", msg)
            continue
        try:
            TrialConfig.from_flat({key: value}, check=False)
        except ConfigError as err:
            for p in err.problems:
                problems.append(f"fixed.{p}")
            continue
        fixed[key] = value
    return fixed


def parse_search(raw: Any, fixed: Mapping[str, Any], problems: Problems) -> list[SearchParam]:
    if raw is None or raw == {}:
        problems.add(
            "search",
            "empty search space: a study needs at least one searched parameter "
            "(values shared by every trial go under fixed)",
        )
        return []
    if not isinstance(raw, dict):
        problems.add("search", f"expected a mapping of trial-config keys to distributions (got {_kind(raw)})")
        return []
    types = flat_field_types()
    params: list[SearchParam] = []
    broken: list[SearchParam] = []  # reported already; kept so that conditions on them are checked
    for key in twice_given(raw):
        problems.add(f"search.{key}", "given twice (in its section and as a dotted key); give it once")
    for key, spec in flatten(raw).items():
        path = f"search.{key}"
        msg = unknown_trial_key(key)
        if msg:
            problems.add(path, msg)
            continue
        if key in fixed:
            problems.add(path, "also set under fixed: a key is either fixed or searched")
        param, ok = parse_param(key, spec, problems)
        if param is None:
            continue
        if ok and not param.is_choice and types[key] is int and not param.is_int:
            problems.add(
                f"{path}.{param.distribution}",
                f"{key} is an integer: use int or loguniform_int",
            )
            ok = False
        if ok and key == "router.capacity_factor" and not param.is_choice and param.low <= 0:
            problems.add(
                f"{path}.{param.distribution}[0]",
                f"a capacity factor range must be > 0 (got {param.low}); 0 means dropless, "
                "so search it as choice: [0, ...]",
            )
            ok = False
        (params if ok else broken).append(param)
    check_conditions(params + broken, problems)
    return order_by_conditions(params, problems)


def parse_param(key: str, raw: Any, problems: Problems) -> tuple[SearchParam | None, bool]:
    """The param and whether it parsed cleanly (None when there is nothing to hold on to)."""
    path = f"search.{key}"
    if not isinstance(raw, dict):
        problems.add(
            path,
            f"expected a mapping such as {{choice: [...]}} or {{uniform: [low, high]}} (got {_kind(raw)} "
            f"{brief(raw)}); a single value goes under fixed",
        )
        return None, False
    check_keys(problems, raw, PARAM_KEYS, path)
    dists = [d for d in DISTRIBUTIONS if d in raw]
    if len(dists) != 1:
        problems.add(path, f"needs exactly one of {list(DISTRIBUTIONS)} (got {dists or 'none'})")
        return None, False
    dist = dists[0]
    body = raw[dist]
    dpath = f"{path}.{dist}"
    ok = True
    param = SearchParam(key=key, distribution=dist)
    if dist == "choice":
        ok = _parse_choices(body, dpath, problems, param)
    else:
        ok = _parse_range(body, dpath, problems, param)
    if "step" in raw:
        ok = _parse_step(raw["step"], path, problems, param) and ok
    if "when" in raw:
        ok = _parse_when(raw["when"], path, problems, param) and ok
    return param, ok


def _parse_choices(body: Any, path: str, problems: Problems, param: SearchParam) -> bool:
    if not isinstance(body, list) or not body:
        problems.add(path, f"expected a non-empty list of values (got {brief(body)})")
        return False
    ok = True
    for i, v in enumerate(body):
        if v is not None and not isinstance(v, (str, int, float, bool)):
            problems.add(f"{path}[{i}]", f"choices must be single values: str, number, bool or null (got {_kind(v)})")
            ok = False
    if ok:
        seen: list = []
        for i, v in enumerate(body):
            if any(v == s and type(v) is type(s) for s in seen):
                problems.add(f"{path}[{i}]", f"duplicate choice {brief(v)}")
                ok = False
            seen.append(v)
    param.choices = list(body)
    return ok


def _parse_range(body: Any, path: str, problems: Problems, param: SearchParam) -> bool:
    if not (isinstance(body, list) and len(body) == 2 and all(_is_number(v) for v in body)):
        problems.add(path, f"expected [low, high] with two numbers (got {brief(body)})")
        return False
    low, high = body
    ok = True
    for i, v in enumerate(body):
        if not _finite(v):
            problems.add(f"{path}[{i}]", f"must be a finite number (got {brief(v)})")
            ok = False
    if not ok:
        return False
    if low > high:
        problems.add(path, f"low {low} > high {high}")
        ok = False
    if param.is_int:
        for i, v in enumerate(body):
            if not float(v).is_integer():
                problems.add(f"{path}[{i}]", f"an int range needs integer bounds (got {v})")
                ok = False
        if ok:
            low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    if param.log and ok and low <= 0:
        problems.add(path, f"a log range needs low > 0 (got low {low}, high {high})")
        ok = False
    param.low, param.high = low, high
    return ok


def _parse_step(step: Any, path: str, problems: Problems, param: SearchParam) -> bool:
    spath = f"{path}.step"
    if param.distribution not in ("uniform", "int"):
        problems.add(spath, f"only uniform and int take a step (not {param.distribution})")
        return False
    if not _is_number(step) or not _finite(step) or step <= 0 or (param.is_int and not float(step).is_integer()):
        kind = "a positive integer" if param.is_int else "a positive finite number"
        problems.add(spath, f"expected {kind} (got {brief(step)})")
        return False
    param.step = int(step) if param.is_int else float(step)
    if param.low is not None and param.high is not None:
        n = (param.high - param.low) / param.step
        if abs(n - round(n)) > 1e-9:
            problems.add(spath, f"range [{param.low}, {param.high}] is not a whole number of steps of {step}")
            return False
    return True


def _parse_when(raw: Any, path: str, problems: Problems, param: SearchParam) -> bool:
    wpath = f"{path}.when"
    if not isinstance(raw, dict) or not raw:
        problems.add(wpath, f"expected a mapping such as {{router.method: lbl}} (got {brief(raw)})")
        return False
    ok = True
    for k, v in raw.items():
        values = v if isinstance(v, list) else [v]
        if not values:
            problems.add(f"{wpath}.{k}", "needs at least one value")
            ok = False
        param.when[str(k)] = values
    return ok


def check_conditions(params: list[SearchParam], problems: Problems) -> None:
    """``when`` keys must be searched choice params and name values those params can take."""
    by_key = {p.key: p for p in params}
    for p in params:
        for k, values in list(p.when.items()):
            wpath = f"search.{p.key}.when.{k}"
            other = by_key.get(k)
            if k == p.key:
                problems.add(wpath, "a parameter cannot be conditional on itself")
            elif other is None:
                problems.add(wpath, f"{k!r} is not a searched parameter{did_you_mean(k, by_key)}")
            elif not other.is_choice:
                problems.add(wpath, f"{k!r} is a {other.distribution} range; conditions need a choice parameter")
            else:
                for v in values:
                    if not value_in(v, other.choices):
                        problems.add(wpath, f"{v!r} is not one of the choices {other.choices} of {k}")
                p.when[k] = [v for v in values if value_in(v, other.choices)]
                if p.when[k]:
                    continue
            # a broken condition is reported once, here, and left out of the later checks
            del p.when[k]


def order_by_conditions(params: list[SearchParam], problems: Problems) -> list[SearchParam]:
    """Order params so that the keys in each ``when`` come first (else keeping the YAML order);
    report cycles."""
    ordered: list[SearchParam] = []
    placed: set[str] = set()
    known = {p.key for p in params}  # a condition on a param that failed to parse is reported
    pending = list(params)
    while pending:
        ready = next((p for p in pending if all(k in placed or k not in known for k in p.when)), None)
        if ready is None:
            keys = ", ".join(p.key for p in pending)
            problems.add("search", f"conditions form a cycle among {keys}")
            return ordered + pending
        ordered.append(ready)
        placed.add(ready.key)
        pending.remove(ready)
    return ordered


def parse_exclude(raw: Any, params: list[SearchParam], sampler: SamplerSpec, problems: Problems) -> list[dict[str, list]]:
    if raw in (None, []):
        return []
    if sampler.type != "grid":
        problems.add("exclude", f"only a grid study can exclude combinations (sampler is {sampler.type})")
        return []
    if not isinstance(raw, list):
        problems.add("exclude", f"expected a list of mappings such as {{router.scope: sequence}} (got {_kind(raw)})")
        return []
    by_key = {p.key: p for p in params}
    rules: list[dict[str, list]] = []
    for i, rule in enumerate(raw):
        path = f"exclude[{i}]"
        if not isinstance(rule, dict) or not rule:
            problems.add(path, f"expected a non-empty mapping of searched keys to values (got {brief(rule)})")
            continue
        parsed: dict[str, list] = {}
        for k, v in rule.items():
            values = v if isinstance(v, list) else [v]
            p = by_key.get(k)
            if p is None:
                problems.add(f"{path}.{k}", f"not a searched parameter{did_you_mean(k, by_key)}")
                continue
            for v_ in values:
                if p.is_choice and not value_in(v_, p.choices):
                    problems.add(f"{path}.{k}", f"{brief(v_)} is not one of the choices {p.choices}")
            parsed[str(k)] = values
        rules.append(parsed)
    return rules


# -- objective, sampler, scheduler, budget, resources ----------------------------------------------
def parse_objective(raw: Any, problems: Problems) -> Objective:
    default = Objective([naming.GAP_PURITY], [naming.metric_mode(naming.GAP_PURITY)])
    if raw is None:
        return default
    if not isinstance(raw, dict):
        problems.add("objective", f"expected a mapping with metric, mode, constraints (got {_kind(raw)})")
        return default
    check_keys(problems, raw, ("metric", "mode", "constraints"), "objective")
    metric = raw.get("metric", naming.GAP_PURITY)
    metrics = metric if isinstance(metric, list) else [metric]
    if not metrics or not all(isinstance(m, str) for m in metrics):
        problems.add("objective.metric", f"expected a metric name or a list of names (got {brief(metric)})")
        return default
    if len(set(metrics)) != len(metrics):
        problems.add("objective.metric", f"duplicate metric in {metrics}")
    mode = raw.get("mode")
    if mode is None:
        modes = [naming.metric_mode(m) for m in metrics]
    else:
        modes = mode if isinstance(mode, list) else [mode] * len(metrics)
        if len(modes) != len(metrics):
            problems.add("objective.mode", f"{len(modes)} modes for {len(metrics)} metrics")
            modes = [naming.metric_mode(m) for m in metrics]
        for i, m in enumerate(modes):
            if m not in MODES:
                where = "objective.mode" if not isinstance(mode, list) else f"objective.mode[{i}]"
                problems.add(where, f"expected min or max (got {brief(m)})")
    constraints: dict[str, dict[str, float]] = {}
    raw_c = raw.get("constraints") or {}
    if not isinstance(raw_c, dict):
        problems.add("objective.constraints", f"expected a mapping such as {{load_entropy: {{min: 0.8}}}} (got {_kind(raw_c)})")
        raw_c = {}
    for name, bound in raw_c.items():
        cpath = f"objective.constraints.{name}"
        if not isinstance(bound, dict) or not bound:
            problems.add(cpath, f"expected {{min: x}} and/or {{max: y}} (got {brief(bound)})")
            continue
        check_keys(problems, bound, ("min", "max"), cpath)
        parsed = {}
        for side in ("min", "max"):
            if side in bound:
                if _is_number(bound[side]) and _finite(bound[side]):
                    parsed[side] = float(bound[side])
                else:
                    problems.add(f"{cpath}.{side}", f"expected a finite number (got {brief(bound[side])})")
        if "min" in parsed and "max" in parsed and parsed["min"] > parsed["max"]:
            problems.add(cpath, f"min {parsed['min']} > max {parsed['max']}: no trial can meet it")
        if parsed:
            constraints[str(name)] = parsed
    return Objective(list(metrics), list(modes), constraints)


def parse_sampler(raw: Any, problems: Problems) -> SamplerSpec:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        problems.add("sampler", f"expected a mapping such as {{type: tpe, seed: 0}} (got {_kind(raw)})")
        return SamplerSpec()
    all_options = sorted({o for opts in SAMPLER_OPTIONS.values() for o in opts})
    check_keys(problems, raw, ("type", *all_options), "sampler")
    s = SamplerSpec(type=raw.get("type", "tpe"))
    if s.type not in SAMPLERS:
        problems.add("sampler.type", _unknown_value(s.type, SAMPLERS))
        return SamplerSpec()
    for option in all_options:
        if option in raw and option not in SAMPLER_OPTIONS[s.type]:
            users = [t for t, opts in SAMPLER_OPTIONS.items() if option in opts]
            problems.add(f"sampler.{option}", f"only used by the {' and '.join(users)} sampler, not {s.type}")
    if "seed" in raw:
        s.seed = _int_option(raw["seed"], "sampler.seed", problems, minimum=0, allow_none=True,
                             maximum=2**32 - 1)  # Optuna seeds numpy's RandomState with it
    if "n_startup_trials" in raw and s.type == "tpe":
        s.n_startup_trials = _int_option(raw["n_startup_trials"], "sampler.n_startup_trials", problems, minimum=0)
    if "population_size" in raw and s.type == "nsga2":
        s.population_size = _int_option(raw["population_size"], "sampler.population_size", problems, minimum=2)
    return s


def parse_scheduler(raw: Any, problems: Problems) -> SchedulerSpec:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        problems.add("scheduler", f"expected a mapping such as {{type: asha, grace_period: 100}} (got {_kind(raw)})")
        return SchedulerSpec()
    check_keys(problems, raw, ("type", "grace_period", "reduction_factor"), "scheduler")
    s = SchedulerSpec(type=raw.get("type", "fifo"))
    if s.type not in SCHEDULERS:
        problems.add("scheduler.type", _unknown_value(s.type, SCHEDULERS))
        return SchedulerSpec()
    if s.type == "fifo":
        for option in ("grace_period", "reduction_factor"):
            if option in raw:
                problems.add(f"scheduler.{option}", "only used by the asha scheduler, not fifo")
        return s
    if "grace_period" in raw:
        s.grace_period = _int_option(raw["grace_period"], "scheduler.grace_period", problems, minimum=1)
    if "reduction_factor" in raw:
        rf = raw["reduction_factor"]
        if not _is_number(rf) or not _finite(rf) or not rf > 1:
            problems.add("scheduler.reduction_factor", f"expected a finite number > 1 (got {brief(rf)})")
        else:
            s.reduction_factor = rf
    return s


def parse_budget(raw: Any, problems: Problems) -> BudgetSpec:
    return _plain_section(BudgetSpec, raw, "budget", "{trials: 16, time_s: 900}", problems)


def parse_resources(raw: Any, problems: Problems) -> ResourceSpec:
    r = _plain_section(ResourceSpec, raw, "resources", "{cpu: 1, gpu: 0}", problems)
    if r.gpu > 1 and not float(r.gpu).is_integer():
        problems.add("resources.gpu", f"a fraction of a GPU must be below 1; above 1 use whole GPUs (got {r.gpu})")
        r.gpu = ResourceSpec().gpu
    return r


def parse_reference(raw: Any, problems: Problems) -> ReferenceSpec:
    return _plain_section(ReferenceSpec, raw, "reference", "{reuse: true}", problems)


def parse_tracking(raw: Any, problems: Problems) -> TrackingSpec:
    t = _plain_section(TrackingSpec, raw, "tracking", "{uri: null, experiment: null}", problems)
    if t.experiment is not None and name_problem(t.experiment):
        problems.add("tracking.experiment", f"the experiment name {name_problem(t.experiment)}")
        t.experiment = None
    return t


def parse_report(raw: Any, problems: Problems) -> ReportSpec:
    return _plain_section(ReportSpec, raw, "report", "{equivalence_margin: 0.01}", problems)


CURRENCY = re.compile(r"[A-Z]{3}")
"""An ISO 4217 currency code (``USD``, ``EUR``): what a report prints after an amount."""


def parse_cost(raw: Any, problems: Problems) -> CostSpec | None:
    """The optional price table; None when the spec has none (an empty ``cost:`` included)."""
    if raw is None:
        return None
    example = "{per_gpu_hour: 1.2, per_cpu_hour: 0.05, currency: USD}"
    if not isinstance(raw, dict):
        problems.add("cost", f"expected a mapping such as {example} (got {_kind(raw)})")
        return None
    body = {k: v for k, v in raw.items() if k != "per_node_type"}
    cost = read_fields(CostSpec, body, "cost", problems)
    if not isinstance(cost.currency, str) or not CURRENCY.fullmatch(cost.currency):
        problems.add("cost.currency", f"expected a three-letter ISO 4217 code such as USD or EUR "
                                      f"(got {brief(cost.currency)})")
        cost.currency = CostSpec().currency
    cost.per_node_type = _parse_node_prices(raw.get("per_node_type"), problems)
    if not (cost.per_cpu_hour or cost.per_gpu_hour or cost.per_node_type) and not _cost_problems(problems):
        problems.add("cost", f"gives no price: set per_cpu_hour, per_gpu_hour or per_node_type (e.g. {example})")
    return cost


def _parse_node_prices(raw: Any, problems: Problems) -> dict[str, NodePrice]:
    """``{node type: {per_hour, cpu, gpu}}``: the node's price and what it offers Ray (a run's
    share of the node is the larger of its CPU and GPU shares)."""
    if raw is None:
        return {}
    example = "{ray.worker.gpu_a10g: {per_hour: 1.006, cpu: 4, gpu: 1}}"
    if not isinstance(raw, dict):
        problems.add("cost.per_node_type", f"expected a mapping such as {example} (got {_kind(raw)})")
        return {}
    prices: dict[str, NodePrice] = {}
    for name, body in raw.items():
        path = f"cost.per_node_type.{name}"
        if not isinstance(name, str) or not name.strip():
            problems.add(f"cost.per_node_type.{brief(name)}", "a node type name must be a non-empty string")
            continue
        if not isinstance(body, dict):
            problems.add(path, f"expected a mapping such as {{per_hour: 1.006, cpu: 4, gpu: 1}} "
                               f"(got {_kind(body)} {brief(body)})")
            continue
        before = len(problems)
        price = read_fields(NodePrice, body, path, problems)
        if "per_hour" not in body:
            problems.add(f"{path}.per_hour", "required: the node's price per hour")
        if len(problems) == before and not (price.cpu > 0 or price.gpu > 0):
            problems.add(path, "give what the node offers Ray: cpu and/or gpu above 0 (its share of "
                               "the node is what a run is charged)")
        prices[name] = price
    return prices


def _cost_problems(problems: Problems) -> bool:
    return any(p.startswith("cost") for p in problems)


def _plain_section(cls: type, raw: Any, path: str, example: str, problems: Problems) -> Any:
    """A section whose keys are its dataclass's fields, read by the trial config's typed reader
    (``trainables.config.read_fields``: types, bounds in the field metadata, unknown keys)."""
    if not isinstance(raw, dict):
        problems.add(path, f"expected a mapping such as {example} (got {_kind(raw)})")
        return cls()
    return read_fields(cls, raw, path, problems)


# -- small helpers -----------------------------------------------------------------------------------
def check_keys(problems: Problems, mapping: Mapping, allowed: tuple[str, ...], path: str) -> None:
    """Report every key of ``mapping`` not in ``allowed``, suggesting the closest known one."""
    for key in mapping:
        if key not in allowed:
            hint = did_you_mean(key, allowed, otherwise=f" (known: {', '.join(allowed)})")
            problems.add(f"{path}.{key}" if path else str(key), f"unknown key{hint}")


def unknown_trial_key(key: str) -> str:
    """Empty if ``key`` is a dotted trial-config key, else an 'unknown key' message with a hint."""
    known = flat_field_types()
    if key in known:
        return ""
    candidates = list(known)
    if "." not in key:
        candidates += list(SECTIONS)
    hint = did_you_mean(key, candidates)
    if not hint and "." in key:  # a misspelt section with a good field name: routr.method
        name = key.split(".", 1)[1]
        hint = did_you_mean(key, [f"{s}.{name}" for s in SECTIONS if f"{s}.{name}" in known])
    return f"unknown trial-config key{hint}"


def _unknown_value(value: Any, allowed: tuple[str, ...]) -> str:
    return f"unknown value {brief(value)}, expected one of {list(allowed)}{did_you_mean(value, allowed)}"


def _int_option(value: Any, path: str, problems: Problems, *, minimum: int, allow_none: bool = False,
                hint: str = "", maximum: int | None = None) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f" and <= {maximum:,}" if maximum is not None else ""
        problems.add(path, f"expected an integer >= {minimum}{bound}{hint} (got {brief(value)})")
        return None
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    """``math.isfinite``, False (not OverflowError) for an int too big for a float."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(v), type(v).__name__)

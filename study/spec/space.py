"""The Optuna side of a study spec: a define-by-run search space and the sampler.

``define_by_run(spec)`` is what ``ray.tune.search.optuna.OptunaSearch(space=...)`` takes. Tune
builds each trial's config from the values the function suggests plus the dict it returns (the
spec's ``fixed`` values as constants), so the Tune config is the whole flat trial config.

Grid studies suggest one categorical param, ``naming.GRID_POINT_PARAM`` (an index into
``grid_points(spec)``), through Optuna's ``GridSampler``, and return that point's values as
constants. Optuna's own grid is a plain cartesian product; indexing a precomputed list is what
lets a grid honour ``when`` conditions and ``exclude`` rules and still visit every point once.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

from study import naming
from study.spec.types import StudySpec, expand_points


def define_by_run(spec: StudySpec) -> Callable[[Any], dict[str, Any]]:
    """A define-by-run function: suggests the searched params, returns the constants.

    Returned as an instance of a module-level class, not a closure: Tune pickles the searcher
    (and with it this function) into its experiment state so that a study can be resumed.
    """
    if spec.is_grid:
        return _GridSpace(dict(spec.fixed), grid_points(spec))
    return _Space(dict(spec.fixed), list(spec.params))  # conditions first (StudySpec's order)


class _GridSpace:
    def __init__(self, fixed: dict[str, Any], points: list[dict[str, Any]]):
        self.fixed, self.points = fixed, points

    def __call__(self, trial: Any) -> dict[str, Any]:
        index = trial.suggest_categorical(naming.GRID_POINT_PARAM, list(range(len(self.points))))
        return {**self.fixed, **self.points[index]}


class _Space:
    def __init__(self, fixed: dict[str, Any], params: list):
        self.fixed, self.params = fixed, params

    def __call__(self, trial: Any) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.is_active(chosen):
                chosen[param.key] = param.suggest(trial)
        return dict(self.fixed)


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every point of a grid study's factorial (conditions and exclusions applied), in order."""
    return expand_points(spec.params, spec.exclude)


def optuna_distributions(spec: StudySpec) -> dict[str, Any]:
    """Each searched key's Optuna distribution, by its real name, for grids too: a ``choice`` is a
    ``CategoricalDistribution`` over its choices, a range the ``suggest_int``/``suggest_float``
    distribution ``SearchParam.suggest`` asks for. What the study's Optuna copy records
    (``study.run.optuna_store``); the searcher itself sees ``_grid_point`` for a grid."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in spec.params:
        if p.is_choice:
            out[p.key] = CategoricalDistribution(list(p.choices))
        elif p.is_int:
            out[p.key] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.key] = FloatDistribution(float(p.low), float(p.high), log=p.log,
                                           step=None if p.step is None else float(p.step))
    return out


def make_sampler(spec: StudySpec):
    """The Optuna sampler the spec asks for."""
    import optuna

    s = spec.sampler
    if s.type == "grid":
        n = len(grid_points(spec))
        return optuna.samplers.GridSampler({naming.GRID_POINT_PARAM: list(range(n))}, seed=s.seed)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.type == "nsga2":
        kwargs = {} if s.population_size is None else {"population_size": s.population_size}
        return optuna.samplers.NSGAIISampler(seed=s.seed, **kwargs)
    kwargs = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    # multivariate TPE models interactions (method x coefficient); group=True splits the space
    # by which conditional params a trial has, as plain multivariate TPE cannot handle params
    # that only exist in some trials. constant_liar keeps concurrent trials from all being
    # suggested the same point while earlier ones are still running.
    with warnings.catch_warnings():  # multivariate and group are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=s.seed,
            multivariate=True,
            group=spec.has_conditional_params,
            constant_liar=True,
            **kwargs,
        )


def trial_values(trial: Any, constants: dict[str, Any]) -> dict[str, Any]:
    """The flat config Tune would build for an Optuna trial: its params plus the constants."""
    return {**trial.params, **constants}

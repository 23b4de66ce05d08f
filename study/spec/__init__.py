"""The study spec: its types, loading (with ``--set`` overrides), checks, and the Optuna space.

``load_spec`` (in ``study.spec.load``) is the way in; the names callers use are re-exported here.
Imports run downward only: ``study.results`` -> ``study.run`` -> ``study.spec`` -> ``trainables``.
"""

from study.spec.load import (  # noqa: F401 - the package's public names
    BudgetSpec, ConfigError, Objective, ReferenceSpec, ResourceSpec, SamplerSpec, SchedulerSpec,
    SearchParam, StudySpec, TrackingSpec, load_spec, load_trial_config, parse_set, read_yaml,
    safe_load, spec_from_dict,
)

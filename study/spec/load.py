"""Study specs: load a YAML study spec, check it whole, and hand out trial configs.

``load_spec(path)`` reads the YAML (format: ``docs/spec.md``), parses its structure
(``study.spec.parse``), checks every trial it can produce against the trial config
(``study.spec.checks``) and raises one ``ConfigError`` listing every problem, each starting with
its key path (``search.router.lbl_coef.loguniform: low 0.1 > high 0.01``).

Also here: ``load_trial_config`` for the one-trial YAML configs of ``moe-study train`` and the
``--set key=value`` override parser.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from trainables.config import TrialConfig, flatten
from trainables.errors import ConfigError
from study.spec.checks import check_spec
from study.spec.overrides import apply_overrides, overridden_paths
from study.spec.parse import Problems, parse_spec
from study.spec.types import (
    BudgetSpec, Objective, ReferenceSpec, ResourceSpec, SamplerSpec, SchedulerSpec, SearchParam,
    StudySpec, TrackingSpec,
)

__all__ = [
    "BudgetSpec", "ConfigError", "Objective", "ReferenceSpec", "ResourceSpec", "SamplerSpec",
    "SchedulerSpec", "SearchParam", "StudySpec", "TrackingSpec", "load_spec", "spec_from_dict",
    "load_trial_config", "parse_set", "read_yaml",
]


def load_spec(path: str | Path, cluster_resources: Mapping[str, float] | None = None,
              sets: Iterable[str] = ()) -> StudySpec:
    """Load and check a study spec; raise ``ConfigError`` with every problem found.

    ``cluster_resources`` (e.g. ``ray.cluster_resources()``: ``{"CPU": 2, "GPU": 0}``) adds a
    check that one trial fits the cluster. The study name defaults to the file name's stem.
    ``sets`` are ``key=value`` overrides (``study.spec.overrides``), applied before the checks.
    """
    path = Path(path)
    raw = read_yaml(path, what="study spec")
    assignments = list(sets)
    parsed = [parse_set(s) for s in assignments]
    raw = apply_overrides(raw, parsed)
    try:
        return spec_from_dict(raw, default_name=path.stem, source=str(path), cluster_resources=cluster_resources)
    except ConfigError as err:
        raise ConfigError(_blame_overrides(err.problems, str(path), zip(assignments, parsed))) from None


def _blame_overrides(problems: Iterable[str], source: str, overrides) -> list[str]:
    """A problem in a key that ``--set`` gave is the ``--set``'s, not the file's."""
    paths = [(text, path) for text, (key, _) in overrides for path in overridden_paths(key)]
    out = []
    for problem in problems:
        rest = problem.removeprefix(f"{source}: ")
        blamed = next((text for text, path in paths if rest == path or rest.startswith((path + ":", path + "."))), None)
        out.append(f"--set {blamed}: {rest}" if blamed else problem)
    return out


def spec_from_dict(
    raw: Any,
    *,
    default_name: str | None = None,
    source: str | None = None,
    cluster_resources: Mapping[str, float] | None = None,
) -> StudySpec:
    """Parse and check an already loaded spec (e.g. ``StudySpec.to_dict()`` from an artifact)."""
    spec, problems = parse_spec(raw, default_name=default_name, source=source)
    if isinstance(raw, dict):
        check_spec(spec, problems, cluster_resources)
    if problems:
        where = f"{source}: " if source else ""
        raise ConfigError([f"{where}{p}" for p in _dedupe(problems)])
    return spec


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``) and ``1e-3`` is a string;
    learning rates and coefficients are written the short way far too often for that.
    """


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SpecLoader)  # a SafeLoader: builds plain data only


def read_yaml(path: str | Path, *, what: str = "YAML file") -> Any:
    """Safe-load a YAML file; unreadable files and YAML syntax errors are ConfigErrors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text") from None
    try:
        return safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


# -- one-trial configs -------------------------------------------------------------------------
def parse_set(assignment: str) -> tuple[str, Any]:
    """``"train.steps=50"`` -> ``("train.steps", 50)``; the value is read as YAML."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. train.steps=50")
    try:
        value = safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML: {err}") from None
    return key, value


def load_trial_config(path: str | Path | None, sets: Iterable[str] = ()) -> TrialConfig:
    """A trial config from a YAML file (nested sections or dotted keys) plus ``--set`` overrides.

    ``path`` None starts from the defaults.
    """
    flat: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path, what="trial config")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a trial config must be a mapping of keys to values")
        flat = flatten(raw)
    for assignment in sets:
        key, value = parse_set(assignment)
        flat[key] = value
    try:
        return TrialConfig.from_flat(flat)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError([f"{where}{p}" for p in err.problems]) from None


def _dedupe(problems: Problems) -> list[str]:
    seen: dict[str, None] = {}
    for p in problems:
        seen.setdefault(p, None)
    return list(seen)

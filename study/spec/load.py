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

from trainables.config import TrialConfig, flatten, twice_given
from trainables.errors import ConfigError, brief
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


MAX_YAML_BYTES = 1 << 20
"""Largest spec or trial-config file read (1 MiB; the shipped specs are 1-5 KB)."""
MAX_YAML_NODES = 20_000
"""Most values one document may hold, every alias counted at the full size of what it names:
a ~500-byte alias bomb expands to millions of values, which the error messages, ``deepcopy``
and the spec's hash would each walk in full."""
MAX_INT_DIGITS = 100
"""Longest integer literal read (no setting needs more; Python refuses above 4,300 digits)."""


class YamlLimit(yaml.YAMLError):
    """A document the spec loader refuses to build: duplicate keys, too many values, an integer
    too long, a recursive alias. The message names the key or value and the line."""


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a number, and refuses what the plain one
    lets through silently or at any cost (``YamlLimit``):

    - a key given twice in one mapping (YAML 1.1 loaders keep the last one: ``budget.trials: 4``
      then ``1000000`` ran a million trials), naming the key and both lines; a merge key
      (``<<: *base``) may still be overridden;
    - more than ``MAX_YAML_NODES`` values, aliases counted at the size they expand to, and an
      alias inside the node it names (a recursive structure);
    - integers of more than ``MAX_INT_DIGITS`` digits.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``) and ``1e-3`` is a string;
    learning rates and coefficients are written the short way far too often for that.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._expanded = 0  # values composed so far, aliases counted at their full size
        self._sizes: dict[int, int] = {}  # id(node) -> its full size, once composed

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise YamlLimit(f"line {mark.line + 1}: an alias inside the value it names "
                                "(a recursive structure)")
            self._count(size, mark)
            return node
        before = self._expanded
        node = super().compose_node(parent, index)
        self._count(1, node.start_mark)
        self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, n: int, mark) -> None:
        self._expanded += n
        if self._expanded > MAX_YAML_NODES:
            raise YamlLimit(f"line {mark.line + 1}: more than {MAX_YAML_NODES:,} values "
                            "(aliases counted at the size they expand to)")

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the plain loader words that
                    continue
                if earlier is not key_node:
                    raise YamlLimit(
                        f"key {brief(key)} is given twice (lines {earlier.start_mark.line + 1} and "
                        f"{key_node.start_mark.line + 1}); YAML would silently keep the last one")
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        digits = sum(c.isalnum() for c in str(node.value))  # 0x, 0o, 0b prefixes included
        if digits > MAX_INT_DIGITS:
            raise YamlLimit(f"line {node.start_mark.line + 1}: an integer of {digits:,} digits "
                            f"(at most {MAX_INT_DIGITS} are read)")
        return super().construct_yaml_int(node)


SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


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
    """Safe-load a YAML file; unreadable, oversized and invalid files are ConfigErrors (limits:
    ``SpecLoader``)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: the {what} is larger than {MAX_YAML_BYTES:,} bytes")
        text = data.decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text") from None
    try:
        return safe_load(text)
    except YamlLimit as err:
        raise ConfigError(f"{path}: {err}") from None
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
        twice = twice_given(raw)
        if twice:
            raise ConfigError([f"{path}: {k}: given twice (in its section and as a dotted key); "
                               "give it once" for k in twice])
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

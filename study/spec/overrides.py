"""``--set key=value`` on a study spec: the same spec, one setting changed, before it is checked.

``--set model.d_model=256`` adds (or replaces) a fixed value: the usual way to rerun a study at
another model size. Setting a *searched* key fixes it: the key leaves ``search`` and the grid
shrinks (``--set train.seed=0``); a list for a searched choice keeps only those choices
(``--set "train.seed=[0, 1]"``), and a list for any other key searches it over those values
(``--set "train.seed=[0, 1, 2]"`` on a spec that fixes the seed: three seeds, paired). Keys of
the spec's other sections reach them: ``--set budget.trials=4``, ``--set sampler.type=random``,
``--set objective.constraints.load_entropy.min=0.8``, ``--set name=quick_lr``. ``exclude`` rules
follow: a rule that can no longer match is dropped, and a fixed key is taken out of the rules
that still can. A problem the checks then find in an overridden key is blamed on its ``--set``.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from typing import get_origin

from trainables.config import flat_field_types, flatten, twice_given
from trainables.errors import ConfigError

from study.spec.parse import SAMPLER_OPTIONS, SCHEDULER_OPTIONS
from study.spec.types import value_in


def apply_overrides(raw: Any, sets: Iterable[tuple[str, Any]]) -> Any:
    """A copy of the raw spec mapping with every ``(key, value)`` override applied in order."""
    sets = list(sets)
    if not sets or not isinstance(raw, dict):
        return raw
    out = copy.deepcopy(raw)
    problems: list[str] = []
    for section in ("fixed", "search"):  # flattened here: a key given twice must not vanish
        if isinstance(out.get(section), dict):
            problems += [f"{section}.{k}: given twice (in its section and as a dotted key); give it once"
                         for k in twice_given(out[section])]
    fixed = flatten(out.get("fixed") or {}) if isinstance(out.get("fixed") or {}, dict) else {}
    search = flatten(out.get("search") or {}) if isinstance(out.get("search") or {}, dict) else {}
    exclude = out.get("exclude") if isinstance(out.get("exclude"), list) else []
    for key, value in sets:
        head, _, rest = key.partition(".")
        if key in TOP_LEVEL_VALUES or head in SPEC_SECTIONS:
            problem = _set_in_section(out, head, rest, value)
            if problem:
                problems.append(f"--set {key}: {problem}")
            continue
        body = search.get(key)
        choices = body.get("choice") if isinstance(body, dict) else None
        if isinstance(value, list) and choices is None and not _list_valued(key):
            # a list for a scalar key: search it over those values (a condition stays)
            when = body.get("when") if isinstance(body, dict) else None
            search[key] = {"choice": value, **({"when": when} if when is not None else {})}
            fixed.pop(key, None)
            continue
        if isinstance(value, list) and isinstance(choices, list):
            missing = [v for v in value if not value_in(v, choices)]
            if missing or not value:
                problems.append(f"--set {key}: {missing or value!r} not among the searched choices {choices}")
                continue
            search[key] = {**body, "choice": value}
            exclude = _narrow_rules(exclude, key, value)
            continue
        if key in search:
            del search[key]
            exclude = _narrow_rules(exclude, key, [value], drop_key=True)
        fixed[key] = value
    empty = [i for i, rule in enumerate(exclude) if isinstance(rule, dict) and not rule]
    if empty:
        problems.append(f"--set: exclude{empty} would then exclude every trial")
    if problems:
        raise ConfigError(problems)
    out["fixed"], out["search"] = fixed, search
    if "exclude" in out or exclude:
        out["exclude"] = exclude
    return out


SPEC_SECTIONS = ("objective", "sampler", "scheduler", "budget", "resources", "reference", "tracking",
                 "report", "cost")
"""Sections of a spec other than ``fixed`` / ``search`` / ``exclude`` that ``--set`` reaches."""
TOP_LEVEL_VALUES = ("name", "description")
TYPE_OPTIONS = {"sampler": SAMPLER_OPTIONS, "scheduler": SCHEDULER_OPTIONS}
"""Options each sampler / scheduler type uses: ``--set sampler.type=...`` drops the others."""


def overridden_paths(key: str) -> tuple[str, ...]:
    """Where the checks report a problem with the override of ``key`` (its key paths)."""
    if key in TOP_LEVEL_VALUES or key.partition(".")[0] in SPEC_SECTIONS:
        return (key,)
    return (f"fixed.{key}", f"search.{key}")


def _set_in_section(out: dict, head: str, rest: str, value: Any) -> str:
    """Set ``head.rest`` (``rest`` may be dotted) in the raw spec; a problem, or ""."""
    if not rest:
        out[head] = value
        return ""
    section = out.get(head)
    if isinstance(section, str):  # the short forms ``sampler: grid``, ``objective: purity``
        section = {"metric" if head == "objective" else "type": section}
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return f"the spec's {head} is not a mapping"
    out[head] = section = copy.deepcopy(section)
    *parents, leaf = rest.split(".")
    node = section
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"{head}.{part} is not a mapping"
        node = child
    node[leaf] = value
    if head in TYPE_OPTIONS and rest == "type":
        # another sampler or scheduler: the old one's options would be refused as unused
        used = TYPE_OPTIONS[head].get(value, ())
        for option in [k for k in section if k != "type" and k not in used]:
            del section[option]
    return ""


def _list_valued(key: str) -> bool:
    """Whether the trial-config field takes a list (``data.domains``): a list is its value, not
    choices to search."""
    return get_origin(flat_field_types().get(key)) is list


def _narrow_rules(rules: list, key: str, kept: list, *, drop_key: bool = False) -> list:
    """Rules after ``key`` is limited to ``kept`` values: a rule none of whose values for ``key``
    is kept can never match and goes; a fixed key (``drop_key``) leaves the rules it is in."""
    out = []
    for rule in rules:
        if not isinstance(rule, dict) or key not in rule:
            out.append(rule)
            continue
        values = rule[key] if isinstance(rule[key], list) else [rule[key]]
        still = [v for v in values if value_in(v, kept)]
        if not still:
            continue
        rule = dict(rule)
        if drop_key:
            del rule[key]
        else:
            rule[key] = still
        out.append(rule)
    return out

"""``--set key=value`` on a study spec: the same spec, one setting changed, before it is checked.

``--set model.d_model=256`` adds (or replaces) a fixed value: the usual way to rerun a study at
another model size. Setting a *searched* key fixes it: the key leaves ``search`` and the grid
shrinks (``--set train.seed=0``); a list for a searched choice keeps only those choices
(``--set "train.seed=[0, 1]"``). ``exclude`` rules follow: a rule that can no longer match is
dropped, and a fixed key is taken out of the rules that still can.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from trainables.config import flatten, twice_given
from trainables.errors import ConfigError

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
        body = search.get(key)
        choices = body.get("choice") if isinstance(body, dict) else None
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

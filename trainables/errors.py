"""The project's one exception for bad user input (configs, specs, data sources), and the
helpers its messages share: a "did you mean", a value shortened for a message, and the one rule
for names that become MLflow keys, experiment names or folder names."""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Iterable

MAX_PROBLEM_CHARS = 1000
"""Longest problem line a ``ConfigError`` keeps: a value printed whole (an alias bomb, a huge
list) must not make megabytes of error text."""
MAX_PROBLEMS = 200
"""Most problem lines a ``ConfigError`` keeps; the rest are counted."""

NAME_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, no '..'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME_CHARS = 100

_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 80
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 8
_BRIEF.maxlevel = 3
_BRIEF.maxlong = 40


def did_you_mean(word: object, candidates: Iterable[str], *, otherwise: str = "",
                 cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to a misspelt ``word``, else
    ``otherwise``: the one place error messages suggest a correction."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else otherwise


def brief(value: object) -> str:
    """``repr(value)`` cut short (long strings, big lists, deep nesting, huge integers): what a
    message shows of a value the user gave, at a cost bounded whatever the value's size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        # repr() of an int above 4,300 digits raises (CPython's int_max_str_digits)
        return f"an integer of {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        return _BRIEF.repr(value)
    except ValueError:  # such an int deeper inside a container
        return f"a {type(value).__name__} holding an integer too long to print"


def name_problem(value: object) -> str:
    """Empty if ``value`` is a safe name, else why not (with the value, shortened).

    Study names, experiment names and domain names become MLflow keys and filter values
    (``val_loss/<domain>``), folder names under the study storage, and file names in the data
    cache: letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit, no ``..``
    (so a name can neither leave its folder nor break a key MLflow checks), at most
    ``MAX_NAME_CHARS`` characters. The whole string must match (``fullmatch``: a trailing
    newline is not allowed through).
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        return f"must be {NAME_RULE} (got {brief(value)})"
    if len(value) > MAX_NAME_CHARS:
        return f"at most {MAX_NAME_CHARS} characters (got {len(value)})"
    return ""


def _cap(problem: object) -> str:
    text = str(problem)
    if len(text) <= MAX_PROBLEM_CHARS:
        return text
    return f"{text[:MAX_PROBLEM_CHARS]}... ({len(text) - MAX_PROBLEM_CHARS:,} more characters)"


class ConfigError(ValueError):
    """Bad configuration. Carries every problem found, each naming its key or value (each line
    at most ``MAX_PROBLEM_CHARS`` characters, at most ``MAX_PROBLEMS`` lines)."""

    def __init__(self, problems: list[str] | str):
        problems = [problems] if isinstance(problems, str) else list(problems)
        capped = [_cap(p) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            capped.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        self.problems = capped
        super().__init__("\n".join(f"  - {p}" for p in self.problems))

    def __str__(self) -> str:  # one line per problem, readable on a terminal
        n = len(self.problems)
        head = "invalid configuration" if n == 1 else f"invalid configuration ({n} problems)"
        return head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)

"""The project's one exception for bad user input (configs, specs, data sources)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: object, candidates: Iterable[str], *, otherwise: str = "",
                 cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to a misspelt ``word``, else
    ``otherwise``: the one place error messages suggest a correction."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else otherwise


class ConfigError(ValueError):
    """Bad configuration. Carries every problem found, each naming its key or value."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(f"  - {p}" for p in self.problems))

    def __str__(self) -> str:  # one line per problem, readable on a terminal
        n = len(self.problems)
        head = "invalid configuration" if n == 1 else f"invalid configuration ({n} problems)"
        return head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)

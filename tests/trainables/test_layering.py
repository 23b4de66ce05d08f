"""The layering the code promises: the science (``trainables``) runs without Ray and without the
orchestration, and the study packages import only downward (results -> run -> spec)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_trainables_module_imports_without_ray_or_study():
    code = (
        "import pkgutil, importlib, sys, trainables\n"
        "names = [m.name for m in pkgutil.walk_packages(trainables.__path__, 'trainables.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'study'))\n"
        "print(len(names), bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    count, bad = out.stdout.split(" ", 1)
    assert int(count) > 20  # the walk found the package's modules
    assert bad.strip() == "[]"


LAYERS = {"study.spec": 0, "study.run": 1, "study.results": 2}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _layer(module: str) -> int | None:
    return next((rank for prefix, rank in LAYERS.items()
                 if module == prefix or module.startswith(prefix + ".")), None)


def test_study_packages_import_only_downward():
    upward = []
    for path in sorted((REPO / "study").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        own = _layer(module)
        if own is None:  # study.cli (on top) and study.naming (under all) are free
            continue
        for target in _imports(path):
            other = _layer(target)
            if other is not None and other > own:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_did_you_mean_is_suggested_in_one_place():
    """Every "did you mean" of the project's error messages comes from trainables.errors."""
    from trainables.errors import did_you_mean

    assert did_you_mean("routr.method", ["router.method", "router.scope"]) == "; did you mean 'router.method'?"
    assert did_you_mean("zzz", ["router.method"], otherwise=" (known: router.method)") == " (known: router.method)"
    callers = [str(p.relative_to(REPO)) for top in ("study", "trainables") for p in (REPO / top).rglob("*.py")
               if "get_close_matches" in p.read_text()]
    assert callers == ["trainables/errors.py"]

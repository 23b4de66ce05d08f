"""Where built mixes and downloaded data packages live, and how they are written safely."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from trainables.config import DataConfig

# Bump when cleaning, selection, cutting or splitting changes what a mix holds: it is part of
# every content hash, so old cached mixes are simply not found any more.
DATA_CODE_VERSION = "3"
CACHE_ENV = "MOE_STUDY_CACHE"


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "moe-routing-study"


def cache_root(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$MOE_STUDY_CACHE``, else ``~/.cache/moe-routing-study``."""
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()


def wheel_dirs(cfg: DataConfig) -> tuple[Path, ...]:
    """Downloads go to this mix's cache; the default cache is searched too (a test or a study
    with its own cache_dir then needs no second download)."""
    dirs = [cache_root(cfg) / "wheels", default_cache_root() / "wheels"]
    return tuple(dict.fromkeys(d.resolve() for d in dirs))


def content_hash(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def write_atomically(path: Path, write) -> None:
    """``write(tmp_path)`` then rename: readers see the old file, no file, or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An advisory lock next to ``path``: trials that need the same mix at the same moment build
    it once; the others wait and then load it. (The atomic write keeps things correct without it.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: correctness still holds, only work may be duplicated
        yield
        return
    with open(path.with_suffix(path.suffix + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

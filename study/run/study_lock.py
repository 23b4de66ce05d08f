"""One process per study: a lock file in the study's folder, held for a whole run or resume.

``moe-study run`` takes the folder ``<storage>/<name>/`` and its lock at the "does this study
exist" check, before the minutes of data building that come next, and keeps it to the end;
``moe-study resume`` takes it before reading ``study.json``. A second ``run`` of the same name, a
second ``resume``, or a ``resume`` while the study runs exits 2 naming the process that holds it.

The lock is an ``flock`` on ``<storage>/<name>/study.lock``, whose content says who holds it
(pid, host, command, start). The kernel drops an ``flock`` when its process dies, however it
dies, so a lock file left by a killed driver is stale by construction: the next run or resume
takes it over with a note. A holder ending normally unlinks the file while still holding it;
a process that locked the old file meanwhile sees that the path no longer names it and tries
again, so two processes never both believe they hold the study. On a file system without
``flock`` (``ENOLCK``), the content decides: a holder on this host whose pid is gone is stale, any
other holder is taken as alive. A lock file naming another host is never taken over (whether
an ``flock`` reaches across a shared file system depends on its mount): the message says which
file to delete once that process is known to be gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trainables.errors import ConfigError

LOCK_FILE = "study.lock"


@dataclass
class StudyLock:
    path: Path
    fd: int
    created_folder: bool
    """Whether taking the lock created the study's folder (removed again if left empty)."""
    taken_over: dict | None = None
    """The holder of a stale lock this one replaced (its process was gone)."""

    def release(self) -> None:
        """Unlink the lock file (while still holding it), close it, and remove the study's folder
        if this lock created it and nothing else was written there."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
        if self.created_folder:
            try:
                self.path.parent.rmdir()  # only when empty: a study that started keeps its folder
            except OSError:
                pass


def holder_text(info: dict | None) -> str:
    """``process 1234 on host h (moe-study run, since 2026-12-02 15:04:05)``."""
    if not info:
        return "a process that left no details"
    since = f", since {info['started']}" if info.get("started") else ""
    return (f"process {info.get('pid', '?')} on host {info.get('host', '?')} "
            f"({info.get('command', '?')}{since})")


def acquire(folder: str | Path, name: str, command: str, *, create: bool = True) -> StudyLock:
    """Take study ``name``'s lock in ``folder`` (created if ``create``), or raise ``ConfigError``
    naming the process that holds it."""
    folder = Path(folder)
    created = False
    if create:
        try:
            folder.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd)
            previous = _read(fd)
            if locked is None:  # no flock on this file system: the content decides
                if previous and not _is_gone(previous):
                    raise _in_use(name, previous, path)
            elif not locked:
                raise _in_use(name, previous)
            elif not _still_at(fd, path):
                os.close(fd)  # its holder unlinked it on the way out: lock the new file
                continue
            elif previous and previous.get("host") != socket.gethostname():
                # a holder on another host of a shared file system: whether its flock reaches
                # here depends on the mount, so only the user can say that it is gone
                raise _in_use(name, previous, path)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_me(command)).encode(), 0)
            os.fsync(fd)
            return StudyLock(path, fd, created, previous or None)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            if created:
                try:
                    path.unlink(missing_ok=True)
                    folder.rmdir()
                except OSError:
                    pass
            raise


@contextmanager
def hold_study_lock(folder: str | Path, name: str, command: str, *, create: bool = True) -> Iterator[StudyLock]:
    """``acquire`` for the duration of a ``with`` block; says so when it replaced a stale lock."""
    lock = acquire(folder, name, command, create=create)
    if lock.taken_over:
        print(f"[{name}] note: took over the study's lock from {holder_text(lock.taken_over)}, "
              "which is no longer running", flush=True)
    try:
        yield lock
    finally:
        lock.release()


def live_holder(folder: str | Path) -> dict | None:
    """Who holds the lock in ``folder`` now (what its file says, ``{}`` if nothing), or None when
    no process does: the file is missing, or its holder died (a stale file). Creates and writes
    nothing; the probe holds a shared lock for an instant, during which an ``acquire`` elsewhere
    would see the study in use. A holder on another host counts as live, as ``acquire`` takes it."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = _read(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return info
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # the content decides
                return info if info and not _is_gone(info) else None
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        if info and info.get("host") not in (None, "?", socket.gethostname()):
            return info
        return None
    finally:
        os.close(fd)


def _in_use(name: str, holder: dict | None, path: Path | None = None) -> ConfigError:
    gone = f"; if that process is gone, delete {path}" if path is not None else ""
    return ConfigError(f"study {name!r} is in use by {holder_text(holder)}: one run or resume "
                       f"at a time; wait for it to end (or stop it) and try again{gone}")


def _flock(fd: int) -> bool | None:
    """True if locked, False if another process holds it, None if the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise


def _still_at(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "command": "an unreadable lock file"}
    return info if isinstance(info, dict) else {}


def _me(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _is_gone(info: dict) -> bool:
    """Whether a holder recorded in a lock file is known to be dead (only on this host)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

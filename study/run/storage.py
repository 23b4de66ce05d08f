"""Where a study keeps its files: a local folder, or a URI that ``pyarrow.fs`` opens
(``s3://bucket/prefix``, ``gs://...``, ``file:///abs/path``; query options such as
``?endpoint_override=host:port`` for S3-compatible stores go to pyarrow).

One layout on both (``study.run.runner``): ``<root>/<name>/study.json`` (what ``moe-study resume``
needs), ``<root>/<name>/mlflow-spool.jsonl`` (MLflow writes left undelivered), and Tune's
experiments ``<root>/<name>/reference`` and ``<root>/<name>/search``. A local folder is used with
plain file operations, as before; a URI through the pyarrow filesystem it names, which is handed
to Tune as well (``storage_filesystem``), so Tune, its trials and the study state share one
storage. Object stores have no append and no rename: a file is written whole (an object upload is
atomic), and appending rewrites it.
"""

from __future__ import annotations

import functools
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from trainables.errors import ConfigError


def is_uri(root: str) -> bool:
    return "://" in root


def resolve_root(root: str) -> str:
    """A URI as given, a local path made absolute."""
    return root if is_uri(root) else os.path.abspath(root)


@functools.lru_cache(maxsize=16)
def filesystem(root: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a storage root, made once per root; ConfigError
    naming the root if pyarrow cannot make sense of it (unknown scheme, malformed URI)."""
    import pyarrow.fs as pafs

    if not is_uri(root):
        return pafs.LocalFileSystem(), os.path.abspath(root)
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except (ValueError, TypeError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise ConfigError(f"--storage {root}: not a storage pyarrow can open ({exc})") from None
    return fs, path.rstrip("/")


BUCKET_STORES = ("s3", "gcs")
"""pyarrow filesystems whose first path component is a bucket, which must exist beforehand."""


def check_root(root: str) -> None:
    """Refuse, before a study starts, a storage URI it could not finish on: ConfigError for
    credentials written in the URI (``s3://KEY:SECRET@bucket/...``: they would be kept in
    ``study.json`` on the bucket and printed in every message naming a file) and for a bucket
    that does not exist (a typo found only when the first file is written, after the MLflow
    runs were opened); OSError when the store cannot be reached or refuses the credentials.
    A local root passes: its folders are made as needed."""
    if not is_uri(root):
        return
    parts = urlsplit(root)
    if parts.username is not None or parts.password is not None:
        shown = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
        raise ConfigError(f"--storage {shown}: credentials in the storage URI would be written to "
                          "the study's state and its messages; give them through the environment "
                          "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or an "
                          "instance profile")
    import pyarrow.fs as pafs

    fs, path = filesystem(root)
    if fs.type_name in BUCKET_STORES:
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type != pafs.FileType.Directory:
            raise ConfigError(f"--storage {root}: the bucket {bucket!r} does not exist (a study does "
                              "not create buckets: make it first, e.g. `aws s3 mb s3://BUCKET`)")


def display(root: str, *parts: str) -> str:
    """``root`` joined with ``parts``, for messages: a path, or the URI with the parts in its path
    (before any query)."""
    if not is_uri(root):
        return os.path.join(root, *parts)
    base, sep, query = root.partition("?")
    return posixpath.join(base.rstrip("/"), *parts) + sep + query


def folder_names(root: str) -> list[str] | None:
    """The names of the folders directly under ``root`` (sorted), None if ``root`` is not
    there. Reads only."""
    if not is_uri(root):
        try:
            return sorted(e.name for e in os.scandir(root) if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return None
    import pyarrow.fs as pafs

    fs, base = filesystem(root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return None
    found = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    return sorted(posixpath.basename(i.path) for i in found if i.type == pafs.FileType.Directory)


def tune_location(root: str, *parts: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Tune: the local path and None for a local root
    (Tune's default), else the path inside the URI's filesystem and that filesystem."""
    if not is_uri(root):
        return os.path.join(root, *parts), None
    fs, base = filesystem(root)
    return posixpath.join(base, *parts), fs


@dataclass(frozen=True)
class StorageFile:
    """One file of a study's storage (picklable: Tune pickles the tracker that holds the spool)."""

    root: str
    relpath: str

    def __str__(self) -> str:
        return display(self.root, self.relpath)

    @property
    def name(self) -> str:
        return PurePosixPath(self.relpath).name

    # a local root: plain files, written through a temporary name and renamed into place
    def _local(self) -> Path:
        return Path(self.root) / self.relpath

    def _remote(self) -> tuple[Any, str]:
        fs, base = filesystem(self.root)
        return fs, posixpath.join(base, self.relpath)

    def with_name(self, name: str) -> "StorageFile":
        """The file ``name`` beside this one."""
        return StorageFile(self.root, posixpath.join(posixpath.dirname(self.relpath), name))

    def local_path(self) -> Path | None:
        """The file's local path; None on remote storage."""
        return None if is_uri(self.root) else self._local()

    def exists(self) -> bool:
        if not is_uri(self.root):
            return self._local().exists()
        import pyarrow.fs as pafs

        fs, path = self._remote()
        return fs.get_file_info(path).type == pafs.FileType.File

    def read_text(self, errors: str = "strict") -> str:
        if not is_uri(self.root):
            return self._local().read_text(errors=errors)
        fs, path = self._remote()
        with fs.open_input_stream(path) as f:
            return f.read().decode(errors=errors)

    def write_text(self, text: str) -> None:
        """Replace the file's content at once: a reader sees the old or the new, never half."""
        if not is_uri(self.root):
            _replace_durably(self._local(), text)
            return
        fs, path = self._remote()
        fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(path) as f:  # an object appears whole when the upload ends
            f.write(text.encode())

    def append_text(self, text: str) -> None:
        if not is_uri(self.root):
            path = self._local()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return
        self.write_text((self.read_text() if self.exists() else "") + text)

    def unlink(self, missing_ok: bool = False) -> None:
        if not is_uri(self.root):
            self._local().unlink(missing_ok=missing_ok)
            return
        if missing_ok and not self.exists():
            return
        fs, path = self._remote()
        fs.delete_file(path)


def _replace_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a temporary beside it, fsynced, renamed over it. A failure
    (a full disk) leaves ``path`` as it was and no temporary behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself reaches the disk
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def as_storage_file(location: StorageFile | str | os.PathLike | None) -> StorageFile | None:
    """A StorageFile for a StorageFile, a local path (absolute after this) or None."""
    if location is None or isinstance(location, StorageFile):
        return location
    path = Path(location).absolute()
    return StorageFile(str(path.parent), path.name)

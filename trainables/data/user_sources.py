"""User-defined domains (``data.extra``): local files and folders, or Hugging Face datasets.

    {name: poems, path: corpora/poems/}                          # a folder: one document per file
    {name: notes, path: notes.txt}                               # blank-line-separated documents
    {name: news,  path: news.jsonl, text_field: body}            # one document per record
    {name: wiki,  path: wiki.parquet}                            # one document per row
    {name: tiny,  hf: ./saved_dataset, split: train}             # datasets.save_to_disk output
    {name: hub,   hf: user/dataset, config: en, split: train}    # datasets.load_dataset

Relative paths are taken from the current directory; a study should call ``with_absolute_paths``
before trials change directory.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

from trainables.config import DataConfig
from trainables.data.cleaning import split_blank_line_chunks
from trainables.data.sources import DomainSource, selection_order
from trainables.errors import ConfigError, brief

FORMATS = ("text", "jsonl", "parquet")
EXTRA_KEYS = {"name", "path", "hf", "format", "text_field", "split", "config"}
_SUFFIX_FORMAT = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet",
}
# datasets' packaged builders for single local files given as `hf:`.
_SUFFIX_BUILDER = {
    ".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json",
    ".csv": "csv", ".txt": "text",
}


def with_absolute_paths(cfg: DataConfig, base_dir: str | os.PathLike) -> DataConfig:
    """A copy whose relative ``path``/local ``hf`` entries are resolved against ``base_dir``."""
    extra = []
    for entry in cfg.extra:
        entry = dict(entry)
        for key in ("path", "hf"):
            value = entry.get(key)
            if isinstance(value, str) and value and _looks_local(value, key):
                p = Path(value).expanduser()
                entry[key] = str(p if p.is_absolute() else (Path(base_dir) / p).resolve())
        extra.append(entry)
    return dataclasses.replace(cfg, extra=extra)


def _looks_local(value: str, key: str) -> bool:
    """``path`` is always local; ``hf`` is local when it exists or is written like a path."""
    if key == "path":
        return True
    return Path(value).expanduser().exists() or value.startswith(("/", "./", "../", "~"))


def entry_problems(index: int, entry: dict) -> list[str]:
    """Problems of one ``data.extra`` entry that need no reading (keys, format, path existence)."""
    where = f"data.extra[{index}]"
    if not isinstance(entry, dict) or not entry.get("name"):
        return [f"{where}: must be a mapping with a 'name'"]
    where = f"{where} ({entry['name']})"
    problems = [f"{where}: unknown key {k!r}, expected some of {sorted(EXTRA_KEYS)}"
                for k in entry if k not in EXTRA_KEYS]
    has_path, has_hf = bool(entry.get("path")), bool(entry.get("hf"))
    if has_path == has_hf:
        problems.append(f"{where}: needs exactly one of 'path' or 'hf'")
        return problems
    fmt = entry.get("format")
    if fmt is not None and fmt not in FORMATS:
        problems.append(f"{where}: format {fmt!r} is not one of {list(FORMATS)}")
    if has_path:
        path = Path(str(entry["path"])).expanduser()
        if not path.exists():
            problems.append(f"{where}: path {str(path)!r} does not exist")
        elif path.is_file() and path.stat().st_size == 0:
            problems.append(f"{where}: file {str(path)!r} is empty")
        elif path.is_dir() and not _data_files(path):
            problems.append(f"{where}: folder {str(path)!r} holds no (non-empty) files")
        elif fmt is None or fmt in FORMATS:
            files = [path] if path.is_file() else _data_files(path)[:CHECKED_FILES]
            file_format = fmt or _infer_format(path)  # one format for the domain, as it is read
            for file in files:
                issue = _file_problem(file, file_format, single=path.is_file())
                if issue:
                    problems.append(f"{where}: {issue}")
                    break
    else:
        hf = str(entry["hf"])
        if _looks_local(hf, "hf") and not Path(hf).expanduser().exists():
            problems.append(f"{where}: dataset path {hf!r} does not exist")
        elif importlib.util.find_spec("datasets") is None:
            problems.append(f"{where}: the 'datasets' package is needed for hf domains")
    return problems


def user_source(index: int, entry: dict, hf_cache_dir: Path) -> DomainSource:
    """The DomainSource of a valid ``data.extra`` entry (check ``entry_problems`` first)."""
    name = entry["name"]
    field = entry.get("text_field", "text")
    where = f"data.extra[{index}] ({name})"
    if entry.get("path"):
        path = Path(str(entry["path"])).expanduser().resolve()
        fmt = entry.get("format") or _infer_format(path)
        return DomainSource(
            name, f"{fmt} from {path}",
            lambda: {"path": str(path), "format": fmt, "text_field": field, "files": _stat_tree(path)},
            lambda ctx: None,
            lambda ctx: _path_documents(path, fmt, field, name, where),
        )
    hf = str(entry["hf"])
    split = entry.get("split", "train")
    config = entry.get("config")
    local = Path(hf).expanduser()

    def fingerprint() -> dict:
        fp = {"hf": hf, "split": split, "config": config, "text_field": field}
        if local.exists():
            fp["files"] = _stat_tree(local.resolve())
        return fp

    return DomainSource(
        name, f"Hugging Face dataset {hf} [{split}]", fingerprint, lambda ctx: None,
        lambda ctx: _hf_documents(hf, split, config, field, name, where, hf_cache_dir),
    )


# -- local files --------------------------------------------------------------------------------
CHECKED_FILES = 100
"""Files of a folder domain whose first bytes validation looks at (all are read at build)."""
HEAD_BYTES = 8192


def _file_problem(path: Path, fmt: str, *, single: bool) -> str:
    """What makes a file unusable in ``fmt``, from its first and last bytes only (empty if
    nothing): a binary file given as text (a folder skips those, a single file is the whole
    domain), a JSONL file that is not UTF-8, a Parquet file without Parquet's magic bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
            if fmt == "parquet":
                f.seek(max(0, path.stat().st_size - 4))
                tail = f.read(4)
    except OSError as err:
        return f"cannot read {str(path)!r}: {err.strerror or err}"
    if fmt == "parquet":
        if len(head) < 12 or head[:4] != b"PAR1" or tail != b"PAR1":
            return f"{str(path)!r} is not a Parquet file (no PAR1 marker at its start and end)"
        return ""
    if b"\x00" in head and (single or fmt == "jsonl"):
        return f"{str(path)!r} is a binary file (NUL bytes in its first {HEAD_BYTES:,}), not {fmt}"
    if fmt == "jsonl":
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError as err:
            return f"{str(path)!r} is not UTF-8 text (byte {err.start}), as JSONL must be"
    return ""


def _data_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if not f.startswith(".") and p.is_file() and p.stat().st_size > 0:
                files.append(p)
    return files


def _infer_format(path: Path) -> str:
    files = [path] if path.is_file() else _data_files(path)
    formats = {_SUFFIX_FORMAT.get(p.suffix.lower(), "text") for p in files}
    return formats.pop() if len(formats) == 1 else "text"


def _stat_tree(path: Path) -> list:
    files = [path] if path.is_file() else _data_files(path) if path.is_dir() else []
    return [[str(p.relative_to(path) if p != path else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def _path_documents(path: Path, fmt: str, field: str, name: str, where: str) -> Iterator[str]:
    if path.is_file():
        if fmt == "text":
            # One file: its blank-line-separated chunks are the documents.
            yield from selection_order(split_blank_line_chunks(_decode(path)), name)
        else:
            yield from selection_order(_records(path, fmt, field, where), name)
        return
    for file in selection_order(_data_files(path), name):
        if fmt == "text":
            head = file.open("rb").read(8192)
            if b"\x00" in head:  # a binary file in a text folder: not a document
                continue
            yield _decode(file)
        else:
            yield from _records(file, fmt, field, where)


def _decode(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _records(path: Path, fmt: str, field: str, where: str) -> list[str]:
    if fmt == "jsonl":
        texts = []
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ConfigError(f"{where}: {path}:{lineno} is not UTF-8 text (byte {e.start} "
                                      "of the line), as JSONL must be") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{where}: {path}:{lineno} is not JSON ({e.msg})") from None
                if not isinstance(record, dict) or field not in record:
                    raise ConfigError(
                        f"{where}: record on line {lineno} of {path} has no field {field!r} "
                        "(set text_field)"
                    )
                texts.append(_as_text(record[field], where, field))
        return texts
    import pyarrow
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
        if field not in columns:
            raise ConfigError(f"{where}: {path} has no column {field!r} (columns: {columns}; set text_field)")
        values = pq.read_table(path, columns=[field]).column(field).to_pylist()
    except (pyarrow.ArrowException, OSError) as e:  # a corrupt or truncated file
        raise ConfigError(f"{where}: {path} is not a readable Parquet file "
                          f"({type(e).__name__}: {brief(str(e))})") from None
    return [_as_text(v, where, field) for v in values]


def _as_text(value, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: field {field!r} holds {type(value).__name__}, not text")
    return value


# -- Hugging Face datasets ----------------------------------------------------------------------
def _hf_documents(hf: str, split: str, config: str | None, field: str, name: str, where: str,
                  cache_dir: Path) -> Iterator[str]:
    ds = _load_hf(hf, split, config, where, cache_dir)
    if field not in ds.column_names:
        raise ConfigError(
            f"{where}: dataset {hf!r} has no column {field!r} (columns: {ds.column_names}; set text_field)"
        )
    ds = ds.select_columns([field])
    order = selection_order(range(len(ds)), name)
    for start in range(0, len(order), 1000):  # batched reads: row by row is slow
        for value in ds[order[start:start + 1000]][field]:
            yield _as_text(value, where, field)


def _load_hf(hf: str, split: str, config: str | None, where: str, cache_dir: Path):
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{where}: the 'datasets' package is needed for hf domains") from None
    local = Path(hf).expanduser()
    try:
        if local.is_dir() and any((local / f).is_file() for f in
                                  ("dataset_dict.json", "state.json", "dataset_info.json")):
            ds = datasets.load_from_disk(str(local))  # a save_to_disk folder
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"{where}: dataset {hf!r} has no split {split!r} (splits: {list(ds)})")
                ds = ds[split]
            return ds
        kwargs = {"split": split, "cache_dir": str(cache_dir)}
        if local.is_file():
            builder = _SUFFIX_BUILDER.get(local.suffix.lower())
            if builder is None:
                raise ConfigError(
                    f"{where}: cannot tell the format of {hf!r} (use .parquet/.jsonl/.csv/.txt)")
            return datasets.load_dataset(builder, data_files=str(local), **kwargs)
        if config is not None:
            kwargs["name"] = config
        return datasets.load_dataset(str(local) if local.is_dir() else hf, **kwargs)
    except ConfigError:
        raise
    except Exception as e:  # datasets raises many types (not found, offline, bad split)
        raise ConfigError(f"{where}: could not load dataset {hf!r} split {split!r}: "
                          f"{type(e).__name__}: {e}") from None

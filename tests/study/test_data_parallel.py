"""Resources of data-parallel trials: the Tune trial is only the Train driver and takes no CPU or
GPU; the workers' shares travel to the TorchTrainer as private config keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from study.run.runner import _with_resources, _worker_constants
from study.spec.types import ResourceSpec
from trainables.errors import ConfigError
from study.run.trial import worker_settings


def _resources_of(workers: int, cpu: float, gpu: float):
    def trial(config):  # a fresh function: tune.with_resources sets an attribute on it
        return None

    spec = SimpleNamespace(resources=ResourceSpec(cpu=cpu, gpu=gpu, workers=workers))
    # where Tune 2.60 keeps the request of a function trainable until it wraps it
    return _with_resources(trial, spec)._resources, _worker_constants(spec)


def test_one_worker_trial_reserves_its_share_itself():
    request, constants = _resources_of(workers=1, cpu=2, gpu=0.5)
    assert request.required_resources == {"CPU": 2.0, "GPU": 0.5}
    assert constants == {"_workers": 1, "_cpu_per_worker": 2, "_gpu_per_worker": 0.5}


def test_data_parallel_trial_leaves_cpus_and_gpus_to_its_workers():
    request, constants = _resources_of(workers=2, cpu=1, gpu=1)
    # a 2-CPU node must fit 2 workers x 1 CPU besides the driver: the driver takes no CPU
    assert request.required_resources.get("CPU", 0) == 0
    assert request.required_resources.get("GPU", 0) == 0
    assert request.required_resources["memory"] > 0  # Ray refuses an empty request
    assert worker_settings(constants) == (2, 1.0, 1.0)


def test_bad_worker_settings_name_the_key():
    with pytest.raises(ConfigError) as info:
        worker_settings({"_workers": 0, "_cpu_per_worker": -1, "_gpu_per_worker": "one"})
    text = " ".join(info.value.problems)
    for named in ("_workers: 0", "_cpu_per_worker: -1", "_gpu_per_worker: 'one'"):
        assert named in text
    assert worker_settings({"_workers": 3}) == (3, 1.0, 0.0)  # one CPU, no GPU by default

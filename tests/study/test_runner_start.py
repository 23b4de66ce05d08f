"""A new study's start: the tracking store, data mix and parent run are prepared while Ray
starts, and the search starts as soon as the reference beside it holds its resources."""

from __future__ import annotations

import socket
import time

import pytest

from study.run.reference import ReferenceBeside
from study.run.runner import StudyFailed, _Background, local_ray, run_study, state_file
from study.spec import load_spec

from tests.e2e.test_smoke_study import SMOKE


def test_background_gives_the_value_or_raises_the_error_in_the_waiting_thread():
    assert _Background(lambda a, b: a + b, 2, 3).result() == 5

    def fails():
        time.sleep(0.1)
        raise StudyFailed("tracking down")

    with pytest.raises(StudyFailed, match="tracking down"):
        _Background(fails).result()


def _closed_port() -> int:
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_preparation_failure_shuts_the_started_ray_down_and_writes_nothing(tmp_path):
    import ray

    spec = load_spec(SMOKE)
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(StudyFailed, match="not reachable"):
        run_study(spec, tracking_uri=uri, storage=str(tmp_path / "runs"))
    assert not ray.is_initialized()  # Ray had started beside the check: it is down again
    assert not state_file(str(tmp_path / "runs"), spec.name).exists()


def test_the_reference_holds_its_resources_once_its_placement_group_is_ready():
    """What ``wait_started`` reads: Tune reserves a trial's resources as a placement group
    before its worker starts, and Ray's free resources fall by them then."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    with local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False):
        beside = ReferenceBeside.__new__(ReferenceBeside)  # its resource check alone, no Tune run
        beside._need = {"CPU": 1.0}
        beside._free_before = ray.available_resources()
        assert beside._free_before["CPU"] == 2.0
        assert not beside._holds_resources()
        group = placement_group([{"CPU": 1}])
        ray.get(group.ready(), timeout=60)
        deadline = time.monotonic() + 30  # Ray's resource view follows within a second or so
        while not beside._holds_resources():
            assert time.monotonic() < deadline, ray.available_resources()
            time.sleep(0.1)
        remove_placement_group(group)


def test_when_both_fail_the_preparation_error_is_told_not_rays(monkeypatch):
    """The preparation's checks ran before Ray did once: a study whose tracking store is down
    and whose Ray cannot start reports the tracking store."""
    from study.run import runner

    def ray_fails(spec, address, verbose):
        raise RuntimeError("Ray could not start")

    def tracking_down():
        raise StudyFailed("MLflow tracking at x is not reachable")

    monkeypatch.setattr(runner, "_start_ray", ray_fails)
    with pytest.raises(StudyFailed, match="not reachable") as caught:
        runner._prepared_beside_ray(None, None, False, tracking_down)
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="Ray could not start"):  # the preparation went well
        runner._prepared_beside_ray(None, None, False, lambda: "state")

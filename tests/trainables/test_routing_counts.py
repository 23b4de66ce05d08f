"""The raw routing counts round-trip through their sparse form and Parquet, exactly."""

import numpy as np

from trainables.routing_counts import RoutingCounts, read_routing_counts, write_routing_counts


def sample() -> RoutingCounts:
    rng = np.random.default_rng(0)
    n_LXED = rng.integers(0, 3, size=(2, 256, 4, 3)) * (rng.random((2, 256, 4, 3)) < 0.05)
    n_LQE = rng.integers(0, 9, size=(2, 6, 4)) * (rng.random((2, 6, 4)) < 0.5)
    return RoutingCounts(n_LXED, n_LQE, np.array([0, 0, 1, 1, 2, 2]))


def test_sparse_round_trip_keeps_every_cell():
    counts = sample()
    sparse = counts.to_sparse()
    assert len(sparse["xed"]) == int((counts.n_LXED > 0).sum())  # only non-zero cells travel
    back = RoutingCounts.from_sparse(sparse)
    assert np.array_equal(back.n_LXED, counts.n_LXED) and np.array_equal(back.n_LQE, counts.n_LQE)
    assert back.domain_Q.tolist() == [0, 0, 1, 1, 2, 2]


def test_parquet_round_trip(tmp_path):
    counts = sample()
    path = write_routing_counts(tmp_path / "c.parquet", counts, ["english", "german", "c"])
    back, domains = read_routing_counts(path)
    assert domains == ["english", "german", "c"]
    assert np.array_equal(back.n_LXED, counts.n_LXED) and np.array_equal(back.n_LQE, counts.n_LQE)
    assert np.array_equal(back.domain_Q, counts.domain_Q)

"""Routing metrics against hand-computed values, brute force and invariants."""

import inspect
import itertools
import math

import numpy as np
import pytest

from trainables.metrics import (
    DEFAULT_DEAD_THRESHOLD,
    LAYER_METRIC_NAMES,
    dead_expert_fraction,
    dropped_fraction,
    gaps,
    layer_metrics,
    load_distribution,
    load_entropy,
    max_vio,
    nmi,
    purity,
    reference_agreement,
    routing_metrics,
)


def reference_table(n_domains: int, group_size: int, slots: float = 12.0) -> np.ndarray:
    """What the reference router produces: domain d spread evenly over experts d*G .. d*G+G-1."""
    n_ED = np.zeros((n_domains * group_size, n_domains))
    for d in range(n_domains):
        n_ED[d * group_size:(d + 1) * group_size, d] = slots / group_size
    return n_ED


def brute_force_agreement(n_ED: np.ndarray, group_size: int) -> float:
    """Best share over every way of seating distinct experts in the D groups of G seats."""
    n_experts, n_domains = n_ED.shape
    seats = n_domains * group_size
    best = 0.0
    for chosen in itertools.permutations(range(n_experts), seats):
        matched = sum(n_ED[e, j // group_size] for j, e in enumerate(chosen))
        best = max(best, matched)
    return best / n_ED.sum()


# --- purity ---------------------------------------------------------------------------------

def test_purity_hand_example():
    n_ED = np.array([[10, 0], [0, 10], [5, 5]])
    assert purity(n_ED) == pytest.approx(25 / 30)


def test_purity_uniform_is_largest_domain_share():
    assert purity(np.full((4, 3), 5.0)) == pytest.approx(1 / 3)
    # Skewed mix routed blind to domains: every expert sees 70 % / 30 %.
    assert purity(np.tile([7.0, 3.0], (4, 1))) == pytest.approx(0.7)


def test_purity_of_reference_routing_is_one():
    assert purity(reference_table(3, 2)) == 1.0


# --- nmi ------------------------------------------------------------------------------------

def test_nmi_diagonal_is_one_and_uniform_is_zero():
    assert nmi(np.eye(4) * 9) == pytest.approx(1.0)
    assert nmi(np.full((4, 2), 3.0)) == pytest.approx(0.0, abs=1e-12)


def test_nmi_hand_computed_symmetric_2x2():
    # p = [[3/8, 1/8], [1/8, 3/8]], marginals 1/2 each: H(E) = H(D) = log 2.
    # I = 2 * 3/8 * log((3/8) / (1/4)) + 2 * 1/8 * log((1/8) / (1/4)) = 3/4 log(3/2) + 1/4 log(1/2)
    mutual_information = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    expected = mutual_information / math.sqrt(math.log(2) * math.log(2))
    assert expected == pytest.approx(0.18872, abs=1e-5)
    assert nmi([[3, 1], [1, 3]]) == pytest.approx(expected)


def test_nmi_hand_computed_asymmetric_2x2():
    # n = [[2, 0], [1, 1]] -> p = [[1/2, 0], [1/4, 1/4]], p_E = [1/2, 1/2], p_D = [3/4, 1/4].
    h_E = math.log(2)
    h_D = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    # Terms p[e,d] log(p[e,d] / (p_E[e] p_D[d])) over the non-zero cells:
    mutual_information = (
        0.5 * math.log(0.5 / (0.5 * 0.75))
        + 0.25 * math.log(0.25 / (0.5 * 0.75))
        + 0.25 * math.log(0.25 / (0.5 * 0.25))
    )
    assert nmi([[2, 0], [1, 1]]) == pytest.approx(mutual_information / math.sqrt(h_E * h_D))


def test_nmi_of_reference_routing_with_groups():
    # Each domain spread over 2 experts: I = H(D) = log 3, H(E) = log 6.
    assert nmi(reference_table(3, 2)) == pytest.approx(math.sqrt(math.log(3) / math.log(6)))


def test_nmi_degenerate_marginals():
    assert nmi([[5.0]]) == 1.0  # one expert, one domain: the labels agree trivially
    assert nmi([[5.0, 0.0], [0.0, 0.0]]) == 1.0  # only one expert and one domain in use
    assert nmi([[4.0], [6.0]]) == 0.0  # one domain, two experts: the expert tells nothing
    assert nmi([[4.0, 6.0], [0.0, 0.0]]) == 0.0  # everything on one expert


def test_nmi_invariants_on_random_tables():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n_ED = rng.integers(0, 20, size=(6, 3)).astype(float)
        value = nmi(n_ED)
        assert 0.0 <= value <= 1.0
        assert nmi(n_ED.T) == pytest.approx(value)  # symmetric in its two labels
        assert nmi(n_ED[rng.permutation(6)]) == pytest.approx(value)  # expert numbering
        assert nmi(3 * n_ED) == pytest.approx(value)  # scale-free


# --- reference agreement --------------------------------------------------------------------

def test_reference_agreement_of_reference_routing_under_any_expert_permutation():
    n_ED = reference_table(3, 2)
    assert reference_agreement(n_ED) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert reference_agreement(n_ED[rng.permutation(6)]) == pytest.approx(1.0)


def test_reference_agreement_diagonal_and_uniform():
    assert reference_agreement(np.eye(3) * 4) == pytest.approx(1.0)
    # Uniform over 4 experts and 2 domains (G = 2): whichever seating, half the slots agree.
    assert reference_agreement(np.full((4, 2), 5.0)) == pytest.approx(0.5)


def test_reference_agreement_optimum_is_not_greedy_or_identity():
    # Three experts prefer domain 0 but its group has only G = 2 seats. Best seating:
    # domain 0 <- experts 1, 2 (7 + 6), domain 1 <- experts 0, 3 (8 + 1): 22 of 31 slots.
    n_ED = np.array([[9, 8], [7, 0], [6, 0], [0, 1]], dtype=float)
    identity = (9 + 7 + 0 + 1) / 31
    assert reference_agreement(n_ED) == pytest.approx(22 / 31)
    assert reference_agreement(n_ED) > identity
    assert reference_agreement(n_ED) == pytest.approx(brute_force_agreement(n_ED, 2))


def test_reference_agreement_matches_brute_force_on_random_tables():
    rng = np.random.default_rng(2)
    for n_experts, n_domains in [(4, 2), (5, 2), (6, 3), (3, 3)]:
        group_size = n_experts // n_domains
        for _ in range(5):
            n_ED = rng.integers(0, 10, size=(n_experts, n_domains)).astype(float)
            n_ED[0, 0] += 1  # never an all-zero table
            expected = brute_force_agreement(n_ED, group_size)
            assert reference_agreement(n_ED) == pytest.approx(expected)
            assert reference_agreement(n_ED) <= purity(n_ED) + 1e-12


def test_reference_agreement_leftover_experts_belong_to_no_group():
    # E = 3, D = 2 -> G = 1: one expert is outside every group; the best is experts 0, 1.
    n_ED = np.array([[10, 0], [0, 10], [5, 5]])
    assert reference_agreement(n_ED) == pytest.approx(20 / 30)
    # An explicit smaller group size leaves more experts out.
    n_ED = reference_table(2, 2)  # 4 experts, 2 domains, 6 slots per expert
    assert reference_agreement(n_ED, experts_per_group=1) == pytest.approx(0.5)


def test_reference_agreement_rejects_groups_that_do_not_fit():
    with pytest.raises(ValueError, match="experts_per_group"):
        reference_agreement(np.ones((2, 3)))  # fewer experts than domains
    with pytest.raises(ValueError, match="experts_per_group"):
        reference_agreement(np.ones((4, 2)), experts_per_group=3)


# --- utilisation ----------------------------------------------------------------------------

def test_uniform_table_is_perfectly_balanced():
    n_ED = np.full((4, 2), 5.0)
    np.testing.assert_allclose(load_distribution(n_ED), [0.25] * 4)
    assert load_entropy(n_ED) == pytest.approx(1.0)
    assert max_vio(n_ED) == pytest.approx(0.0, abs=1e-12)
    assert dead_expert_fraction(n_ED) == 0.0


def test_load_entropy_hand_example():
    n_ED = np.array([[6, 0], [2, 0], [0, 2], [0, 0]])  # loads 6, 2, 2, 0 of 10
    entropy = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert load_entropy(n_ED) == pytest.approx(entropy / math.log(4))
    assert load_entropy([[5, 5], [0, 0]]) == pytest.approx(0.0, abs=1e-12)  # one expert works


def test_max_vio_hand_examples():
    # Loads 6, 2, 2, 0: mean 2.5, (6 - 2.5) / 2.5 = 1.4.
    assert max_vio([[6, 0], [2, 0], [0, 2], [0, 0]]) == pytest.approx(1.4)
    # Everything on one of E experts: E - 1.
    assert max_vio([[3, 4], [0, 0], [0, 0]]) == pytest.approx(2.0)


def test_dead_expert_fraction_hand_examples():
    # Shares 0.6, 0.2, 0.2, 0: fair share 0.25, dead below 0.025 -> one of four.
    assert dead_expert_fraction([[6, 0], [2, 0], [0, 2], [0, 0]]) == pytest.approx(0.25)
    # Shares 0.97, 0.01, 0.01, 0.01: below 0.025 -> three dead; below 0.0025 -> none.
    n_ED = np.array([[97.0], [1.0], [1.0], [1.0]])
    assert dead_expert_fraction(n_ED) == pytest.approx(0.75)
    assert dead_expert_fraction(n_ED, threshold=0.01) == 0.0


def test_dead_expert_threshold_is_strict_and_documented():
    n_ED = np.array([[3.0], [1.0]])  # shares 0.75, 0.25; fair share 0.5
    assert dead_expert_fraction(n_ED, threshold=0.5) == 0.0  # 0.25 is not below 0.5 * 0.5
    assert dead_expert_fraction(n_ED, threshold=0.6) == 0.5
    assert dead_expert_fraction(n_ED, threshold=0.0) == 0.0
    default = inspect.signature(dead_expert_fraction).parameters["threshold"].default
    assert default == DEFAULT_DEAD_THRESHOLD == 0.1
    assert "threshold = 0.1" in dead_expert_fraction.__doc__
    with pytest.raises(ValueError, match="threshold"):
        dead_expert_fraction(n_ED, threshold=-0.1)


def test_dropped_fraction():
    assert dropped_fraction(0, 100) == 0.0
    assert dropped_fraction(25, 100) == pytest.approx(0.25)
    assert math.isnan(dropped_fraction(0, 0))
    with pytest.raises(ValueError, match="exceed"):
        dropped_fraction(5, 4)


# --- conventions ----------------------------------------------------------------------------

def test_empty_table_gives_nan_everywhere():
    metrics = layer_metrics(np.zeros((4, 2)))
    assert set(metrics) == set(LAYER_METRIC_NAMES)
    assert all(math.isnan(value) for value in metrics.values())


def test_bad_tables_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        purity([[1, -1], [0, 2]])
    with pytest.raises(ValueError, match="finite"):
        purity([[1, float("nan")], [0, 2]])
    with pytest.raises(ValueError, match="shape"):
        purity([1, 2, 3])


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    n_ED = torch.tensor([[10, 0], [0, 10], [5, 5]], dtype=torch.int64)
    assert purity(n_ED) == pytest.approx(25 / 30)
    metrics = routing_metrics(torch.stack([n_ED, n_ED]).float(), dropped_L=torch.tensor([0, 3]))
    assert metrics["dropped_fraction/layer1"] == pytest.approx(3 / 30)


# --- per-layer metrics and gaps -------------------------------------------------------------

def test_layer_metrics_of_a_diagonal_table():
    metrics = layer_metrics(np.eye(3) * 8, dropped=6)
    assert metrics == pytest.approx({
        "purity": 1.0, "nmi": 1.0, "reference_agreement": 1.0, "load_entropy": 1.0,
        "max_vio": 0.0, "dead_expert_fraction": 0.0, "dropped_fraction": 6 / 24,
    })


def test_routing_metrics_names_layers_and_averages():
    specialised = np.eye(2) * 10  # purity 1, load_entropy 1
    collapsed = np.array([[10.0, 10.0], [0.0, 0.0]])  # purity 0.5, load_entropy 0, max_vio 1
    metrics = routing_metrics(np.stack([specialised, collapsed]), dropped_L=[0, 5])

    expected_keys = set(LAYER_METRIC_NAMES)
    expected_keys |= {f"{name}/layer{i}" for name in LAYER_METRIC_NAMES for i in (0, 1)}
    assert set(metrics) == expected_keys
    assert metrics["purity/layer0"] == pytest.approx(1.0)
    assert metrics["purity/layer1"] == pytest.approx(0.5)
    assert metrics["purity"] == pytest.approx(0.75)
    assert metrics["max_vio/layer1"] == pytest.approx(1.0)
    assert metrics["max_vio"] == pytest.approx(0.5)
    assert metrics["load_entropy"] == pytest.approx(0.5)
    assert metrics["dead_expert_fraction/layer1"] == pytest.approx(0.5)
    assert metrics["dropped_fraction/layer1"] == pytest.approx(5 / 20)
    assert metrics["dropped_fraction"] == pytest.approx(5 / 40)
    for name in LAYER_METRIC_NAMES:
        mean = (metrics[f"{name}/layer0"] + metrics[f"{name}/layer1"]) / 2
        assert metrics[name] == pytest.approx(mean)


def test_routing_metrics_checks_shapes():
    with pytest.raises(ValueError, match="L, E, D"):
        routing_metrics(np.eye(2))
    with pytest.raises(ValueError, match="2 layers"):
        routing_metrics(np.stack([np.eye(2)] * 2), dropped_L=[0, 0, 0])


def test_gaps_are_positive_when_worse_than_reference():
    reference = {"val_loss": 2.0, "purity": 1.0, "nmi": 0.75, "reference_agreement": 1.0}
    run = {"val_loss": 2.5, "purity": 0.7, "nmi": 0.5, "reference_agreement": 0.6}
    assert gaps(run, reference) == pytest.approx({
        "gap_loss": 0.5, "gap_purity": 0.3, "gap_nmi": 0.25, "gap_reference_agreement": 0.4,
    })
    # A run better than the reference on loss gets a negative gap.
    assert gaps({"val_loss": 1.8}, reference) == pytest.approx({"gap_loss": -0.2})
    assert gaps(reference, reference) == pytest.approx(
        {"gap_loss": 0.0, "gap_purity": 0.0, "gap_nmi": 0.0, "gap_reference_agreement": 0.0}
    )


def test_gaps_skip_metrics_missing_on_either_side():
    assert gaps({"purity": 0.9, "val_loss": 3.0}, {"purity": 1.0}) == pytest.approx(
        {"gap_purity": 0.1}
    )
    assert gaps({}, {"val_loss": 2.0}) == {}

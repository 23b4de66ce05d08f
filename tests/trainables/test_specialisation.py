"""Token-controlled specialisation metrics: hand-worked tables and synthetic routers on the real
default mix (its validation text, cut into evaluation-sized sequences)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainables.data import build_mix
from trainables.metrics import purity
from trainables.specialisation import (
    conditional_mi_terms, domain_nmi, excess_purity, layer_specialisation, normalised_cmi,
    shared_token_purity, shared_tokens, specialisation_metrics,
)

E, K, SEQ, PER_DOMAIN = 24, 4, 128, 32


# -- hand-worked --------------------------------------------------------------------------------
def test_conditional_mi_by_hand():
    # byte 0: 8 slots, experts lean to domains; byte 1: 4 slots, expert = domain.
    n_XED = np.array([[[3, 1], [1, 3]], [[2, 0], [0, 2]]], dtype=float)
    i0 = 2 * (3 / 8) * math.log((3 / 8) / (1 / 4)) + 2 * (1 / 8) * math.log((1 / 8) / (1 / 4))
    i1 = math.log(2)
    mi = (8 / 12) * i0 + (4 / 12) * i1
    h = math.log(2)  # both bytes: two domains, evenly
    bias = (8 / 12) * (1 * 1) / (2 * 8) + (4 / 12) * (1 * 1) / (2 * 4)
    assert conditional_mi_terms(n_XED) == pytest.approx((mi, h, bias))
    assert normalised_cmi(n_XED) == pytest.approx((mi - bias) / (h - bias))


def test_domain_nmi_by_hand():
    # expert 0 and 1 are pure, expert 2 is split: I = H(D) - H(D|E) = log 2 - (2/6) log 2
    n_ED = np.array([[2, 0], [0, 2], [1, 1]], dtype=float)
    assert domain_nmi(n_ED) == pytest.approx((math.log(2) - (2 / 6) * math.log(2)) / math.log(2))
    assert domain_nmi(np.eye(3)) == pytest.approx(1.0)
    assert domain_nmi(np.ones((4, 3))) == pytest.approx(0.0)


def test_shared_tokens_and_their_purity_by_hand():
    n_XED = np.zeros((3, 2, 2))
    n_XED[0] = [[5, 0], [0, 5]]   # shared (half each), routed by domain
    n_XED[1] = [[6, 1], [0, 0]]   # dominated by domain 0: not shared
    n_XED[2] = [[2, 2], [0, 0]]   # shared, one expert for both
    assert shared_tokens(n_XED).tolist() == [True, False, True]
    # shared slots: expert 0 gets [7, 2] (majority 7), expert 1 gets [0, 5]: (7 + 5) / 14
    assert shared_token_purity(n_XED) == pytest.approx(((7 + 5) / 14, 14 / 21))
    assert shared_token_purity(n_XED[1:2]) == (pytest.approx(float("nan"), nan_ok=True), 0.0)


def test_excess_purity_of_a_perfect_router_is_one_minus_its_null():
    domain_Q = np.repeat(np.arange(3), 4)  # 3 domains x 4 sequences
    n_QE = np.eye(3)[domain_Q] * 10        # each domain's sequences on its own expert
    excess, null_mean, null_sd = excess_purity(n_QE, domain_Q, 3, n_permutations=500)
    assert excess == pytest.approx(1.0 - null_mean)
    # under the null, each expert's 4 sequences get random labels: the majority share is
    # between 1/2 and 1 (2+1+1 or more alike), so the null mean lies in (1/3, 1)
    assert 1 / 3 < null_mean < 1 and null_sd > 0


# -- synthetic routers on the real default mix -----------------------------------------------
@pytest.fixture(scope="module")
def eval_tokens(small_mix_config):
    """Byte values [Q, SEQ] and domains [Q] of PER_DOMAIN sequences per domain."""
    mix = build_mix(small_mix_config)
    tokens, domains = [], []
    for d, stream in enumerate(mix.val):
        seqs = stream[: PER_DOMAIN * SEQ].reshape(PER_DOMAIN, SEQ)
        tokens.append(seqs)
        domains += [d] * PER_DOMAIN
    return np.concatenate(tokens).astype(np.int64), np.array(domains), len(mix.domains)


def counts(tokens_QL, domain_Q, experts_QLK, n_domains):
    """n[x, e, d] and n[q, e] of a routing given as K experts per token."""
    n_XED = np.zeros((256, E, n_domains))
    n_QE = np.zeros((len(domain_Q), E))
    x = np.repeat(tokens_QL[..., None], K, axis=-1)
    d = np.broadcast_to(domain_Q[:, None, None], experts_QLK.shape)
    q = np.broadcast_to(np.arange(len(domain_Q))[:, None, None], experts_QLK.shape)
    np.add.at(n_XED, (x.ravel(), experts_QLK.ravel(), d.ravel()), 1)
    np.add.at(n_QE, (q.ravel(), experts_QLK.ravel()), 1)
    return n_XED, n_QE


def byte_function_experts(tokens_QL):
    """A fixed function of the byte: ASCII over experts 0-19, bytes >= 0x80 over 20-23."""
    first = np.where(tokens_QL < 0x80, tokens_QL % 20, 20 + tokens_QL % 4)
    base = np.where(tokens_QL < 0x80, 0, 20)
    width = np.where(tokens_QL < 0x80, 20, 4)
    return np.stack([base + (first - base + j) % width for j in range(K)], axis=-1)


def test_byte_function_router_looks_pure_but_has_no_conditional_information(eval_tokens):
    tokens, domain_Q, n_domains = eval_tokens
    n_XED, n_QE = counts(tokens, domain_Q, byte_function_experts(tokens), n_domains)
    assert purity(n_XED.sum(axis=0)) > 0.3  # raw purity: "specialised"
    assert -0.05 < normalised_cmi(n_XED) < 0.005  # but the byte explains all of it
    assert conditional_mi_terms(n_XED)[0] == pytest.approx(0.0, abs=1e-12)


def test_reference_router_scores_one(eval_tokens):
    tokens, domain_Q, n_domains = eval_tokens
    group = E // n_domains
    experts = domain_Q[:, None, None] * group + np.arange(K)[None, None, :] % group
    n_XED, n_QE = counts(tokens, domain_Q, np.broadcast_to(experts, tokens.shape + (K,)), n_domains)
    m = layer_specialisation(n_XED, n_QE, domain_Q)
    assert m["cmi"] == pytest.approx(1.0)
    assert m["shared_purity"] == pytest.approx(1.0) and 0 < m["shared_coverage"] < 1
    assert m["nmi_domain"] == pytest.approx(1.0)
    assert m["excess_purity"] > 0.5


def test_uniformly_random_routing_scores_zero(eval_tokens):
    tokens, domain_Q, n_domains = eval_tokens
    rng = np.random.default_rng(0)
    experts = np.argsort(rng.random(tokens.shape + (E,)), axis=-1)[..., :K]
    n_XED, n_QE = counts(tokens, domain_Q, experts, n_domains)
    m = layer_specialisation(n_XED, n_QE, domain_Q)
    assert abs(m["excess_purity"]) < 0.01
    assert m["excess_purity_null_sd"] < 0.01
    assert abs(m["cmi"]) < 0.01  # the bias correction takes the plug-in's finite-sample bias out
    assert normalised_cmi(n_XED) < conditional_mi_terms(n_XED)[0] / conditional_mi_terms(n_XED)[1]


def test_router_that_follows_the_domain_on_shared_bytes(eval_tokens):
    tokens, domain_Q, n_domains = eval_tokens
    byte_fn = byte_function_experts(tokens)
    n_XED_bytes, _ = counts(tokens, domain_Q, byte_fn, n_domains)
    shared = shared_tokens(n_XED_bytes)
    group = E // n_domains
    by_domain = np.broadcast_to(domain_Q[:, None, None] * group + np.arange(K) % group, byte_fn.shape)
    experts = np.where(shared[tokens][..., None], by_domain, byte_fn)
    n_XED, n_QE = counts(tokens, domain_Q, experts, n_domains)
    follows, coverage = shared_token_purity(n_XED)
    assert follows == pytest.approx(1.0) and 0.2 < coverage < 0.9
    assert shared_token_purity(n_XED_bytes)[0] < 0.6  # the byte function on the same bytes
    assert normalised_cmi(n_XED) > 0.2


def test_per_layer_names_and_mean():
    rng = np.random.default_rng(1)
    n_LXED = rng.integers(0, 5, size=(2, 256, 4, 2)).astype(float)
    n_LQE = rng.integers(0, 5, size=(2, 6, 4)).astype(float)
    domain_Q = [0, 0, 0, 1, 1, 1]
    m = specialisation_metrics(n_LXED, n_LQE, domain_Q)
    for name in ("cmi", "shared_purity", "excess_purity", "nmi_domain", "shared_coverage"):
        assert m[name] == pytest.approx((m[f"{name}/layer0"] + m[f"{name}/layer1"]) / 2)
        assert m[f"{name}/layer1"] == pytest.approx(
            layer_specialisation(n_LXED[1], n_LQE[1], domain_Q)[name], nan_ok=True)


def test_study_names_match_the_metrics_training_reports():
    """study.naming spells the metric names without importing trainables; it must agree."""
    from study import naming
    from trainables.metrics import LAYER_METRIC_NAMES
    from trainables.specialisation import (
        AUXILIARY_METRIC_NAMES, LIFT_METRIC_NAMES, SPECIALISATION_METRIC_NAMES, baseline_names,
    )

    assert set(naming.LAYER_METRICS) == {*LAYER_METRIC_NAMES, *SPECIALISATION_METRIC_NAMES,
                                         *AUXILIARY_METRIC_NAMES}
    assert naming.LIFT_METRICS == LIFT_METRIC_NAMES
    for name in ("purity", "cmi/layer1"):
        assert baseline_names(name) == (naming.init_of(name), naming.lift_of(name))

"""The name of every metric a trial reports: spelled here once.

``trainables.metrics`` and ``trainables.specialisation`` compute them under these names, and
``study.naming`` imports them (adding each one's direction, and the names of the run itself) for
MLflow, the spec checks and the reports. Plain strings, no imports: cheap for the command line.
"""

from __future__ import annotations

VAL_LOSS = "val_loss"
TRAIN_LOSS = "train_loss"

# the run's progress, in every report of trainables.training
STEP = "step"
"""Optimizer steps done: the scheduler's time attribute (``grace_period``)."""
LR = "lr"
TOKENS = "tokens"
TOKENS_PER_S = "tokens_per_s"
ELAPSED_S, TRAIN_S = "elapsed_s", "train_s"
INIT_EVAL_S = "init_eval_s"
"""Seconds of the step-0 evaluation (the baseline's cost)."""
EVAL_S = "eval_s"
"""Seconds this attempt spent in the evaluations at its reports (part of elapsed_s and train_s)."""
TRIAL_WALL_S = "trial_wall_s"
"""Seconds the trial has held its resources, data and step-0 evaluation included, summed over
its attempts (a trial resumed from a checkpoint goes on from the last report's value)."""
COST_CPU_S, COST_GPU_S = "cost/cpu_s", "cost/gpu_s"
"""CPU- and GPU-seconds the trial held: ``trial_wall_s`` times what it reserved (all workers)."""
BALANCE_WINDOW_TOKENS = "balance_window_tokens"
"""Tokens whose statistics one balancing decision sees (``trainables.scope.Scope.tokens``)."""
GLOBAL_COUNTS_TOTAL = "global_counts_total"
"""Assignments in the global scope's step buffer at the report (a diagnostic; 0: not kept)."""

# routing metrics of trainables.metrics, per layer and as their mean
PURITY = "purity"
NMI = "nmi"
REFERENCE_AGREEMENT = "reference_agreement"
LOAD_ENTROPY = "load_entropy"
MAX_VIO = "max_vio"
DEAD_EXPERT_FRACTION = "dead_expert_fraction"
DROPPED_FRACTION = "dropped_fraction"
LAYER_METRIC_NAMES = (
    PURITY, NMI, REFERENCE_AGREEMENT, LOAD_ENTROPY, MAX_VIO, DEAD_EXPERT_FRACTION, DROPPED_FRACTION,
)

# token-controlled and chance-corrected metrics of trainables.specialisation
CMI = "cmi"
"""I(E; D | X), X the current byte, chance-adjusted, normalised: reference 1, byte-only ~0."""
SHARED_PURITY = "shared_purity"
EXCESS_PURITY = "excess_purity"
NMI_DOMAIN = "nmi_domain"
"""I(E; D) / H(D): reference 1 (``nmi`` divides by sqrt(H(E) H(D)) and the reference does not)."""
SHARED_COVERAGE = "shared_coverage"
EXCESS_PURITY_NULL_SD = "excess_purity_null_sd"
SPECIALISATION_METRIC_NAMES = (CMI, SHARED_PURITY, EXCESS_PURITY, NMI_DOMAIN)
"""Token-controlled and chance-corrected metrics, reported per layer and as their mean."""
AUXILIARY_METRIC_NAMES = (SHARED_COVERAGE, EXCESS_PURITY_NULL_SD)
"""What the reader needs to weigh the metrics above: the share of slots ``shared_purity``
covers, and the spread of the null ``excess_purity`` subtracts."""

# step-0 baselines
LIFT_METRIC_NAMES = (PURITY, NMI, REFERENCE_AGREEMENT, CMI, SHARED_PURITY, EXCESS_PURITY, NMI_DOMAIN)
"""Metrics that get ``<name>_init`` (the untrained model's value, same seed and evaluation set)
and ``<name>_lift`` (value - init), as the mean over layers and per layer."""
INIT_SUFFIX, LIFT_SUFFIX = "_init", "_lift"


def baseline_names(name: str) -> tuple[str, str]:
    """``purity`` -> (``purity_init``, ``purity_lift``); ``purity/layer1`` ->
    (``purity_init/layer1``, ``purity_lift/layer1``)."""
    base, sep, layer = name.partition("/")
    return f"{base}{INIT_SUFFIX}{sep}{layer}", f"{base}{LIFT_SUFFIX}{sep}{layer}"


# gaps to the reference run: (gap name, metric name, sign). sign=+1: metric - reference (lower
# metric is better, e.g. loss); sign=-1: reference - metric (higher metric is better)
GAP_LOSS = "gap_loss"
GAP_PURITY = "gap_purity"
GAP_NMI = "gap_nmi"
GAP_REFERENCE_AGREEMENT = "gap_reference_agreement"
GAPS = (
    (GAP_LOSS, VAL_LOSS, +1),
    (GAP_PURITY, PURITY, -1),
    (GAP_NMI, NMI, -1),
    (GAP_REFERENCE_AGREEMENT, REFERENCE_AGREEMENT, -1),
)
GAP_METRIC_NAMES = tuple(gap for gap, _, _ in GAPS)


DEFINITIONS = {
    VAL_LOSS: "mean next-byte cross-entropy (nats) over the domains' evaluation text",
    PURITY: "share of routed slots that went to their expert's majority domain (reference 1)",
    NMI: "mutual information of expert and domain over sqrt(H(expert) H(domain))",
    REFERENCE_AGREEMENT: "share of slots inside their domain's reference expert group, after "
                         "matching experts to groups optimally (reference 1)",
    LOAD_ENTROPY: "entropy of the experts' load over log E (1: every expert equally used)",
    MAX_VIO: "(largest expert load - 1/E) / (1/E) (0: perfectly balanced)",
    DEAD_EXPERT_FRACTION: "share of experts with less than a tenth of an even load",
    DROPPED_FRACTION: "share of the router's chosen slots dropped by expert capacity",
    CMI: "domain information in the routing beyond the current byte, I(E; D | byte), "
         "bias-corrected and normalised (reference 1, a router that sees only the byte ~0)",
    SHARED_PURITY: "purity over the slots of byte values no domain owns (context, not the byte)",
    EXCESS_PURITY: "per-sequence purity minus its mean under shuffled domain labels (chance removed)",
    NMI_DOMAIN: "I(expert; domain) / H(domain) (reference 1)",
    GAP_LOSS: "val_loss minus the reference router's (lower is better)",
    GAP_PURITY: "the reference router's purity minus this run's (lower is better)",
    TOKENS_PER_S: "training tokens per second of the trial",
    TRAIN_S: "seconds the trial trained, its evaluations included (reporting and checkpoints excluded)",
    EVAL_S: "seconds of train_s spent in the evaluations at the reports",
    COST_CPU_S: "CPU-seconds the trial held (its wall time over all attempts x CPUs reserved)",
    COST_GPU_S: "GPU-seconds the trial held (its wall time over all attempts x GPUs reserved)",
}
"""One line per metric, for reports and tables; ``docs/design.md`` ("Metrics") has the formulas.
Derived names are defined by their parts: ``<name>_init`` is the untrained router's value (same
seed, same evaluation set), ``<name>_lift`` the final value minus it, ``<name>/layer<i>`` the
value of MoE layer i (from 0), the plain name the mean over layers."""


def definition(name: str) -> str:
    """One line defining ``name``, derived names included (``cmi_lift/layer1``)."""
    base, _, layer = name.partition("/")
    where = f"; MoE layer {layer.removeprefix('layer')}" if layer else ""
    for suffix, what in ((LIFT_SUFFIX, "what training added to {}: the final value minus the "
                                       "same trial's untrained (step-0) value"),
                         (INIT_SUFFIX, "{} of the untrained (step-0) router")):
        if base.endswith(suffix) and base[: -len(suffix)] in DEFINITIONS:
            return what.format(f"`{base[: -len(suffix)]}`") + where
    if base in DEFINITIONS:
        return DEFINITIONS[base] + where
    return ""

"""Matrix-product FLOPs per token of a trial's model, for model FLOP utilisation (MFU).

Counted: the products a token's forward pass needs, 2 FLOPs per multiply-add, from the config
alone (no model is built). Training = 3 x forward (the backward pass does two products per
forward product: the input gradient and the weight gradient), the usual convention (Kaplan et
al. 2020; PaLM's MFU, Chowdhery et al. 2022). Not counted: elementwise work (norms, rotary,
SwiGLU's silu and multiply, softmax), the embedding lookup (a gather, no product), dispatch and
combine (gathers), the optimizer. Per layer, d = ``model.d_model``, L = ``data.seq_len``:

- attention projections: q, k, v and the output, 4 products of d x d: 8 d^2;
- attention scores and values: the token at position i attends to i + 1 positions (causal), so
  on average (L + 1) / 2; scores q.k and the weighted sum of values each cost 2 d per attended
  position: 4 d (L + 1) / 2. (PaLM counts the full L x L matrix; the causal half is the work a
  causal kernel has to do, which keeps the utilisation conservative.)
- feed-forward: top_k routed experts plus the shared ones, each a SwiGLU of width
  ``model.expert_hidden`` = 3 products of d x h: 6 d h per expert. The dense baseline
  (``model.dense``) has one SwiGLU of width (top_k + shared) x h: the same count;
- router: d x E logits, 2 d E (MoE layers only).

Once per token: the unembedding (head), d x 256: 2 d 256.
"""

from __future__ import annotations

from trainables.config import TrialConfig

VOCAB_SIZE = 256  # bytes (trainables.model.VOCAB_SIZE; not imported: this module needs no torch)


def forward_flops_per_token(cfg: TrialConfig) -> dict[str, float]:
    """Forward matrix-product FLOPs per token, by part, summed over layers, and the ``total``."""
    m, L = cfg.model, cfg.data.seq_len
    d, h = m.d_model, m.expert_hidden
    n = m.n_layers
    parts = {
        "attention_projections": n * 8 * d * d,
        "attention_scores_values": n * 4 * d * (L + 1) / 2,
        "ffn": n * 6 * d * h * (m.top_k + m.n_shared_experts),
        "router": 0 if m.dense else n * 2 * d * m.n_experts,
        "unembedding": 2 * d * VOCAB_SIZE,
    }
    parts["total"] = sum(parts.values())
    return parts


def training_flops_per_token(cfg: TrialConfig) -> float:
    """FLOPs per token of one training step: forward and backward, 3 x the forward products."""
    return 3 * forward_flops_per_token(cfg)["total"]


def evaluation_flops_per_token(cfg: TrialConfig) -> float:
    """FLOPs per token of an evaluation (forward only)."""
    return forward_flops_per_token(cfg)["total"]

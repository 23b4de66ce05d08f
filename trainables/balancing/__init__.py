"""Load-balancing algorithms as pure torch functions; routers and the MoE layer call these.

Shape legend (also used in every module of this package):
    T  tokens in the balancing scope      E  experts        K  experts per token (top-k)
    B  sequences   L  tokens per sequence   C  tokens an expert picks (expert choice)
    G  groups balanced separately (balanced_assignment's group_ids_T, e.g. sequences)

Functions: lbl_loss / lbl_loss_per_sequence / z_loss / expert_counts / expert_bias_update
(losses.py), sinkhorn (sinkhorn.py), balanced_assignment (auction.py), capacity_keep_mask and
expert_choice (capacity.py).

Nothing here holds state: the caller owns buffers (expert counts accumulated over a global
batch, the expert bias) and decides scope. Definitions follow docs/design.md, "Balancing methods"
(scopes: "Balancing scopes"; capacity: "Capacity and token dropping").
"""

from trainables.balancing.auction import balanced_assignment
from trainables.balancing.capacity import capacity_keep_mask, expert_choice
from trainables.balancing.losses import (
    expert_bias_update,
    expert_counts,
    lbl_loss,
    lbl_loss_per_sequence,
    z_loss,
)
from trainables.balancing.sinkhorn import sinkhorn

__all__ = [
    "balanced_assignment",
    "capacity_keep_mask",
    "expert_bias_update",
    "expert_choice",
    "expert_counts",
    "lbl_loss",
    "lbl_loss_per_sequence",
    "sinkhorn",
    "z_loss",
]

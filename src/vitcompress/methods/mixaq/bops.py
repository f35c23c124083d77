"""BOPs of a mixed-precision (and pruned) MixA-Q configuration, from the cost model.

The cost model's probing forward runs the two-branch blocks at the ratios they hold: each branch's
linears and attention matmuls are hooked separately, so their MACs are those of the windows the branch
actually computes (``round(r·nW)`` low windows per block), their bits those of the branch's own
quantizers, and pruned windows cost nothing. :func:`mixed_cost` sets the ratios for that one probe.

:func:`act_bits_eq` is the MAC-weighted mean activation bit width of a report, the measured
counterpart of the MixA-Q paper's equivalent bits (:func:`~vitcompress.methods.mixaq.equivalent_bits`, eq. 5):
with every activation at ``b`` bits and the low branch at ``b/2`` the two agree exactly when the
groups' GMACs ``G_i`` and the non-saveable ``C`` come from :func:`group_macs` and the ratios are the
effective ones (:func:`effective_ratios`: the fraction of windows the rounding actually selects).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vitcompress.cost import CostReport, block_key, cost
from vitcompress.methods.mixaq.model import get_ratios, mixed_blocks, model_groups, set_ratios


def mixed_cost(
    model: nn.Module, ratios: Sequence[float] | None = None, prune: Sequence[float] | None = None, upper: float = 1.0
) -> CostReport:
    """The cost report of ``model`` at ``ratios`` / ``prune`` (default: the ones it holds); the model's
    own ratios are restored afterwards. ``size_bytes`` counts each weight the branches share once (it is
    stored once) plus the low branch's own LayerNorm copies."""
    saved = get_ratios(model)
    try:
        if ratios is not None or prune is not None:
            set_ratios(model, ratios if ratios is not None else saved[0], prune, upper=upper)
        return cost(model)
    finally:
        set_ratios(model, *saved, upper=1.0)


def act_bits_eq(report: CostReport) -> float:
    """MAC-weighted mean bit width of the first activation operand of every op (linear/conv input, q for
    q·kᵀ, the probabilities for attn·v)."""
    macs = sum(r.macs for r in report.layers)
    return sum(r.macs * r.a_bits for r in report.layers) / macs


def group_macs(model: nn.Module) -> tuple[list[int], int]:
    """(MACs of each ratio group, MACs outside every group) at ratio 0: the paper's ``G_i`` and ``C``
    (here C holds the patch embedding, patch merging and head)."""
    groups = model_groups(model)
    report = mixed_cost(model, [0.0] * len(groups), [0.0] * len(groups))
    owner = {b: i for i, grp in enumerate(groups) for b in grp.blocks}
    g = [0] * len(groups)
    c = 0
    for r in report.layers:
        i = owner.get(block_key(r.name))
        if i is None:
            c += r.macs
        else:
            g[i] += r.macs
    return g, c


def effective_ratios(model: nn.Module, ratios: Sequence[float]) -> list[float]:
    """The fraction of each group's windows that actually run low at ``ratios`` (MAC-weighted over the
    group's blocks; a block selects ``round(r·nW)`` of its nW windows)."""
    blocks = mixed_blocks(model)
    out = []
    for group, r in zip(model_groups(model), ratios, strict=True):
        fracs = []
        for name in group.blocks:
            n = blocks[name].n_windows
            saved = blocks[name].ratio
            blocks[name].ratio = r
            fracs.append(blocks[name].window_counts(n)[1] / n)
            blocks[name].ratio = saved
        out.append(sum(fracs) / len(fracs))  # the blocks of a group have the same MACs
    return out

"""Window-level mixed precision for Swin: MixA-Q's two-branch block (Wang et al., 2025, arXiv:2507.19131).

:class:`TwoBranchSwinBlock` replaces a (quantized) timm ``SwinTransformerBlock``. Inside it the
block's windows are ranked by importance; the least important ``prune·nW`` windows skip the block
(identity, SparseViT), the next ``ratio·nW`` run the *low* branch (its own LayerNorm copies and
low-bit activation quantizers, the weights and biases shared with the high branch) and the rest run
the *high* branch, which is the original block's modules themselves.

The whole block (attention *and* MLP) runs in the shifted-window frame: after the cyclic shift and the
padding the windows are gathered per branch, each branch computes ``w + attn(norm1(w))`` then
``+ mlp(norm2(·))`` on its windows, and both are scattered back before the window reverse and the
reverse shift. LayerNorm, the MLP and the residuals act per token, so doing them in the window frame
rather than the token frame only permutes tokens: a token's precision is its window's precision in
this block's (shifted) partition. Padded tokens are zeroed after ``norm1`` exactly as timm pads the
normed map, and cropped at the end.

Window importance: per token ``a = mean_c |x|``, computed once on the stage's input by the
stage's first block and shared with the others (:class:`StageImportance`); each block partitions
``a`` with its own shift and padding and scores a window by the L2 norm of its tokens' ``a``. The
order is a stable ascending sort, so for a given input a larger ratio's low set contains a smaller
ratio's (nested), and blocks of a stage with the same shift rank windows the same way.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from vitcompress.device import model_device
from vitcompress.nn.attention import ATTN_POINTS, QuantWindowAttention, clone_into
from vitcompress.nn.linear import QuantLayerNorm, QuantLinear
from vitcompress.quant import Quantizer, make_quantizer

BRANCH_MODULES = ("norm1", "attn", "norm2", "mlp")


class StageImportance:
    """Token importance of a stage's input, written by the stage's first block, read by the others."""

    def __init__(self) -> None:
        self.tokens: torch.Tensor | None = None  # (B, H, W)


def token_importance(x: torch.Tensor) -> torch.Tensor:
    """``mean_c |x|`` of a (B, H, W, C) map: (B, H, W), the token importance of MixA-Q."""
    return x.detach().abs().mean(dim=-1)


def window_scores(tokens: torch.Tensor, window_size: tuple[int, int], shift_size: tuple[int, int]) -> torch.Tensor:
    """L2 norm of the token importance over each window of a block's (shifted, padded) partition.

    Args:
        tokens: (B, H, W) token importance.
        window_size: the block's window (h, w).
        shift_size: the block's cyclic shift (h, w); (0, 0) for a regular block.

    Returns:
        (B, nW) scores in timm's window order (row-major over the padded map).
    """
    if any(shift_size):
        tokens = torch.roll(tokens, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    B, H, W = tokens.shape
    wh, ww = window_size
    tokens = F.pad(tokens, (0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))  # zeros add nothing to the norm
    Hp, Wp = tokens.shape[1:]
    win = tokens.view(B, Hp // wh, wh, Wp // ww, ww).permute(0, 1, 3, 2, 4).reshape(B, -1, wh * ww)  # (B, nW, N)
    return win.norm(dim=-1)


def window_count(fraction: float, n_windows: int) -> int:
    """Windows a fraction selects: ``round(fraction·nW)``, halves rounded up (0.5 of 1 window is 1)."""
    return min(n_windows, math.floor(fraction * n_windows + 0.5 + 1e-9))


def split_windows(scores: torch.Tensor, n_prune: int, n_low: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (B, ·) of the pruned, low and high windows, each in ascending window order.

    The least important ``n_prune`` windows are pruned, the next ``n_low`` go low, the rest high. The
    stable sort makes the sets nested: the pruned + low set for ``n_low`` contains that for any smaller
    ``n_low``.
    """
    order = torch.sort(scores, dim=1, stable=True).indices  # least important first
    pruned = order[:, :n_prune].sort(dim=1).values
    low = order[:, n_prune : n_prune + n_low].sort(dim=1).values
    high = order[:, n_prune + n_low :].sort(dim=1).values
    return pruned, low, high


def low_bit_quantizer(qz: Quantizer, bits: int, name: str) -> Quantizer:
    """A fresh, uncalibrated quantizer like ``qz`` at ``bits`` (same scheme, observer, granularity)."""
    spec = replace(qz.spec, bits=bits) if qz.spec.enabled else qz.spec
    out = make_quantizer(spec, name, getattr(qz, "channel_axis", -1), getattr(qz, "num_channels", None))
    out.to(model_device(qz))  # built on the CPU: it goes where the high branch's quantizer is
    out.role = getattr(qz, "role", None)
    out.enabled = qz.enabled
    return out


def _low_copy(module: nn.Module, bits: int, name: str) -> nn.Module:
    """A copy of a quantized branch module for the low branch: weights, biases and weight quantizers
    shared; LayerNorm affine parameters copied; every activation quantizer replaced by a low-bit one."""
    if isinstance(module, QuantLayerNorm):
        out = copy.deepcopy(module)  # each branch has its own LayerNorm (MixA-Q's two-branch block)
        out.input_quantizer = low_bit_quantizer(module.input_quantizer, bits, f"{name}.input")
        return out
    if isinstance(module, QuantLinear):
        out = clone_into(type(module), module)  # shares weight, bias and weight_quantizer
        out.input_quantizer = low_bit_quantizer(module.input_quantizer, bits, f"{name}.input")
        return out
    if isinstance(module, nn.LayerNorm):
        return copy.deepcopy(module)
    out = clone_into(type(module), module)
    for child_name, child in list(module.named_children()):
        path = f"{name}.{child_name}"
        if isinstance(module, QuantWindowAttention) and child_name.removesuffix("_quantizer") in ATTN_POINTS:
            setattr(out, child_name, low_bit_quantizer(child, bits, path))
        elif not isinstance(child, Quantizer):
            setattr(out, child_name, _low_copy(child, bits, path))
    return out


class TwoBranchSwinBlock(nn.Module):
    """A Swin block with window-level mixed-precision activations and optional window pruning.

    Attributes:
        norm1, attn, norm2, mlp, drop_path1, drop_path2: the high branch (the original block's modules).
        low: ``nn.ModuleDict`` of the low branch (``norm1``, ``attn``, ``norm2``, ``mlp``).
        ratio: fraction of the windows sent to the low branch, in [0, 1].
        prune: fraction of the windows pruned (skip the block), in [0, 1]; ``ratio + prune <= 1``.
        stage: the :class:`StageImportance` shared with the stage's other blocks.
        stage_head: whether this block computes the stage's token importance (the stage's first block).
    """

    @classmethod
    def from_block(
        cls,
        block: SwinTransformerBlock,
        low_bits: int,
        name: str = "",
        stage: StageImportance | None = None,
        stage_head: bool = True,
    ) -> TwoBranchSwinBlock:
        """The two-branch version of a quantized ``block`` (sharing its modules), at ratio 0.

        Args:
            block: a timm ``SwinTransformerBlock`` whose layers were replaced by vitcompress.nn.convert.
            low_bits: activation bits of the low branch's quantizers (uncalibrated here).
            name: the block's module path, for the low quantizers' names.
            stage: the importance shared by the stage's blocks.
            stage_head: whether this block is its stage's first (computes the importance).
        """
        q = cls()
        for attr in ("dim", "input_resolution", "window_size", "shift_size", "window_area", "dynamic_mask"):
            setattr(q, attr, getattr(block, attr, None))
        q.norm1, q.attn, q.norm2, q.mlp = block.norm1, block.attn, block.norm2, block.mlp
        q.drop_path1, q.drop_path2 = block.drop_path1, block.drop_path2
        q.register_buffer("attn_mask", block.attn_mask, persistent=False)
        q.low = nn.ModuleDict({m: _low_copy(getattr(block, m), low_bits, f"{name}.low.{m}") for m in BRANCH_MODULES})
        q.low_bits = low_bits
        q.ratio, q.prune = 0.0, 0.0
        q.stage = stage if stage is not None else StageImportance()
        q.stage_head = stage_head
        return q

    def branch(self, name: str) -> dict[str, nn.Module]:
        """The modules of branch ``"high"`` or ``"low"``."""
        if name == "high":
            return {m: getattr(self, m) for m in BRANCH_MODULES}
        return dict(self.low.items())

    @property
    def n_windows(self) -> int:
        """Windows of this block's partition (after padding) for its input resolution."""
        (H, W), (wh, ww) = self.input_resolution, self.window_size
        return math.ceil(H / wh) * math.ceil(W / ww)

    def window_counts(self, n_windows: int) -> tuple[int, int]:
        """(pruned, low) window counts for a partition of ``n_windows`` windows."""
        n_prune = window_count(self.prune, n_windows)
        return n_prune, min(window_count(self.ratio, n_windows), n_windows - n_prune)

    def _run_branch(
        self, mods: dict[str, nn.Module], w: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """``w + attn(norm1(w))`` then ``+ mlp(norm2(·))`` on windows w: (B, k, N, C)."""
        B, k, N, C = w.shape
        h = mods["norm1"](w)
        if valid is not None:  # timm pads the *normed* map with zeros
            h = torch.where(valid.unsqueeze(-1), h, h.new_zeros(()))
        a = mods["attn"](h.reshape(B * k, N, C), mask=mask)  # (B*k, N, C)
        w = w + self.drop_path1(a.view(B, k, N, C))
        return w + self.drop_path2(mods["mlp"](mods["norm2"](w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if self.stage_head or self.stage.tokens is None or self.stage.tokens.shape != x.shape[:3]:
            self.stage.tokens = token_importance(x)
        wh, ww = self.window_size
        has_shift = any(self.shift_size)
        shifted = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2)) if has_shift else x
        pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
        shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        # (B, nW, N, C), timm's window order
        windows = shifted.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, wh * ww, C)
        n_windows = windows.shape[1]
        valid = None
        if pad_h or pad_w:
            grid = torch.zeros(1, Hp, Wp, dtype=torch.bool, device=x.device)
            grid[:, :H, :W] = True
            valid = grid.view(1, Hp // wh, wh, Wp // ww, ww).permute(0, 1, 3, 2, 4).reshape(1, n_windows, wh * ww)
        attn_mask = self.attn_mask
        if self.dynamic_mask and has_shift:
            raise NotImplementedError("dynamic_mask Swin blocks are not supported by MixA-Q")
        n_prune, n_low = self.window_counts(n_windows)
        if n_prune == 0 and n_low == 0:  # every window high: no gather (the r = 0 path)
            out = self._run_branch(self.branch("high"), windows, attn_mask, valid)
        else:
            scores = window_scores(self.stage.tokens, self.window_size, self.shift_size)
            _, low, high = split_windows(scores, n_prune, n_low)
            out = windows  # pruned windows pass through unchanged
            for name, idx in (("high", high), ("low", low)):
                if idx.shape[1]:
                    out = self._scatter(
                        out,
                        idx,
                        self._run_branch(
                            self.branch(name),
                            _gather(windows, idx),
                            _gather_mask(attn_mask, idx),
                            None if valid is None else _gather(valid.expand(B, -1, -1).unsqueeze(-1), idx).squeeze(-1),
                        ),
                    )
        # window reverse: (B, nW, N, C) -> (B, Hp, Wp, C), then crop the padding
        out = out.view(B, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        out = out[:, :H, :W, :]
        if has_shift:
            out = torch.roll(out, shifts=self.shift_size, dims=(1, 2))
        return out.contiguous()

    @staticmethod
    def _scatter(out: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        index = idx.view(*idx.shape, 1, 1).expand(-1, -1, *out.shape[2:])
        return out.scatter(1, index, values)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:g}, prune={self.prune:g}, low_bits={self.low_bits}, stage_head={self.stage_head}"


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Windows ``idx`` (B, k) of t (B, nW, N, ...) -> (B, k, N, ...)."""
    index = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
    return torch.gather(t, 1, index)


def _gather_mask(mask: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """The shift masks (nW, N, N) of windows idx (B, k), as one mask per gathered window (B*k, N, N)."""
    return None if mask is None else mask[idx.reshape(-1)]

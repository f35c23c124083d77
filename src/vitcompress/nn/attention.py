"""Quantized attention for timm's ``Attention`` (ViT/DeiT) and Swin's ``WindowAttention``.

Fused scaled-dot-product attention hides the two activation x activation matmuls, so when any of
the attention quantizers is enabled these modules run the explicit matmuls with q, k, v and the
softmax probabilities quantized. When all four are disabled they call timm's own
forward, so the output equals the float model's bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.layers.attention import resolve_self_attn_mask
from timm.models.swin_transformer import WindowAttention
from torch import nn

from vitcompress.config import QuantSpec
from vitcompress.nn.ops import running
from vitcompress.quant import make_quantizer

ATTN_POINTS = ("q", "k", "v", "probs")


def _attach(q: nn.Module, specs: dict[str, QuantSpec], name: str, head_dim: int) -> None:
    for point in ATTN_POINTS:
        channels = None if point == "probs" else head_dim
        setattr(q, f"{point}_quantizer", make_quantizer(specs[point], f"{name}.{point}", -1, channels))


def clone_into(cls: type, module: nn.Module) -> nn.Module:
    """A new ``cls`` instance sharing the state (parameters, buffers, children) of ``module``.

    The parameters, buffers, children and plain attributes are shared (the same objects); the hook
    dictionaries and other ``nn.Module`` containers are the new instance's own, so a hook registered on
    one module never fires on the other. ``training`` is copied.
    """
    q = cls.__new__(cls)
    nn.Module.__init__(q)
    # plain attributes only: the hook and state containers of nn.Module stay q's own (sharing them would
    # make a hook registered on one module fire on the other)
    fresh = set(q.__dict__) - {"training"}
    q.__dict__.update({k: v for k, v in module.__dict__.items() if k not in fresh})
    q._parameters.update(module._parameters)
    q._buffers.update(module._buffers)
    q._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    q._modules.update(module._modules)
    return q


class _AttnQuantMixin:
    def attn_quant_active(self) -> bool:
        return any(
            getattr(self, f"{p}_quantizer").enabled and getattr(self, f"{p}_quantizer").spec.enabled
            for p in ATTN_POINTS
        )

    def _quant_matmuls(self, q, k, v, bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(Q(q)·scale @ Q(k)ᵀ + bias) quantized, @ Q(v); q, k, v: (B, H, N, Dh)."""
        q, k, v = self.q_quantizer(q), self.k_quantizer(k), self.v_quantizer(v)
        if self.probs_quantizer.calibrating and self.probs_quantizer.passes_through:
            # calibration with nothing to observe in the probabilities (log2): the fused kernel, as the float
            # model computes them, without materializing the (B, H, N, N) scores
            drop = self.attn_drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=self.scale)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        if bias is not None:
            attn = attn + bias
        attn = self.probs_quantizer(attn.softmax(dim=-1))
        return self.attn_drop(attn) @ v  # (B, H, N, Dh)


class QuantAttention(_AttnQuantMixin, Attention):
    """timm ``Attention`` with quantized q, k, v and attention probabilities."""

    @classmethod
    def from_float(cls, attn: Attention, specs: dict[str, QuantSpec], name: str = "") -> QuantAttention:
        q = clone_into(cls, attn)
        _attach(q, specs, name, attn.head_dim)
        return q

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        with running(self):  # an enclosing generic module's interception leaves these ops alone
            return self._forward(x, attn_mask, is_causal)

    def _forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        if not self.attn_quant_active():
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        scores_shape = torch.empty(0, dtype=q.dtype)  # only dtype matters to resolve the mask
        bias = resolve_self_attn_mask(N, scores_shape, attn_mask, is_causal)
        x = self._quant_matmuls(q, k, v, bias)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)  # (B, N, H*Dh)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(_AttnQuantMixin, WindowAttention):
    """Swin ``WindowAttention`` with quantized q, k, v and probabilities; relative position bias and
    the shifted-window mask are added to the scores before the softmax, as in timm."""

    @classmethod
    def from_float(cls, attn: WindowAttention, specs: dict[str, QuantSpec], name: str = "") -> QuantWindowAttention:
        q = clone_into(cls, attn)
        _attach(q, specs, name, attn.qkv.out_features // 3 // attn.num_heads)
        return q

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        with running(self):
            return self._forward(x, mask)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.attn_quant_active():
            return super().forward(x, mask=mask)
        B_, N, C = x.shape  # B_ = batch * windows, N = window area
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B_, H, N, Dh)
        bias = self._get_rel_pos_bias()  # (1, H, N, N)
        if mask is not None:
            num_win = mask.shape[0]
            # (B, nW, 1, N, N) + (1, H, N, N) -> (B_, H, N, N)
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(B_ // num_win, -1, -1, -1, -1)
            bias = bias.reshape(B_, self.num_heads, N, N)
        x = self._quant_matmuls(q, k, v, bias)
        x = x.transpose(1, 2).reshape(B_, N, -1)  # (B_, N, H*Dh)
        return self.proj_drop(self.proj(x))

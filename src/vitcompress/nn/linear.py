"""Quantized linear and convolution layers.

They subclass ``nn.Linear``/``nn.Conv2d`` so parameter names, ``isinstance`` checks and timm's
code keep working; each exposes named quantizers (``weight_quantizer``, ``input_quantizer``).
With both quantizers disabled the forward runs exactly the float ops (bit-identical output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.config import QuantSpec
from vitcompress.quant import correct_bias, make_quantizer


class _WeightQuantMixin:
    """Shared: the (optionally bias-corrected) fake-quantized weight."""

    bias_correction: bool

    def _attach(
        self,
        source: nn.Module,
        weight_spec: QuantSpec,
        input_spec: QuantSpec,
        name: str,
        input_axis: int,
        in_channels: int,
    ) -> None:
        self.weight, self.bias = source.weight, source.bias  # shared Parameters: no copy
        self.bias_correction = False
        self.weight_quantizer = make_quantizer(weight_spec, f"{name}.weight", 0, source.weight.shape[0])
        self.input_quantizer = make_quantizer(input_spec, f"{name}.input", input_axis, in_channels)

    def quantized_weight(self) -> torch.Tensor:
        w = self.weight
        w_hat = self.weight_quantizer(w)
        if self.bias_correction and w_hat is not w:
            w_hat = correct_bias(w, w_hat, axis=0)  # Banner et al. 2019, per output channel
        return w_hat


class QuantLinear(_WeightQuantMixin, nn.Linear):
    """``nn.Linear`` with a per-output-channel weight quantizer and an input quantizer."""

    @classmethod
    def from_float(
        cls, linear: nn.Linear, weight_spec: QuantSpec, input_spec: QuantSpec, name: str = ""
    ) -> QuantLinear:
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = linear.in_features, linear.out_features
        q._attach(linear, weight_spec, input_spec, name, -1, linear.in_features)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)

    def functional_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(x, self.weight, bias)`` as a caller wrote it (BEiT's qkv with its own bias), quantized."""
        return F.linear(self.input_quantizer(x), self.quantized_weight(), bias)


class QuantConv2d(_WeightQuantMixin, nn.Conv2d):
    """``nn.Conv2d`` (the patch embedding) with weight and input quantizers."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_spec: QuantSpec, input_spec: QuantSpec, name: str = "") -> QuantConv2d:
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        for attr in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "transposed",
            "output_padding",
            "groups",
            "padding_mode",
            "_reversed_padding_repeated_twice",
        ):
            setattr(q, attr, getattr(conv, attr))
        # activations of a conv are (B, C, H, W): the channel axis of an input spec is 1
        q._attach(conv, weight_spec, input_spec, name, 1, conv.in_channels)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)


class QuantLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose input is quantized (PTF in FQ-ViT; uniform in plain presets)."""

    @classmethod
    def from_float(cls, norm: nn.LayerNorm, input_spec: QuantSpec, name: str = "") -> QuantLayerNorm:
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.normalized_shape, q.eps, q.elementwise_affine = norm.normalized_shape, norm.eps, norm.elementwise_affine
        q.weight, q.bias = norm.weight, norm.bias
        q.input_quantizer = make_quantizer(input_spec, f"{name}.input", -1, norm.normalized_shape[-1])
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(self.input_quantizer(x), self.normalized_shape, self.weight, self.bias, self.eps)

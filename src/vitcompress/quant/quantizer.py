"""Quantizer modules: fake quantization with straight-through gradients (METHODS §0.1).

A quantizer holds its parameters as buffers (``scale``, ``zero_point``; ``scale`` is a Parameter
for LSQ) with shapes fixed at construction, so a saved state dict restores into a fresh quantizer.
Statistics live in a separate observer object that is never saved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vitcompress.config import QuantSpec
from vitcompress.errors import ConfigError, DataError
from vitcompress.quant.functional import fake_quant, grad_scale, log2_fake_quant, ptf_fake_quant, qrange
from vitcompress.quant.observers import (
    ChannelHistogramObserver,
    HistogramObserver,
    check_finite,
    qparams_from_range,
    search_range,
)

GROUP_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


class Quantizer(nn.Module):
    """Base class. ``enabled=False`` (or 32 bits) makes ``forward`` return its input object itself."""

    def __init__(self, spec: QuantSpec, name: str = ""):
        super().__init__()
        self.spec, self.name = spec, name
        self.enabled = True
        self.calibrating = False
        self.register_buffer("calibrated", torch.tensor(False))

    @property
    def is_calibrated(self) -> bool:
        return bool(self.calibrated)

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def compute_qparams(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def reset_stats(self) -> None:
        pass

    def quantize(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def bits_per_channel(self, n: int) -> torch.Tensor:
        bits = self.spec.bits if self.enabled and self.spec.enabled else 32
        return torch.full((n,), float(bits))

    def qparam_count(self) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not self.spec.enabled:
            return x
        if self.calibrating:
            with torch.no_grad():
                self.observe(x)
            return x
        if not self.is_calibrated:
            raise DataError(f"quantizer {self.name or '<unnamed>'} has no scale yet: calibrate it first")
        return self.quantize(x)

    def extra_repr(self) -> str:
        s = self.spec
        return f"{self.name}: {s.bits} bit {s.scheme} {s.granularity} {s.observer}, enabled={self.enabled}"


class UniformQuantizer(Quantizer):
    """Uniform affine (asymmetric) or symmetric quantizer, per tensor / channel / group / token."""

    def __init__(self, spec: QuantSpec, name: str = "", channel_axis: int = 0, num_channels: int | None = None):
        super().__init__(spec, name)
        self.channel_axis, self.num_channels = channel_axis, num_channels
        self.symmetric = spec.scheme == "symmetric"
        n = self._num_params(spec, num_channels)
        shape = () if n is None else (n,)
        scale = torch.ones(shape)
        if spec.learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(shape))
        if spec.granularity == "group":
            self.register_buffer("group_bits", torch.full(shape, spec.bits, dtype=torch.int64))
        if spec.granularity == "token":
            self.calibrated.fill_(True)  # dynamic: nothing to calibrate
        self._hist: HistogramObserver | None = None
        self._lo = self._hi = None
        self._tensor: torch.Tensor | None = None

    def _num_params(self, spec: QuantSpec, n: int | None) -> int | None:
        if spec.granularity in ("tensor", "token"):
            return None
        if n is None:
            raise ConfigError(f"granularity {spec.granularity!r} needs num_channels for quantizer {self.name}")
        if spec.granularity == "group":
            if n % spec.group_size:
                raise ConfigError(f"group_size {spec.group_size} must divide the {n} channels of {self.name}")
            return n // spec.group_size
        return n

    # ---- bits ------------------------------------------------------------------------------------
    def set_group_bits(self, bits: Sequence[int] | torch.Tensor) -> None:
        """Per-group bit widths (F-LBQ); values in {2..8, 16}, one per group. Re-calibrate afterwards."""
        if self.spec.granularity != "group":
            raise ConfigError(f"set_group_bits needs granularity 'group', {self.name} has {self.spec.granularity!r}")
        bits = torch.as_tensor(bits, dtype=torch.int64).flatten()
        if bits.numel() != self.group_bits.numel():
            raise ConfigError(f"group_bits of {self.name} must have {self.group_bits.numel()} values, "
                              f"got {bits.numel()}")
        bad = [int(b) for b in bits if int(b) not in GROUP_BITS]
        if bad:
            raise ConfigError(f"group_bits must be in {list(GROUP_BITS)}, got {bad[0]} for {self.name}")
        self.group_bits.copy_(bits)

    def _bits(self) -> torch.Tensor:
        """Bits per scale entry (groups) or a scalar tensor."""
        if self.spec.granularity == "group":
            return self.group_bits
        return torch.tensor(self.spec.bits) if self.scale.dim() == 0 else torch.full(self.scale.shape, self.spec.bits)

    def bits_per_channel(self, n: int) -> torch.Tensor:
        if not (self.enabled and self.spec.enabled):
            return torch.full((n,), 32.0)
        if self.spec.granularity == "group":
            return self.group_bits.float().repeat_interleave(n // self.group_bits.numel())
        return torch.full((n,), float(self.spec.bits))

    def qparam_count(self) -> int:
        if not (self.enabled and self.spec.enabled) or self.spec.granularity == "token":
            return 0
        return self.scale.numel() * (1 if self.symmetric else 2)

    # ---- calibration -----------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self._hist, self._lo, self._hi, self._tensor = None, None, None, None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(n_params, K) view: one row per scale entry (channel or group of channels)."""
        x = x.detach().float().movedim(self.channel_axis, 0).reshape(self.num_channels, -1)
        if self.spec.granularity == "group":
            x = x.reshape(self.scale.numel(), -1)
        return x

    def observe(self, x: torch.Tensor) -> None:
        g = self.spec.granularity
        if g == "token":
            return
        check_finite(x, self.name)
        if g == "tensor":
            if self._hist is None:
                self._hist = HistogramObserver(self.name)
            self._hist.update(x)
            return
        rows = self._rows(x)
        lo, hi = rows.amin(1), rows.amax(1)
        if self._lo is not None and self.spec.observer != "minmax":
            raise DataError(f"quantizer {self.name}: per-{g} {self.spec.observer!r} range search needs the whole "
                            "tensor in one observe call (weights); use observer 'minmax' for streamed data")
        self._lo = lo if self._lo is None else torch.minimum(self._lo, lo)
        self._hi = hi if self._hi is None else torch.maximum(self._hi, hi)
        self._tensor = rows

    def compute_qparams(self) -> None:
        g, spec = self.spec.granularity, self.spec
        if g == "token":
            return
        if g == "tensor":
            if self._hist is None:
                raise DataError(f"quantizer {self.name}: no data observed; run calibration first")
            lo, hi = self._hist.range(spec.observer, spec.bits, self.symmetric, spec.percentile)
        else:
            if self._lo is None:
                raise DataError(f"quantizer {self.name}: no data observed; run calibration first")
            lo, hi = (self._lo, self._hi) if spec.observer == "minmax" else \
                search_range(self._tensor, self._bits().float(), self.symmetric, spec.observer, spec.percentile)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise DataError(f"quantizer {self.name}: statistics contain NaN or Inf")
        scale, zero, _, _ = qparams_from_range(lo.float(), hi.float(), self._bits().float(), self.symmetric)
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape))
            self.zero_point.copy_(zero.reshape(self.zero_point.shape))
        self.calibrated.fill_(True)
        self._tensor = None

    # ---- forward ---------------------------------------------------------------------------------
    def _broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        if self.spec.granularity == "group":
            t = t.repeat_interleave(self.spec.group_size)
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return t.reshape(shape)

    def _grid(self, x: torch.Tensor):
        if self.spec.granularity == "group":
            b = self._broadcast(self.group_bits, x).to(x.dtype)
            if self.symmetric:
                return -(2 ** (b - 1)), 2 ** (b - 1) - 1
            return torch.zeros_like(b), 2**b - 1
        return qrange(self.spec.bits, self.symmetric)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.granularity == "token":
            return self._dynamic(x)
        scale = self.scale
        if self.spec.learnable:  # LSQ gradient scale 1/sqrt(N·Qp), N = elements per scale
            qmax = qrange(self.spec.bits, self.symmetric)[1]
            scale = grad_scale(scale, 1.0 / math.sqrt(max(1, x.numel() // max(1, scale.numel())) * qmax))
        qmin, qmax = self._grid(x)
        return fake_quant(x, self._broadcast(scale, x), self._broadcast(self.zero_point, x), qmin, qmax)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.detach().amin(-1, keepdim=True), x.detach().amax(-1, keepdim=True)
        scale, zero, qmin, qmax = qparams_from_range(lo, hi, self.spec.bits, self.symmetric)
        return fake_quant(x, scale, zero, qmin, qmax)


class Log2Quantizer(Quantizer):
    """Log2 quantizer of attention probabilities; needs no calibration."""

    def __init__(self, spec: QuantSpec, name: str = ""):
        super().__init__(spec, name)
        self.calibrated.fill_(True)

    def observe(self, x: torch.Tensor) -> None:
        check_finite(x, self.name)

    def compute_qparams(self) -> None:
        pass

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return log2_fake_quant(x, self.spec.bits)


class PTFQuantizer(Quantizer):
    """Power-of-two-factor quantizer of LayerNorm inputs (FQ-ViT), channels on the last axis."""

    MAX_ALPHA = 3

    def __init__(self, spec: QuantSpec, name: str = "", num_channels: int | None = None):
        super().__init__(spec, name)
        if num_channels is None:
            raise ConfigError(f"scheme 'ptf' needs num_channels for quantizer {name}")
        self.num_channels = num_channels
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("alpha", torch.zeros(num_channels, dtype=torch.int64))
        self._obs: ChannelHistogramObserver | None = None

    def reset_stats(self) -> None:
        self._obs = None

    def observe(self, x: torch.Tensor) -> None:
        if self._obs is None:
            self._obs = ChannelHistogramObserver(self.num_channels, self.name)
        self._obs.update(x)

    def compute_qparams(self) -> None:
        if self._obs is None:
            raise DataError(f"quantizer {self.name}: no data observed; run calibration first")
        scale, zero, alpha = self._obs.ptf_params(self.spec.bits, self.MAX_ALPHA)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero)
        self.alpha.copy_(alpha)
        self.calibrated.fill_(True)

    def qparam_count(self) -> int:
        return 2 if self.enabled and self.spec.enabled else 0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.spec.bits, symmetric=False)
        return ptf_fake_quant(x, self.scale, self.zero_point, self.alpha, qmin, qmax)


def make_quantizer(spec: QuantSpec, name: str = "", channel_axis: int = 0,
                   num_channels: int | None = None) -> Quantizer:
    """The quantizer for ``spec`` (uniform, log2 or PTF)."""
    if spec.scheme == "log2":
        return Log2Quantizer(spec, name)
    if spec.scheme == "ptf":
        return PTFQuantizer(spec, name, num_channels)
    return UniformQuantizer(spec, name, channel_axis, num_channels)

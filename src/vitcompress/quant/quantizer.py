"""Quantizer modules: fake quantization with straight-through gradients.

Each module computes its functional reference (:mod:`vitcompress.quant.functional`) exactly. A
quantizer holds its parameters as buffers (``scale``, ``zero_point``; ``scale`` is a Parameter for a
learnable step size, LSQ: Esser et al., "Learned Step Size Quantization", ICLR 2020,
arXiv:1902.08153) with shapes fixed at construction, so a state dict saved from a calibrated
quantizer loads into a freshly constructed one and gives identical outputs. Calibration statistics live in separate
observer objects (:mod:`vitcompress.quant.observers`) that are never saved.

Life cycle: ``observe`` (directly, or through ``forward`` while ``calibrating``) → ``compute_qparams``
→ ``forward``. Statistics are kept after ``compute_qparams`` (so new group bits can be applied
without re-observing) until ``reset_stats``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from vitcompress.config import GROUP_BITS, QuantSpec
from vitcompress.errors import ConfigError, DataError
from vitcompress.quant.functional import (
    fake_quant,
    grad_scale,
    log2_fake_quant,
    ptf_fake_quant,
    qrange,
    qrange_tensor,
    token_qparams,
)
from vitcompress.quant.observers import (
    ChannelHistogramObserver,
    HistogramObserver,
    RowHistogram,
    TokenObserver,
    check_finite,
    group_search,
    qparams_from_range,
    search_range,
    to_rows,
)

log = logging.getLogger(__name__)

ROW_BINS = 512  # per-channel/group streaming histograms (activations observed over several batches)


class Quantizer(nn.Module):
    """Base class of all quantizers.

    Attributes:
        spec: the :class:`QuantSpec`.
        name: the quantization-point name, used in error messages.
        enabled: runtime switch; when False (or ``spec.bits == 32``) ``forward`` returns its input
            object itself, so a model with its quantizers disabled is bit-identical to the float one.
        calibrating: when True, ``forward`` observes its input and returns it unchanged.
    """

    def __init__(self, spec: QuantSpec, name: str = ""):
        super().__init__()
        self.spec, self.name = spec, name
        self.enabled = True
        self.calibrating = False
        self.register_buffer("calibrated", torch.tensor(False))

    @property
    def is_calibrated(self) -> bool:
        """Whether the quantization parameters are set (always True for dynamic/log2 quantizers)."""
        return bool(self.calibrated)

    @property
    def active(self) -> bool:
        """Whether ``forward`` quantizes: enabled and fewer than 32 bits."""
        return self.enabled and self.spec.enabled

    observes_data = True
    """Whether calibration statistics set its parameters (False: log2, dynamic per-token ranges)."""

    @property
    def passes_through(self) -> bool:
        """Whether ``forward`` returns its input unchanged and needs to see it: inactive, or calibrating a
        quantizer that keeps no statistics (a caller may then compute the input any equivalent way)."""
        return not self.active or (self.calibrating and not self.observes_data)

    def observe(self, x: torch.Tensor) -> None:
        """Update the streaming statistics with ``x`` (no gradient)."""
        raise NotImplementedError

    def compute_qparams(self) -> None:
        """Fix scale / zero point from the statistics; DataError naming the quantizer if there are none."""
        raise NotImplementedError

    def reset_stats(self) -> None:
        """Drop the observer statistics (the quantization parameters stay)."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized ``x`` (called by ``forward`` when active and calibrated)."""
        raise NotImplementedError

    def bits_per_channel(self, n: int) -> torch.Tensor:
        """Float tensor (n,): the bit width of each of ``n`` output channels (32 when inactive)."""
        return torch.full((n,), float(self.spec.bits if self.active else 32))

    def qparam_count(self) -> int:
        """Number of stored scale and zero-point values (0 when inactive)."""
        return 0

    def _error(self, message: str) -> DataError:
        return DataError(f"quantizer {self.name or '<unnamed>'}: {message}")

    def _check_qparams(self, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """A computed scale must be finite and > 0, a zero point finite (a finite range wider than float32
        can hold, e.g. [-3e38, 3e38], overflows to an infinite scale)."""
        if not bool(torch.isfinite(scale).all() and (scale > 0).all() and torch.isfinite(zero).all()):
            bad = scale[~(torch.isfinite(scale) & (scale > 0))]
            shown = f"scale {bad.flatten()[0].item():g}" if bad.numel() else "a non-finite zero point"
            raise self._error(f"calibration gave {shown}; the observed values are too large for float32 ranges")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (STE gradients); ``x`` itself when inactive or calibrating."""
        if not self.active:
            return x
        if self.calibrating:
            with torch.no_grad():
                self.observe(x.detach())
            return x
        if not self.is_calibrated:
            raise self._error("has no scale yet; calibrate it first (observe, then compute_qparams)")
        y = self.quantize(x)
        return y if y.dtype == x.dtype else y.to(x.dtype)  # buffers are float32; keep the input's dtype

    def extra_repr(self) -> str:
        s = self.spec
        return f"{self.name}: {s.bits} bit {s.scheme} {s.granularity} {s.observer}, enabled={self.enabled}"


class _TokensApart:
    """Leading tokens (class, distillation, register tokens) on scales of their own.

    With ``spec.prefix_tokens = K > 0`` an observer :class:`TokenObserver` decides at calibration how
    many leading positions ``P ≤ K`` of the token axis of ``(B, N, C)`` inputs are apart; buffers
    ``token_scale``, ``token_zero`` (K,) hold their scales and zero points (entries ≥ P unused) and
    ``prefix`` holds P. Inputs that are not 3-D use the shared scale only.
    """

    spec: QuantSpec
    name: str

    def _init_tokens(self) -> None:
        k = getattr(self.spec, "prefix_tokens", 0)
        self.max_prefix = k
        if k:
            self.register_buffer("token_scale", torch.ones(k))
            self.register_buffer("token_zero", torch.zeros(k))
            self.register_buffer("prefix", torch.tensor(0, dtype=torch.int64))

    @property
    def prefix_count(self) -> int:
        """``P``: the leading tokens with scales of their own (0 without ``prefix_tokens``)."""
        return int(self.prefix) if self.max_prefix else 0

    def _set_tokens(self, obs: TokenObserver, observer: str, symmetric: bool) -> int:
        """Fix ``P`` and the leading tokens' scales from ``obs``; returns ``P``."""
        p = obs.split()
        scale, zero = torch.ones(self.max_prefix), torch.zeros(self.max_prefix)
        if p:
            lo, hi = obs.lead_ranges(p, observer, self.spec.bits, symmetric, self.spec.percentile)
            s, z, _, _ = qparams_from_range(lo.float().cpu(), hi.float().cpu(), self.spec.bits, symmetric)
            self._check_qparams(s, z)
            scale[:p], zero[:p] = s, z
        with torch.no_grad():
            self.token_scale.copy_(scale)
            self.token_zero.copy_(zero)
            self.prefix.fill_(p)
        return p

    def _per_token(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``scale``/``zero`` (shared), or per token (n, 1 or C) when leading tokens are apart."""
        p = self.prefix_count
        if not p or x.dim() != 3:
            return scale, zero
        return token_qparams(scale, zero, self.token_scale[:p], self.token_zero[:p], x.shape[1])


class UniformQuantizer(_TokensApart, Quantizer):
    """Uniform quantizer: symmetric (signed, z = 0) or asymmetric (unsigned, zero point).

    Granularity ``tensor`` (scalar scale), ``channel`` (one scale per index of ``channel_axis``),
    ``group`` (``group_size`` consecutive channels share one scale and one bit width, buffer
    ``group_bits``) or ``token`` (dynamic min/max over the last axis at run time; nothing stored).
    Per tensor, ``spec.prefix_tokens`` sets leading tokens apart (:class:`_TokensApart`).

    Statistics: per tensor, a streaming :class:`HistogramObserver`. Per channel/group, the first
    observed tensor is kept as is (weights: the range search runs on the exact values); a second
    observation switches to streaming per-row histograms (activations over several batches).
    """

    def __init__(self, spec: QuantSpec, name: str = "", channel_axis: int = 0, num_channels: int | None = None):
        super().__init__(spec, name)
        if spec.scheme not in ("symmetric", "asymmetric"):
            raise ConfigError(f"scheme must be 'symmetric' or 'asymmetric' for UniformQuantizer, got {spec.scheme!r}")
        self.channel_axis, self.num_channels = channel_axis, num_channels
        self.symmetric = spec.scheme == "symmetric"
        shape = self._param_shape(spec, num_channels)
        scale = torch.ones(shape)
        if spec.learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(shape))
        if spec.granularity == "group":
            self.register_buffer("group_bits", torch.full(shape, spec.bits, dtype=torch.int64))
            if spec.group_bits is not None:
                if len(spec.group_bits) != shape[0]:
                    raise ConfigError(
                        f"group_bits of quantizer {self.name} must have {shape[0]} values (one per "
                        f"group of {spec.group_size} channels), got {len(spec.group_bits)}"
                    )
                self.group_bits.copy_(torch.tensor(spec.group_bits, dtype=torch.int64))
        if spec.granularity == "token":
            self.calibrated.fill_(True)  # dynamic: nothing to calibrate
            self.observes_data = False
        self._hist: RowHistogram | TokenObserver | None = None
        self._exact: torch.Tensor | None = None  # (R, K) the single observed tensor, until a second one
        self._init_tokens()

    def _param_shape(self, spec: QuantSpec, n: int | None) -> tuple[int, ...]:
        if spec.granularity in ("tensor", "token"):
            return ()
        if n is None:
            raise ConfigError(f"granularity {spec.granularity!r} needs num_channels (quantizer {self.name})")
        if spec.granularity == "group":
            if n % spec.group_size:
                raise ConfigError(f"group_size {spec.group_size} must divide the {n} channels of quantizer {self.name}")
            return (n // spec.group_size,)
        return (n,)

    # ---- bits ------------------------------------------------------------------------------------
    def set_group_bits(self, bits: Sequence[int] | torch.Tensor) -> None:
        """Set the bit width of every channel group (F-LBQ); values in {2..8, 16}, one per group.

        If statistics are held, the scales are recomputed for the new bits at once; if the quantizer
        was calibrated but its statistics were dropped, it becomes uncalibrated (observe again).
        """
        if self.spec.granularity != "group":
            raise ConfigError(
                f"set_group_bits needs granularity 'group'; quantizer {self.name} has {self.spec.granularity!r}"
            )
        bits = torch.as_tensor(bits).flatten()
        if bits.numel() != self.group_bits.numel():
            raise ConfigError(
                f"group_bits of quantizer {self.name} must have {self.group_bits.numel()} values "
                f"(one per group), got {bits.numel()}"
            )
        bad = [b for b in bits.tolist() if b not in GROUP_BITS]
        if bad:
            raise ConfigError(f"group_bits must be in {list(GROUP_BITS)}, got {bad[0]!r} (quantizer {self.name})")
        self.group_bits.copy_(bits.to(torch.int64))
        if self._hist is not None or self._exact is not None:
            self.compute_qparams()
        elif self.is_calibrated:
            log.warning("quantizer %s: new group bits without statistics; observe again before use", self.name)
            self.calibrated.fill_(False)

    def _row_bits(self) -> int | torch.Tensor:
        return self.group_bits if self.spec.granularity == "group" else self.spec.bits

    def bits_per_channel(self, n: int) -> torch.Tensor:
        if not self.active:
            return torch.full((n,), 32.0)
        if self.spec.granularity == "group":
            groups = self.group_bits.numel()
            if n % groups:
                raise ConfigError(f"quantizer {self.name}: {n} channels do not split into {groups} groups")
            return self.group_bits.float().cpu().repeat_interleave(n // groups)
        return torch.full((n,), float(self.spec.bits))

    def qparam_count(self) -> int:
        if not self.active or self.spec.granularity == "token":
            return 0
        return (self.scale.numel() + self.prefix_count) * (1 if self.symmetric else 2)

    # ---- calibration -----------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self._hist, self._exact = None, None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(R, K): one row per scale entry (channel or group of channels)."""
        axis = self.channel_axis
        if not -x.dim() <= axis < x.dim() or x.shape[axis] != self.num_channels:
            raise self._error(
                f"expected {self.num_channels} channels on axis {self.channel_axis}, got shape {tuple(x.shape)}"
            )
        return to_rows(x.detach(), self.spec.granularity, self.channel_axis, self.spec.group_size)

    @property
    def _needs_histogram(self) -> bool:
        """Min-max ranges need only the exact extremes: no histogram (the calibration's hot path)."""
        return self.spec.observer != "minmax"

    def observe(self, x: torch.Tensor) -> None:
        g = self.spec.granularity
        if not self.spec.enabled:  # 32 bits: nothing will be quantized, keep no statistics
            return
        if g == "token":
            check_finite(x, self.name)  # dynamic ranges need no statistics, but bad data is still an error
            return
        if g == "tensor":
            if self._hist is None:
                tail = HistogramObserver(self.name, histogram=self._needs_histogram)
                self._hist = TokenObserver(self.max_prefix, tail, self.name, ROW_BINS) if self.max_prefix else tail
            self._hist.update(x)
            return
        rows = self._rows(x)
        check_finite(rows, self.name)
        if rows.numel() == 0:
            return
        if self._hist is None and self._exact is None:
            self._exact = rows  # a weight: keep the exact values (a view, no copy, for float32 weights)
            return
        if self._hist is None:  # a second batch: stream from now on (memory independent of the data)
            self._hist = RowHistogram(rows.shape[0], self.name, ROW_BINS, histogram=self._needs_histogram)
            self._hist.update_rows(self._exact)
            self._exact = None
        self._hist.update_rows(rows)

    def compute_qparams(self) -> None:
        spec = self.spec
        if spec.granularity == "token" or not spec.enabled:
            return
        bits = self._row_bits()
        if isinstance(self._hist, TokenObserver):
            p = self._set_tokens(self._hist, spec.observer, self.symmetric)
            lo, hi = group_search(self._hist.rest_parts(p), spec.observer, bits, self.symmetric, spec.percentile)
        elif self._exact is not None:
            lo, hi = search_range(self._exact.float(), bits, self.symmetric, spec.observer, spec.percentile)
        elif self._hist is not None:
            lo, hi = self._hist.search(spec.observer, bits, self.symmetric, spec.percentile)
        else:
            raise self._error("no data observed; run calibration first")
        lo, hi = lo.float().reshape(self.scale.shape), hi.float().reshape(self.scale.shape)
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise self._error("statistics contain NaN or Inf")
        bits_t = bits.to(lo.device) if isinstance(bits, torch.Tensor) else bits
        scale, zero, _, _ = qparams_from_range(lo, hi, bits_t, self.symmetric)
        self._check_qparams(scale, zero)
        with torch.no_grad():
            self.scale.copy_(scale)
            self.zero_point.copy_(zero)
        self.calibrated.fill_(True)

    # ---- forward ---------------------------------------------------------------------------------
    def _broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-channel/group values shaped to broadcast along ``channel_axis`` of ``x``."""
        if t.dim() == 0:
            return t
        if self.spec.granularity == "group":
            t = t.repeat_interleave(self.spec.group_size)
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return t.reshape(shape)

    def qbounds(self, x: torch.Tensor) -> tuple[int | torch.Tensor, int | torch.Tensor]:
        """``(qmin, qmax)`` for ``x``: ints, or per-channel tensors for group granularity."""
        if self.spec.granularity == "group":
            qmin, qmax = qrange_tensor(self.group_bits, self.symmetric, self.scale.dtype)
            return self._broadcast(qmin, x), self._broadcast(qmax, x)
        return qrange(self.spec.bits, self.symmetric)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.granularity == "token":
            return self._dynamic(x)
        scale = self.scale
        if self.spec.learnable:
            scale = grad_scale(scale, self._lsq_factor(x))
        qmin, qmax = self.qbounds(x)
        if self.prefix_count:
            return fake_quant(x, *self._per_token(x, scale, self.zero_point), qmin, qmax)
        return fake_quant(x, self._broadcast(scale, x), self._broadcast(self.zero_point, x), qmin, qmax)

    def _lsq_factor(self, x: torch.Tensor) -> float | torch.Tensor:
        """LSQ gradient scale ``1/sqrt(N·Qp)`` (Esser et al. 2020), N = elements per scale value."""
        n = max(1, x.numel() // max(1, self.scale.numel()))
        if self.spec.granularity == "group":
            qmax = qrange_tensor(self.group_bits, self.symmetric, self.scale.dtype)[1]
            return 1.0 / torch.sqrt(n * qmax)
        return 1.0 / math.sqrt(n * qrange(self.spec.bits, self.symmetric)[1])

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token min-max over the last axis, computed from ``x`` itself (no gradient to the range)."""
        lo, hi = x.detach().amin(-1, keepdim=True), x.detach().amax(-1, keepdim=True)
        scale, zero, qmin, qmax = qparams_from_range(lo, hi, self.spec.bits, self.symmetric)
        return fake_quant(x, scale, zero, qmin, qmax)


class Log2Quantizer(Quantizer):
    """Log2 quantizer of attention probabilities; needs no calibration.

    From FQ-ViT (Lin, Zhang, Sun, Li, Zhou, "FQ-ViT: Post-Training Quantization for Fully Quantized
    Vision Transformer", IJCAI 2022, arXiv:2111.13824): ``x̂ = 2^(−q)``, ``q = round(−log2 x)``.
    """

    observes_data = False

    def __init__(self, spec: QuantSpec, name: str = ""):
        super().__init__(spec, name)
        self.calibrated.fill_(True)

    def observe(self, x: torch.Tensor) -> None:
        check_finite(x, self.name)  # nothing to estimate, but bad data is still an error

    def compute_qparams(self) -> None:
        pass

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return log2_fake_quant(x, self.spec.bits)


class PTFQuantizer(_TokensApart, Quantizer):
    """Power-of-two-factor quantizer of LayerNorm inputs (FQ-ViT, Lin et al., IJCAI 2022, arXiv:2111.13824).

    Channels are on the last axis (tokens × C). One layer-wise scale and zero point come from the
    layer range; channel ``c`` uses scale ``s·2^α_c``, ``s = s_layer/8``, ``α_c ∈ {0,1,2,3}`` chosen
    by least L2 error on the channel's streaming histogram. Buffers: ``scale`` (the base ``s``),
    ``zero_point`` (shared by all channels, as in FQ-ViT's code) and ``alpha`` (C,).

    With ``spec.prefix_tokens`` the leading tokens apart (:class:`_TokensApart`) get plain uniform
    min-max scales; the layer range and the factors come from the other tokens.
    """

    MAX_ALPHA = 3

    def __init__(self, spec: QuantSpec, name: str = "", num_channels: int | None = None):
        super().__init__(spec, name)
        if num_channels is None:
            raise ConfigError(f"scheme 'ptf' needs num_channels (quantizer {name})")
        self.num_channels = num_channels
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("alpha", torch.zeros(num_channels, dtype=torch.int64))
        self._obs: ChannelHistogramObserver | TokenObserver | None = None
        self._init_tokens()

    def reset_stats(self) -> None:
        self._obs = None

    def observe(self, x: torch.Tensor) -> None:
        if not self.spec.enabled:
            return
        if self._obs is None:
            tail = ChannelHistogramObserver(self.num_channels, self.name, ROW_BINS)
            # the leading tokens apart get min-max scales (compute_qparams): they need no histograms
            self._obs = (
                TokenObserver(self.max_prefix, tail, self.name, ROW_BINS, histogram=False) if self.max_prefix else tail
            )
        self._obs.update(x)

    def compute_qparams(self) -> None:
        if not self.spec.enabled:
            return
        if self._obs is None:
            raise self._error("no data observed; run calibration first")
        if isinstance(self._obs, TokenObserver):
            p = self._set_tokens(self._obs, "minmax", symmetric=False)
            lo, hi = group_search(self._obs.rest_parts(p), "minmax", self.spec.bits, False)
            scale, zero, alpha = self._obs.tail.ptf_params(self.spec.bits, self.MAX_ALPHA, lo, hi)
        else:
            scale, zero, alpha = self._obs.ptf_params(self.spec.bits, self.MAX_ALPHA)
        self._check_qparams(scale, zero)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero)
        self.alpha.copy_(alpha)
        self.calibrated.fill_(True)

    def qparam_count(self) -> int:
        # s and z (and those of the leading tokens apart); the 2-bit factors α_c are not counted as qparams
        return 2 * (1 + self.prefix_count) if self.active else 0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.num_channels:
            raise self._error(f"expected {self.num_channels} channels on the last axis, got shape {tuple(x.shape)}")
        qmin, qmax = qrange(self.spec.bits, symmetric=False)
        if self.prefix_count and x.dim() == 3:
            channel_scale = self.scale * torch.exp2(self.alpha.to(self.scale.dtype))  # as ptf_fake_quant
            return fake_quant(x, *self._per_token(x, channel_scale, self.zero_point), qmin, qmax)
        return ptf_fake_quant(x, self.scale, self.zero_point, self.alpha, qmin, qmax)


def make_quantizer(
    spec: QuantSpec, name: str = "", channel_axis: int = 0, num_channels: int | None = None
) -> Quantizer:
    """The quantizer for ``spec``: uniform, log2 or PTF.

    Args:
        spec: how to quantize.
        name: quantization-point name (error messages).
        channel_axis: axis of the channels for ``channel``/``group`` granularity (0: a weight's output
            channels). PTF always uses the last axis.
        num_channels: size of that axis; required for ``channel``, ``group`` and ``ptf``.
    """
    if spec.scheme == "log2":
        return Log2Quantizer(spec, name)
    if spec.scheme == "log_sqrt2":
        from vitcompress.quant.logsqrt2 import LogSqrt2Quantizer  # it subclasses Quantizer: imported late

        return LogSqrt2Quantizer(spec, name)
    if spec.scheme == "ptf":
        return PTFQuantizer(spec, name, num_channels)
    return UniformQuantizer(spec, name, channel_axis, num_channels)

"""Post-LayerNorm activation reparameterization (RepQ-ViT).

From Zhikai Li, Junrui Xiao, Lianwei Yang, Qingyi Gu, "RepQ-ViT: Scale Reparameterization for
Post-Training Quantization of Vision Transformers", ICCV 2023, arXiv:2212.08254 (section 3.2).

A LayerNorm output has channels of very different ranges, which one per-tensor scale serves badly at
low bit widths. The paper calibrates one asymmetric scale ``s_c`` and zero point ``z_c`` per channel,
then moves the channel variation out of the activation: with ``s̃ = mean(s)``, ``z̃ = mean(z)``,
``r1 = s / s̃`` and ``r2 = z − z̃`` (eq. 5–7)

    LayerNorm:  γ̃ = γ / r1,       β̃ = (β + s ⊙ r2) / r1
    consumer:   W̃ = W · diag(r1),  b̃ = b − W (s ⊙ r2)

so the new LayerNorm output ``ỹ = (y + s ⊙ r2) / r1`` maps every channel's calibrated range onto
the same ``[−z̃ s̃, (2^b − 1 − z̃) s̃]`` and ``W̃ ỹ + b̃ = W y + b``: the model is unchanged in real
arithmetic (in float up to rounding) and one per-tensor quantizer then fits every channel.

Which linear layers consume a LayerNorm is found from what runs, not from names: one forward under a
:class:`~torch.overrides.TorchFunctionMode` follows each LayerNorm output through the operations
that only move or average its rows (reshape, view, permutes that keep the channel axis last,
indexing of the leading axes, roll, zero padding, mean over the leading axes, eval-mode dropout) and
records the ``nn.Linear`` modules it enters. A LayerNorm whose output reaches anything else (a
residual add, a convolution, a linear called with someone else's bias, ...) is left as it is, since
folding would change the model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from vitcompress.config import QuantSpec
from vitcompress.data.calib import count_batches, iter_images
from vitcompress.device import model_device
from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.quant import Quantizer, UniformQuantizer

log = logging.getLogger(__name__)

R1_FLOOR = 1e-3  # a channel that is (almost) constant on the calibration data keeps r1 ≥ this


@dataclass(frozen=True)
class NormConsumers:
    """A LayerNorm and the linear layers its output feeds (only through row moves and averages).

    Attributes:
        norm: the LayerNorm's module name.
        linears: the names of the ``nn.Linear`` modules that consume its output.
    """

    norm: str
    linears: tuple[str, ...]


# ---- finding the LayerNorm -> linear pairs ------------------------------------------------------
_PASS_THROUGH = {
    torch.Tensor.contiguous,
    torch.Tensor.clone,
    torch.clone,
    torch.Tensor.float,
    torch.Tensor.to,
}
_RESHAPES = {torch.Tensor.reshape, torch.Tensor.view, torch.reshape, torch.Tensor.flatten, torch.flatten}
_PERMUTES = {torch.Tensor.permute, torch.permute}
_TRANSPOSES = {torch.Tensor.transpose, torch.transpose}
_MEANS = {torch.Tensor.mean, torch.mean}
_DROPOUTS = {F.dropout, torch.dropout}


def _dims(arg, ndim: int) -> list[int]:
    """Axis argument(s) normalised to non-negative ints."""
    items = arg if isinstance(arg, (tuple, list)) else [arg]
    return [int(d) % ndim for d in items]


def _index_keeps_channels(index, ndim: int) -> bool:
    """Whether ``x[index]`` leaves the last axis of an ``ndim``-D tensor whole."""
    items = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in items):
        after = items[[i is Ellipsis for i in items].index(True) + 1 :]
        return all(i is None or i == slice(None) for i in after)
    used = [i for i in items if i is not None]
    if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 1 for i in used):
        return False  # a boolean mask over several axes could reach the last one
    return len(used) < ndim or used[-1] == slice(None)


def _keeps_rows(func, args: tuple, kwargs: dict, x: torch.Tensor) -> bool:
    """Whether ``func(x, *args[1:])`` only moves, repeats or averages rows of ``x`` (channels last)."""
    ndim = x.dim()
    rest = list(args[1:])
    if func in _PASS_THROUGH:
        return func is not torch.Tensor.to or not any(isinstance(a, torch.dtype) for a in rest)
    if func in _RESHAPES:
        return True  # checked on the output: the last axis keeps its size, so row-major order keeps channels
    if func in _PERMUTES:
        perm = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest or kwargs.get("dims")
        return _dims(perm, ndim)[-1] == ndim - 1
    if func in _TRANSPOSES:
        return ndim - 1 not in _dims(rest[:2] or [kwargs.get("dim0"), kwargs.get("dim1")], ndim)
    if func is torch.roll:
        dims = rest[1] if len(rest) > 1 else kwargs.get("dims")
        return dims is not None and ndim - 1 not in _dims(dims, ndim)
    if func is torch.Tensor.__getitem__:
        return _index_keeps_channels(rest[0], ndim)
    if func is F.pad:
        pad = rest[0] if rest else kwargs.get("pad")
        return all(p == 0 for p in pad)  # zero rows would not stay zero after folding: only no-op padding
    if func in _MEANS:
        dim = rest[0] if rest else kwargs.get("dim")
        return dim is not None and ndim - 1 not in _dims(dim, ndim)
    if func in _DROPOUTS:
        training = kwargs.get("training", rest[1] if len(rest) > 1 else True)
        return training is False
    return False


class _FollowNorms(TorchFunctionMode):
    """Follows LayerNorm outputs (tagged by forward hooks) to the linear layers they enter."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[str, torch.Tensor]] = {}  # id -> (norm, tensor kept alive: ids stay unique)
        self.consumers: dict[str, set[str]] = {}
        self.escaped: dict[str, str] = {}  # norm -> the first op its output reached that cannot be folded
        self.entering: tuple[int, int, str] | None = None  # (id(input), id(weight), linear) of the running linear
        self.inputs: dict[str, set[str | None]] = {}  # linear -> the norm tag of every input it was called with

    def tag(self, norm: str, out: torch.Tensor) -> None:
        self.tags[id(out)] = (norm, out)
        self.consumers.setdefault(norm, set())

    def tag_of(self, t) -> str | None:
        hit = self.tags.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit[0] if hit is not None and hit[1] is t else None

    def _tagged_args(self, args, kwargs) -> list[str]:
        found = []
        for a in [*args, *kwargs.values()]:
            for t in a if isinstance(a, (tuple, list)) else (a,):
                tag = self.tag_of(t)
                if tag is not None:
                    found.append(tag)
        return found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tags = self._tagged_args(args, kwargs)
        if not tags or not isinstance(out, torch.Tensor):
            return out  # untouched, or metadata (shape, dtype, size) read from a LayerNorm output
        first = self.tag_of(args[0]) if args else None
        if func is F.linear and first is not None and self.entering is not None:
            x_id, w_id, linear = self.entering
            if (x_id, w_id) == (id(args[0]), id(args[1])) and len(set(tags)) == 1:
                self.consumers[first].add(linear)
                return out
        same_channels = first is not None and len(set(tags)) == 1 and out.shape[-1:] == args[0].shape[-1:]
        if same_channels and _keeps_rows(func, args, kwargs, args[0]):
            self.tag(first, out)
            return out
        for t in set(tags):
            self.escaped.setdefault(t, getattr(func, "__name__", str(func)))
        return out


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) and m.elementwise_affine and m.bias is not None and len(m.normalized_shape) == 1


@torch.no_grad()
def find_norm_consumers(model: nn.Module, x: torch.Tensor) -> list[NormConsumers]:
    """The LayerNorms of ``model`` whose output reaches only ``nn.Linear`` layers, with those layers.

    Runs one forward of ``x`` (a small batch suffices) and follows each LayerNorm output (module
    docstring). LayerNorms without affine parameters are not considered.
    """
    follow = _FollowNorms()
    handles = []
    for name, m in model.named_modules():
        if _is_norm(m):
            handles.append(m.register_forward_hook(lambda _m, _i, out, n=name: follow.tag(n, out)))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_pre_hook(_entering(follow, name)))
            handles.append(m.register_forward_hook(lambda *_: setattr(follow, "entering", None)))
    model.eval()
    try:
        with follow:
            model(x)
    finally:
        for h in handles:
            h.remove()
    found = []
    for norm, linears in follow.consumers.items():
        # a linear also called on other inputs (another norm's, or untagged) would compute those wrongly
        shared = sorted(n for n in linears if follow.inputs.get(n, set()) != {norm})
        if norm in follow.escaped or shared or not linears:
            why = follow.escaped.get(norm) or (f"{shared[0]}, which also runs on other inputs" if shared else "")
            log.info("reparameterization: %s is left as it is (its output reaches %s)", norm, why or "no linear")
            continue
        found.append(NormConsumers(norm, tuple(sorted(linears))))
    return found


def _entering(follow: _FollowNorms, name: str):
    def hook(m: nn.Module, inputs: tuple) -> None:
        follow.entering = (id(inputs[0]), id(m.weight), name) if inputs else None
        follow.inputs.setdefault(name, set()).add(follow.tag_of(inputs[0]) if inputs else None)

    return hook


# ---- calibration and folding -------------------------------------------------------------------
@torch.no_grad()
def _channel_qparams(
    model: nn.Module, pairs: list[NormConsumers], calib: Iterable, spec: QuantSpec, batch_size: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel asymmetric scale and zero point (C,) of every listed LayerNorm's output."""
    bits = spec.bits if spec.enabled else 8  # r1 does not depend on the bits (only the zero points' rounding)
    channel_spec = QuantSpec(bits, "asymmetric", "channel", observer=spec.observer, percentile=spec.percentile)
    observers, handles = {}, []
    for p in pairs:
        norm = model.get_submodule(p.norm)
        qz = UniformQuantizer(channel_spec, f"{p.norm}.reparam", -1, norm.normalized_shape[0]).to(norm.weight.device)
        observers[p.norm] = qz
        handles.append(norm.register_forward_hook(lambda _m, _i, out, q=qz: q.observe(out)))
    batches = iter_images(calib, batch_size, device=model_device(model))
    try:
        for x in tqdm(batches, desc="reparam statistics", leave=False, total=count_batches(calib, batch_size)):
            model(x)
    finally:
        for h in handles:
            h.remove()
    qparams = {}
    for name, qz in observers.items():
        qz.compute_qparams()
        qparams[name] = (qz.scale.detach(), qz.zero_point.detach())
    return qparams


@torch.no_grad()
def fold_norm(model: nn.Module, pair: NormConsumers, scale: torch.Tensor, zero: torch.Tensor) -> None:
    """Fold per-channel ``scale``/``zero`` (C,) of ``pair.norm``'s output into it and its consumers (eq. 7).

    Computed in float64 and written back in each parameter's dtype. A consumer without a bias gets one.
    """
    norm = model.get_submodule(pair.norm)
    scale, zero = scale.to(norm.weight.device, torch.float64), zero.to(norm.weight.device, torch.float64)
    s_mean = scale.mean()
    r1 = (scale / s_mean).clamp_min(R1_FLOOR)
    shift = scale * (zero - zero.mean())  # s ⊙ r2
    gamma, beta = norm.weight.double(), norm.bias.double()
    norm.weight.copy_((gamma / r1).to(norm.weight.dtype))
    norm.bias.copy_(((beta + shift) / r1).to(norm.bias.dtype))
    for name in pair.linears:
        linear = model.get_submodule(name)
        w = linear.weight.double()
        bias = linear.bias.double() if linear.bias is not None else torch.zeros_like(w[:, 0])
        new_bias = (bias - w @ shift).to(linear.weight.dtype)
        if linear.bias is None:
            linear.bias = nn.Parameter(new_bias)
        else:
            linear.bias.copy_(new_bias)
        linear.weight.copy_((w * r1).to(linear.weight.dtype))


def reparameterize_(model: nn.Module, calib: Iterable, spec: QuantSpec, batch_size: int = 64) -> list[NormConsumers]:
    """RepQ-ViT post-LayerNorm reparameterization of a float model, in place.

    Args:
        model: a float model (before ``prepare``).
        calib: calibration images (a Dataset of (image, label), a loader, or batches).
        spec: the activation spec whose bits, observer and percentile set the per-channel ranges.
        batch_size: batch size when ``calib`` is a Dataset.

    Returns:
        The folded LayerNorms and their consumers. The model computes the same function (float rounding).
    """
    if any(isinstance(m, Quantizer) for m in model.modules()):
        raise UnsupportedModelError("reparameterization runs on the float model, before prepare; got a quantized one")
    first = next(iter(iter_images(calib, batch_size, device=model_device(model))), None)
    if first is None:
        raise ConfigError("reparam needs calibration images; calib is empty")
    pairs = find_norm_consumers(model, first[:8])
    if not pairs:
        log.warning("reparameterization: no LayerNorm feeds only linear layers; nothing folded")
        return []
    qparams = _channel_qparams(model, pairs, calib, spec, batch_size)
    for p in pairs:
        fold_norm(model, p, *qparams[p.norm])
    log.info("reparameterized %d LayerNorms (%d linear consumers)", len(pairs), sum(len(p.linears) for p in pairs))
    return pairs


def add_folded_biases(model: nn.Module, weights_file: str | Path) -> list[str]:
    """Give every bias-free linear of ``model`` whose bias ``weights_file`` holds a (zero) bias to load into.

    A saved reparameterized model has biases that folding added (:func:`fold_norm`); ``restore`` calls
    this before loading. Returns the names of the linears that got one.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(weights_file), framework="pt") as f:
            keys = set(f.keys())
    except Exception:  # noqa: BLE001 (an unreadable file: load_weights names the problem next)
        return []
    added = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.bias is None and f"{name}.bias" in keys:
            m.bias = nn.Parameter(torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device))
            added.append(name)
    return added

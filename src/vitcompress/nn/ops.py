"""The torch functions that carry a model's multiply-accumulates, and which module runs each one.

Attention is found by what it computes, not by class name: a module whose own ``forward`` calls an
activation x activation matmul (``matmul``/``@``/``bmm``/``einsum``), a softmax or the fused
``F.scaled_dot_product_attention`` is an attention module, whatever its class. A linear layer may be
called as a module or through ``F.linear(x, self.qkv.weight, bias)`` (BEiT, EVA-02, Swin-V2 build the
qkv bias outside the ``nn.Linear``); both are seen here.

:func:`trace_ops` runs one forward of a float model with a ``TorchFunctionMode`` and forward hooks and
returns every such call (:class:`OpSite`): the module whose code runs it (parameter-free leaf modules
such as ``nn.Softmax`` and ``nn.Dropout`` count as their parent's code), its kind, its index among
the module's calls of that kind, and what each tensor operand is (a parameter, a buffer, an
activation, or the output of a softmax of the same module).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.models.inputs import zero_image

# torch function -> kind; the index of an op is counted per (module, kind) in call order
MATMUL_FUNCS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm, torch.mm)
MATMUL_FUNCS += (torch.Tensor.mm, torch.einsum)
SOFTMAX_FUNCS = (F.softmax, torch.softmax, torch.Tensor.softmax)
KINDS: dict = {f: "matmul" for f in MATMUL_FUNCS}
KINDS.update({f: "softmax" for f in SOFTMAX_FUNCS})
KINDS[F.scaled_dot_product_attention] = "sdpa"
KINDS[F.linear] = "linear"
KINDS.update({f: "conv" for f in (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d)})
# matmuls with a weight operand that no quantized module covers (always reported as float when they hold a parameter)
OTHER_MACS = (torch.addmm, torch.baddbmm, torch.addbmm, torch.tensordot, torch.mv, F.bilinear)
KINDS.update({f: "other" for f in OTHER_MACS})
COUNTED = ("matmul", "softmax", "sdpa")  # kinds that get indexed quantization points

PARAM, BUFFER, ACT, PROBS = "param", "buffer", "act", "probs"
_RUNNING: list[nn.Module] = []  # modules whose forward is running, innermost last (while an interception is on)
_TRACKING: list = []  # the global module hooks that maintain _RUNNING, and how many interceptions use them


@contextmanager
def running(module: nn.Module) -> Iterator[None]:
    """Mark ``module``'s forward as running: the ops called inside belong to it, not to an outer module
    (an outer module's interception passes them through)."""
    _RUNNING.append(module)
    try:
        yield
    finally:
        _RUNNING.pop()


def innermost_running() -> nn.Module | None:
    return _RUNNING[-1] if _RUNNING else None


def _push(m: nn.Module, *_) -> None:
    if not _transparent(m):
        _RUNNING.append(m)


def _pop(m: nn.Module, *_) -> None:
    if not _transparent(m):
        _RUNNING.pop()


@contextmanager
def tracking_calls() -> Iterator[None]:
    """While on, every module call that is not a parameter-free leaf marks itself running (global module
    hooks), so that an op belongs to the module whose own code runs it, as in :func:`trace_ops`: the
    matmul inside an export linear is the linear's, not the enclosing attention's."""
    if not _TRACKING:
        _TRACKING.extend(
            [
                0,
                torch.nn.modules.module.register_module_forward_pre_hook(_push),
                torch.nn.modules.module.register_module_forward_hook(_pop, always_call=True),
            ]
        )
    _TRACKING[0] += 1
    try:
        yield
    finally:
        _TRACKING[0] -= 1
        if not _TRACKING[0]:
            for handle in _TRACKING[1:]:
                handle.remove()
            _TRACKING.clear()


@dataclass(frozen=True)
class OpSite:
    """One call of a multiply-accumulate op (or a softmax) seen in the traced forward.

    Attributes:
        module: path of the module whose code makes the call ("" is the model's own forward).
        kind: ``matmul``, ``softmax``, ``sdpa``, ``linear``, ``conv`` or ``other``.
        index: its position among ``module``'s calls of ``kind`` (counted kinds only, else -1).
        operands: what each tensor operand is: ``param:<name>``, ``buffer``, ``act`` or ``probs``.
        shapes: the shape of each tensor operand.
        weight_owner: for ``linear``/``conv`` on a parameter, the path of the module owning it.
    """

    module: str
    kind: str
    index: int
    operands: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    weight_owner: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"

    @property
    def act_only(self) -> bool:
        """Whether every operand is an activation (the activation x activation matmuls of attention)."""
        return all(o in (ACT, PROBS) for o in self.operands)


def operands_of(func, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensor operands of a call, in order (einsum: the tensors after the equation)."""
    if func is torch.einsum:
        rest = args[1:]
        rest = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        return [t for t in rest if isinstance(t, torch.Tensor)]
    if func is F.linear:
        x = args[0] if args else kwargs.get("input")
        w = args[1] if len(args) > 1 else kwargs.get("weight")
        return [t for t in (x, w) if isinstance(t, torch.Tensor)]
    if func is F.scaled_dot_product_attention:
        names = ("query", "key", "value")
        return [args[i] if len(args) > i else kwargs[names[i]] for i in range(3)]
    return [a for a in args if isinstance(a, torch.Tensor)]


def _storage(t: torch.Tensor) -> tuple[int, int]:
    return t.untyped_storage().data_ptr(), t.numel()


class _TraceMode(TorchFunctionMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.stack: list[str] = [""]
        self.params = {id(p): n for n, p in model.named_parameters()}
        self.owners = {id(p): n.rsplit(".", 1)[0] if "." in n else "" for n, p in model.named_parameters()}
        self.buffers = {id(b) for b in model.buffers()}
        self.sites: list[OpSite] = []
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.probs: dict[str, set[tuple[int, int]]] = defaultdict(set)  # module -> storages of its softmax outputs
        self.alive: list[torch.Tensor] = []  # the softmax outputs, kept so that no later tensor reuses their memory

    def leave(self, *_) -> None:
        self.stack.pop()

    def _what(self, t: torch.Tensor, module: str) -> str:
        if id(t) in self.params:
            return f"{PARAM}:{self.params[id(t)]}"
        if id(t) in self.buffers:
            return BUFFER
        return PROBS if _storage(t) in self.probs[module] else ACT

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = KINDS.get(func)
        out = func(*args, **kwargs)
        if kind is None:
            return out
        module = self.stack[-1]
        ops = operands_of(func, args, kwargs)
        index = -1
        if kind in COUNTED:
            index = self.counts[module, kind]
            self.counts[module, kind] += 1
        owner = None
        if kind in ("linear", "conv") and len(ops) > 1 and id(ops[1]) in self.params:
            owner = self.owners[id(ops[1])]
        what = tuple(self._what(t, module) for t in ops)
        shapes = tuple(tuple(int(d) for d in t.shape) for t in ops)
        self.sites.append(OpSite(module, kind, index, what, shapes, owner))
        if kind == "softmax":
            self.probs[module].add(_storage(out))
            self.alive.append(out)
        return out


def _transparent(m: nn.Module) -> bool:
    """A parameter-free leaf (``nn.Softmax``, ``nn.Dropout``, activations): its ops are its parent's."""
    return not any(True for _ in m.children()) and not any(True for _ in m.parameters(recurse=False))


@torch.no_grad()
def trace_ops(model: nn.Module, example_input: torch.Tensor) -> list[OpSite]:
    """Every multiply-accumulate op and softmax of one forward of ``model`` on ``example_input``.

    Raises:
        UnsupportedModelError: the forward fails on ``example_input`` (named, with the input shape).
    """
    mode = _TraceMode(model)
    handles = []
    for path, m in model.named_modules():
        if path and not _transparent(m):
            handles.append(m.register_forward_pre_hook(lambda _m, _a, p=path: mode.stack.append(p)))
            handles.append(m.register_forward_hook(mode.leave, always_call=True))
    was_training = model.training
    model.eval()
    try:
        with mode:
            model(example_input)
    except Exception as e:  # any failure of a foreign model's forward: one line, with the cause
        raise UnsupportedModelError(
            f"one forward at input shape {tuple(example_input.shape)} (run to find the attention matmuls) "
            f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            "pass the model's input size (example_input / --input-size)"
        ) from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return mode.sites


def example_input_for(model: nn.Module) -> torch.Tensor:
    """A zero image of the shape ``model`` declares (:func:`vitcompress.models.inputs.zero_image`).

    Raises:
        UnsupportedModelError: the model declares no input size.
    """
    try:
        return zero_image(model)
    except ConfigError as e:
        raise UnsupportedModelError(f"{e}; or pass example_input") from None

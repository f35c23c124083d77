"""From the ops one forward runs (:func:`vitcompress.nn.ops.trace_ops`) to a conversion plan: which modules
become generic quantized attention (:mod:`vitcompress.nn.generic`), and which stay float, and why."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from vitcompress.nn.ops import ACT, COUNTED, PROBS, OpSite
from vitcompress.nn.summary import FloatModule


@dataclass
class Plan:
    """``generic``: module path -> (its counted op sites, the linears it calls through ``F.linear``);
    ``floats``: modules nothing quantizes; ``float_attention``: attention ops that cannot be wrapped."""

    generic: dict[str, tuple[list[OpSite], list[str]]] = field(default_factory=dict)
    floats: dict[str, FloatModule] = field(default_factory=dict)
    float_attention: list[str] = field(default_factory=list)

    def add_float(self, path: str, m: nn.Module, why: str) -> None:
        self.floats.setdefault(path, FloatModule(path, type(m).__name__, why))


def _linear_site(plan: Plan, s: OpSite, modules: dict[str, nn.Module], known: tuple[type, ...]) -> str | None:
    """The relative path of the linear a module calls through ``F.linear`` (None if none, or float)."""
    m = modules[s.module]
    fn = "F.linear" if s.kind == "linear" else "F.conv"
    if s.weight_owner is None:
        plan.add_float(s.module, m, f"{fn} on a computed weight: no weight quantizer")
        return None
    owner = modules[s.weight_owner]
    if s.weight_owner == s.module:
        if type(m) not in known:
            plan.add_float(s.module, m, f"no quantized version of {type(m).__name__}")
        return None
    if type(owner) is nn.Linear and s.kind == "linear" and s.module and s.weight_owner.startswith(f"{s.module}."):
        return s.weight_owner.removeprefix(f"{s.module}.")
    where = s.module or "the model's own forward"
    plan.add_float(s.weight_owner, owner, f"its weight is used by {fn} in {where}, which cannot be quantized there")
    return None


def _matmul_site(plan: Plan, s: OpSite, m: nn.Module) -> None:
    if s.kind == "other":
        plan.add_float(s.module, m, "runs a matmul (addmm/baddbmm/tensordot/mv/bilinear) with no quantization point")
    elif not s.act_only:
        weights = [o.split(":", 1)[1] for o in s.operands if o not in (ACT, PROBS) and ":" in o]
        what = f"parameter {weights[0]}" if weights else "a constant buffer"
        plan.add_float(s.module, m, f"{s.name} multiplies {what}: no weight quantizer")


def make_plan(model: nn.Module, sites: list[OpSite], known: tuple[type, ...]) -> Plan:
    """The conversion plan of ``model`` given its traced op ``sites``; ``known`` are the types with their
    own converter (their ops are theirs: timm ``Attention``, ``nn.Linear``, ...)."""
    modules = dict(model.named_modules())
    by_module: dict[str, list[OpSite]] = defaultdict(list)
    for s in sites:
        by_module[s.module].append(s)
    plan = Plan()
    for path, ss in by_module.items():
        m = modules[path]
        if type(m) in known:
            continue
        linears = sorted(
            {p for s in ss if s.kind in ("linear", "conv") for p in [_linear_site(plan, s, modules, known)] if p}
        )
        for s in ss:
            if s.kind in ("matmul", "other"):
                _matmul_site(plan, s, m)
        counted = [s for s in ss if s.kind in COUNTED]
        if not path and counted:
            plan.add_float(path, m, "runs attention ops in the model's own forward, which cannot be wrapped")
            if any(s.kind == "sdpa" or (s.kind == "matmul" and s.act_only) for s in counted):
                plan.float_attention.append("")
        elif counted or linears:
            plan.generic[path] = (counted, linears)
    return plan

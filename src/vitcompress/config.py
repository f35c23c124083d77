"""Frozen, validated configuration: ``QuantSpec`` (one quantization point) and ``Recipe`` (a model).

Every value is checked in ``__post_init__``; a bad one raises :class:`ConfigError` naming the field
and the allowed values. Both serialise to plain dicts (YAML/JSON) with a ``type`` tag and a
``version``; unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vitcompress.errors import ConfigError
from vitcompress.validate import known_keys, one_of

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
GROUP_BITS = (2, 3, 4, 5, 6, 7, 8, 16)  # per-group bit widths (a group cannot be "off")
SCHEMES = ("symmetric", "asymmetric", "log2", "ptf")
GRANULARITIES = ("tensor", "channel", "group", "token")
OBSERVERS = ("minmax", "percentile", "omse", "mse")
ROLES = ("weight", "act", "qkv", "probs", "norm")  # what a quantization point quantizes


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Attributes:
        bits: 2..8 or 16; 32 means "not quantized".
        scheme: ``symmetric`` (signed, z = 0), ``asymmetric`` (unsigned with zero point),
            ``log2`` (attention probabilities in [0, 1]) or ``ptf`` (power-of-two factor, LayerNorm inputs).
        granularity: ``tensor``; ``channel`` (per output channel, weights); ``group`` (``group_size``
            consecutive output channels share a scale and a bit width); ``token`` (dynamic per token).
        group_size: channels per group, for ``granularity="group"``.
        group_bits: optional bit width of every group (F-LBQ plans), one per group in channel order,
            each in 2..8 or 16; ``None``: every group at ``bits``. Only with ``granularity="group"``.
        observer: range estimation: ``minmax``, ``percentile``, ``omse`` (shrink the range by 1 % steps,
            keep the least MSE) or ``mse`` (finer search of the clipping range by least MSE).
        percentile: for ``observer="percentile"``, in (50, 100].
        learnable: LSQ-style learnable scale, for QAT.
    """

    bits: int = 8
    scheme: str = "symmetric"
    granularity: str = "tensor"
    group_size: int | None = None
    observer: str = "minmax"
    percentile: float = 99.99
    learnable: bool = False
    group_bits: tuple[int, ...] | None = None  # last: positional construction keeps working

    def __post_init__(self) -> None:
        one_of("bits", self.bits, ALLOWED_BITS)
        one_of("scheme", self.scheme, SCHEMES)
        one_of("granularity", self.granularity, GRANULARITIES)
        one_of("observer", self.observer, OBSERVERS)
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ConfigError(
                    f"group_size must be a positive integer for granularity 'group', got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise ConfigError(f"group_size is only allowed with granularity 'group', got {self.group_size!r}")
        if self.group_bits is not None:
            if self.granularity != "group":
                raise ConfigError(f"group_bits is only allowed with granularity 'group', got {self.granularity!r}")
            if isinstance(self.group_bits, str) or not hasattr(self.group_bits, "__iter__"):
                raise ConfigError(f"group_bits must be a list of bit widths, got {self.group_bits!r}")
            gb = tuple(self.group_bits)
            bad = [b for b in gb if isinstance(b, bool) or b not in GROUP_BITS]
            if not gb or bad:
                raise ConfigError(
                    f"group_bits must be a non-empty list of values in {list(GROUP_BITS)}, "
                    f"got {bad[0] if bad else '[]'!r}"
                )
            object.__setattr__(self, "group_bits", tuple(int(b) for b in gb))
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile!r}")
        if self.scheme in ("log2", "ptf") and self.granularity != "tensor":
            raise ConfigError(f"granularity must be 'tensor' for scheme {self.scheme!r}, got {self.granularity!r}")

    @property
    def enabled(self) -> bool:
        return self.bits < 32

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["group_bits"] is None:  # keep recipes written before group_bits existed byte-identical
            del d["group_bits"]
        else:
            d["group_bits"] = list(d["group_bits"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "QuantSpec") -> QuantSpec:
        _reject_unknown(d, cls, where)
        return cls(**d)


def _reject_unknown(d: dict, cls: type, where: str, extra: tuple = ()) -> None:
    known_keys(where, d, [f.name for f in fields(cls)] + list(extra))


UNKNOWN_LAYER_POLICIES = ("error", "float")


@dataclass(frozen=True)
class Recipe:
    """How to quantize a whole model: one default spec per role, then per-point overrides.

    Roles (every quantization point has exactly one): ``weight`` (linear/conv weights), ``act``
    (linear/conv inputs, including the post-GELU activation = ``fc2`` input), ``qkv`` (q, k, v, the
    inputs of the two attention matmuls), ``probs`` (softmax output, input of ``attn @ v``) and
    ``norm`` (LayerNorm inputs).

    ``overrides`` is an ordered tuple of ``(pattern, fields)``: ``pattern`` is a point name such as
    ``blocks.3.attn.qkv.weight`` or a glob (``blocks.*.mlp.fc2.input``), ``fields`` a partial
    :class:`QuantSpec` dict applied on top of the role default. Precedence: an exact name beats
    every glob; among globs the first listed wins; only one override applies to a point. A pattern
    that matches no point is an error (raised when the recipe is applied to a model).
    """

    name: str = "custom"
    weight: QuantSpec = field(default_factory=lambda: QuantSpec(8, "symmetric", "channel"))
    act: QuantSpec = field(default_factory=lambda: QuantSpec(8, "asymmetric"))
    qkv: QuantSpec = field(default_factory=lambda: QuantSpec(8, "asymmetric"))
    probs: QuantSpec = field(default_factory=lambda: QuantSpec(8, "asymmetric"))
    norm: QuantSpec = field(default_factory=lambda: QuantSpec(32))
    overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    bias_correction: bool = False
    unknown_layers: str = "error"
    version: int = 1

    def __post_init__(self) -> None:
        for role in ROLES:
            if not isinstance(getattr(self, role), QuantSpec):
                raise ConfigError(f"{role} must be a QuantSpec, got {type(getattr(self, role)).__name__}")
        one_of("unknown_layers", self.unknown_layers, UNKNOWN_LAYER_POLICIES)
        if self.version != 1:
            raise ConfigError(f"version must be one of [1], got {self.version!r}")
        normalised = []
        for item in self.overrides:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
                raise ConfigError(f"overrides entries must be (pattern, fields) pairs, got {item!r}")
            pattern, changes = item
            changes = tuple(sorted(dict(changes).items()))
            # validate now: the partial spec must make a valid spec on top of any role default
            _reject_unknown(dict(changes), QuantSpec, f"overrides[{pattern!r}]")
            normalised.append((pattern, changes))
        object.__setattr__(self, "overrides", tuple(normalised))

    def spec_for(self, point: str, role: str) -> QuantSpec:
        """The spec of quantization point ``point`` with role ``role`` after overrides."""
        one_of("role", role, ROLES)
        base = getattr(self, role)
        pattern = self.matching_override(point)
        if pattern is None:
            return base
        changes = dict(dict(self.overrides)[pattern])
        if changes.get("granularity", base.granularity) != "group" and "granularity" in changes:
            changes.setdefault("group_size", None)
        try:
            return replace(base, **changes)
        except ConfigError as e:
            raise ConfigError(f"override {pattern!r} on {point}: {e}") from None

    def matching_override(self, point: str) -> str | None:
        """The override pattern that applies to ``point`` (exact name first, then first glob), if any."""
        patterns = [p for p, _ in self.overrides]
        if point in patterns:
            return point
        return next((p for p in patterns if fnmatch.fnmatchcase(point, p)), None)

    def with_overrides(self, *items: tuple[str, dict[str, Any]]) -> Recipe:
        """A copy with more overrides appended (they rank after the existing globs)."""
        return replace(self, overrides=self.overrides + tuple((p, tuple(d.items())) for p, d in items))

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "vitcompress.Recipe", "version": self.version, "name": self.name}
        for role in ROLES:
            out[role] = getattr(self, role).to_dict()
        out["overrides"] = [{"pattern": p, **dict(c)} for p, c in self.overrides]
        out["bias_correction"] = self.bias_correction
        out["unknown_layers"] = self.unknown_layers
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        _reject_unknown(d, cls, "recipe", extra=("type",))
        if d.get("type", "vitcompress.Recipe") != "vitcompress.Recipe":
            raise ConfigError(f"type must be 'vitcompress.Recipe', got {d.get('type')!r}")
        kwargs = {k: v for k, v in d.items() if k != "type"}
        for role in ROLES:
            if role in kwargs:
                kwargs[role] = QuantSpec.from_dict(kwargs[role], where=f"recipe.{role}")
        overrides = []
        for i, o in enumerate(kwargs.get("overrides", [])):
            if not isinstance(o, dict) or "pattern" not in o:
                raise ConfigError(f"overrides[{i}] must be a mapping with a 'pattern' key, got {o!r}")
            o = dict(o)
            overrides.append((o.pop("pattern"), tuple(o.items())))
        kwargs["overrides"] = tuple(overrides)
        return cls(**kwargs)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe from a ``.yaml``/``.yml`` or ``.json`` file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return cls.from_dict(yaml.safe_load(text))
        return cls.from_dict(json.loads(text))


# ---- presets -------------------------------------------------------------------------------------
EDGE_8BIT = (("patch_embed.proj.*", (("bits", 8),)), ("head*", (("bits", 8),)))
"""Recipe overrides keeping the first and last layers (patch embedding, head, a distilled head_dist) at 8 bit.

Every preset uses them, as is common practice (FQ-ViT, PTQ4ViT, RepQ-ViT): these layers hold few
parameters and dominate the error at low bit widths. Pass as ``Recipe(..., overrides=EDGE_8BIT)``.
"""
_BITS = {"w8a8": (8, 8), "w6a6": (6, 6), "w4a8": (4, 8), "w4a4": (4, 4), "w3a8": (3, 8)}


def _minmax_preset(name: str, wb: int, ab: int) -> Recipe:
    """Plain min-max PTQ: per-channel symmetric weights, per-tensor asymmetric activations, uniform
    softmax and LayerNorm inputs: every activation is quantized (q, k, v, probabilities, LN inputs)."""
    act = QuantSpec(ab, "asymmetric")
    return Recipe(
        name=name,
        weight=QuantSpec(wb, "symmetric", "channel"),
        act=act,
        qkv=act,
        probs=act,
        norm=act,
        overrides=EDGE_8BIT,
    )


def _fqvit_preset(name: str, wb: int, ab: int) -> Recipe:
    """FQ-ViT style: OMSE activation ranges, PTF LayerNorm inputs, log2 softmax, bias correction."""
    act = QuantSpec(ab, "asymmetric", observer="omse")
    return Recipe(
        name=name,
        weight=QuantSpec(wb, "symmetric", "channel"),
        act=act,
        qkv=act,
        probs=QuantSpec(ab, "log2"),
        norm=QuantSpec(ab, "ptf"),
        overrides=EDGE_8BIT,
        bias_correction=True,
    )


def _presets() -> dict[str, Recipe]:
    out = {k: _minmax_preset(k, *b) for k, b in _BITS.items()}
    out.update({f"fqvit-{k}": _fqvit_preset(f"fqvit-{k}", *b) for k, b in _BITS.items()})
    out["fqvit"] = replace(out["fqvit-w8a8"], name="fqvit")
    return out


PRESETS: tuple[str, ...] = tuple(_presets())


def get_preset(name: str) -> Recipe:
    """A fresh preset recipe by name (see ``PRESETS``)."""
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"recipe must be one of {list(presets)} or a YAML/JSON file, got {name!r}")
    return presets[name]


def resolve_recipe(name_or_path: str | Path) -> Recipe:
    """A preset name, or the path of a YAML/JSON recipe file."""
    text = str(name_or_path)
    if text in PRESETS:
        return get_preset(text)
    if text.endswith((".yaml", ".yml", ".json")):
        return Recipe.load(text)
    raise ConfigError(f"recipe must be one of {list(PRESETS)} or a YAML/JSON file, got {text!r}")

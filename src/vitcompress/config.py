"""Frozen, validated configuration: ``QuantSpec`` (one quantization point) and ``Recipe`` (a model).

Every value is checked in ``__post_init__``; a bad one raises :class:`ConfigError` naming the field
and the allowed values. Both serialise to plain dicts (YAML/JSON) with a ``type`` tag and a
``version``; unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vitcompress.errors import ConfigError, first_line
from vitcompress.validate import integer, known_keys, number, one_of, positive_int

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
GROUP_BITS = (2, 3, 4, 5, 6, 7, 8, 16)  # per-group bit widths (a group cannot be "off")
SCHEMES = ("symmetric", "asymmetric", "log2", "ptf", "log_sqrt2")
GRANULARITIES = ("tensor", "channel", "group", "token")
OBSERVERS = ("minmax", "percentile", "omse", "mse")
ROLES = ("weight", "act", "qkv", "probs", "norm")  # what a quantization point quantizes
MAX_PREFIX_TOKENS = 64


def _check_group_size(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"{name} must be a positive integer for granularity 'group', got {value!r}")


def _check_group_bits(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a list of bit widths, got {value!r}")
    values = tuple(value)
    bad = [b for b in values if isinstance(b, bool) or not isinstance(b, numbers.Real) or b not in GROUP_BITS]
    if not values or bad:
        shown = repr(bad[0]) if bad else "[]"
        raise ConfigError(f"{name} must be a non-empty list of values in {list(GROUP_BITS)}, got {shown}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


def _check_percentile(name: str, value: Any) -> None:
    number(name, value, low=50.0, high=100.0, low_open=True)


FIELD_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "bits": lambda n, v: one_of(n, v, ALLOWED_BITS),
    "scheme": lambda n, v: one_of(n, v, SCHEMES),
    "granularity": lambda n, v: one_of(n, v, GRANULARITIES),
    "group_size": _check_group_size,
    "observer": lambda n, v: one_of(n, v, OBSERVERS),
    "percentile": _check_percentile,
    "learnable": _check_bool,
    "group_bits": _check_group_bits,
    "prefix_tokens": lambda n, v: integer(n, v, minimum=0, maximum=MAX_PREFIX_TOKENS),
}
"""One check per :class:`QuantSpec` field that needs no other field (an override is checked with them when
it is read; the checks across fields run when it is applied to a role default)."""


def check_spec_field(name: str, value: Any) -> None:
    """Raise :class:`ConfigError` naming ``name`` when ``value`` is not allowed for that QuantSpec field."""
    FIELD_CHECKS[name](name, value)


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Attributes:
        bits: 2..8 or 16; 32 means "not quantized".
        scheme: ``symmetric`` (signed, z = 0), ``asymmetric`` (unsigned with zero point),
            ``log2`` (attention probabilities in [0, 1]), ``ptf`` (power-of-two factor, LayerNorm inputs) or
            ``log_sqrt2`` (levels a factor √2 apart below a calibrated scale, attention probabilities; RepQ-ViT).
        granularity: ``tensor``; ``channel`` (per output channel, weights); ``group`` (``group_size``
            consecutive output channels share a scale and a bit width); ``token`` (dynamic per token).
        group_size: channels per group, for ``granularity="group"``.
        group_bits: optional bit width of every group (F-LBQ plans), one per group in channel order,
            each in 2..8 or 16; ``None``: every group at ``bits``. Only with ``granularity="group"``.
        observer: range estimation: ``minmax``, ``percentile``, ``omse`` (shrink the range by 1 % steps,
            keep the least MSE) or ``mse`` (finer search of the clipping range by least MSE).
        percentile: for ``observer="percentile"``, in (50, 100].
        learnable: LSQ-style learnable scale, for QAT.
        prefix_tokens: up to this many leading tokens (class, distillation, register tokens) of a
            ``(B, N, C)`` activation may get scales of their own, each one: those whose calibrated range
            differs more than 2× from the other tokens' (and any before them). 0: one scale for all
            tokens. Per-tensor uniform and PTF only (``vitcompress.quant.observers.TokenObserver``).
    """

    bits: int = 8
    scheme: str = "symmetric"
    granularity: str = "tensor"
    group_size: int | None = None
    observer: str = "minmax"
    percentile: float = 99.99
    learnable: bool = False
    group_bits: tuple[int, ...] | None = None  # after the others: positional construction keeps working
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.group_bits, Iterator):  # read a generator once
            object.__setattr__(self, "group_bits", tuple(self.group_bits))
        for name in FIELD_CHECKS:
            check_spec_field(name, getattr(self, name))
        if self.group_bits is not None:
            object.__setattr__(self, "group_bits", tuple(int(b) for b in self.group_bits))
        if self.granularity == "group" and self.group_size is None:
            raise ConfigError("group_size must be a positive integer for granularity 'group', got None")
        if self.granularity != "group" and self.group_size is not None:
            raise ConfigError(f"group_size is only allowed with granularity 'group', got {self.group_size!r}")
        if self.granularity != "group" and self.group_bits is not None:
            raise ConfigError(f"group_bits is only allowed with granularity 'group', got {self.granularity!r}")
        if self.scheme in ("log2", "ptf", "log_sqrt2") and self.granularity != "tensor":
            raise ConfigError(f"granularity must be 'tensor' for scheme {self.scheme!r}, got {self.granularity!r}")
        if self.prefix_tokens and (self.granularity != "tensor" or self.scheme in ("log2", "log_sqrt2")):
            raise ConfigError(
                f"prefix_tokens needs granularity 'tensor' and scheme 'symmetric', 'asymmetric' or 'ptf', "
                f"got {self.granularity!r} / {self.scheme!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.bits < 32

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["group_bits"] is None:  # keep recipes written before group_bits existed byte-identical
            del d["group_bits"]
        else:
            d["group_bits"] = list(d["group_bits"])
        if not d["prefix_tokens"]:  # likewise for prefix_tokens
            del d["prefix_tokens"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "QuantSpec") -> QuantSpec:
        _reject_unknown(d, cls, where)
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _reject_unknown(d: Any, cls: type, where: str, extra: tuple = ()) -> None:
    """``d`` must be a mapping with string keys, each a field of ``cls`` (or in ``extra``)."""
    if isinstance(d, Mapping):
        odd = [k for k in d if not isinstance(k, str)]
        if odd:
            raise ConfigError(f"{where} has key {odd[0]!r} that is not a name; keys are field names")
    known_keys(where, d, [f.name for f in fields(cls)] + list(extra))


UNKNOWN_LAYER_POLICIES = ("error", "float")


@dataclass(frozen=True)
class Reconstruction:
    """Block reconstruction after calibration (:mod:`vitcompress.recon`): AdaRound weight rounding (Nagel et al.,
    ICML 2020, arXiv:2004.10568) and LSQ activation step sizes, learned block by block against the float block's
    output (BRECQ, Li et al., ICLR 2021, arXiv:2102.05426) with QDrop (Wei et al., ICLR 2022, arXiv:2203.05740).

    Attributes:
        iters: optimisation steps per block (see docs/quantization.md for the accuracy/iterations curve).
        batch_size: calibration images per step.
        weight_lr: Adam learning rate of the AdaRound rounding variables.
        scale_lr: Adam learning rate of the activation step sizes relative to each step size (cosine decay to 0);
            0 keeps them fixed.
        round_weight: weight of the AdaRound rounding regularizer.
        beta_start: AdaRound annealing exponent at the end of the warm-up (decays linearly to beta_end).
        beta_end: AdaRound annealing exponent at the last step.
        warmup: fraction of the steps without the rounding regularizer.
        drop_prob: QDrop: probability that an activation element skips quantization while learning (0: BRECQ).
        seed: seed of the batches and of the QDrop masks.
    """

    iters: int = 200
    batch_size: int = 32
    weight_lr: float = 1e-2
    scale_lr: float = 4e-3
    round_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    drop_prob: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iters", "batch_size"):
            positive_int(f"reconstruction.{name}", getattr(self, name))
        integer("reconstruction.seed", self.seed, minimum=0)
        for name in ("weight_lr", "scale_lr", "round_weight", "beta_start", "beta_end"):
            number(f"reconstruction.{name}", getattr(self, name), low=0.0)
        for name in ("warmup", "drop_prob"):
            number(f"reconstruction.{name}", getattr(self, name), low=0.0, high=1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Reconstruction:
        if not isinstance(d, Mapping):
            raise ConfigError(f"reconstruction must be a mapping of its fields, got {d!r}")
        _reject_unknown(d, cls, "reconstruction")
        return cls(**d)


def _override(item: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """One ``(pattern, fields)`` override, normalised (fields sorted) and checked field by field; the checks
    across fields (e.g. ``group_size`` needs granularity ``group``) wait for the role default it applies to."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
        raise ConfigError(f"overrides entries must be (pattern, fields) pairs, got {item!r}")
    pattern, changes = item
    where = f"overrides[{pattern!r}]"
    if not isinstance(changes, Mapping):
        if isinstance(changes, (str, bytes)) or not isinstance(changes, Iterable):
            raise ConfigError(f"{where} fields must be a mapping, got {changes!r}")
        pairs = list(changes)
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            raise ConfigError(f"{where} fields must be (name, value) pairs, got {changes!r}")
        changes = dict(pairs)
    _reject_unknown(changes, QuantSpec, where)
    for name, value in changes.items():
        try:
            check_spec_field(name, value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return pattern, tuple(sorted(changes.items()))


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

    ``reparam``: before quantizing, fold per-channel ranges of every LayerNorm output that feeds only
    linear layers into the LayerNorm and those layers (RepQ-ViT, Li et al., ICCV 2023,
    arXiv:2212.08254; :mod:`vitcompress.nn.reparam`), so their per-tensor input quantizers fit every
    channel. The float function is unchanged.

    ``reconstruction``: after calibration, learn the weight rounding and activation step sizes block by
    block on the calibration images (:class:`Reconstruction`, :mod:`vitcompress.recon`); None: off.
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
    reconstruction: Reconstruction | None = None
    reparam: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"name must be a string, got {self.name!r}")
        for role in ROLES:
            if not isinstance(getattr(self, role), QuantSpec):
                raise ConfigError(f"{role} must be a QuantSpec, got {type(getattr(self, role)).__name__}")
        _check_bool("bias_correction", self.bias_correction)
        _check_bool("reparam", self.reparam)
        one_of("unknown_layers", self.unknown_layers, UNKNOWN_LAYER_POLICIES)
        if self.reconstruction is not None and not isinstance(self.reconstruction, Reconstruction):
            raise ConfigError(f"reconstruction must be a Reconstruction or null, got {self.reconstruction!r}")
        if self.version != 1 or isinstance(self.version, bool):
            raise ConfigError(f"version must be one of [1], got {self.version!r}")
        if isinstance(self.overrides, (str, bytes, Mapping)) or not isinstance(self.overrides, Iterable):
            raise ConfigError(f"overrides must be a list of (pattern, fields) pairs, got {self.overrides!r}")
        object.__setattr__(self, "overrides", tuple(_override(item) for item in self.overrides))

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
        if changes.get("granularity", base.granularity) != "tensor" or changes.get("scheme") in ("log2", "log_sqrt2"):
            changes.setdefault("prefix_tokens", 0)  # leading tokens apart only exist per tensor
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
        if self.reconstruction is not None:  # recipes without it stay byte-identical
            out["reconstruction"] = self.reconstruction.to_dict()
        if self.reparam:  # likewise
            out["reparam"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """The recipe :meth:`to_dict` wrote; ConfigError naming the field for anything else."""
        _reject_unknown(d, cls, "recipe", extra=("type",))
        if d.get("type", "vitcompress.Recipe") != "vitcompress.Recipe":
            raise ConfigError(f"type must be 'vitcompress.Recipe', got {d.get('type')!r}")
        kwargs = {k: v for k, v in d.items() if k != "type"}
        for role in ROLES:
            if role in kwargs:
                kwargs[role] = QuantSpec.from_dict(kwargs[role], where=f"recipe.{role}")
        items = kwargs.get("overrides", [])
        if not isinstance(items, list):
            raise ConfigError(f"overrides must be a list of mappings with a 'pattern' key, got {items!r}")
        overrides = []
        for i, o in enumerate(items):
            if not isinstance(o, Mapping) or "pattern" not in o:
                raise ConfigError(f"overrides[{i}] must be a mapping with a 'pattern' key, got {o!r}")
            o = dict(o)
            overrides.append((o.pop("pattern"), o))
        kwargs["overrides"] = tuple(overrides)
        if kwargs.get("reconstruction") is not None:
            kwargs["reconstruction"] = Reconstruction.from_dict(kwargs["reconstruction"])
        return cls(**kwargs)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe from a ``.yaml``/``.yml`` or a ``.json`` file (any other suffix is read as JSON).

        Raises:
            ConfigError: one line naming the file: missing or unreadable, a syntax error (with its line and
                column), empty, not a mapping, or a field the recipe does not allow.
        """
        path = Path(path)
        load = load_yaml_file if path.suffix in (".yaml", ".yml") else load_json_file
        data = load(path, "recipe file")
        if data is None:
            raise ConfigError(f"recipe file {path} is empty")
        if not isinstance(data, Mapping):
            raise ConfigError(f"recipe file {path} must hold a mapping of recipe fields, got a {_kind(data)}")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"recipe file {path}: {e}") from None


# ---- reading recipe (and other JSON/YAML) files ----------------------------------------------------
_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _read_text(path: Path, what: str, error: type[Exception]) -> str:
    if not path.is_file():
        raise error(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or first_line(e)}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def load_json_file(path: str | Path, what: str = "file", error: type[Exception] = ConfigError) -> Any:
    """The JSON value of file ``path``; None for an empty file.

    Every failure is one line of ``error`` naming ``what`` and the file: missing or unreadable, not UTF-8,
    a syntax error (with its line and column), a duplicate key, nesting too deep for the parser.
    """
    path = Path(path)
    text = _read_text(path, what, error)
    if not text.strip():
        return None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ConfigError as e:  # a duplicate key
        raise error(f"{what} {path}: {e}") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to read") from None


def _yaml_loader() -> type:
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base': later keys override it
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        duplicate = key in seen
                        seen.add(key)
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    if duplicate:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r}", key_node.start_mark
                        )
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_yaml_file(path: str | Path, what: str = "file", error: type[Exception] = ConfigError) -> Any:
    """The YAML value of file ``path`` (safe types only); None for an empty file.

    Failures are one line of ``error`` as for :func:`load_json_file`; a syntax error names its line and column.
    """
    import yaml

    path = Path(path)
    text = _read_text(path, what, error)
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = ", ".join(first_line(t) for t in (e.context, e.problem) if t) or first_line(e)
        kind = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise error(f"{what} {path}: {kind}{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {path}: YAML error: {first_line(e)}") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to read") from None


# ---- presets -------------------------------------------------------------------------------------
EDGE_8BIT = (("@stem.*", (("bits", 8),)), ("@head.*", (("bits", 8),)))
"""Recipe overrides keeping the model's first and last layers at 8 bit.

``@stem`` and ``@head`` are resolved when the recipe is applied to a model (:mod:`vitcompress.nn.edges`):
the first conv timm's ``pretrained_cfg`` names (``patch_embed.proj`` in a ViT, ``stem.conv1.linear`` in
LeViT) and the classifier(s) ``get_classifier()`` returns (``head``, ``head.fc`` in Swin, ``head`` and
``head_dist`` in a distilled DeiT). Every preset uses them, as is common practice (FQ-ViT, PTQ4ViT,
RepQ-ViT): these layers hold few parameters and dominate the error at low bit widths. Pass as
``Recipe(..., overrides=EDGE_8BIT)``.
"""
_BITS = {"w8a8": (8, 8), "w6a6": (6, 6), "w4a8": (4, 8), "w4a4": (4, 4), "w3a8": (3, 8)}


PRESET_PREFIX_TOKENS = 16
"""Leading tokens the presets' LayerNorm-input quantizers may set apart (class, distillation and up to 14
register tokens): a class token 10–100× smaller than the patch tokens at a LayerNorm input is otherwise
rounded to a constant by the shared scale (see ``QuantSpec.prefix_tokens``)."""


PLAIN_MIN_BITS = 8  # probabilities and LayerNorm inputs of the plain presets below 6-bit activations


def _minmax_preset(name: str, wb: int, ab: int) -> Recipe:
    """Plain min-max PTQ: per-channel symmetric weights, per-tensor asymmetric activations, uniform
    softmax and LayerNorm inputs: every activation is quantized (q, k, v, probabilities, LN inputs);
    the leading tokens of LN inputs that differ in scale get scales of their own.

    Below 6-bit activations the probabilities and LayerNorm inputs stay at 8 bit (``PLAIN_MIN_BITS``): 16
    uniform levels flush most softmax outputs to 0 and cannot hold the residual stream's range (on vit-fmnist
    each of the two costs about 8 pt at W4A4, both together 16 pt; docs/results/lowbit.md)."""
    act = QuantSpec(ab, "asymmetric")
    keep = PLAIN_MIN_BITS if ab < 6 else ab
    return Recipe(
        name=name,
        weight=QuantSpec(wb, "symmetric", "channel"),
        act=act,
        qkv=act,
        probs=replace(act, bits=keep),
        norm=QuantSpec(keep, "asymmetric", prefix_tokens=PRESET_PREFIX_TOKENS),
        overrides=EDGE_8BIT,
    )


def _fqvit_preset(name: str, wb: int, ab: int) -> Recipe:
    """FQ-ViT style: OMSE activation ranges, PTF LayerNorm inputs (leading tokens that differ in scale
    apart), log2 softmax, bias correction."""
    act = QuantSpec(ab, "asymmetric", observer="omse")
    return Recipe(
        name=name,
        weight=QuantSpec(wb, "symmetric", "channel"),
        act=act,
        qkv=act,
        probs=QuantSpec(ab, "log2"),
        norm=QuantSpec(ab, "ptf", prefix_tokens=PRESET_PREFIX_TOKENS),
        overrides=EDGE_8BIT,
        bias_correction=True,
    )


REPQ_BITS = {"w4a4": (4, 4), "w4a8": (4, 8)}  # no repq-w3a3: 8 log√2 levels end at s·2^−3.5 (docs/results/lowbit.md)


def _repq_preset(name: str, wb: int, ab: int) -> Recipe:
    """RepQ-ViT (Li, Xiao, Yang, Gu, ICCV 2023, arXiv:2212.08254) on top of FQ-ViT: post-LayerNorm
    reparameterization and the log√2 softmax quantizer below 8 bits. At 8 bits the probabilities stay uniform:
    log√2's levels near 1 are √2 apart at any width (vit-fmnist, probabilities alone quantized: logits SQNR
    27 dB for log√2 at 4 or 8 bits, 40 dB uniform 8-bit, 21 dB log2, 10 dB uniform 4-bit)."""
    probs = QuantSpec(ab, "log_sqrt2") if ab < 8 else QuantSpec(ab, "asymmetric", observer="omse")
    return replace(_fqvit_preset(name, wb, ab), probs=probs, reparam=True)


def _presets() -> dict[str, Recipe]:
    out = {k: _minmax_preset(k, *b) for k, b in _BITS.items()}
    out.update({f"fqvit-{k}": _fqvit_preset(f"fqvit-{k}", *b) for k, b in _BITS.items()})
    out["fqvit"] = replace(out["fqvit-w8a8"], name="fqvit")
    out.update({f"repq-{k}": _repq_preset(f"repq-{k}", *b) for k, b in REPQ_BITS.items()})
    out.update({f"recon-{k}": _recon_preset(f"recon-{k}", *b) for k, b in RECON_BITS.items()})
    return out


RECON_BITS = {"w4a4": (4, 4), "w4a8": (4, 8), "w3a3": (3, 3)}


def _recon_preset(name: str, wb: int, ab: int) -> Recipe:
    """RepQ-ViT's recipe at these bits (:func:`_repq_preset`) plus block reconstruction (:class:`Reconstruction`),
    without bias correction: the learned rounding replaces it. At W3A3 the base alone is unusable (3-bit log√2
    probabilities, vit-fmnist 46.35 %) but reconstruction, which learns every uniform and PTF step size around
    them, brings it to a few points from float (docs/results/lowbit.md); hence ``recon-w3a3`` and no
    ``repq-w3a3``."""
    return replace(_repq_preset(name, wb, ab), bias_correction=False, reconstruction=Reconstruction())


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

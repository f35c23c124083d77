"""``timm:NAME`` models: ``key=value`` model arguments, checked against the model class before building.

``timm.create_model`` passes unknown keyword arguments to the model class, which fails deep inside with
a ``TypeError`` (or, for a class taking ``**kwargs``, may ignore them); here an unknown key is one line
that names it and lists the arguments the class accepts.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from vitcompress.errors import ConfigError, UnsupportedModelError, VitCompressError

# keyword spellings of Python literals, accepted besides JSON's true/false/null
_PY_LITERALS = {"None": None, "True": True, "False": False}
# class arguments that are not model hyper-parameters (placement, or set by vitcompress itself)
_NOT_ARGS = {"self", "device", "dtype", "pretrained"}


def parse_model_args(pairs: Iterable[str]) -> dict[str, Any]:
    """``["depths=[2,2,6,2]", "mlp_ratio=2.0", "global_pool=avg"]`` -> a dict of keyword arguments.

    Values are parsed as JSON when they parse (lists, numbers, true/false/null; also None/True/False),
    else kept as strings. A pair without ``=``, a key that is not a Python identifier or a key given twice
    raises one-line :class:`ConfigError`.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"model_args: {pair!r} is not key=value (e.g. depths=[2,2,6,2] mlp_ratio=2.0)")
        if key in out:
            raise ConfigError(f"model_args: {key!r} is given twice")
        out[key] = parse_value(text.strip())
    return out


def parse_value(text: str) -> Any:
    """A model-argument value: JSON if it parses, Python's None/True/False, else the string itself."""
    if text in _PY_LITERALS:
        return _PY_LITERALS[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def as_timm_value(value: Any) -> Any:
    """JSON lists (as parsed or as read back from ``source.json``) become tuples, as timm's defaults are."""
    if isinstance(value, list):
        return tuple(as_timm_value(v) for v in value)
    return value


def _params(cls: type) -> tuple[list[str], bool]:
    """(named ``__init__`` arguments along the MRO while a class passes ``**kwargs`` up, open-ended?)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is nn.Module or klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return [n for n in dict.fromkeys(names) if n not in _NOT_ARGS], False
    return [n for n in dict.fromkeys(names) if n not in _NOT_ARGS], True


def model_class(arch: str) -> type | None:
    """The class ``timm.create_model(arch)`` builds (built on the meta device: no memory, no weights), or
    None if that fails."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            return type(timm.create_model(arch))
    except Exception:  # a model that cannot be built on meta: fall back to create_model's own TypeError
        return None


def accepted_args(arch: str) -> tuple[str | None, list[str], bool]:
    """(class name, the arguments its constructor accepts, whether it also takes ``**kwargs``)."""
    cls = model_class(arch)
    if cls is None:
        return None, [], True
    names, open_ended = _params(cls)
    return cls.__name__, names, open_ended


def _unknown_key_error(arch: str, key: str, cls_name: str | None, names: list[str]) -> ConfigError:
    of = f"timm model {arch!r}" + (f" ({cls_name})" if cls_name else "")
    return ConfigError(f"model_args: {of} has no argument {key!r}; it accepts: {', '.join(names)}")


def check_model_args(arch: str, kwargs: Mapping[str, Any]) -> None:
    """One-line :class:`ConfigError` naming the first key the model class does not take, and what it takes."""
    if not kwargs:
        return
    cls_name, names, open_ended = accepted_args(arch)
    if not names or open_ended:
        return  # nothing to check against: create_model's TypeError is turned into one line instead
    for key in kwargs:
        if key not in names:
            raise _unknown_key_error(arch, key, cls_name, names)


def _sized(model: nn.Module, kwargs: Mapping[str, Any]) -> nn.Module:
    """Keep ``pretrained_cfg["input_size"]`` true to a model built at another ``img_size`` / ``in_chans``: timm
    leaves the size of the default config (224) there, which models without a patch embedding (LeViT,
    MobileViT, EfficientViT) are read by (preprocessing, the op trace, the cost probe)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or len(cfg.get("input_size", ())) != 3 or not {"img_size", "in_chans"} & set(kwargs):
        return model
    c, h, w = cfg["input_size"]
    size = kwargs.get("img_size", (h, w))
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    model.pretrained_cfg = {**cfg, "input_size": (int(kwargs.get("in_chans", c)), int(h), int(w))}
    return model


def create_timm_model(arch: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` without download; any failure is one line naming the arguments."""
    import timm

    if arch not in timm.list_models():
        raise UnsupportedModelError(f"timm has no model {arch!r} (see timm.list_models())")
    check_model_args(arch, kwargs)
    kwargs = {k: as_timm_value(v) for k, v in kwargs.items()}
    try:
        return _sized(timm.create_model(arch, pretrained=False, **kwargs), kwargs)
    except VitCompressError:
        raise
    except Exception as e:  # an argument the class passes on and something below refuses, or a bad value
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        unknown = re.search(r"unexpected keyword argument '(\w+)'", detail)
        if isinstance(e, TypeError) and unknown:
            cls_name, names, _ = accepted_args(arch)
            raise _unknown_key_error(arch, unknown.group(1), cls_name, names) from e
        raise ConfigError(f"model_args: timm.create_model({arch!r}, **{dict(kwargs)}) failed: {detail}") from e

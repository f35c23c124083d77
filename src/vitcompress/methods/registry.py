"""Config type -> method: how :func:`vitcompress.compress_` dispatches (as torchao's config -> handler table).

A method registers its config class with :func:`register`; adding a method adds a config and a
handler, never a branch in ``compress_``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitcompress.errors import ConfigError

# the modules that register the methods (imported on first dispatch, so `import vitcompress` stays light)
METHOD_MODULES = (
    "vitcompress.methods.ptq",
    "vitcompress.methods.evolq",
    "vitcompress.methods.flbq",
    "vitcompress.methods.gpusq",
    "vitcompress.methods.mixaq",
)


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: its name on the command line and in ``metrics.json``.
        config_type: the config class that selects it.
        handler: ``handler(model, config, calib, *, train_data, eval_data, state_dir, resume) -> Result``.
        calib_size: calibration images a job draws by default.
        needs_train_data: a job passes the (augmented) training set as ``train_data``.
        check: ``check(model, config)``, run by a job right after loading the model, before any data or
            evaluation: raises ConfigError when the config cannot apply to the model (fail fast).
    """

    name: str
    config_type: type
    handler: Callable[..., Any]
    calib_size: int = 1000
    needs_train_data: bool = False
    check: Callable[[Any, Any], Any] | None = None


_REGISTRY: dict[type, Method] = {}


def register(
    config_type: type,
    name: str,
    calib_size: int = 1000,
    needs_train_data: bool = False,
    check: Callable[[Any, Any], Any] | None = None,
):
    """Decorator: ``handler`` runs every config of type ``config_type`` (see :class:`Method`)."""

    def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[config_type] = Method(name, config_type, handler, calib_size, needs_train_data, check)
        return handler

    return wrap


def methods() -> dict[str, Method]:
    """Name -> method, every method registered."""
    for module in METHOD_MODULES:
        importlib.import_module(module)
    return {m.name: m for m in _REGISTRY.values()}


def method_for(config: Any) -> Method:
    """The method a config selects.

    Raises:
        ConfigError: the config's type is no registered method's.
    """
    known = methods()
    for cls in type(config).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    names = sorted(m.config_type.__name__ for m in known.values())
    raise ConfigError(f"config must be one of {names}, got {type(config).__name__}")

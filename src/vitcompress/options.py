"""Command-line options declared once, on the frozen config dataclasses.

A field's name, type, default and help live in its dataclass (the help in the ``Attributes:`` section
of the class docstring, or in ``option(help=...)``); :func:`add_options` derives the argparse options
from them and :func:`from_args` builds the config back, so a new option is one field. Nested config
dataclasses are flattened (their fields become options of the same command). Rules:

- ``bool`` -> ``--flag`` / ``--no-flag``; ``int``/``float``/``str`` -> one value; ``X | None`` -> one
  value, absent = None; ``tuple[X, ...]`` -> one or more values; ``tuple[X, X]`` -> exactly two.
- ``option(parse=f, cli_default=s)``: the option takes a string that ``f`` turns into the field's
  value (a recipe name or file -> :class:`~vitcompress.config.Recipe`).
- ``option(cli=False)``: not an option (nested machinery, or set by code only).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

_NOTHING = dataclasses.MISSING


def option(
    default: Any = _NOTHING,
    *,
    help: str | None = None,
    flag: str | None = None,  # noqa: A002
    choices: tuple | None = None,
    parse: Callable[[str], Any] | None = None,
    cli_default: Any = _NOTHING,
    metavar: str | None = None,
    cli: bool = True,
    default_factory: Any = _NOTHING,
) -> Any:
    """A dataclass field with command-line metadata (see the module docstring)."""
    meta = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "parse": parse,
        "cli_default": cli_default,
        "metavar": metavar,
        "cli": cli,
    }
    if default_factory is not _NOTHING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def docstring_help(cls: type) -> dict[str, str]:
    """Field -> help text from the ``Attributes:`` sections of the class's and its bases' docstrings.

    ``a, b: text`` documents both fields; continuation lines are joined; a subclass's text wins.
    """
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            out.update(_attributes_section(base.__doc__ or ""))
    return out


def _attributes_section(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    in_attrs, current, indent = False, [], None
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attrs, indent = True, None
            continue
        if not in_attrs:
            continue
        if not line.strip():
            continue
        this = len(line) - len(line.lstrip())
        indent = this if indent is None else indent
        if this < indent:
            break
        m = re.match(r"\s*([\w, ]+):\s*(.*)", line)
        if this == indent and m:
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                out[n] = m.group(2).strip()
        else:
            for n in current:
                out[n] = f"{out[n]} {line.strip()}"
    return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init and f.metadata.get("cli", True):
            yield f, hints[f.name]


def _default(f: dataclasses.Field) -> Any:
    if f.metadata.get("cli_default", _NOTHING) is not _NOTHING:
        return f.metadata["cli_default"]
    if f.default is not _NOTHING:
        return f.default
    if f.default_factory is not _NOTHING:
        return f.default_factory()
    return _NOTHING


def _argparse_kwargs(f: dataclasses.Field, tp: Any, helps: dict[str, str]) -> dict[str, Any]:
    tp, optional = _unwrap_optional(tp)
    default = _default(f)
    text = (f.metadata.get("help") or helps.get(f.name, "")).replace("%", "%%")  # argparse formats help with %
    kw: dict[str, Any] = {"dest": f.name, "help": text}
    if f.metadata.get("choices"):
        kw["choices"] = list(f.metadata["choices"])
    if f.metadata.get("metavar"):
        kw["metavar"] = f.metadata["metavar"]
    if default is _NOTHING:
        kw["required"] = True
    else:
        kw["default"] = default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        kw["help"] = f"{text} (default: {shown})" if default is not None else text
    if f.metadata.get("parse"):
        kw["type"] = str
        return kw
    if tp is bool:  # off by default: a switch; on by default: --x / --no-x
        kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        if default is False:
            kw["help"] = text
        return kw
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        kw["type"] = args[0]
        kw["nargs"] = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        return kw
    if tp not in (int, float, str):
        raise TypeError(f"{f.name}: no command-line form for type {tp!r} (give option(parse=...) or cli=False)")
    kw["type"] = tp
    return kw


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: tuple[str, ...] = (),
    suppress: bool = False,
) -> None:
    """Add one option per field of dataclass ``cls`` (nested dataclasses flattened) to ``parser``.

    With ``suppress`` an option that is not given leaves the namespace untouched: that is how the global
    options work both before and after the command name.

    Raises:
        ValueError: two fields of the flattened classes would share an option name.
    """
    helps = docstring_help(cls)
    for f, tp in _fields(cls):
        if f.name in skip:
            continue
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner) and not f.metadata.get("parse"):
            add_options(parser, inner, skip, suppress)
            continue
        kw = _argparse_kwargs(f, tp, helps)
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if suppress:
            kw["default"] = argparse.SUPPRESS
        if not flag.startswith("-"):  # a positional argument
            kw.pop("dest")
            kw.pop("required", None)
            flag = f.name
        try:
            parser.add_argument(*flag.split("|"), **kw)
        except argparse.ArgumentError as e:
            raise ValueError(f"option {flag} of {cls.__name__} is declared twice") from e


def from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """Build ``cls`` from parsed ``args`` (the inverse of :func:`add_options`); ``fixed`` wins."""
    kwargs: dict[str, Any] = {}
    for f, tp in _fields(cls):
        if f.name in fixed:
            continue
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner) and not f.metadata.get("parse"):
            kwargs[f.name] = from_args(inner, args)
            continue
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata.get("parse") and value is not None:
            value = f.metadata["parse"](value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs, **fixed)


@dataclasses.dataclass(frozen=True)
class MethodCommand:
    """``vitcompress compress <name>``: the command-line face of one method.

    Attributes:
        name: the sub-command (``ptq``, ``evolq``, ...).
        help: one line for ``vitcompress compress --help``.
        options: the dataclass whose fields are the method's options (its config, or a flat form of it).
        build: ``build(options, shared) -> config``: the config ``compress_`` takes, from the parsed
            options and the job-wide values (``seed``, ``calib_size``) the method's config also carries.
            Default: the options object itself is the config.
        summary: ``summary(result) -> str``: the line printed when the job is done.
    """

    name: str
    help: str
    options: type
    build: Callable[[Any, dict[str, Any]], Any] | None = None
    summary: Callable[[Any], str] | None = None

    def config(self, args: argparse.Namespace, shared: dict[str, Any]) -> Any:
        """The method's config from parsed ``args``; ``shared`` fills the fields that are job options."""
        names = {f.name for f in dataclasses.fields(self.options)}
        # a job-wide value left unset (None) leaves the method's own default, not None, in its config
        unset = {k for k, v in shared.items() if k in names and v is None}
        own = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in unset})
        opts = from_args(self.options, own, **{k: v for k, v in shared.items() if k in names and v is not None})
        return self.build(opts, shared) if self.build else opts

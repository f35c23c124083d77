import argparse
from dataclasses import dataclass

import pytest

from vitcompress.errors import ConfigError
from vitcompress.options import MethodCommand, add_options, docstring_help, from_args, option
from vitcompress.validate import one_of, positive_int


@dataclass(frozen=True)
class Inner:
    """Nested settings.

    Attributes:
        population: members per generation
        cost_range: low and high relative cost,
            on two lines
    """

    population: int = 8
    cost_range: tuple[float, float] = (0.65, 0.95)


@dataclass(frozen=True)
class Outer:
    """A method's options.

    Attributes:
        budget: average bits
        bits, names: candidates
        resume: continue
        fast: on by default
        limit: optional count
        seed: the job's seed
    """

    budget: float
    search: Inner = option(default_factory=Inner)
    bits: tuple[int, ...] = (2, 4, 8)
    names: tuple[str, ...] = ()
    resume: bool = False
    fast: bool = True
    limit: int | None = None
    solver: str = option("dp", choices=("dp", "lg"), help="which solver")
    scale: float = option(1.0, parse=lambda s: float(s) * 2, cli_default="0.5")
    seed: int = 0
    internal: object = option(None, cli=False)

    def __post_init__(self) -> None:
        one_of("solver", self.solver, ("dp", "lg"))
        positive_int("limit", self.limit, optional=True)


def _parse(argv, cls=Outer, **kw):
    p = argparse.ArgumentParser()
    add_options(p, cls, **kw)
    return p, p.parse_args(argv)


def test_docstring_help_reads_every_field_and_joins_continuations():
    helps = docstring_help(Inner)
    assert helps == {"population": "members per generation", "cost_range": "low and high relative cost, on two lines"}
    assert docstring_help(Outer)["names"] == "candidates"


def test_defaults_round_trip_to_the_dataclass_defaults():
    _, args = _parse(["--budget", "3"])
    cfg = from_args(Outer, args)
    assert cfg == Outer(budget=3.0, scale=1.0)  # cli_default "0.5" parsed by `parse`


def test_every_type_has_its_command_line_form():
    _, args = _parse(
        [
            "--budget",
            "2.5",
            "--population",
            "4",
            "--cost-range",
            "0.5",
            "0.9",
            "--bits",
            "3",
            "5",
            "--names",
            "a",
            "b",
            "--resume",
            "--no-fast",
            "--limit",
            "7",
            "--solver",
            "lg",
            "--scale",
            "2",
        ]
    )
    cfg = from_args(Outer, args)
    assert cfg.search == Inner(4, (0.5, 0.9)) and cfg.bits == (3, 5) and cfg.names == ("a", "b")
    assert (cfg.resume, cfg.fast, cfg.limit, cfg.solver, cfg.scale) == (True, False, 7, "lg", 4.0)


def test_required_choices_and_validation_errors():
    p = argparse.ArgumentParser()
    add_options(p, Outer)
    with pytest.raises(SystemExit):
        p.parse_args([])  # --budget is required: it has no default
    with pytest.raises(SystemExit):
        p.parse_args(["--budget", "3", "--solver", "xx"])
    with pytest.raises(ConfigError, match="limit must be an integer >= 1, got 0"):
        from_args(Outer, p.parse_args(["--budget", "3", "--limit", "0"]))


def test_skip_and_fixed_values_fill_job_wide_fields():
    p, args = _parse(["--budget", "3"], skip=("seed",))
    assert "--seed" not in {o for a in p._actions for o in a.option_strings}
    assert from_args(Outer, args, seed=7).seed == 7


def test_a_flag_declared_twice_is_an_error():
    p = argparse.ArgumentParser()
    add_options(p, Inner)
    with pytest.raises(ValueError, match="option --population of Inner is declared twice"):
        add_options(p, Inner)


def test_suppressed_options_leave_the_namespace_alone():
    p = argparse.ArgumentParser()
    p.add_argument("--population", type=int, default=3)
    sub = p.add_subparsers(dest="cmd")
    add_options(sub.add_parser("run"), Inner, suppress=True)
    assert p.parse_args(["--population", "5", "run"]).population == 5
    assert p.parse_args(["run", "--population", "6"]).population == 6
    assert p.parse_args(["run"]).population == 3


def test_method_command_builds_the_config_from_options_and_shared_values():
    command = MethodCommand(
        "x", "help", Outer, build=lambda opts, shared: (opts.budget, opts.seed, shared["calib_size"])
    )
    _, args = _parse(["--budget", "4"], skip=("seed",))
    assert command.config(args, {"seed": 3, "calib_size": 10}) == (4.0, 3, 10)


def test_an_unset_job_wide_value_leaves_the_method_default():
    # the job's --limit/--calib-size default None must not reach a method field whose own default is a number
    @dataclass(frozen=True)
    class Sized:
        size: int = 1000

        def __post_init__(self) -> None:
            positive_int("size", self.size)

    command = MethodCommand("x", "help", Sized)
    args = argparse.Namespace(size=None)  # what the job's own --size option leaves when not given
    assert command.config(args, {"size": None}).size == 1000
    assert command.config(args, {"size": 64}).size == 64

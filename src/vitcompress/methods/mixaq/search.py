"""Multi-objective search of MixA-Q ratio vectors (MixA-Q, Wang et al., 2025; supplementary Fig. 8).

NSGA-II (pymoo) over one integer ``k_i = r_i/step`` per ratio group, maximising top-1 on a held-out
split and minimising BOPs (relative to the same model at ratio 0, the uniform-precision baseline). The
initial population comes from the uniform-sum sampler (Algorithm 1) or, for comparison, the naive one.
Offspring: SBX crossover and polynomial mutation on the integer grid (rounding repair), duplicates
eliminated; ``generations`` counts the offspring generations after the initial population.

Resumable without pickling: after every generation the evaluated vectors and their objectives are
written atomically to ``OUT/state.json`` (with a fingerprint of the configuration). A resumed run
replays NSGA-II from its seed and takes every objective it has already paid for from that cache, so
the expensive model evaluations are not repeated; the algorithm is deterministic given its seed and
the objectives, so the replay reaches the same state and the run ends exactly as an uninterrupted
one (tested). A state written for another configuration is refused.

Under ``torchrun`` (:mod:`vitcompress.distributed`) the new candidates of each generation are dealt
round robin to the processes and their objectives gathered exactly: every process runs the same
NSGA-II on the same objectives and reaches the same front. Only rank 0 writes; on resume it reads the
state and sends the cache to the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vitcompress import distributed
from vitcompress.config import load_json_file
from vitcompress.errors import ConfigError, StateError
from vitcompress.io import write_json
from vitcompress.methods.mixaq.sampling import _grid, naive_sample, sum_range_from_cost, uniform_sum_sample
from vitcompress.options import option
from vitcompress.report.charts import save_figure
from vitcompress.validate import integer, number, one_of, version

log = logging.getLogger(__name__)

INITS = ("uniform-sum", "naive")
STATE_FILE, FRONT_FILE, CHOSEN_FILE, CHART_FILE = "state.json", "pareto.json", "chosen.json", "pareto.png"
# evaluate(ratios) -> (top-1 in %, BOPs)
EvaluateFn = Callable[[tuple[float, ...]], tuple[float, int]]


@dataclass(frozen=True)
class MixAQSearchConfig:
    """Settings of :func:`search_ratios`.

    Attributes:
        population: NSGA-II population size (>= 2)
        generations: offspring generations after the initial population (>= 0)
        init: initial population sampler: uniform-sum (MixA-Q supplementary Algorithm 1) or naive
        cost_range: relative-cost range the uniform-sum sampler targets (the paper: 0.65 0.95); the range
            of the ratios' sum follows from it (sum_range_from_cost)
        upper: largest ratio (the paper: 0.8)
        step: spacing of the ratio grid (the paper: 0.1)
        seed: seeds the initial sample and the pymoo algorithm (on the command line: the job's --seed)
        targets: relative BOPs budgets (BOPs / BOPs at ratio 0); for each the most accurate front point
            within it is "chosen"
        version: format version of the config
    """

    population: int = 8
    generations: int = 2
    init: str = option("uniform-sum", choices=INITS)
    cost_range: tuple[float, float] = option((0.65, 0.95), metavar=("LO", "HI"))
    upper: float = 0.8
    step: float = 0.1
    seed: int = 0
    targets: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6)
    version: int = option(1, cli=False)

    def __post_init__(self) -> None:
        integer("population", self.population, minimum=2)
        integer("generations", self.generations, minimum=0)
        integer("seed", self.seed, minimum=0)
        one_of("init", self.init, INITS)
        if not (
            len(self.cost_range) == 2
            and all(isinstance(v, (int, float)) for v in self.cost_range)
            and 0 <= self.cost_range[0] <= self.cost_range[1] <= 1
        ):
            raise ConfigError(f"cost_range must be (low, high) with 0 <= low <= high <= 1, got {self.cost_range!r}")
        _grid(self.upper, self.step)  # validates upper and step
        if not self.targets:
            raise ConfigError("targets must list at least one relative BOPs budget in (0, 1]")
        for i, t in enumerate(self.targets):
            number(f"targets[{i}]", t, low=0, high=1, low_open=True)
        version(type(self).__name__, self.version)


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        baseline: the ratio-0 point (``ratios``, ``top1``, ``bops``, ``rel_bops`` = 1).
        evaluated: every distinct vector evaluated, in order, with the generation that first asked it.
        front: the non-dominated points (max top-1, min BOPs) among ``evaluated``, by BOPs.
        chosen: per target budget, the most accurate front point within it (or None).
    """

    baseline: dict[str, Any]
    evaluated: list[dict[str, Any]] = field(default_factory=list)
    front: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, dict[str, Any] | None] = field(default_factory=dict)


def initial_population(n_groups: int, config: MixAQSearchConfig) -> np.ndarray:
    """(population, n_groups) integer grid vectors from the configured sampler."""
    grid = _grid(config.upper, config.step)
    if config.init == "naive":
        vectors = naive_sample(n_groups, config.upper, config.population, config.seed, config.step)
    else:
        s_lo, s_hi = sum_range_from_cost(config.cost_range, n_groups)
        s_hi = min(s_hi, n_groups * config.upper)
        vectors = uniform_sum_sample(
            n_groups, (min(s_lo, s_hi), s_hi), config.upper, config.population, config.seed, step=config.step
        )
    return np.array([[round(r * grid.scale) for r in v] for v in vectors], dtype=np.int64)


def pareto_front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points not dominated in (top-1 up, BOPs down), sorted by BOPs; of points with equal objectives
    (e.g. ratios that select the same windows) only the first is kept."""
    front, seen = [], set()
    for p in points:
        dominated = any(
            (q["top1"] >= p["top1"] and q["bops"] <= p["bops"]) and (q["top1"] > p["top1"] or q["bops"] < p["bops"])
            for q in points
        )
        if not dominated and (p["top1"], p["bops"]) not in seen:
            seen.add((p["top1"], p["bops"]))
            front.append(p)
    return sorted(front, key=lambda p: (p["bops"], -p["top1"]))


def _fingerprint(config: MixAQSearchConfig, n_groups: int, tag: str) -> dict[str, Any]:
    # through JSON once, so a fingerprint read back from state.json compares equal (tuples become lists)
    return json.loads(json.dumps({"config": asdict(config), "n_groups": n_groups, "tag": tag}))


def _make_algorithm(config: MixAQSearchConfig, n_groups: int):
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    upper_k = _grid(config.upper, config.step).upper_k
    problem = Problem(n_var=n_groups, n_obj=2, xl=0, xu=upper_k, vtype=int)
    algorithm = NSGA2(
        pop_size=config.population,
        sampling=initial_population(n_groups, config).astype(float),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    algorithm.setup(problem, termination=("n_gen", config.generations + 1), seed=config.seed, verbose=False)
    return problem, algorithm


def search_ratios(
    evaluate: EvaluateFn,
    n_groups: int,
    config: MixAQSearchConfig,
    out: str | Path | None = None,
    resume: bool = False,
    tag: str = "",
) -> SearchResult:
    """NSGA-II over ratio vectors; ``evaluate(ratios) -> (top1, bops)`` is called once per distinct vector.

    Args:
        evaluate: the objective (see :func:`model_evaluator` for a model).
        n_groups: ratios per vector.
        config: the search settings.
        out: folder for ``state.json`` (after every generation), ``pareto.json``, ``chosen.json`` and
            ``pareto.png``; None: nothing written, no resume.
        resume: continue from ``out/state.json`` if it exists (StateError if it was written for another
            configuration or ``tag``).
        tag: extra identity of the objective (model, recipe, held-out split) checked on resume.

    Returns:
        The :class:`SearchResult`; also written to ``out``.
    """
    from pymoo.core.evaluator import Evaluator
    from pymoo.problems.static import StaticProblem

    distributed.init_from_env()
    to_ratios = _grid(config.upper, config.step).to_ratios
    out = Path(out) if out is not None else None
    writes = out is not None and distributed.is_main()
    if writes:
        out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config, n_groups, tag)
    state_path = out / STATE_FILE if out is not None else None
    cache = distributed.main_decides(lambda: _read_cache(state_path, fingerprint)) if resume else {}
    problem, algorithm = _make_algorithm(config, n_groups)
    evaluated: list[dict[str, Any]] = []
    zero = tuple(0.0 for _ in range(n_groups))
    evaluate_missing(evaluate, [zero], cache)
    base_top1, base_bops = cache[zero]
    seen: set[tuple[float, ...]] = {zero}  # the baseline is reported apart, not as an evaluated point
    bar = tqdm(total=config.population * (config.generations + 1), desc="mixaq search", **distributed.progress_kwargs())
    while algorithm.has_next():
        generation = (algorithm.n_gen or 1) - 1
        pop = algorithm.ask()
        vectors = [to_ratios(x) for x in np.rint(pop.get("X")).astype(np.int64)]
        evaluate_missing(evaluate, vectors, cache)  # a replay takes the objectives from the cache
        objectives = []
        for ratios in vectors:
            if ratios not in seen:  # first time in this run
                seen.add(ratios)
                evaluated.append(_point(ratios, *cache[ratios], base_bops, generation))
            top1, bops = cache[ratios]
            objectives.append([-top1, bops / base_bops])
        Evaluator().eval(StaticProblem(problem, F=np.array(objectives, dtype=float)), pop)
        algorithm.tell(infills=pop)
        bar.update(len(vectors))
        if writes:
            _write_cache(state_path, fingerprint, int(algorithm.n_gen), cache)
    bar.close()
    baseline = {"ratios": list(zero), "top1": base_top1, "bops": base_bops, "rel_bops": 1.0}
    front = pareto_front(evaluated)
    result = SearchResult(baseline=baseline, evaluated=evaluated, front=front, chosen=choose(front, config.targets))
    if writes:
        _write_outputs(out, result, config)
    return result


def evaluate_missing(
    evaluate: EvaluateFn, vectors: Sequence[tuple[float, ...]], cache: dict[tuple[float, ...], tuple[float, int]]
) -> None:
    """Put the objectives of the ``vectors`` not in ``cache`` there (each distinct vector evaluated once).

    Under ``torchrun`` the missing vectors are dealt round robin to the processes and the objectives
    gathered exactly (top-1 and BOPs travel as float64: BOPs below 2**53 stay exact integers), so every
    process ends with the same cache.
    """
    missing = list(dict.fromkeys(v for v in vectors if v not in cache))
    values: dict[int, float] = {}
    for i in distributed.shard(len(missing)):
        top1, bops = evaluate(missing[i])
        values[2 * i], values[2 * i + 1] = float(top1), float(bops)
    gathered = distributed.gather_values(values, 2 * len(missing))
    for i, ratios in enumerate(missing):
        cache[ratios] = (gathered[2 * i], int(gathered[2 * i + 1]))


def choose(front: Sequence[dict[str, Any]], targets: Sequence[float]) -> dict[str, dict[str, Any] | None]:
    """Per relative-BOPs target (key ``f"{t:g}"``), the most accurate front point within it (fewer BOPs
    break ties), or None."""
    chosen: dict[str, dict[str, Any] | None] = {}
    for t in targets:
        inside = [p for p in front if p["rel_bops"] <= t]
        chosen[f"{t:g}"] = max(inside, key=lambda p: (p["top1"], -p["bops"])) if inside else None
    return chosen


def _point(ratios: tuple[float, ...], top1: float, bops: int, base_bops: int, generation: int) -> dict[str, Any]:
    log.info("gen %d %s: top-1 %.2f, rel BOPs %.4f", generation, ratios, top1, bops / base_bops)
    return {"ratios": list(ratios), "top1": top1, "bops": bops, "rel_bops": bops / base_bops, "generation": generation}


def _read_cache(state_path: Path | None, fingerprint: dict[str, Any]) -> dict[tuple[float, ...], tuple[float, int]]:
    # rank 0 only (distributed.main_decides)
    """The objectives a resumed search has paid for (empty without a state file)."""
    if state_path is None or not state_path.is_file():
        return {}
    state = load_json_file(state_path, "MixA-Q search state", StateError)
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        raise StateError(
            f"{state_path} was written by a search with other settings; use another --out or drop --resume"
        )
    try:
        cache = {tuple(e["ratios"]): (e["top1"], e["bops"]) for e in state["cache"]}
    except (KeyError, TypeError) as e:
        raise StateError(f"MixA-Q search state {state_path} is corrupt ({e!r}); remove it to start over") from None
    log.info("resuming MixA-Q search: %d evaluations cached, replaying from the seed", len(cache))
    return cache


def _write_cache(
    state_path: Path, fingerprint: dict[str, Any], generation: int, cache: dict[tuple[float, ...], tuple[float, int]]
) -> None:
    write_json(
        state_path,
        {
            "fingerprint": fingerprint,
            "generation": generation,
            "cache": [{"ratios": list(r), "top1": t, "bops": b} for r, (t, b) in cache.items()],
        },
    )


def _write_outputs(out: Path, result: SearchResult, config: MixAQSearchConfig) -> None:
    write_json(
        out / FRONT_FILE,
        {"config": asdict(config), "baseline": result.baseline, "front": result.front, "evaluated": result.evaluated},
    )
    write_json(out / CHOSEN_FILE, {"baseline": result.baseline, "chosen": result.chosen})
    pareto_chart(out / CHART_FILE, {f"{config.init} init": result.evaluated}, result.baseline)


def pareto_chart(
    path: str | Path,
    series: dict[str, Sequence[dict[str, Any]]],
    baseline: dict[str, Any] | None = None,
    extra: dict[str, Sequence[tuple[float, float]]] | None = None,
    title: str = "MixA-Q search",
) -> None:
    """Top-1 vs relative BOPs: every evaluated point of each series (dots) and its Pareto front (line);
    ``extra`` adds named (rel_bops, top1) curves (e.g. uniform ratios, pruning only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for i, (name, points) in enumerate(series.items()):
        color = f"C{i}"
        ax.scatter([p["rel_bops"] for p in points], [p["top1"] for p in points], s=12, alpha=0.45, color=color)
        front = pareto_front(points)
        ax.plot(
            [p["rel_bops"] for p in front], [p["top1"] for p in front], "-o", ms=4, color=color, label=f"{name} (front)"
        )
    for j, (name, curve) in enumerate((extra or {}).items()):
        ax.plot([c[0] for c in curve], [c[1] for c in curve], "--s", ms=4, color=f"C{len(series) + j}", label=name)
    if baseline is not None:
        ax.scatter([baseline["rel_bops"]], [baseline["top1"]], marker="*", s=120, color="k", label="uniform (ratio 0)")
    ax.set_xlabel("BOPs relative to ratio 0")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)

"""Data parallelism across processes (``vitcompress.distributed``): two gloo processes on the CPU give
exactly what one process gives, for Evol-Q (scales, history, resume), F-LBQ curves and the MixA-Q search.

One spawn of two ranks (``torchrun``'s environment variables, set by hand) runs every scenario of
:func:`scenarios`; the test process runs the same scenarios alone and compares. The ranks must agree
with each other and with one process bit for bit (tolerance 0): each value is computed by one process
on the same batches and gathered exactly. The two-process tests are ``slow`` (the spawn and the imports
take most of their ~40 s).
"""

import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tiny_models import tiny_swin, tiny_vit
from vitcompress import distributed
from vitcompress.config import get_preset
from vitcompress.errors import StateError
from vitcompress.methods.evolq import EvolQConfig, evolq_
from vitcompress.methods.flbq.measure import measure_curves
from vitcompress.methods.mixaq.search import MixAQSearchConfig, search_ratios
from vitcompress.quantize import quantize_

WORLD = 2
EVOLQ = EvolQConfig(passes=2, cycles=3, population=4, tournament=3, calib_size=40, batch_size=8, mutation_low_bits=2e-3)


class _Stop(Exception):
    pass


def _images(n: int = 40, chans: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, chans, 32, 32, generator=g) for _ in range(n // 8)]  # 5 batches: 3 + 2 per rank


def _evolq(state_dir: Path) -> dict:
    model = quantize_(tiny_vit(), get_preset("w4a8"), _images())
    full = evolq_(model, _images(), EVOLQ)
    out = {"scales": full.scales, "history": [h["fitness"] for h in full.history], "evals": full.evaluations}

    def stop(event: dict) -> None:
        if event["pass"] == 1 and event["block"] == "blocks.0":  # last to first: blocks.1, then blocks.0
            raise _Stop

    state = state_dir / "evolq.pt"
    with contextlib.suppress(_Stop):
        evolq_(quantize_(tiny_vit(), get_preset("w4a8"), _images()), _images(), EVOLQ, state_path=state, callback=stop)
    distributed.barrier()  # rank 0 has written the state before anyone resumes
    model = quantize_(tiny_vit(), get_preset("w4a8"), _images())  # the PTQ model a resumed job starts from
    resumed = evolq_(model, _images(), EVOLQ, state_path=state, resume=True)
    out.update(resumed_scales=resumed.scales, resumed_history=[h["fitness"] for h in resumed.history])
    return out


def _curves() -> dict:
    out = {}
    for name, build, chans, unit in (("vit", tiny_vit, 3, "group:8"), ("swin", tiny_swin, 1, "layer")):
        info: dict = {}
        curves = measure_curves(
            build(), _images(16, chans), unit=unit, bits=(2, 4, 8), n_images=16, batch_size=8, info=info
        )
        out[name] = curves.to_dict()
        out[f"{name}_forwards"] = info["forwards"]
    return out


def _objective(calls: list):
    def evaluate(ratios: tuple[float, ...]) -> tuple[float, int]:
        calls.append(ratios)
        top1 = 90.0 - sum((i + 1) * r * r for i, r in enumerate(ratios)) / 3  # a smooth stand-in for top-1
        return top1, int(1e12 * (1 - 0.3 * sum(ratios) / len(ratios)))

    return evaluate


def _mixaq(state_dir: Path) -> dict:
    config = MixAQSearchConfig(population=6, generations=2, seed=3)
    calls: list = []
    result = search_ratios(_objective(calls), 3, config, out=state_dir / "mixaq", tag="t")
    resumed_calls: list = []
    resumed = search_ratios(_objective(resumed_calls), 3, config, out=state_dir / "mixaq", resume=True, tag="t")
    return {
        "result": json.loads(json.dumps(result.__dict__)),
        "resumed": json.loads(json.dumps(resumed.__dict__)),
        "calls": len(calls),
        "resumed_calls": len(resumed_calls),
    }


def _primitives() -> dict:
    mine = distributed.shard(5)
    gathered = distributed.gather_values({i: 0.1 * i + 0.01 * distributed.rank() for i in mine}, 5)
    try:
        distributed.main_decides(lambda: (_ for _ in ()).throw(StateError("only rank 0 reads this state")))
        error = None
    except StateError as e:
        error = str(e)
    return {"shard": mine, "gathered": gathered, "error": error, "decided": distributed.main_decides(distributed.rank)}


def scenarios(state_dir: Path) -> dict:
    torch.set_num_threads(1)
    state_dir.mkdir(parents=True, exist_ok=True)
    return {"primitives": _primitives(), "evolq": _evolq(state_dir), "curves": _curves(), "mixaq": _mixaq(state_dir)}


def _rank_main(rank: int, port: int, tmp: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.environ["TQDM_DISABLE"] = "1"
    assert distributed.init_from_env() and distributed.world_size() == WORLD
    try:
        results = scenarios(Path(tmp) / "state")  # the same folder for both ranks: only rank 0 writes
        torch.save(results, Path(tmp) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    mp.start_processes(_rank_main, args=(_free_port(), str(tmp)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    threads = torch.get_num_threads()
    try:
        single = scenarios(tmp / "single")
    finally:
        torch.set_num_threads(threads)
    return {"ranks": ranks, "single": single, "tmp": tmp}


def test_without_torchrun_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init_from_env()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(3) == [0, 1, 2]
    assert distributed.gather_values({0: 1.5, 2: 2.5}, 3) == [1.5, 0.0, 2.5]
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.progress_kwargs() == {}
    with pytest.raises(ValueError, match="outside 0..2"):
        distributed.gather_values({3: 1.0}, 3)


@pytest.mark.slow  # two spawned processes importing torch and timm: ~40 s on a loaded 2-core machine
def test_primitives_share_work_and_gather_exactly(runs):
    r0, r1 = (r["primitives"] for r in runs["ranks"])
    assert (r0["shard"], r1["shard"]) == ([0, 2, 4], [1, 3])
    assert r0["gathered"] == r1["gathered"] == [0.1 * i + 0.01 * (i % 2) for i in range(5)]  # x + 0.0 == x
    assert r0["error"] == r1["error"] == "only rank 0 reads this state"  # raised on every rank, same class
    assert r0["decided"] == r1["decided"] == 0


@pytest.mark.slow  # two spawned processes importing torch and timm: ~40 s on a loaded 2-core machine
def test_evolq_two_processes_take_the_decisions_of_one(runs):
    single = runs["single"]["evolq"]
    for r in runs["ranks"]:
        got = r["evolq"]
        assert got["history"] == single["history"]  # every fitness bit for bit (tolerance 0)
        assert got["evals"] == single["evals"]
        assert got["scales"].keys() == single["scales"].keys()
        for name, s in single["scales"].items():
            assert torch.equal(got["scales"][name], s), name  # the same children accepted
    assert single["history"][-1] < single["history"][0]  # the search moved: the comparison is not vacuous


@pytest.mark.slow  # two spawned processes importing torch and timm: ~40 s on a loaded 2-core machine
def test_evolq_resume_under_two_processes_ends_as_one_uninterrupted_run(runs):
    single = runs["single"]["evolq"]
    for r in runs["ranks"]:
        got = r["evolq"]
        assert got["resumed_history"] == single["history"]
        for name, s in single["scales"].items():
            assert torch.equal(got["resumed_scales"][name], s), name


@pytest.mark.slow  # two spawned processes importing torch and timm: ~40 s on a loaded 2-core machine
def test_curves_two_processes_equal_one(runs):
    single = runs["single"]["curves"]
    for r in runs["ranks"]:
        assert r["curves"] == single  # every D_u(b) exactly, layer and group units, ViT and Swin
    # group:8 of dim 32: patch embedding 4 units, per block qkv 12, proj 4, fc1 16, fc2 4; 3 bit widths each
    assert len(single["vit"]["units"]) == 4 + 2 * (12 + 4 + 16 + 4) and single["vit_forwards"] == 3 * 76


@pytest.mark.slow  # two spawned processes importing torch and timm: ~40 s on a loaded 2-core machine
def test_mixaq_search_two_processes_equal_one_and_share_the_candidates(runs):
    single = runs["single"]["mixaq"]
    r0, r1 = (r["mixaq"] for r in runs["ranks"])
    for got in (r0, r1):
        assert got["result"] == single["result"] and got["resumed"] == single["resumed"]
        assert got["resumed_calls"] == 0  # the cache rank 0 read reached every rank
    assert r0["calls"] + r1["calls"] == single["calls"] and abs(r0["calls"] - r1["calls"]) <= 3
    assert (runs["tmp"] / "state" / "mixaq" / "pareto.json").is_file()

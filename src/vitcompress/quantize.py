"""Public verbs of post-training quantization: ``quantize_``, ``save``, ``restore``.

``quantize_(model, recipe, calib)`` replaces the model's layers with quantized ones, sets the weight
ranges, gathers activation statistics in one streaming pass over ``calib`` and fixes every scale.
``save``/``restore`` write and read a folder holding the weights (safetensors, quantizer buffers
included) and the recipe, so that restore rebuilds the same modules and gives the same outputs.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vitcompress.config import Recipe, load_json_file
from vitcompress.data.calib import count_batches, example_image, iter_images
from vitcompress.device import model_device, to_device
from vitcompress.errors import CheckpointError, ConfigError, StateError
from vitcompress.eval.classification import check_input
from vitcompress.io import write_json
from vitcompress.models.checkpoint import load_weights, save_weights
from vitcompress.nn.checks import check_finite_weights
from vitcompress.nn.convert import point_role, prepare, quantization_points
from vitcompress.nn.linear import QuantConv2d, QuantLinear
from vitcompress.nn.reparam import add_folded_biases, reparameterize_
from vitcompress.outputs import swap_into_place, verify_manifest, write_manifest
from vitcompress.recon import STATE_FILE as RECON_STATE_FILE
from vitcompress.recon import reconstruct_
from vitcompress.sparsity import attach_masks_, masks_from_weights_, masks_of, sparsity_plan

log = logging.getLogger(__name__)

RECIPE_ATTR = "vitcompress_recipe"  # set on a quantized model
SOURCE_ATTR = "vitcompress_source"  # set by load_model: how to rebuild the float model
WEIGHTS_FILE, RECIPE_FILE, SOURCE_FILE = "model.safetensors", "recipe.json", "source.json"
SPARSITY_FILE = "sparsity.json"  # N:M sparsity plan (layer -> pattern), when the model is sparse
# A method whose model has more structure than its recipe rebuilds (MixA-Q's two-branch blocks) sets
# LAYOUT_ATTR to a JSON-able dict whose "builder" names the function that rebuilds it
# ("vitcompress.methods.<m>.<module>:<function>", called as fn(prepared_model, layout) before the weights load).
LAYOUT_ATTR, LAYOUT_FILE = "vitcompress_layout", "layout.json"
RECON_ATTR = "vitcompress_reconstruction"  # set by quantize_ after block reconstruction: its summary (a dict)


def recipe_of(model: nn.Module) -> Recipe:
    """The recipe a model was quantized with; StateError if it was never quantized."""
    recipe = getattr(model, RECIPE_ATTR, None)
    if recipe is None:
        raise StateError("model is not quantized: run quantize_(model, recipe, calib) (PTQ) first")
    return recipe


def _example(model: nn.Module, calib) -> torch.Tensor | None:
    """The first calibration image on the model's device (the real input size, which a model built at another
    size than its ``pretrained_cfg`` says needs), or None to let ``prepare`` use the size the model declares."""
    x = example_image(calib)
    if x is None:
        return None
    check_input(model, x)  # a wrong image size is a DataError naming both shapes, not a failed trace
    return to_device(x, model_device(model))


def _calibrate_weights(model: nn.Module) -> None:
    for name, qz in quantization_points(model):
        if point_role(name, qz) == "weight" and qz.spec.enabled:
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            qz.reset_stats()
            qz.observe(owner.weight.detach())
            qz.compute_qparams()


@torch.no_grad()
def calibrate_activations(model: nn.Module, calib: Dataset | DataLoader | Iterable, batch_size: int = 64) -> int:
    """One streaming pass over ``calib`` with float weights and activations; then fix activation scales.

    Statistics are those of the float model (as in FQ-ViT): the quantizers observe and pass through.
    Returns the number of images seen.
    """
    acts = [(n, q) for n, q in quantization_points(model) if point_role(n, q) != "weight" and q.spec.enabled]
    weights = [q for n, q in quantization_points(model) if point_role(n, q) == "weight"]
    saved = [q.enabled for q in weights]
    for q in weights:
        q.enabled = False
    for _, q in acts:
        q.reset_stats()
        q.calibrating = True
    model.eval()
    seen = 0
    try:
        batches = iter_images(calib, batch_size, device=model_device(model))
        for x in tqdm(batches, desc="calibrate", leave=False, total=count_batches(calib, batch_size)):
            if seen == 0:
                check_input(model, x)
            model(x)
            seen += len(x)
    finally:
        for _, q in acts:
            q.calibrating = False
        for q, was in zip(weights, saved):
            q.enabled = was
    for _, q in acts:
        q.compute_qparams()
    return seen


def quantize_(
    model: nn.Module,
    recipe: Recipe,
    calib: Dataset | DataLoader | Iterable | None,
    batch_size: int = 64,
    *,
    state_dir: str | Path | None = None,
    resume: bool = False,
) -> nn.Module:
    """Quantize ``model`` in place following ``recipe`` (post-training quantization).

    Args:
        model: a float timm ViT/DeiT/Swin (or any model made of the known layers).
        recipe: what to quantize and how (see :class:`vitcompress.config.Recipe` and presets).
        calib: calibration images (a Dataset of (image, label), a loader, or batches). May be None
            only if no activation is quantized.
        batch_size: calibration batch size when ``calib`` is a Dataset.
        state_dir: where block reconstruction (``recipe.reconstruction``) keeps its resumable state.
        resume: continue the reconstruction state in ``state_dir``.

    Returns:
        The same model, quantized and in eval mode.
    """
    t0 = time.perf_counter()
    check_finite_weights(model)
    if recipe.reparam:
        if calib is None:
            raise StateError("recipe has reparam: pass calibration data (calib)")
        calib = list(calib) if iter(calib) is calib else calib  # a one-shot iterator is read twice
        reparameterize_(model, calib, recipe.act, batch_size)  # on the float model, before prepare
    masks = masks_of(model)  # N:M masks live on the float layers that prepare replaces
    prepare(model, recipe, _example(model, calib))  # one traced forward finds the ops to quantize
    attach_masks_(model, masks)  # carried over: save writes sparsity.json, training keeps the zeros
    _calibrate_weights(model)
    needs_data = any(
        point_role(n, q) != "weight" and q.spec.enabled and not q.is_calibrated for n, q in quantization_points(model)
    )
    seen = 0
    if needs_data:
        if calib is None:
            raise StateError("recipe quantizes activations: pass calibration data (calib)")
        seen = calibrate_activations(model, calib, batch_size)
    if recipe.bias_correction:
        for m in model.modules():
            if isinstance(m, (QuantLinear, QuantConv2d)):
                m.bias_correction = True
    if recipe.reconstruction is not None:
        _reconstruct(model, recipe, calib, state_dir, resume)
    setattr(model, RECIPE_ATTR, recipe)
    log.info("quantized with recipe %r on %d calibration images in %.1f s", recipe.name, seen, time.perf_counter() - t0)
    return model.eval()


def _reconstruct(model: nn.Module, recipe: Recipe, calib, state_dir: str | Path | None, resume: bool) -> None:
    """Block reconstruction after calibration (:mod:`vitcompress.recon`); its summary on the model."""
    if calib is None:
        raise StateError("recipe has reconstruction: pass calibration data (calib)")
    state = Path(state_dir) / RECON_STATE_FILE if state_dir is not None else None
    result = reconstruct_(model, calib, recipe.reconstruction, recipe=recipe.to_dict(), state_path=state, resume=resume)
    setattr(model, RECON_ATTR, result.to_dict())


def save(model: nn.Module, path: str | Path) -> Path:
    """Write a quantized model to folder ``path``: weights + quantizer buffers, recipe, model source,
    the N:M sparsity plan when the model has masks (``restore`` re-attaches them), the layout of a
    method's extra structure, and ``manifest.json`` (hashes of them all).

    The folder is written beside ``path`` and swapped into place complete (``vitcompress.outputs``): a
    kill leaves the old folder or the new one, and ``path`` is replaced as a whole.
    """
    recipe = recipe_of(model)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"save: {path} exists and is not a folder")
    work = path.with_name(f".{path.name}.saving-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_json(work / RECIPE_FILE, recipe.to_dict())
    source = getattr(model, SOURCE_ATTR, None)
    if source is not None:
        write_json(work / SOURCE_FILE, source)
    plan = sparsity_plan(model)
    if plan:  # N:M masks are rebuilt from the (sparse) weights on restore
        write_json(work / SPARSITY_FILE, {"type": "vitcompress.Sparsity", "version": 1, "layers": plan})
    layout = getattr(model, LAYOUT_ATTR, None)
    if layout is not None:
        write_json(work / LAYOUT_FILE, layout)
    save_weights(model, work / WEIGHTS_FILE, metadata={"format": "vitcompress", "recipe": recipe.name})
    write_manifest(work, {"writer": "vitcompress.save", "recipe": recipe.name})
    swap_into_place(work, path)
    return path


def _rebuild_layout(model: nn.Module, path: Path) -> None:
    """Apply a saved ``layout.json`` to a prepared model (see ``LAYOUT_ATTR``); only vitcompress's own
    builders are imported, never a name from elsewhere."""
    layout = load_json_file(path, "layout file", CheckpointError)
    builder = layout.get("builder", "") if isinstance(layout, dict) else ""
    module, _, function = str(builder).partition(":")
    if not module.startswith("vitcompress.methods.") or not function.isidentifier():
        raise CheckpointError(f"{path}: builder must be 'vitcompress.methods.<module>:<function>', got {builder!r}")
    getattr(importlib.import_module(module), function)(model, layout)
    setattr(model, LAYOUT_ATTR, layout)


def _rebuild_structure(model: nn.Module, recipe: Recipe, path: Path) -> None:
    """What a saved model has beyond ``prepare``: a method's layout, biases that reparameterization folded in."""
    if (path / LAYOUT_FILE).is_file():
        _rebuild_layout(model, path / LAYOUT_FILE)
    if recipe.reparam:  # folding gave bias-free linears (e.g. Swin's patch merging) a bias
        add_folded_biases(model, path / WEIGHTS_FILE)


def _float_model(path: Path) -> nn.Module:
    """The float architecture a saved folder's ``source.json`` names (random weights: they get overwritten)."""
    if not (path / SOURCE_FILE).is_file():
        raise CheckpointError(f"{path} has no {SOURCE_FILE}: pass the float model to restore(path, model)")
    from vitcompress.models.registry import model_from_source

    return model_from_source(load_json_file(path / SOURCE_FILE, "model source", CheckpointError), weights=False)


def restore(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a quantized model saved by :func:`save`.

    Args:
        path: the folder written by ``save``.
        model: the float architecture to quantize; default: rebuilt from ``source.json``
            (zoo name or ``timm:`` name and its arguments).

    Raises:
        CheckpointError: missing files, or the weights do not fit the architecture (first mismatch named).
    """
    path = Path(path)
    for name in (RECIPE_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a saved vitcompress model: {name} is missing")
    verify_manifest(path)  # folders saved before manifests existed have none: they load as they are
    try:
        recipe = Recipe.load(path / RECIPE_FILE)  # one line: the file and the line/column, or the bad field
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    model = _float_model(path) if model is None else model
    prepare(model, recipe)
    setattr(model, RECIPE_ATTR, recipe)  # a layout builder may ask for it
    _rebuild_structure(model, recipe, path)
    load_weights(model, path / WEIGHTS_FILE)
    if (path / SPARSITY_FILE).is_file():
        saved = load_json_file(path / SPARSITY_FILE, "sparsity plan", CheckpointError)
        if (
            not isinstance(saved, dict)
            or saved.get("type") != "vitcompress.Sparsity"
            or not isinstance(saved.get("layers"), dict)
        ):
            raise CheckpointError(f"{path / SPARSITY_FILE} is not a vitcompress sparsity file")
        masks_from_weights_(model, saved["layers"])
    if recipe.bias_correction:
        for m in model.modules():
            if isinstance(m, (QuantLinear, QuantConv2d)):
                m.bias_correction = True
    check_finite_weights(model, str(path))  # NaN tensors are refused on load; this adds zero scales
    setattr(model, RECIPE_ATTR, recipe)
    return model.eval()

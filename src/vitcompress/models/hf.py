"""``hf:DIR``: a Hugging Face transformers ViT / DeiT / Swin image classifier, converted to the equivalent timm model.

The folder is what ``save_pretrained`` writes: ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin`` read with ``weights_only=True``), and optionally
``preprocessor_config.json``. Nothing is downloaded.

The model is *converted*, not wrapped: the architecture is rebuilt from ``config.json`` with timm's own
classes and the weights are renamed (query/key/value concatenated into timm's ``qkv``), so every method,
the cost model and the ONNX export see the timm modules they know. The logits equal the transformers
model's (tests/models/test_hf.py: max |difference| <= 1e-4 on random-weight models, float32).

=====================================================  ==========================================
transformers architecture                              timm model
=====================================================  ==========================================
``ViTForImageClassification`` (also DeiT without       ``VisionTransformer``
distillation token, published as model_type vit)
``DeiTForImageClassificationWithTeacher``              ``VisionTransformerDistilled`` (eval: the mean
                                                       of the class and distillation heads, as HF)
``DeiTForImageClassification`` (distillation token,    ``VisionTransformer(reg_tokens=1)``: the token is
class head only)                                       carried as a register token, the head reads CLS
``SwinForImageClassification``                         ``SwinTransformer`` (HF's patch merging
                                                       concatenates in timm's order: no reordering)
=====================================================  ==========================================

``transformers`` is needed to read a folder (its config classes fill in the defaults that
``config.json`` leaves out): ``pip install vitcompress[hf]``. A model saved by vitcompress records the
converted architecture and preprocessing in ``source.json`` and restores without transformers.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress.errors import CheckpointError, UnsupportedModelError
from vitcompress.models.checkpoint import check_fits, read_state_dict

log = logging.getLogger(__name__)

# transformers architecture -> (model_type, timm family)
ARCHITECTURES = {
    "ViTForImageClassification": ("vit", "vit"),
    "DeiTForImageClassification": ("deit", "deit-single"),
    "DeiTForImageClassificationWithTeacher": ("deit", "deit-distilled"),
    "SwinForImageClassification": ("swin", "swin"),
}
# HF base_model_prefix of each model type: the backbone's keys start with it, the heads' do not
PREFIXES = {"vit": "vit.", "deit": "deit.", "swin": "swin."}
# HF hidden_act -> timm act_layer (None: timm's default nn.GELU, the exact erf GELU HF calls "gelu")
ACTIVATIONS = {"gelu": None, "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
# PIL resample codes (preprocessor_config.json "resample") -> timm interpolation names
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# the image processor transformers uses for a model type when preprocessor_config.json is absent
DEFAULT_PROCESSOR = {"vit": "ViTImageProcessor", "deit": "DeiTImageProcessor", "swin": "ViTImageProcessor"}
SWIN_FIXED_EPS = 1e-5  # HF Swin's patch-embedding and patch-merging LayerNorms ignore layer_norm_eps
INSTALL = "pip install vitcompress[hf]"


# ---- reading the folder -------------------------------------------------------------------------------------
def _transformers(folder: Path):
    try:
        import transformers
    except ImportError as e:
        raise UnsupportedModelError(f"hf:{folder} needs the transformers package: {INSTALL}") from e
    return transformers


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` with transformers' defaults filled in (``PretrainedConfig.to_dict()``)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"hf:{folder} is not a Hugging Face model folder: config.json is missing")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in PREFIXES:
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} is not supported; hf: takes {sorted(PREFIXES)} image classifiers"
        )
    transformers = _transformers(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # a config transformers itself cannot read
        raise CheckpointError(f"{path}: transformers cannot read it: {str(e).strip().splitlines()[0]}") from e
    return config.to_dict()


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights: ``model.safetensors``, its shards, or ``pytorch_model.bin`` (weights only)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return read_state_dict(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index: {e}") from e
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(folder / shard))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return read_state_dict(folder / "pytorch_model.bin")
    raise CheckpointError(f"hf:{folder} has no weights: model.safetensors is missing")


# ---- config.json -> the converted architecture ---------------------------------------------------------------
def _architecture(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor] | None) -> str:
    """The transformers class the folder was saved from (``architectures``; else from the weights)."""
    model_type = config["model_type"]
    named = [a for a in config.get("architectures") or [] if a in ARCHITECTURES]
    if named:
        return named[0]
    if config.get("architectures"):
        raise UnsupportedModelError(
            f"{config['architectures']} is not an image classifier vitcompress converts; "
            f"supported: {sorted(ARCHITECTURES)}"
        )
    if model_type == "deit":
        distilled = weights is not None and "distillation_classifier.weight" in weights
        return "DeiTForImageClassificationWithTeacher" if distilled else "DeiTForImageClassification"
    return {"vit": "ViTForImageClassification", "swin": "SwinForImageClassification"}[model_type]


def _square(name: str, value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedModelError(f"{name} {list(value)} is not square; vitcompress takes square inputs")
        value = value[0]
    return int(value)


def hf_spec(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The fields of a resolved ``config.json`` the timm model is built from (JSON; stored in source.json)."""
    arch = _architecture(config, weights)
    if config["model_type"] != ARCHITECTURES[arch][0]:
        raise UnsupportedModelError(f"architecture {arch} does not match model_type {config['model_type']!r}")
    act = config.get("hidden_act", "gelu")
    if act not in ACTIVATIONS or (config["model_type"] == "swin" and act != "gelu"):
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    spec = {
        "architecture": arch,
        "model_type": config["model_type"],
        "image_size": _square("image_size", config["image_size"]),
        "patch_size": _square("patch_size", config["patch_size"]),
        "num_channels": int(config.get("num_channels", 3)),
        "num_labels": len(config.get("id2label") or {}),
        "layer_norm_eps": float(config["layer_norm_eps"]),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "hidden_act": act,
    }
    if config["model_type"] == "swin":
        if config.get("use_absolute_embeddings"):
            raise UnsupportedModelError("Swin with use_absolute_embeddings=true has no timm equivalent")
        spec.update({k: config[k] for k in ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio")})
        _check_swin_windows(spec)
        return spec
    return {
        **spec,
        **{k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")},
    }


def _check_swin_windows(spec: Mapping[str, Any]) -> None:
    """Refuse a Swin whose feature maps need padding to whole windows in a stage with shifted windows:
    HF pads before the cyclic shift, timm after it, so the logits would differ."""
    size, patch, window = spec["image_size"], spec["patch_size"], spec["window_size"]
    if size % patch:
        raise UnsupportedModelError(f"Swin image_size {size} is not a multiple of patch_size {patch}")
    resolution = size // patch
    for stage, depth in enumerate(spec["depths"]):
        if depth > 1 and resolution > window and resolution % window:
            raise UnsupportedModelError(
                f"Swin stage {stage} has a {resolution}x{resolution} feature map, not whole {window}x{window} "
                "windows: transformers and timm pad it differently around the shifted windows (choose image_size, "
                "patch_size and window_size so that every stage is a multiple of window_size)"
            )
        resolution = (resolution + 1) // 2


def _mlp_ratio(hidden: int, intermediate: int) -> float:
    """timm builds ``int(dim * mlp_ratio)`` hidden units: a ratio that gives exactly ``intermediate``."""
    ratio = intermediate / hidden
    return ratio if int(hidden * ratio) == intermediate else (intermediate + 0.5) / hidden


def build_timm(spec: Mapping[str, Any]) -> nn.Module:
    """The timm model ``spec`` (see :func:`hf_spec`) describes, with random weights, in eval mode."""
    norm = functools.partial(nn.LayerNorm, eps=spec["layer_norm_eps"])
    common = dict(
        img_size=spec["image_size"],
        patch_size=spec["patch_size"],
        in_chans=spec["num_channels"],
        num_classes=spec["num_labels"],
        qkv_bias=spec["qkv_bias"],
        norm_layer=norm,
    )
    if spec["model_type"] == "swin":
        from timm.models.swin_transformer import SwinTransformer

        model = SwinTransformer(
            embed_dim=spec["embed_dim"],
            depths=tuple(spec["depths"]),
            num_heads=tuple(spec["num_heads"]),
            window_size=spec["window_size"],
            mlp_ratio=spec["mlp_ratio"],
            drop_path_rate=0.0,
            **common,
        )
        for name, m in model.named_modules():  # HF builds these two with nn.LayerNorm's default eps
            if name == "patch_embed.norm" or name.endswith("downsample.norm"):
                m.eps = SWIN_FIXED_EPS
        return model.eval()
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    family = ARCHITECTURES[spec["architecture"]][1]
    cls = VisionTransformerDistilled if family == "deit-distilled" else VisionTransformer
    return cls(
        embed_dim=spec["hidden_size"],
        depth=spec["num_hidden_layers"],
        num_heads=spec["num_attention_heads"],
        mlp_ratio=_mlp_ratio(spec["hidden_size"], spec["intermediate_size"]),
        act_layer=ACTIVATIONS[spec["hidden_act"]],
        reg_tokens=1 if family == "deit-single" else 0,
        global_pool="token",
        class_token=True,
        **common,
    ).eval()


# ---- weights: HF names -> timm names ------------------------------------------------------------------------
# Both the names transformers 4.x writes (and the hub holds) and transformers 5's module names are read.
_QKV = r"(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)"
_VIT_LAYER = r"(?:encoder\.layer|layers)\.(\d+)\."
_SWIN_BLOCK = r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_WB = r"\.(weight|bias)"
_DIST_TOKEN = "<distillation token>"  # timm's dist_token (two heads) or reg_token (class head only)
Rule = tuple[str, "str | Callable[[re.Match], str] | None"]

_VIT_RULES: list[Rule] = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.distillation_token", _DIST_TOKEN),
    (r"embeddings\.patch_embeddings\.projection" + _WB, r"patch_embed.proj.\1"),
    (_VIT_LAYER + r"attention\.(?:attention\.)?" + _QKV, r"blocks.\1.attn.qkv.\3|\2"),
    (_VIT_LAYER + r"attention\.(?:output\.dense|o_proj)" + _WB, r"blocks.\1.attn.proj.\2"),
    (_VIT_LAYER + r"layernorm_before" + _WB, r"blocks.\1.norm1.\2"),
    (_VIT_LAYER + r"layernorm_after" + _WB, r"blocks.\1.norm2.\2"),
    (_VIT_LAYER + r"(?:intermediate\.dense|mlp\.fc1)" + _WB, r"blocks.\1.mlp.fc1.\2"),
    (_VIT_LAYER + r"(?:output\.dense|mlp\.fc2)" + _WB, r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm" + _WB, r"norm.\1"),
    (r"(?:classifier|cls_classifier)" + _WB, r"head.\1"),
    (r"distillation_classifier" + _WB, r"head_dist.\1"),
    (r"embeddings\.mask_token|pooler\..*", None),  # masked-image-modeling token, unused pooler: not in timm
]
_SWIN_RULES: list[Rule] = [
    (r"embeddings\.patch_embeddings\.projection" + _WB, r"patch_embed.proj.\1"),
    (r"embeddings\.norm" + _WB, r"patch_embed.norm.\1"),
    (_SWIN_BLOCK + r"attention\.(?:self\.)?" + _QKV, r"layers.\1.blocks.\2.attn.qkv.\4|\3"),
    (
        _SWIN_BLOCK + r"attention\.(?:self\.|relative_position_bias\.)relative_position_bias_table",
        r"layers.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (_SWIN_BLOCK + r"attention\.(?:output\.dense|o_proj)" + _WB, r"layers.\1.blocks.\2.attn.proj.\3"),
    (_SWIN_BLOCK + r"layernorm_before" + _WB, r"layers.\1.blocks.\2.norm1.\3"),
    (_SWIN_BLOCK + r"layernorm_after" + _WB, r"layers.\1.blocks.\2.norm2.\3"),
    (_SWIN_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)" + _WB, r"layers.\1.blocks.\2.mlp.fc1.\3"),
    (_SWIN_BLOCK + r"(?:output\.dense|mlp\.fc2)" + _WB, r"layers.\1.blocks.\2.mlp.fc2.\3"),
    # HF merges patches at the end of stage i, timm at the start of stage i + 1
    (
        r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)" + _WB,
        lambda m: f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}.{m.group(3)}",
    ),
    (r"layernorm" + _WB, r"norm.\1"),
    (r"classifier" + _WB, r"head.fc.\1"),
    (r"embeddings\.mask_token|.*relative_position_index", None),  # buffers timm recomputes, unused token
]


def _rename(key: str, rules: list[Rule]) -> str | None:
    """The timm name of an HF key (``target|q`` for a query/key/value part); ``""`` = drop; None = unknown."""
    for pattern, target in rules:
        m = re.fullmatch(pattern, key)
        if m:
            if target is None:
                return ""
            return target(m) if callable(target) else m.expand(target)
    return None


def convert_state_dict(
    spec: Mapping[str, Any], weights: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """HF weights -> (timm state dict, timm key -> the HF key it came from).

    query/key/value are concatenated (in that order) into ``qkv``; a key no rule knows is kept under its
    HF name, so that the fit check names it as unexpected.
    """
    model_type = spec["model_type"]
    prefix, rules = PREFIXES[model_type], _SWIN_RULES if model_type == "swin" else _VIT_RULES
    distilled = ARCHITECTURES[spec["architecture"]][1] == "deit-distilled"
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    parts: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for hf_key, value in weights.items():
        target = _rename(hf_key.removeprefix(prefix), rules)
        if target == _DIST_TOKEN:
            target = "dist_token" if distilled else "reg_token"
        if target is None:  # unknown: kept under its HF name
            state[hf_key], origin[hf_key] = value, hf_key
        elif "|" in target:
            name, part = target.split("|")
            parts.setdefault(name, {})[part[0]] = (hf_key, value)  # q / k / v
        elif target:
            state[target], origin[target] = value, hf_key
    for name, got in parts.items():
        if set(got) == {"q", "k", "v"}:
            state[name] = torch.cat([got[p][1] for p in "qkv"])
            origin[name] = "+".join(got[p][0] for p in "qkv")
        else:  # an incomplete triple: keep the parts under their HF names
            state.update({hf_key: value for hf_key, value in got.values()})
    return state, origin


# ---- preprocessor_config.json -> the model's preprocessing ------------------------------------------------
def _processor_config(folder: Path, model_type: str) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not readable JSON: {e}") from e
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path} is not a JSON object")
        return cfg
    name = DEFAULT_PROCESSOR[model_type]
    log.warning("hf:%s has no preprocessor_config.json: using transformers' %s defaults", folder, name)
    try:
        return getattr(_transformers(folder), name)().to_dict()
    except Exception:  # the defaults of transformers 4.x/5.x ViTImageProcessor
        return {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 224, "width": 224}, "resample": 2}


def _size(value: Any) -> tuple[float | None, str]:
    """(the resize size a crop is taken from, timm's crop_mode) of a processor's ``size`` entry."""
    if isinstance(value, Mapping):
        if "height" in value:
            return float(value["height"]), "squash"
        if "shortest_edge" in value:
            return float(value["shortest_edge"]), "center"
        return None, "center"
    return (float(value), "squash") if isinstance(value, (int, float)) else (None, "center")


def _crop_pct(cfg: Mapping[str, Any]) -> tuple[float, str]:
    size, mode = _size(cfg.get("size")) if cfg.get("do_resize", True) else (None, "center")
    if cfg.get("crop_pct"):  # ConvNeXt-style processors state it
        return float(cfg["crop_pct"]), mode
    if cfg.get("do_center_crop") and size:
        crop, _ = _size(cfg.get("crop_size"))
        return (crop / size if crop else 1.0), mode
    return 1.0, mode


def _channels(values: Any, channels: int, default: float) -> tuple[float, ...]:
    values = [default] if values is None else list(values) if isinstance(values, (list, tuple)) else [values]
    values = [float(v) for v in values]
    if len(values) == 1:
        return tuple(values * channels)
    return (sum(values) / len(values),) if channels == 1 else tuple(values[:channels])  # 1 channel: their mean


def preprocess_from_processor(cfg: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """An HF image-processor config -> ``vitcompress_preprocess`` (timm data-config keys).

    The input size is the model's. Images are read as floats in [0, 1] (timm's ToTensor): the processor's
    rescale factor (1/255) and mean/std are folded into the mean/std given here.
    """
    size, channels = spec["image_size"], spec["num_channels"]
    scale = 255.0 * float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 255.0
    normalize = cfg.get("do_normalize", True)
    mean = _channels(cfg.get("image_mean") if normalize else 0.0, channels, 0.0)
    std = _channels(cfg.get("image_std") if normalize else 1.0, channels, 1.0)
    resample = cfg.get("resample", 2)
    interpolation = RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else str(resample).lower()
    crop_pct, crop_mode = _crop_pct(cfg)
    return {
        "input_size": (channels, size, size),
        "mean": tuple(m / scale for m in mean),
        "std": tuple(s / scale for s in std),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "interpolation": interpolation,
    }


# ---- the loader ------------------------------------------------------------------------------------------------
def _attach(model: nn.Module, name: str, spec: Mapping[str, Any], preprocess: Mapping[str, Any]) -> nn.Module:
    model.vitcompress_preprocess = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()}
    model.vitcompress_source = {"name": name, "hf": dict(spec), "preprocess": json.loads(json.dumps(preprocess))}
    return model.eval()


def load_hf(folder: str | Path) -> nn.Module:
    """The timm equivalent of the transformers image classifier saved in ``folder``, with its weights.

    Sets ``model.vitcompress_preprocess`` (from ``preprocessor_config.json``) and ``vitcompress_source``
    (the folder, the architecture and the preprocessing: ``restore`` rebuilds it without the folder).

    Raises:
        UnsupportedModelError: transformers is not installed, or not a ViT/DeiT/Swin image classifier.
        CheckpointError: config.json or the weights are missing or unreadable, or the weights do not fit
            (the first mismatching key with both shapes, or the missing / unexpected keys, by HF name).
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise CheckpointError(f"hf:{folder} is not a folder")
    config = read_config(folder)
    weights = read_weights(folder)
    try:
        spec = hf_spec(config, weights)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"hf:{folder}: {e}") from None
    model = build_timm(spec)
    state, origin = convert_state_dict(spec, weights)

    def describe(key: str) -> str:
        return f"{key!r} (from {origin[key]!r})" if key in origin and origin[key] != key else repr(key)

    check_fits(model, state, f"hf:{folder}", describe)
    model.load_state_dict(state, strict=True)
    preprocess = preprocess_from_processor(_processor_config(folder, spec["model_type"]), spec)
    log.info("hf:%s: %s converted to timm %s", folder, spec["architecture"], type(model).__name__)
    return _attach(model, f"hf:{folder}", spec, preprocess)


def model_from_hf_source(source: Mapping[str, Any], weights: bool = True) -> nn.Module:
    """Rebuild from a ``vitcompress_source`` an hf: model recorded; without ``weights`` the folder and
    transformers are not needed (the architecture and preprocessing are in the source)."""
    name = source["name"]
    if weights:
        return load_hf(name[len("hf:") :])
    spec, preprocess = source.get("hf"), source.get("preprocess")
    if not isinstance(spec, Mapping) or not isinstance(preprocess, Mapping):
        raise CheckpointError(f"source.json of {name} lacks the recorded architecture ('hf', 'preprocess')")
    try:
        model = build_timm(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"source.json of {name}: the recorded architecture is incomplete ({e!r})") from e
    return _attach(model, name, spec, preprocess)

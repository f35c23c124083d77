import json

import pytest
import yaml

from vitcompress.config import PRESETS, QuantSpec, Recipe, get_preset, resolve_recipe
from vitcompress.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"bits": 9}, "bits"),
        ({"bits": 1}, "bits"),
        ({"scheme": "nf4"}, "scheme"),
        ({"granularity": "row"}, "granularity"),
        ({"observer": "kl"}, "observer"),
        ({"granularity": "group"}, "group_size"),
        ({"group_size": 8}, "group_size"),
        ({"percentile": 40.0}, "percentile"),
    ],
)
def test_bad_spec_names_field_and_allowed(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        QuantSpec(**kwargs)


def test_bits_error_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"\[2, 3, 4, 5, 6, 7, 8, 16, 32\]"):
        QuantSpec(bits=12)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_json_and_yaml(name, tmp_path):
    recipe = get_preset(name)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert resolve_recipe(path) == recipe


def test_unknown_keys_rejected():
    d = get_preset("w8a8").to_dict()
    d["wieght"] = d.pop("weight")
    with pytest.raises(ConfigError, match="wieght"):
        Recipe.from_dict(d)
    d = get_preset("w8a8").to_dict()
    d["act"]["bitz"] = 4
    with pytest.raises(ConfigError, match="bitz"):
        Recipe.from_dict(d)


def test_override_precedence_exact_beats_glob_first_glob_wins():
    r = Recipe().with_overrides(
        ("blocks.*.attn.qkv.weight", {"bits": 4}),
        ("blocks.*.weight", {"bits": 6}),
        ("blocks.1.attn.qkv.weight", {"bits": 2}),
    )
    assert r.spec_for("blocks.0.attn.qkv.weight", "weight").bits == 4  # first glob wins
    assert r.spec_for("blocks.1.attn.qkv.weight", "weight").bits == 2  # exact name beats globs
    assert r.spec_for("blocks.0.mlp.fc1.weight", "weight").bits == 6
    assert r.spec_for("head.weight", "weight").bits == 8  # role default


def test_override_validated_against_spec():
    r = Recipe().with_overrides(("head.*", {"bits": 5, "granularity": "group"}))
    with pytest.raises(ConfigError, match="group_size"):
        r.spec_for("head.weight", "weight")


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"w8a8.*fqvit"):
        resolve_recipe("w5a5")


def test_fqvit_preset_is_what_it_says():
    r = get_preset("fqvit")
    assert (r.act.observer, r.norm.scheme, r.probs.scheme, r.bias_correction) == ("omse", "ptf", "log2", True)
    assert r.weight.bits == r.act.bits == 8

import contextlib
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ---- recipe files: one line naming the file (and the position of a syntax error) ----------------------
@pytest.mark.parametrize(
    "name, text, message",
    [
        ("r.yaml", "name: x\nact:\n  bits: 8\n   scheme: log2\n", r"r\.yaml: YAML syntax error at line 4, column 10: "),
        ("r.yaml", "act: {bits: 8\n", r"r\.yaml: YAML syntax error at line 2, column 1: "),
        ("r.yml", "a: 1\n---\nb: 2\n", r"r\.yml: YAML syntax error at line 2, column 1: .*single document"),
        ("r.json", '{"name": "x",\n "act": {"bits": 8,}}', r"r\.json: JSON syntax error at line 2, column 20: "),
        ("r.json", '{"name": "x"', r"r\.json: JSON syntax error at line 1, column 13: "),
        ("r.yaml", "act:\n  bits: 8\n  bits: 4\n", r"r\.yaml: YAML error at line 3, column 3: duplicate key 'bits'"),
        ("r.json", '{"act": {"bits": 8, "bits": 4}}', r"r\.json: duplicate key 'bits'"),
        (
            "r.yaml",
            "x: !!python/object/apply:os.system [echo]\n",
            r"r\.yaml: YAML error at line 1, column 4: .*constructor",
        ),
        ("r.yaml", "", r"recipe file .*r\.yaml is empty"),
        ("r.yaml", "# only a comment\n", r"recipe file .*r\.yaml is empty"),
        ("r.json", "  \n", r"recipe file .*r\.json is empty"),
        ("r.yaml", "- w8a8\n- w4a8\n", r"recipe file .*r\.yaml must hold a mapping of recipe fields, got a list"),
        ("r.json", '"w8a8"', r"recipe file .*r\.json must hold a mapping of recipe fields, got a string"),
        ("r.yaml", "[" * 3000, r"recipe file .*r\.yaml is nested too deeply"),
        ("r.yaml", "act: {percentile: abc}\n", r"r\.yaml: recipe\.act: percentile must be a finite number"),
        ("r.yaml", "act: {learnable: 'no'}\n", r"r\.yaml: recipe\.act: learnable must be true or false"),
        ("r.yaml", "overrides: 3\n", r"r\.yaml: overrides must be a list"),
        (
            "r.yaml",
            "overrides:\n- {pattern: head.*, bits: 9}\n",
            r"r\.yaml: overrides\['head\.\*'\]: bits must be one of",
        ),
        ("r.yaml", "1: 2\n", r"r\.yaml: recipe has key 1 that is not a name"),
        ("r.yaml", "name: 2020-01-01\n", r"r\.yaml: name must be a string"),
        ("r.yaml", "bias_correction: maybe\n", r"r\.yaml: bias_correction must be true or false"),
    ],
)
def test_bad_recipe_file_is_one_line_naming_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_recipe(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_recipe_file_missing_unreadable_or_not_text(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file .*nope\.yaml does not exist"):
        resolve_recipe(tmp_path / "nope.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.yaml does not exist \(it is a folder\)"):
        resolve_recipe(tmp_path / "dir.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"bin\.yaml is not UTF-8 text"):
        resolve_recipe(tmp_path / "bin.yaml")


def test_load_json_file_names_what_and_raises_the_given_error(tmp_path):
    from vitcompress.config import load_json_file
    from vitcompress.errors import CheckpointError

    path = tmp_path / "recipe.json"
    path.write_text('{"a": 1,\n\n  "b": }')
    with pytest.raises(CheckpointError, match=r"^saved recipe .*recipe\.json: JSON syntax error at line 3, column 8: "):
        load_json_file(path, "saved recipe", CheckpointError)
    path.write_text('{"a": [1, 2]}')
    assert load_json_file(path) == {"a": [1, 2]}


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("act: &a {bits: 8, scheme: asymmetric}\nqkv:\n  <<: *a\n  bits: 6\n")
    r = resolve_recipe(path)
    assert (r.act.bits, r.qkv.bits, r.qkv.scheme) == (8, 6, "asymmetric")


def test_override_fields_checked_when_read_cross_field_checks_when_applied():
    with pytest.raises(ConfigError, match=r"overrides\['head\.\*'\]: observer must be one of"):
        Recipe(overrides=(("head.*", {"observer": "kl"}),))
    with pytest.raises(ConfigError, match=r"overrides\['head\.\*'\]: group_bits must be a non-empty list"):
        Recipe(overrides=(("head.*", {"group_bits": []}),))
    r = Recipe(overrides=(("head.*", {"group_size": 4}),))  # fine on a role default with granularity 'group'
    with pytest.raises(ConfigError, match=r"override 'head\.\*' on head\.weight: group_size is only allowed"):
        r.spec_for("head.weight", "weight")


# ---- fuzz: a malformed recipe is a ConfigError, never another exception -------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["symmetric", "log2", "ptf", "group", "channel", "token", "omse", "float", "head.*", "pattern"])
    | st.sampled_from([2, 3, 4, 8, 16, 32, 50, 100, 99.9])
)
_keys = st.sampled_from(
    ["name", "type", "version", "weight", "act", "qkv", "probs", "norm", "overrides", "bias_correction"]
    + ["unknown_layers", "pattern", "bits", "scheme", "granularity", "group_size", "group_bits", "observer"]
    + ["percentile", "learnable"]
) | st.text(max_size=6)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys | st.integers(0, 3), children, max_size=5),
    max_leaves=20,
)


def _paths(d, prefix=()):
    """Every key path of nested dicts and lists."""
    yield prefix
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


@st.composite
def _mutated_recipes(draw):
    """A preset's dict with a few values replaced, keys added or removed (mostly near-valid recipes)."""
    d = json.loads(json.dumps(get_preset(draw(st.sampled_from(PRESETS))).to_dict()))
    d["overrides"].append({"pattern": "blocks.*.attn.qkv.weight", "granularity": "group", "group_size": 8})
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(d))))
        if not path:
            continue
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(_keys)] = draw(_values)
        else:
            parent.append(draw(_values))
    return d


def _load_or_config_error(path):
    try:
        recipe = resolve_recipe(path)
    except ConfigError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    # what loads is a valid recipe: it round-trips and every role resolves (or says why not)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    for role in ("weight", "act", "qkv", "probs", "norm"):
        for pattern, _ in recipe.overrides:
            with contextlib.suppress(ConfigError):
                recipe.spec_for(pattern, role)


_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(data=st.one_of(_mutated_recipes(), _values), fmt=st.sampled_from(["yaml", "json"]))
def test_fuzz_malformed_recipe_structures_give_config_error(tmp_path, data, fmt):
    path = tmp_path / f"r.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))
    _load_or_config_error(path)


@_fuzz
@given(
    text=st.text(max_size=80)
    | st.lists(
        st.sampled_from(["act:", " bits: 8", "  - ", "{", "}", "[", "]", ":", ",", '"', "'", "&a", "*a", "!!"])
    ).map("\n".join),
    fmt=st.sampled_from(["yaml", "json"]),
)
def test_fuzz_malformed_recipe_text_gives_config_error(tmp_path, text, fmt):
    path = tmp_path / f"r.{fmt}"
    path.write_text(text)
    _load_or_config_error(path)

import re
from pathlib import Path

import pytest
import yaml

from vitcompress.config import Recipe
from vitcompress.data import DEFAULT_FMNIST_ROOT

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_starts_with_the_two_commands():
    first = _blocks("bash")[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_readme_recipe_example_parses():
    recipe = Recipe.from_dict(yaml.safe_load(_blocks("yaml")[0]))
    assert recipe.spec_for("blocks.0.attn.qkv.weight", "weight").bits == 6


@pytest.mark.skipif(not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="needs Fashion-MNIST")
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    import vitcompress.cost  # noqa: F401  (as in a session where the subpackage is already loaded)

    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks("python")[0], "README.md", "exec"), {})
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert "top1=" in capsys.readouterr().out

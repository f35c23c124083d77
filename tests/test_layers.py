"""The import arrows point one way, downward (docs/architecture.md); checked on every import statement."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "vitcompress"
TOP = ("vitcompress.api", "vitcompress.jobs", "vitcompress.cli")
METHOD_DIRS = ("evolq", "flbq", "gpusq", "mixaq")


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("vitcompress")}


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PKG.rglob("*.py")}


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_layers_below_the_methods_know_no_method():
    for module, deps in _graph().items():
        if _under(module, "vitcompress.methods", *TOP) or module == "vitcompress":
            continue
        upward = sorted(d for d in deps if _under(d, "vitcompress.methods", *TOP))
        assert not upward, f"{module} imports {upward}"


def test_models_do_not_import_train():
    for module, deps in _graph().items():
        if _under(module, "vitcompress.models"):
            assert not [d for d in deps if _under(d, "vitcompress.train")], module


def test_a_method_imports_no_other_method_and_not_the_runner():
    for module, deps in _graph().items():
        for name in METHOD_DIRS:
            if _under(module, f"vitcompress.methods.{name}"):
                others = [f"vitcompress.methods.{o}" for o in METHOD_DIRS if o != name]
                bad = sorted(d for d in deps if _under(d, *others, *TOP))
                assert not bad, f"{module} imports {bad}"

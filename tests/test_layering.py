"""The import graph flows one way: CLI -> batch -> pipeline -> models; the package re-exports the user's names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "nsarm_core"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported nsarm module, imported inside a function?) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
                found.extend((n, inside) for n in names if n.startswith(("nsarm_core", "nsarm_cli")))
            elif isinstance(child, ast.Import):
                found.extend(
                    (a.name, inside) for a in child.names if a.name.startswith(("nsarm_core", "nsarm_cli"))
                )
            visit(child, inside)

    visit(tree, False)
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(CORE.parent).with_suffix("").parts)


ALLOWED = {
    # layer prefix -> project modules it may import
    "nsarm_core.models": ("nsarm_core.errors", "nsarm_core.atomic", "nsarm_core.scales", "nsarm_core.models"),
    "nsarm_core.pipeline": (
        "nsarm_core.errors",
        "nsarm_core.models",
        "nsarm_core.tiling",
        "nsarm_core.resize",
        "nsarm_core.color_fix",
        "nsarm_core.weights",
        "nsarm_core.cpu_features",
        "nsarm_core.window_batch",
    ),  # fmt: skip
}


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: _module(p))
def test_library_imports_flow_one_way_and_at_module_level(path: Path) -> None:
    module = _module(path)
    imports = _imports(path)
    assert not [n for n, _ in imports if n.startswith("nsarm_cli")], "the library never imports the CLI"
    assert not [n for n, inside in imports if inside], "project modules are imported at module level"
    for layer, allowed in ALLOWED.items():
        if module == layer or module.startswith(layer + "."):
            bad = [n for n, _ in imports if not n.startswith(allowed) and n != "nsarm_core"]
            assert not bad, f"{module} imports {bad}, outside its layer"
    if not module.startswith(("nsarm_core.batch", "nsarm_core.eval")):
        assert not [n for n, _ in imports if n.startswith("nsarm_core.batch")], "only CLI and eval use batch"


def test_package_re_exports_the_users_names_lazily() -> None:
    code = (
        "import sys, nsarm_core; assert 'torch' not in sys.modules; "
        "from nsarm_core import load_pipeline, read_image, write_image, to_tensor, from_tensor; "
        "print(load_pipeline.__module__, read_image.__module__, write_image.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["nsarm_core.pipeline", "nsarm_core.data.io", "nsarm_core.data.io"]

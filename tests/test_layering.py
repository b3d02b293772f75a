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
    "nsarm_core.models": (
        "nsarm_core.errors",
        "nsarm_core.atomic",
        "nsarm_core.scales",
        "nsarm_core.models",
        "nsarm_core.upscaler",
        "nsarm_core.hub",
        "nsarm_core.speck_guard",  # its SpeckGuardConfig is part of a model's config.json (NSARMConfig)
    ),
    "nsarm_core.pipeline": (
        "nsarm_core.errors",
        "nsarm_core.models",
        "nsarm_core.tiling",
        "nsarm_core.resize",
        "nsarm_core.color_fix",
        "nsarm_core.weights",
        "nsarm_core.upscaler",
        "nsarm_core.cpu_features",
        "nsarm_core.window_batch",
        "nsarm_core.speck_guard",
        "nsarm_core.latent_stitch",
    ),  # fmt: skip
}


# The places that import project modules inside a function, on purpose: the batch layer imports the model
# stack (torch) only when a model or a peer is asked for, so the interpolation baselines run without torch.
LATE_IMPORTS = {
    "nsarm_core.batch.upscale": (
        "nsarm_core.peers", "nsarm_core.peers.PEER_MODELS", "nsarm_core.peers.load_peer",
        "nsarm_core.pipeline", "nsarm_core.pipeline.resolve_device", "nsarm_core.pipeline.resolve_dtype",
        "nsarm_core.pipeline.load_pipeline",
    ),
    # The weights' identity of a model's outputs needs the model registry (nsarm_core.models): not for a baseline.
    "nsarm_core.batch.outputs": (
        "nsarm_core.models.checkpoint", "nsarm_core.models.checkpoint.CONFIG_NAME",
        "nsarm_core.models.checkpoint.SHA256_KEY", "nsarm_core.models.checkpoint.WEIGHTS_NAME",
        "nsarm_core.weights", "nsarm_core.weights.MODELS", "nsarm_core.weights.find_local",
    ),
    # The tile plans and blends (nsarm_core.tiling) need torch: imported only by the upscalers that tile, so
    # counting a baseline's windows (1) or wrapping nothing keeps the baseline's run torch-free.
    "nsarm_core.batch.tiled": (
        "nsarm_core.tiling", "nsarm_core.tiling.plan_tiles", "nsarm_core.tiling.pad_to_plan",
        "nsarm_core.tiling.run_tiled",
    ),
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: _module(p))
def test_library_imports_flow_one_way_and_at_module_level(path: Path) -> None:
    module = _module(path)
    imports = _imports(path)
    assert not [n for n, _ in imports if n.startswith("nsarm_cli")], "the library never imports the CLI"
    late = [n for n, inside in imports if inside and n not in LATE_IMPORTS.get(module, ())]
    assert not late, "project modules are imported at module level"
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

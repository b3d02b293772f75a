"""CLI conventions (issue 17 items 17-19): help that reads like a click tool, global flags after the command,
the interpolation baselines listed as models; and a start-up without torch for --help and the baselines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from nsarm_cli.main import app, hoist_global_flags

runner = CliRunner()

COMMANDS = [
    ["upscale"], ["degrade"], ["caption"], ["train-tokenizer"], ["train-base"], ["train-stage1"], ["train-stage2"],
    ["train-cfw"], ["export-model"], ["evaluate"], ["robustness"], ["models"], ["models", "fetch"],
]  # fmt: skip


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=lambda c: " ".join(c) or "nsarm")
def test_help_shows_no_type_after_flags_and_click_style_arguments(command: list[str]) -> None:
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output, res.output
    assert "<list[" not in res.output, res.output
    usage = next(line for line in res.output.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_list_argument_is_shown_as_inputs_dots() -> None:
    res = runner.invoke(app, ["upscale", "--help"], env={"COLUMNS": "120"})
    assert "Usage: nsarm upscale [OPTIONS] INPUTS..." in res.output
    missing = runner.invoke(app, ["upscale"])
    assert missing.exit_code == 2 and "Missing argument 'INPUTS...'" in missing.output


def test_docstring_paragraphs_wrap_at_the_terminal_not_at_source_line_breaks() -> None:
    # upscale's docstring breaks its source lines after "16-bit and" and "An image that"; the help must not.
    res = runner.invoke(app, ["upscale", "--help"], env={"COLUMNS": "200"})
    ends = [line.rstrip() for line in res.output.splitlines()]
    for source_break in ("16-bit and", "An image that", "the files"):
        assert not [e for e in ends if e.endswith(source_break)], res.output
    # the group's command list: robustness's summary is one paragraph, not cut at its source line break
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    line = next(ln for ln in top.splitlines() if "robustness" in ln)
    assert "mu_G over all methods, Deficient" in line, top


def test_hoist_global_flags() -> None:
    assert hoist_global_flags(["upscale", "x.png", "--debug"]) == ["--debug", "upscale", "x.png"]
    assert hoist_global_flags(["-v", "upscale", "x.png", "-q", "--model", "bicubic"]) == [
        "-v", "-q", "upscale", "x.png", "--model", "bicubic",
    ]  # fmt: skip
    assert hoist_global_flags(["models", "fetch", "x", "-vv"]) == ["-vv", "models", "fetch", "x"]
    # after "--" a "-q" is an input file's name
    assert hoist_global_flags(["upscale", "--", "-q"]) == ["upscale", "--", "-q"]
    assert hoist_global_flags(["--help"]) == ["--help"]


def test_no_command_declares_a_global_flag_itself() -> None:
    import typer

    group = typer.main.get_command(app)
    ctx = typer.Context(group)

    def walk(command: object, path: str) -> None:
        for param in getattr(command, "params", []):
            clash = {"-v", "--verbose", "-q", "--quiet", "--debug"} & set(getattr(param, "opts", []))
            assert not clash, f"{path} declares {clash}: hoist_global_flags would take them"
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    for name in group.list_commands(ctx):
        walk(group.get_command(ctx, name), name)


def test_global_flags_are_accepted_after_the_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "x.png")
    debug = runner.invoke(app, ["upscale", missing, "--model", "bicubic", "--debug"])
    assert "No such option" not in debug.output
    assert debug.exit_code != 0 and debug.exception is not None  # --debug took effect: the error is re-raised
    quiet = runner.invoke(app, ["upscale", missing, "--model", "bicubic", "-q"])
    assert quiet.exit_code == 2 and "input not found" in quiet.output


def _write(path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(rgb).save(path)


def _modules_after(args: list[str]) -> str:
    """The heavy modules that ``nsarm ARGS`` imported, run in a fresh interpreter."""
    code = (
        "import sys; from typer.testing import CliRunner; from nsarm_cli.main import app; "
        f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
        "print(','.join(m for m in ('torch', 'nsarm_core.pipeline', 'nsarm_core.models') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_and_help_do_not_import_torch() -> None:
    code = "import sys, nsarm_cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    assert _modules_after(["--help"]) == ""
    assert _modules_after(["upscale", "--help"]) == ""


def test_baselines_are_listed_by_models_and_named_in_the_unknown_model_error(tmp_path: Path) -> None:
    import json

    listed = runner.invoke(app, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {m["name"]: m for m in json.loads(listed.stdout)["models"]}
    for name in ("bicubic", "bilinear", "nearest", "lanczos"):
        assert rows[name]["complete"] and rows[name]["source"] == "built in"
    _write(tmp_path / "a.png")
    res = runner.invoke(
        app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "bicubik"]
    )
    assert res.exit_code == 2
    assert "bicubic, bilinear, nearest, lanczos" in res.output and "Did you mean 'bicubic'?" in res.output
    fetched = runner.invoke(app, ["models", "fetch", "lanczos"])
    assert fetched.exit_code == 0 and "built in" in fetched.output


def test_bicubic_baseline_runs_without_torch(tmp_path: Path) -> None:
    _write(tmp_path / "a.png")
    rgba = np.random.default_rng(1).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    PILImage.fromarray(rgba, mode="RGBA").save(tmp_path / "b.png")  # the alpha path too
    for model in ("bicubic", "nearest", "lanczos"):
        args = ["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", model]
        assert _modules_after([*args, "-o", str(tmp_path / model)]) == "", model
    assert (tmp_path / "bicubic" / "b.png").is_file()


@pytest.mark.parametrize("model", ["bicubic", "nearest", "lanczos"])
@pytest.mark.parametrize("scale", [4, 2, 3, 1.5])
def test_baseline_outputs_are_the_torch_paths_byte_for_byte(tmp_path: Path, model: str, scale: float) -> None:
    from nsarm_core.batch.upscale import InterpolationUpscaler, UpscaleOptions, load_upscaler, upscale_files

    class TorchPath(InterpolationUpscaler):  # overriding upscale turns the numpy path off (runs_on_arrays)
        def upscale(self, rgb, *, seed, prompt):  # type: ignore[no-untyped-def]
            return super().upscale(rgb, seed=seed, prompt=prompt)

    photos = sorted(Path(__file__).resolve().parents[1].glob("examples/photos/*.png"))[:2]
    rgba = np.random.default_rng(3).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    PILImage.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    inputs = [*photos, tmp_path / "alpha.png"]
    fast = load_upscaler(model, scale=scale)
    assert isinstance(fast, InterpolationUpscaler) and fast.runs_on_arrays
    slow = TorchPath(model, fast.native_scale)
    assert not slow.runs_on_arrays
    for name, upscaler in (("numpy", fast), ("torch", slow)):
        report = upscale_files(upscaler, inputs, tmp_path / name, UpscaleOptions(scale=scale))
        assert report.exit_code == 0
    for src in inputs:
        a = np.asarray(PILImage.open(tmp_path / "numpy" / src.name))
        b = np.asarray(PILImage.open(tmp_path / "torch" / src.name))
        assert a.shape == b.shape and np.array_equal(a, b), src.name


def test_the_upscaler_contract_loads_without_torch_and_names_every_dtype() -> None:
    code = "import sys, nsarm_core.upscaler, nsarm_core.batch.upscale; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    from nsarm_core.pipeline import DTYPES
    from nsarm_core.upscaler import DTYPE_NAMES

    assert tuple(DTYPES) == DTYPE_NAMES


@pytest.mark.parametrize(
    "argv",
    [["evaluate", "{tmp}", "--hr", "{tmp}/no-such-folder"], ["robustness", "--report"]],
    ids=["evaluate", "robustness"],
)
def test_an_error_inside_a_progress_bar_is_one_line(tmp_path: Path, argv: list[str]) -> None:
    # a transient rich bar, stopped on a non-terminal stderr, used to leave an empty line before the error
    (tmp_path / "a.png").write_bytes(b"")
    r = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert r.exit_code == 2
    assert r.output.splitlines() == [r.output.strip()], repr(r.output)
    assert r.output.startswith("Error: ")

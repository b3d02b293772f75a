"""``nsarm upscale`` feedback and control (issue 17 items 1-5, 10): progress by windows, ``-q``, ``--threads``,
``--dtype fp16`` on the CPU, ``--tile N``, one ``--device`` check for every command, sizes of skipped files,
the ``--scale < 1`` warning and the README's output folders in ``.gitignore``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.batch.tiled import TiledUpscaler, count_windows
from nsarm_core.batch.upscale import InterpolationUpscaler, UpscaleOptions, load_upscaler, upscale_files
from nsarm_core.data.io import Image, write_image
from nsarm_core.errors import ConfigError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, h: int = 20, w: int = 30, seed: int = 0) -> Path:
    write_image(path, Image(rgb=np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)))
    return path


@pytest.fixture()
def restore_threads() -> Any:
    """The commands set torch's thread count for the whole process; put it back for the next tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- 1. progress inside an image; -q ------------------------------------------------------------------------


def test_windows_are_planned_and_reported_per_image(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.png", 20, 30)
    _write(tmp_path / "in" / "b.png", 12, 12, seed=1)
    upscaler = TiledUpscaler(InterpolationUpscaler("bicubic", 4), 8)
    plans: list[list[int]] = []
    windows: list[tuple[Any, ...]] = []
    upscale_files(
        upscaler, [tmp_path / "in"], tmp_path / "o", UpscaleOptions(),
        on_plan=plans.append, on_window=lambda *a: windows.append(a),
    )  # fmt: skip
    expected = [count_windows(upscaler, 30, 20), count_windows(upscaler, 12, 12)]
    assert plans == [expected] and expected[0] > 1
    for index, total in enumerate(expected):
        mine = [(k, n) for i, _src, k, n in windows if i == index]
        assert mine == [(k, total) for k in range(1, total + 1)]


def test_progress_shows_windows_on_stderr_and_quiet_prints_nothing(tmp_path: Path) -> None:
    _write(tmp_path / "a.png")
    args = [
        "upscale",
        str(tmp_path / "a.png"),
        "-o",
        str(tmp_path / "o"),
        "--model",
        "bicubic",
        "--tile",
        "8",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    n = count_windows(TiledUpscaler(InterpolationUpscaler("bicubic", 4), 8), 30, 20)
    assert f"{n}/{n}" in res.stderr  # the windows of the run
    assert "image 1/1 a.png" in res.stderr
    assert "1 upscaled" in res.stdout
    quiet = runner.invoke(app, ["-q", *args, "--overwrite"])
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_quiet_still_names_failed_images(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = runner.invoke(
        app, ["-q", "upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", "bicubic"]
    )
    assert res.exit_code == 1 and res.stdout == ""
    assert "bad.png" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# --- 2. --threads -------------------------------------------------------------------------------------------


def _threads_at_load(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []

    def fake_load(model: str, **kwargs: Any) -> InterpolationUpscaler:
        seen.append(torch.get_num_threads())
        return InterpolationUpscaler("bicubic", 4)

    monkeypatch.setattr("nsarm_core.batch.upscale.load_upscaler", fake_load)
    return seen


def test_threads_are_set_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_threads: None
) -> None:
    seen = _threads_at_load(monkeypatch)
    _write(tmp_path / "a.png")
    torch.set_num_threads(2)
    res = runner.invoke(
        app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--threads", "1"]
    )
    assert res.exit_code == 0, res.output
    assert seen == [1]


def test_threads_default_to_the_cores_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_threads: None
) -> None:
    seen = _threads_at_load(monkeypatch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    _write(tmp_path / "a.png")
    res = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert seen == [3]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit environment setting wins over the core count
    res = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--overwrite"])
    assert res.exit_code == 0 and seen == [3, 1]


def test_threads_of_a_baseline_run_go_to_the_environment_without_importing_torch(tmp_path: Path) -> None:
    # Before the merge with the torch-free baselines: --threads imported torch to call set_num_threads.
    import subprocess
    import sys

    _write(tmp_path / "a.png")
    args = [
        "upscale",
        str(tmp_path / "a.png"),
        "-o",
        str(tmp_path / "o"),
        "--model",
        "bicubic",
        "--threads",
        "3",
    ]
    code = (
        "import os, sys; from typer.testing import CliRunner; from nsarm_cli.main import app; "
        f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules, os.environ['OMP_NUM_THREADS'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "3"]


def test_threads_help_and_bounds(tmp_path: Path) -> None:
    help_text = " ".join(runner.invoke(app, ["upscale", "--help"]).stdout.split())
    assert "--threads" in help_text and "3-5x faster" in help_text
    res = runner.invoke(app, ["upscale", str(_write(tmp_path / "a.png")), "--threads", "0"])
    assert res.exit_code == 2


# --- 3. --dtype fp16 on the CPU -------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks CUDA here")
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_fp16_on_cpu_is_refused_in_one_line(tmp_path: Path, device: str) -> None:
    _write(tmp_path / "a.png")
    res = runner.invoke(
        app,
        ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "bicubic",
         "--device", device, "--dtype", "fp16"],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "fp16" in res.stderr and "14x slower" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# --- 4. --tile N --------------------------------------------------------------------------------------------


def test_tiles_of_a_local_upscaler_give_the_untiled_image() -> None:
    rgb = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    plain = InterpolationUpscaler("bicubic", 4).upscale(rgb, seed=1, prompt=None).image
    tiled = TiledUpscaler(InterpolationUpscaler("bicubic", 4), 16).upscale(rgb, seed=1, prompt=None)
    assert tiled.settings["outer_tiles"] > 4
    diff = (tiled.image - plain).abs().max().item()
    assert diff <= 1e-6, diff  # the blend's float rounding only, as documented in batch/tiled.py


def test_tile_zero_is_no_extra_tiling_and_small_tiles_are_refused(tiny_dir: Path) -> None:
    assert isinstance(load_upscaler("bicubic", tile=0), InterpolationUpscaler)
    assert isinstance(load_upscaler("bicubic", tile=16), TiledUpscaler)
    with pytest.raises(ConfigError, match="below the native window 64"):
        load_upscaler(tiny_dir, device="cpu", dtype="fp32", tile=32)


@pytest.mark.usefixtures("one_torch_thread")
def test_nsarm_runs_in_tiles_of_n_pixels_each_cut_into_windows(tiny_dir: Path) -> None:
    # Before: every --tile other than the native window (64) was refused for NSARM models.
    upscaler = load_upscaler(tiny_dir, device="cpu", dtype="fp32", tile=64, batch_windows=1)
    rgb = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    calls: list[tuple[int, int]] = []
    result = upscaler.upscale(rgb, seed=3, prompt=None, on_tile=lambda k, n: calls.append((k, n)))
    assert result.image.shape == (1, 3, 256, 320)
    # 2 tiles of 64, each upscaled with 8 pixels of context (64x72: 2 windows of 64 each)
    assert result.settings["outer_tiles"] == 2 and result.settings["tiles"] == 2
    total = count_windows(upscaler, 80, 64)
    assert total == 4 and calls == [(k, total) for k in range(1, total + 1)]
    # Windows run in batches: the progress advances by the windows of each batch (2 per tile here), and still
    # counts every window of the image.
    batched = load_upscaler(tiny_dir, device="cpu", dtype="fp32", tile=64, batch_windows=2)
    calls.clear()
    batched.upscale(rgb, seed=3, prompt=None, on_tile=lambda k, n: calls.append((k, n)))
    assert count_windows(batched, 80, 64) == total and calls == [(2, total), (4, total)]


# --- 5. one --device option -------------------------------------------------------------------------------


def _device_commands(tmp_path: Path) -> dict[str, list[str]]:
    img = str(_write(tmp_path / "in" / "a.png"))
    hr = str(_write(tmp_path / "hr" / "a.png", 80, 120))
    return {
        "upscale": ["upscale", img, "-o", str(tmp_path / "o"), "--model", "bicubic"],
        "degrade": ["degrade", hr, str(tmp_path / "d")],
        "evaluate": ["evaluate", str(tmp_path / "in"), "--hr", str(tmp_path / "hr")],
        "caption": ["caption", img, "-o", str(tmp_path / "c.jsonl"), "--fixed"],
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["upscale", "degrade", "evaluate", "caption"])
def test_cuda_device_is_refused_in_one_line_where_there_is_no_cuda(tmp_path: Path, command: str) -> None:
    args = _device_commands(tmp_path)[command]
    res = runner.invoke(app, [*args, "--device", "cuda:1"])
    assert res.exit_code == 2, res.output
    assert "CUDA is not available" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad = runner.invoke(app, [*args, "--device", "cuda:x"])
    assert bad.exit_code == 2 and "unknown device 'cuda:x'" in bad.stderr


# --- 10. skipped sizes, --scale < 1, .gitignore ---------------------------------------------------------------


def test_skipped_rows_show_the_size(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", 6, 10)
    args = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "bicubic"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, [*args, "--json"])
    record = json.loads(again.stdout)["records"][0]
    assert record["status"] == "skipped" and record["size_in"] == [10, 6]
    table = runner.invoke(app, args).stdout
    assert "10x6" in table and "?" not in table


def test_scale_below_one_warns_that_the_model_runs_then_shrinks(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", 20, 30)
    res = runner.invoke(
        app,
        [
            "upscale",
            str(tmp_path / "a.png"),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "bicubic",
            "--scale",
            "0.5",
        ],
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.stderr.split())
    assert "smaller than the inputs" in text and "upscales x4" in text and "shrunk 8x" in text


def test_readme_output_folders_are_ignored_by_git() -> None:
    lines = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert {"/upscaled/", "/out/"} <= lines


def test_header_size_follows_exif_orientation_like_reading(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from nsarm_core.data.io import read_image, read_image_size

    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: viewers (and read_image) show it 20 wide, 30 high
    PILImage.new("RGB", (30, 20)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    image = read_image(tmp_path / "r.jpg")
    assert read_image_size(tmp_path / "r.jpg") == (image.width, image.height) == (20, 30)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert read_image_size(tmp_path / "bad.png") is None


def test_load_upscaler_refuses_an_unknown_option() -> None:
    """The options are LoadOptions' names: a typo is one ConfigError naming it, for a baseline as for a model
    (not a TypeError from deep inside the loader)."""
    from nsarm_core.batch.upscale import load_upscaler
    from nsarm_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown upscaler option\(s\) scale_factor; valid: device, dtype"):
        load_upscaler("bicubic", scale_factor=2)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="unknown upscaler option"):
        load_upscaler("nsarm-tiny", offload=True)  # type: ignore[call-arg]

"""Where ``nsarm upscale`` writes, checked before any work (issue 16 items 5-6): an output pixel budget, an
output folder that must be writable, and write errors that name the file and say the reason in words."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.batch.upscale import InterpolationUpscaler, UpscaleOptions, upscale_files
from nsarm_core.batch.write_checks import os_error_reason
from nsarm_core.data.io import Image, read_image, write_image
from nsarm_core.errors import ConfigError

runner = CliRunner()


def _write(path: Path, h: int = 6, w: int = 10, seed: int = 0) -> Path:
    write_image(path, Image(rgb=np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)))
    return path


@pytest.fixture()
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records model loads: the checks must refuse a run before any model is loaded."""
    loads: list[str] = []

    def fake_load(model: str, **kwargs: Any) -> InterpolationUpscaler:
        loads.append(model)
        return InterpolationUpscaler("bicubic", 4)

    monkeypatch.setattr("nsarm_core.batch.upscale.load_upscaler", fake_load)
    return loads


def _one_error_line(res: Any) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


# --- 16.5: an output pixel budget ---------------------------------------------------------------------------


def test_huge_scale_is_refused_before_any_work(tmp_path: Path, no_model_load: list[str]) -> None:
    src = _write(tmp_path / "in" / "big.png", 60, 80)
    _write(tmp_path / "in" / "small.png", 20, 30)  # 30000x20000 at x1000: also over
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--scale", "1000"])
    line = _one_error_line(res)
    assert str(src) in line and "80000x60000" in line and "--max-output-pixels" in line and "1 more" in line
    assert no_model_load == [] and not (tmp_path / "o").exists()


def test_output_budget_can_be_raised_or_lifted(tmp_path: Path, no_model_load: list[str]) -> None:
    _write(tmp_path / "a.png")
    args = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--scale", "8"]
    assert runner.invoke(app, [*args, "--max-output-pixels", "1000"]).exit_code == 2  # 80x48 = 3840 pixels
    res = runner.invoke(app, [*args, "--max-output-pixels", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "a.png").is_file()


def test_existing_outputs_do_not_count_against_the_budget(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.png")
    opts = UpscaleOptions(scale=4, max_output_pixels=10_000)
    upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", opts)
    tight = UpscaleOptions(scale=4, max_output_pixels=100)
    report = upscale_files(InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", tight)
    assert report.count("skipped") == 1  # nothing is written, so nothing is over budget
    with pytest.raises(ConfigError, match="over the output limit of 100"):
        upscale_files(
            InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o",
            UpscaleOptions(scale=4, max_output_pixels=100, overwrite=True),
        )  # fmt: skip


# --- 16.6: the output folder, checked once; write errors in words ----------------------------------------------


def test_output_that_is_an_existing_file_is_refused_before_any_work(
    tmp_path: Path, no_model_load: list[str]
) -> None:
    _write(tmp_path / "a.png")
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    res = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(target)])
    line = _one_error_line(res)
    assert str(target) in line and "existing file" in line
    assert no_model_load == [] and target.read_text() == "keep me"


def test_output_below_a_file_is_refused(tmp_path: Path, no_model_load: list[str]) -> None:
    _write(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    res = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "notes.txt" / "sub")])
    assert "is a file, not a folder" in _one_error_line(res) and no_model_load == []


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied")],
)
def test_unwritable_output_folder_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: list[str], code: int, words: str
) -> None:
    # Simulated: the tests may run as root, for whom chmod does not take write permission away.
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, "raw system text")

    _write(tmp_path / "a.png")
    monkeypatch.setattr("nsarm_core.batch.write_checks.tempfile.mkstemp", refuse)
    res = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")])
    line = _one_error_line(res)
    assert words in line and str(tmp_path / "o") in line and no_model_load == []


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "the disk is full (no space left on the device)"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "the file system is read-only"),
    ],
)
def test_write_errors_name_the_file_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    def fail(_fd: int) -> None:
        raise OSError(code, "raw system text")

    _write(tmp_path / "in" / "a.png")
    monkeypatch.setattr("nsarm_core.atomic.os.fsync", fail)  # the data hit the disk when the file is synced
    res = runner.invoke(
        app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", "bicubic", "--json"]
    )
    assert res.exit_code == 1
    record = json.loads(res.stdout)["records"][0]
    assert record["error"] == f"cannot write '{tmp_path / 'o' / 'a.png'}': {words}"
    assert list((tmp_path / "o").iterdir()) == []  # no temporary file left behind


def test_unknown_errno_keeps_the_system_text() -> None:
    assert os_error_reason(OSError(errno.EBUSY, "Device or resource busy")) == "Device or resource busy"


# --- the same checks in nsarm degrade -------------------------------------------------------------------------


def test_degrade_refuses_an_output_that_is_a_file_before_any_work(tmp_path: Path) -> None:
    _write(tmp_path / "hr" / "a.png", 32, 32)
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    res = runner.invoke(app, ["degrade", str(tmp_path / "hr"), str(target)])
    assert "existing file" in _one_error_line(res) and target.read_text() == "keep me"


def test_degrade_write_errors_name_the_file_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def fail(_fd: int) -> None:  # the disk is full for the image, and has room again for the manifest
        calls.append(_fd)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "raw system text")

    _write(tmp_path / "hr" / "a.png", 32, 32)
    monkeypatch.setattr("nsarm_core.atomic.os.fsync", fail)
    res = runner.invoke(
        app, ["degrade", str(tmp_path / "hr"), str(tmp_path / "d"), "--preset", "bicubic", "--json"]
    )
    assert res.exit_code == 1
    error = json.loads(res.stdout)["failures"][0]["error"]
    assert (
        error
        == f"cannot write '{tmp_path / 'd' / 'lr' / 'a.png'}': the disk is full (no space left on the device)"
    )


# --- the checks with the resume rule and -o result.png (batchA's checks merged with batchB's output names) -----


def test_existing_output_file_of_one_input_follows_the_resume_rule(
    tmp_path: Path, no_model_load: list[str]
) -> None:
    src = _write(tmp_path / "a.png")
    target = _write(tmp_path / "existing.png", 24, 40, seed=3)  # a complete image made by another tool
    before = target.read_bytes()
    args = ["upscale", str(src), "-o", str(target), "--model", "bicubic", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output  # the output file of one input: not "an existing file"
    assert json.loads(res.stdout)["totals"]["skipped"] == 1 and target.read_bytes() == before
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0 and json.loads(res.stdout)["totals"]["done"] == 1, res.output
    assert target.read_bytes() != before
    redone = target.read_bytes()
    _write(tmp_path / "in" / "b.png")
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(target), "--model", "bicubic"])
    assert "names one output file" in _one_error_line(res)  # a folder input: refused, the file kept
    assert target.read_bytes() == redone and no_model_load == ["bicubic", "bicubic"]


def test_output_file_checks_its_folder_and_the_budget_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: list[str]
) -> None:
    src = _write(tmp_path / "a.png")
    res = runner.invoke(
        app, ["upscale", str(src), "-o", str(tmp_path / "r.png"), "--max-output-pixels", "1000"]
    )  # 40x24 = 960 pixels at x4: within
    assert res.exit_code == 0 and (tmp_path / "r.png").is_file(), res.output
    (tmp_path / "r.png").unlink()
    res = runner.invoke(
        app,
        ["upscale", str(src), "-o", str(tmp_path / "r.png"), "--scale", "8", "--max-output-pixels", "1000"],
    )  # 80x48 = 3840 pixels: over
    assert "--max-output-pixels" in _one_error_line(res) and not (tmp_path / "r.png").exists()
    res = runner.invoke(
        app, ["upscale", str(src), "-o", str(tmp_path / "new" / "r.png"), "--model", "bicubic"]
    )
    assert res.exit_code == 0 and read_image(tmp_path / "new" / "r.png").width == 40, res.output

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "raw system text")

    monkeypatch.setattr("nsarm_core.batch.write_checks.tempfile.mkstemp", refuse)
    res = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "ro" / "r.png")])
    line = _one_error_line(res)
    assert f"output folder '{tmp_path / 'ro'}'" in line and "the file system is read-only" in line
    assert no_model_load == ["nsarm-tiny", "bicubic"]


def test_an_incomplete_existing_output_counts_against_the_budget(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.png")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a.png").write_bytes(b"")  # left by a killed run: made again, so it must fit
    windows: list[list[int]] = []
    with pytest.raises(ConfigError, match="over the output limit of 100"):
        upscale_files(
            InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o",
            UpscaleOptions(scale=4, max_output_pixels=100), on_plan=windows.append,
        )  # fmt: skip
    report = upscale_files(
        InterpolationUpscaler("bicubic", 4), [tmp_path / "in"], tmp_path / "o", UpscaleOptions(scale=4),
        on_plan=windows.append,
    )  # fmt: skip
    assert report.count("done") == 1 and windows == [[1]]  # planned as work, not as a kept output


def test_tile_is_part_of_the_recorded_settings(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.png", 24, 40)
    base = ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", "bicubic"]
    assert runner.invoke(app, base).exit_code == 0
    line = _one_error_line(runner.invoke(app, [*base, "--tile", "16"]))
    assert "tile None recorded, 16 now" in line and "--overwrite" in line
    assert runner.invoke(app, [*base, "--tile", "16", "--overwrite"]).exit_code == 0
    res = runner.invoke(app, [*base, "--tile", "16", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["totals"]["skipped"] == 1, res.output

"""``nsarm degrade`` end to end on tiny images (CliRunner, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.batch.degrade import image_seed
from nsarm_core.data.degrade import DegradationParams

runner = CliRunner()


def _make_inputs(root: Path) -> Path:
    src = root / "hr"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:56]
    smooth = (127 + 100 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]).repeat(3, axis=2)
    Image.fromarray(np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)).save(
        src / "a.png"
    )
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / "sub" / "b.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (35, 45), dtype=np.uint8)).save(
        src / "sub" / "gray.png"
    )  # odd size, gray
    return src


def _run(*args: str):
    return runner.invoke(app, ["degrade", *args])


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_degrade_writes_lr_sidecars_and_manifest(tmp_path):
    src = _make_inputs(tmp_path)
    out = tmp_path / "out"
    r = _run(str(src), str(out), "--seed", "7", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    assert sorted(_files(out)) == [
        "lr/a.json",
        "lr/a.png",
        "lr/sub/b.json",
        "lr/sub/b.png",
        "lr/sub/gray.json",
        "lr/sub/gray.png",
    ]
    lr = Image.open(out / "lr" / "a.png")
    assert lr.size == (14, 12) and lr.mode == "RGB"
    assert Image.open(out / "lr" / "sub" / "gray.png").size == (11, 8)  # 45x35 -> trimmed 44x32 -> /4
    side = json.loads((out / "lr" / "sub" / "b.json").read_text())
    assert side["relative_path"] == "sub/b.jpg" and side["seed"] == 7 and side["preset"] == "realesrgan"
    assert side["image_seed"] == image_seed(7, "sub/b.jpg") and side["source"].endswith("b.jpg")
    params = DegradationParams.from_dict(side["params"])
    assert params.scale == 4 and len(params.stages) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 3 and manifest["config"]["name"] == "realesrgan"
    assert {e["status"] for e in manifest["images"]} == {"done"}


def test_crop_writes_pairs_side_by_side(tmp_path):
    src = _make_inputs(tmp_path)
    out = tmp_path / "out"
    r = _run(str(src), str(out), "--crop", "32", "--scale", "2", "--preset", "light", "--hr-usm")
    assert r.exit_code == 0, r.output
    for name in ("a", "sub/b", "sub/gray"):
        assert Image.open(out / "hr" / f"{name}.png").size == (32, 32)
        assert Image.open(out / "lr" / f"{name}.png").size == (16, 16)
        side = json.loads((out / "lr" / f"{name}.json").read_text())
        assert side["crop"]["size"] == 32 and side["hr"] == f"hr/{name}.png" and side["hr_usm"]
    r = _run(str(src), str(tmp_path / "o2"), "--crop", "30", "--scale", "4")
    assert r.exit_code == 2 and "multiple of --scale" in r.output


def test_corrupt_file_is_reported_others_done(tmp_path):
    src = _make_inputs(tmp_path)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    r = _run(str(src), str(out), "--json")
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert (
        summary["failures"][0]["source"].endswith("broken.png")
        and "broken.png" in summary["failures"][0]["error"]
    )
    assert (out / "lr" / "a.png").exists() and not (out / "lr" / "broken.png").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["status"] for e in manifest["images"] if e["source"].endswith("broken.png")] == ["failed"]


def test_skip_existing_and_overwrite(tmp_path):
    src = _make_inputs(tmp_path)
    out = tmp_path / "out"
    assert _run(str(src), str(out)).exit_code == 0
    before = _files(out)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out / "lr" / "a.png")  # complete, so it is kept
    sentinel = (out / "lr" / "a.png").read_bytes()
    r = _run(str(src), str(out), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["counts"] == {"done": 0, "skipped": 3, "failed": 0}
    assert (out / "lr" / "a.png").read_bytes() == sentinel
    (out / "lr" / "sub" / "b.json").unlink()  # an incomplete output is redone
    r = _run(str(src), str(out), "--json")
    assert json.loads(r.stdout)["counts"] == {"done": 1, "skipped": 2, "failed": 0}
    r = _run(str(src), str(out), "--overwrite", "--json")
    assert json.loads(r.stdout)["counts"]["done"] == 3
    assert _files(out) == before


def test_same_seed_is_byte_identical_and_order_independent(tmp_path):
    src = _make_inputs(tmp_path)
    assert _run(str(src), str(tmp_path / "o1"), "--seed", "5").exit_code == 0
    assert _run(str(src), str(tmp_path / "o2"), "--seed", "5").exit_code == 0
    first = _files(tmp_path / "o1")
    assert first == _files(tmp_path / "o2")
    # One image alone (different file set) gives the same bytes: its seed depends only on its path.
    alone = tmp_path / "alone"
    (alone / "sub").mkdir(parents=True)
    (alone / "sub" / "b.jpg").write_bytes((src / "sub" / "b.jpg").read_bytes())
    assert _run(str(alone), str(tmp_path / "o3"), "--seed", "5").exit_code == 0
    assert (tmp_path / "o3" / "lr" / "sub" / "b.png").read_bytes() == first["lr/sub/b.png"]
    assert _run(str(src), str(tmp_path / "o4"), "--seed", "6").exit_code == 0
    assert _files(tmp_path / "o4")["lr/a.png"] != first["lr/a.png"]


def test_config_file_and_bad_options(tmp_path):
    src = _make_inputs(tmp_path)
    cfg = tmp_path / "deg.yaml"
    cfg.write_text("jpeg_range2: [94, 95]\nfinal_sinc_prob: 0\n")
    out = tmp_path / "out"
    assert _run(str(src), str(out), "--config", str(cfg)).exit_code == 0
    side = json.loads((out / "lr" / "a.json").read_text())
    assert (
        side["params"]["final"]["jpeg_quality"] >= 94 and side["params"]["final"]["sinc"]["kind"] == "pulse"
    )
    assert side["config"] == str(cfg)
    cfg.write_text("noise_rang: [1, 2]\n")
    r = _run(str(src), str(tmp_path / "o2"), "--config", str(cfg))
    assert r.exit_code == 2 and "noise_range" in r.output
    r = _run(str(src), str(tmp_path / "o3"), "--preset", "realesrgn")
    assert r.exit_code == 2 and "Did you mean 'realesrgan'" in r.output
    r = _run(str(tmp_path / "nope"), str(tmp_path / "o4"))
    assert r.exit_code == 2 and "not found" in r.output


@pytest.mark.parametrize("scale", [3])
def test_scale_option(tmp_path, scale):
    src = _make_inputs(tmp_path)
    out = tmp_path / "out"
    assert _run(str(src), str(out), "--scale", str(scale), "--preset", "bicubic", "--save-hr").exit_code == 0
    assert Image.open(out / "lr" / "a.png").size == (56 // 3, 48 // 3)
    assert Image.open(out / "hr" / "a.png").size == (56 // 3 * 3, 48 // 3 * 3)


def test_same_stem_sources_are_collisions_not_skips(tmp_path):
    src = tmp_path / "hr"
    src.mkdir()
    rng = np.random.default_rng(0)
    for ext in ("bmp", "tiff", "webp"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / f"photo.{ext}")
    res = _run(str(src), str(tmp_path / "out"), "-p", "bicubic", "--json")
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert data["counts"] == {"done": 1, "skipped": 0, "failed": 2}
    assert all("is also the output of" in f["error"] and "photo.bmp" in f["error"] for f in data["failures"])


def test_only_complete_outputs_count_as_done(tmp_path):
    src = _make_inputs(tmp_path)
    out = tmp_path / "out"
    assert _run(str(src), str(out), "-p", "bicubic").exit_code == 0
    (out / "lr" / "a.png").write_bytes(b"")  # emptied
    good = (out / "lr" / "sub" / "b.png").read_bytes()
    (out / "lr" / "sub" / "b.png").write_bytes(good[: len(good) // 2])  # cut short
    (out / "lr" / "sub" / "gray.png").unlink()
    (out / "lr" / "sub" / "gray.png").mkdir()  # a folder in the way
    res = _run(str(src), str(out), "-p", "bicubic", "--json")
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert data["counts"] == {"done": 2, "skipped": 0, "failed": 1}
    assert "gray.png" in data["failures"][0]["error"] and "folder" in data["failures"][0]["error"]
    for name in ("a.png", "sub/b.png"):
        with Image.open(out / "lr" / name) as im:
            im.load()

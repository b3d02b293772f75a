"""Training datasets: shapes and ranges, per-(seed, epoch, index) determinism, captions, LR/HR pairing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nsarm_core.data.captions import load_captions
from nsarm_core.data.datasets import HRFolderDataset, PairedFolderDataset
from nsarm_core.errors import ConfigError, InputError


def _save(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


@pytest.fixture()
def hr_folder(tmp_path: Path) -> Path:
    root = tmp_path / "hr"
    _save(root / "a.png", 48, 40, 0)
    _save(root / "nested" / "b.png", 80, 96, 1)
    _save(root / "c.jpg", 24, 20, 2)  # smaller than the crop: upscaled to cover it
    return root


def test_hr_folder_shapes_ranges_and_recursion(hr_folder: Path) -> None:
    ds = HRFolderDataset(hr_folder, (32, 32), "light", scale=4, seed=0)
    assert len(ds) == 3 and any("nested" in str(p) for p in ds.files)
    for i in range(len(ds)):
        s = ds[i]
        assert s["hr"].shape == (3, 32, 32) and s["lr"].shape == (3, 8, 8)
        assert s["hr"].dtype == torch.float32 and s["lr"].dtype == torch.float32
        for key in ("hr", "lr"):
            assert s[key].min() >= -1.0 and s[key].max() <= 1.0
        assert s["caption"] == "" and s["index"] == i


def test_hr_folder_is_seeded_per_epoch_and_index(hr_folder: Path) -> None:
    ds = HRFolderDataset(hr_folder, (32, 32), "light", scale=4, seed=7)
    a, b = ds[1], ds[1]
    assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    ds.set_epoch(1)
    c = ds[1]
    assert not torch.equal(a["lr"], c["lr"])
    other = HRFolderDataset(hr_folder, (32, 32), "light", scale=4, seed=8)
    assert not torch.equal(a["lr"], other[1]["lr"])


def test_workers_give_the_same_batches(hr_folder: Path) -> None:
    ds = HRFolderDataset(hr_folder, (16, 16), "bicubic", scale=2, seed=3)
    ds.set_epoch(2)
    serial = list(DataLoader(ds, batch_size=3, num_workers=0))[0]
    parallel = list(DataLoader(ds, batch_size=3, num_workers=2))[0]
    assert torch.equal(serial["hr"], parallel["hr"]) and torch.equal(serial["lr"], parallel["lr"])


def test_preloaded_images_give_the_same_samples_and_stay_unchanged(hr_folder: Path) -> None:
    from nsarm_core.train.tokenizer import ImageCropDataset

    disk = HRFolderDataset(hr_folder, (32, 32), "realesrgan", scale=4, seed=5)
    held = HRFolderDataset(hr_folder, (32, 32), "realesrgan", scale=4, seed=5, preload=True)
    cached = {p: a.copy() for p, a in held.images._cache.items()}  # type: ignore[union-attr]
    for epoch in (0, 1):
        disk.set_epoch(epoch)
        held.set_epoch(epoch)
        for i in range(len(disk)):
            a, b = disk[i], held[i]
            assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    # making samples (crops, flips, degradations) never writes into the held arrays
    assert all(np.array_equal(cached[p], a) for p, a in held.images._cache.items())  # type: ignore[union-attr]
    crops = ImageCropDataset([hr_folder], (16, 16), seed=2)
    crops_held = ImageCropDataset([hr_folder], (16, 16), seed=2, preload=True)
    assert all(torch.equal(crops[i]["image"], crops_held[i]["image"]) for i in range(len(crops)))


def test_center_crop_is_the_cover_resize(tmp_path: Path) -> None:
    # A 32x64 image, centre mode, 32x32 target: cover scale 1, so the crop is exactly the middle columns.
    arr = _save(tmp_path / "hr" / "x.png", 32, 64, 5)
    ds = HRFolderDataset(tmp_path / "hr", (32, 32), "bicubic", scale=2, crop="center", sharpened_target=False)
    hr = ds[0]["hr"]
    expected = torch.from_numpy(arr[:, 16:48].astype(np.float32) / 255.0).permute(2, 0, 1) * 2 - 1
    assert torch.allclose(hr, expected, atol=1e-6)


def test_captions_jsonl_sidecar_default_and_dropout(hr_folder: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "caps.jsonl"
    records = [
        {"image_path": str(hr_folder / "a.png"), "long_caption": "caption of a"},
        # the official files carry foreign absolute paths: matched by file name
        {"image_path": "/somewhere/else/b.png", "caption": "caption of b"},
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (hr_folder / "c.txt").write_text("sidecar of c\n")
    ds = HRFolderDataset(hr_folder, (16, 16), "bicubic", scale=2, captions=jsonl, default_caption="fixed")
    got = {Path(ds[i]["path"]).name: ds[i]["caption"] for i in range(len(ds))}
    assert got == {"a.png": "caption of a", "b.png": "caption of b", "c.jpg": "sidecar of c"}
    (hr_folder / "c.txt").unlink()
    ds = HRFolderDataset(hr_folder, (16, 16), "bicubic", scale=2, captions=jsonl, default_caption="fixed")
    assert {ds[i]["caption"] for i in range(3)} == {"caption of a", "caption of b", "fixed"}
    dropped = HRFolderDataset(hr_folder, (16, 16), "bicubic", scale=2, captions=jsonl, caption_dropout=1.0)
    assert {dropped[i]["caption"] for i in range(3)} == {""}


def test_caption_loader_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_path": "a.png", "long_caption": "x"}\nnot json\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        load_captions(bad)
    bad.write_text('{"long_caption": "x"}\n')
    with pytest.raises(InputError, match="image_path"):
        load_captions(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_captions(tmp_path / "missing.jsonl")
    good = tmp_path / "d" / "g.jsonl"
    good.parent.mkdir()
    good.write_text('{"image_path": "rel/a.png", "text": "t"}\n')
    assert load_captions(good.parent).lookup(tmp_path / "d" / "rel" / "a.png") == "t"  # relative to the JSONL


def test_bad_hr_config(hr_folder: Path) -> None:
    with pytest.raises(ConfigError, match="divisible"):
        HRFolderDataset(hr_folder, (30, 32), "bicubic", scale=4)
    with pytest.raises(ConfigError, match="realesrgan"):
        HRFolderDataset(hr_folder, (32, 32), "realesrgn", scale=4)
    with pytest.raises(InputError):
        HRFolderDataset(hr_folder / "missing", (32, 32), "bicubic", scale=4)


def _paired(tmp_path: Path) -> tuple[Path, Path]:
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    for i, (h, w) in enumerate([(48, 64), (40, 40)]):
        hr = _save(hr_dir / "s" / f"p{i}.png", h, w, 10 + i).astype(np.float32)
        lr = hr.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3))  # exact 4x box downscale
        (lr_dir / "s").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(lr).astype(np.uint8)).save(lr_dir / "s" / f"p{i}.png")
    return lr_dir, hr_dir


def test_paired_crops_are_aligned(tmp_path: Path) -> None:
    lr_dir, hr_dir = _paired(tmp_path)
    ds = PairedFolderDataset(lr_dir, hr_dir, scale=4, pixel_size=(32, 32), seed=1)
    assert len(ds) == 2
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(2):
            s = ds[i]
            assert s["hr"].shape == (3, 32, 32) and s["lr"].shape == (3, 8, 8)
            box = (s["hr"] + 1) / 2 * 255
            down = box.reshape(3, 8, 4, 8, 4).mean(dim=(2, 4))
            assert torch.allclose(down.round(), (s["lr"] + 1) / 2 * 255, atol=0.51)
    whole = PairedFolderDataset(lr_dir, hr_dir, scale=4)[0]
    assert whole["hr"].shape == (3, 48, 64) and whole["lr"].shape == (3, 12, 16)


def test_paired_mismatches_raise(tmp_path: Path) -> None:
    lr_dir, hr_dir = _paired(tmp_path)
    with pytest.raises(InputError, match="scale 2"):
        PairedFolderDataset(lr_dir, hr_dir, scale=2)[0]
    _save(hr_dir / "extra.png", 8, 8, 0)
    with pytest.raises(InputError, match="do not pair up"):
        PairedFolderDataset(lr_dir, hr_dir, scale=4)

"""Training datasets: HR folders degraded on the fly, and pre-made LR/HR pairs, with optional captions.

Spec: docs/architecture.md E.4 (NSARM's ``T2IIterableDataset_deg``: HR images at the schedule's pixel
size, LANCZOS cover-resize + crop, mapped to [-1, 1], with ``long_caption`` text and a synthetic LR), E.5 (the
Real-ESRGAN degradation, here :mod:`nsarm_core.data.degrade`), E.6 (caption JSONL: ``image_path``,
``long_caption``) and C.10 (Infinity's crops).

Reproducibility: every random choice of sample ``i`` in epoch ``e`` (crop, scale, flip, caption drop, the
degradation parameters and their noise seeds) comes from ``numpy.random.default_rng([seed, e, i])``, so a sample
is the same whichever worker process makes it and however many there are. The training loop calls
``set_epoch(e)`` before each epoch.

Shape legend (one sample; the DataLoader adds the batch axis):
    hr   [3, H, W]  float32 in [-1, 1]   H, W = ``pixel_size`` (the VAE's input range, A.3)
    lr   [3, h, w]  float32 in [-1, 1]   h, w = H // scale, W // scale
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset

from nsarm_core.data.captions import load_captions
from nsarm_core.data.degrade import DegradationConfig, apply_pair, get_preset, sample_params
from nsarm_core.data.files import collect_images
from nsarm_core.data.io import read_image
from nsarm_core.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

CropMode = Literal["random", "center"]
# ----------------------------------------------------------------------------------------------------------
# Pixel helpers
# ----------------------------------------------------------------------------------------------------------


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The sample's only source of randomness (see the module docstring)."""
    return np.random.default_rng([seed, epoch, index])


def _resize_box(rgb: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """LANCZOS-resample the region ``box = (x0, y0, x1, y1)`` of ``rgb`` [H, W, 3] to ``size = (h, w)``.

    Per channel in Pillow's float mode, so 16-bit sources keep their precision (C.10: Infinity uses LANCZOS).
    """
    h, w = size
    x0, y0, x1, y1 = box
    if (x1 - x0, y1 - y0) == (w, h) and float(x0).is_integer() and float(y0).is_integer():
        return rgb[int(y0) : int(y0) + h, int(x0) : int(x0) + w]  # a plain crop: no resampling
    chans = [
        np.asarray(
            PILImage.fromarray(np.ascontiguousarray(rgb[..., c])).resize(
                (w, h), PILImage.Resampling.LANCZOS, box=box
            )
        )
        for c in range(3)
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0)


def _to_chw(rgb: np.ndarray) -> torch.Tensor:
    """[H, W, 3] in [0, 1] -> [3, H, W] float32 (contiguous copy)."""
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32).transpose(2, 0, 1).copy())


class ImageStore:
    """Decoded training images by path, read from disk on each use or held in memory (``preload``).

    Small photo sets are read again for every crop otherwise: on 2 CPU cores decoding one ~1 MP PNG costs
    ~25 ms, two thirds of making a 128 px tokenizer sample. Preloading decodes each file once in the process
    that builds the dataset (forked DataLoader workers share those pages), at ``H*W*3`` float32 bytes per
    image; use it when the set fits in memory.
    """

    def __init__(self, files: Sequence[Path], preload: bool = False) -> None:
        self.files = list(files)
        self._cache: dict[Path, np.ndarray] | None = None
        if preload:
            self._cache = {p: read_image(p).rgb for p in self.files}
            mib = sum(a.nbytes for a in self._cache.values()) / 2**20
            logger.info("preloaded %d training images (%.0f MiB)", len(self._cache), mib)

    def rgb(self, path: Path) -> np.ndarray:
        """The image ``[H, W, 3]`` float32 in [0, 1] (treat it as read-only: it may be the cached array)."""
        if self._cache is not None:
            return self._cache[path]
        return read_image(path).rgb


def _check_size(pixel_size: Sequence[int], scale: int) -> tuple[int, int]:
    if len(pixel_size) != 2 or min(pixel_size) < 1:
        raise ConfigError(f"pixel_size must be (height, width) with positive values, got {tuple(pixel_size)}")
    h, w = int(pixel_size[0]), int(pixel_size[1])
    if h % scale or w % scale:
        raise ConfigError(
            f"pixel_size {(h, w)} must be divisible by scale {scale} so the LR size is an integer"
        )
    return h, w


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


class HRFolderDataset(Dataset):
    """HR images from folders (recursive), cropped to ``pixel_size`` and degraded on the fly into LR.

    Crop: the image is scaled by ``s`` with LANCZOS and a ``pixel_size`` window is cut. ``crop="center"`` is
    Infinity's (E.4): ``s`` = the smallest factor that covers ``pixel_size``, centre window. ``crop="random"``
    draws ``s`` uniformly between that cover factor and 1 (native resolution; never below cover), a random
    window and, with ``hflip``, a horizontal flip. The LR comes from ``degrade.apply_pair``, whose HR target (the
    USM-sharpened HR when the preset has ``gt_usm``, as in Real-ESRNet) is returned as ``hr`` unless
    ``sharpened_target=False``.

    Args:
        roots: folder(s), files or glob patterns of HR images (see ``files.collect_images``).
        pixel_size: ``(H, W)`` of the HR crop (the scale schedule's pixel size, e.g. (1024, 1024)).
        degradation: a degradation preset name ("realesrgan", "light", "bicubic") or a ``DegradationConfig``, or
            a sequence of them: a mixture, one drawn per sample (so that clean inputs are not all treated as
            noisy ones).
        degradation_weights: the mixture's probabilities (normalised; default: equal).
        scale: integer SR factor; the LR is ``(H // scale, W // scale)``.
        seed: base seed of all per-sample randomness.
        captions: JSONL file/folder or ``{path: caption}``; sidecar ``.txt`` files are used otherwise.
        default_caption: caption of images without one (NSARM's fixed prompt, or "").
        caption_dropout: probability of replacing the caption by "" (classifier-free-guidance training, C.10).
        crop: "random" or "center" (see above).
        hflip: random horizontal flips in "random" mode.
        sharpened_target: return the degradation's (USM-sharpened) HR target rather than the plain crop.
        preload: decode every image once and keep it in memory (:class:`ImageStore`).
    """

    def __init__(
        self,
        roots: str | Path | Sequence[str | Path],
        pixel_size: Sequence[int],
        degradation: str | DegradationConfig | Sequence[str | DegradationConfig] = "realesrgan",
        scale: int = 4,
        seed: int = 0,
        captions: str | Path | Mapping[str, str] | None = None,
        *,
        degradation_weights: Sequence[float] | None = None,
        default_caption: str = "",
        caption_dropout: float = 0.0,
        crop: CropMode = "random",
        hflip: bool = True,
        sharpened_target: bool = True,
        preload: bool = False,
    ) -> None:
        if int(scale) != scale or scale < 1:
            raise ConfigError(f"scale must be a positive integer, got {scale!r}")
        if crop not in ("random", "center"):
            raise ConfigError(f"crop must be 'random' or 'center', got {crop!r}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ConfigError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        self.scale = int(scale)
        self.pixel_size = _check_size(pixel_size, self.scale)
        self.degradations, self.degradation_weights = degradation_mixture(degradation, degradation_weights)
        self.degradation = self.degradations[0]
        self.files = collect_images(_as_list(roots), recursive=True)
        self.images = ImageStore(self.files, preload)
        self.captions = load_captions(captions, sidecar=True)
        self.default_caption = default_caption
        self.caption_dropout = caption_dropout
        self.crop = crop
        self.hflip = hflip
        self.sharpened_target = sharpened_target
        self.seed = int(seed)
        self.epoch = 0
        missing = sum(self.captions.lookup(p) is None for p in self.files) if captions is not None else 0
        if missing:
            logger.warning(
                "%d of %d images have no caption; they use %r", missing, len(self.files), default_caption
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        rng = _rng(self.seed, self.epoch, index)
        rgb = self.images.rgb(path)
        hr = _to_chw(_crop_resize(rgb, self.pixel_size, self.crop, self.hflip, rng, path))
        which = 0
        if len(self.degradations) > 1:
            which = int(rng.choice(len(self.degradations), p=self.degradation_weights))
        params = sample_params(self.degradations[which], self.scale, rng)
        target, lr = apply_pair(hr[None], params)
        if not self.sharpened_target:
            target = hr[None, :, : lr.shape[-2] * self.scale, : lr.shape[-1] * self.scale]
        return {
            "hr": target[0] * 2.0 - 1.0,
            "lr": lr[0] * 2.0 - 1.0,
            "caption": _caption(self.captions.lookup(path), self.default_caption, self.caption_dropout, rng),
            "index": index,
            "path": str(path),
            "degradation": which,
        }


def degradation_mixture(
    degradation: str | DegradationConfig | Sequence[str | DegradationConfig],
    weights: Sequence[float] | None = None,
) -> tuple[list[DegradationConfig], np.ndarray]:
    """The configs and normalised probabilities of a degradation (one preset/config, or a mixture of them)."""
    items = [degradation] if isinstance(degradation, (str, DegradationConfig)) else list(degradation)
    if not items:
        raise ConfigError("the degradation mixture is empty; give at least one preset (e.g. realesrgan)")
    configs = [get_preset(d) if isinstance(d, str) else d for d in items]
    w = (
        np.ones(len(configs))
        if weights is None
        else np.asarray([float(x) for x in weights], dtype=np.float64)
    )
    if w.shape != (len(configs),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(
            f"degradation weights must be {len(configs)} non-negative numbers with a positive sum, got {weights!r}"
        )
    return configs, w / w.sum()


class PairedFolderDataset(Dataset):
    """Pre-made LR/HR pairs: files matched by their path relative to each folder, without the suffix.

    Each HR must be ``scale`` times its LR (an HR up to ``scale - 1`` pixels larger is cropped to fit). With
    ``pixel_size`` an aligned random (or centre) crop of ``pixel_size`` HR pixels is cut, plus a shared
    horizontal flip in random mode; without it the whole images are returned (batch them only when they share a
    size). Captions are looked up by the LR path first (NSARM captions the LR image, E.6), then the HR path.

    Args:
        lr_dir, hr_dir: the two folders (searched recursively).
        scale: integer SR factor.
        pixel_size: HR crop ``(H, W)``, or ``None`` for whole images.
        seed: base seed of crops and flips.
        captions: JSONL file/folder or ``{path: caption}``; sidecar ``.txt`` files are used otherwise.
        default_caption, caption_dropout, crop, hflip: as in :class:`HRFolderDataset`.
    """

    def __init__(
        self,
        lr_dir: str | Path,
        hr_dir: str | Path,
        scale: int = 4,
        pixel_size: Sequence[int] | None = None,
        seed: int = 0,
        captions: str | Path | Mapping[str, str] | None = None,
        *,
        default_caption: str = "",
        caption_dropout: float = 0.0,
        crop: CropMode = "random",
        hflip: bool = True,
    ) -> None:
        if int(scale) != scale or scale < 1:
            raise ConfigError(f"scale must be a positive integer, got {scale!r}")
        self.scale = int(scale)
        self.pixel_size = _check_size(pixel_size, self.scale) if pixel_size is not None else None
        self.pairs = _match_pairs(Path(lr_dir), Path(hr_dir))
        self.captions = load_captions(captions, sidecar=True)
        self.default_caption = default_caption
        self.caption_dropout = caption_dropout
        self.crop = crop
        self.hflip = hflip
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        lr_path, hr_path = self.pairs[index]
        rng = _rng(self.seed, self.epoch, index)
        lr = read_image(lr_path).rgb
        hr = read_image(hr_path).rgb
        s = self.scale
        (h, w), (big_h, big_w) = lr.shape[:2], hr.shape[:2]
        if not (h * s <= big_h < (h + 1) * s and w * s <= big_w < (w + 1) * s):
            raise InputError(
                f"pair {lr_path} ({w}x{h}) / {hr_path} ({big_w}x{big_h}) does not match scale {s}: the HR must be "
                f"{w * s}x{h * s}; check --scale or the folders"
            )
        hr = hr[: h * s, : w * s]
        if self.pixel_size is not None:
            ph, pw = self.pixel_size[0] // s, self.pixel_size[1] // s
            if h < ph or w < pw:
                raise InputError(f"LR image {lr_path} ({w}x{h}) is smaller than the LR crop {pw}x{ph}")
            if self.crop == "random":
                y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            else:
                y, x = (h - ph) // 2, (w - pw) // 2
            lr = lr[y : y + ph, x : x + pw]
            hr = hr[y * s : (y + ph) * s, x * s : (x + pw) * s]
        if self.crop == "random" and self.hflip and rng.random() < 0.5:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        caption = self.captions.lookup(lr_path)
        if caption is None:
            caption = self.captions.lookup(hr_path)
        return {
            "hr": _to_chw(hr) * 2.0 - 1.0,
            "lr": _to_chw(lr) * 2.0 - 1.0,
            "caption": _caption(caption, self.default_caption, self.caption_dropout, rng),
            "index": index,
            "path": str(hr_path),
        }


# ----------------------------------------------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------------------------------------------


def _as_list(roots: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [roots] if isinstance(roots, (str, Path)) else list(roots)


def _caption(found: str | None, default: str, dropout: float, rng: np.random.Generator) -> str:
    # Always draw, so the stream of later draws does not depend on whether a caption exists.
    drop = rng.random() < dropout
    return "" if drop else (found if found is not None else default)


def _crop_resize(
    rgb: np.ndarray, size: tuple[int, int], crop: CropMode, hflip: bool, rng: np.random.Generator, path: Path
) -> np.ndarray:
    """Scale + crop ``rgb`` [H, W, 3] to ``size`` (see :class:`HRFolderDataset`)."""
    th, tw = size
    sh, sw = rgb.shape[:2]
    cover = max(th / sh, tw / sw)  # the smallest scale at which the image covers the target
    if crop == "center":
        s = cover
    else:
        s = cover if cover >= 1.0 else float(rng.uniform(cover, 1.0))
    # The window in source pixels: the target size divided by the scale, clamped to the image.
    bw, bh = min(sw, tw / s), min(sh, th / s)
    if crop == "center":
        x0, y0 = (sw - bw) / 2, (sh - bh) / 2
    else:
        x0, y0 = float(rng.uniform(0, sw - bw)), float(rng.uniform(0, sh - bh))
    if abs(s - 1.0) < 1e-9:  # native resolution: snap to whole pixels, a plain crop (no sub-pixel shift)
        x0, y0 = float(int(x0)), float(int(y0))
    out = _resize_box(rgb, (x0, y0, x0 + bw, y0 + bh), (th, tw))
    if crop == "random" and hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    if out.shape[:2] != (th, tw):
        raise AssertionError(f"crop of {path} gave {out.shape[:2]}, expected {(th, tw)}")
    return out


def _match_pairs(lr_dir: Path, hr_dir: Path) -> list[tuple[Path, Path]]:
    for d, what in ((lr_dir, "LR"), (hr_dir, "HR")):
        if not d.is_dir():
            raise InputError(f"{what} folder {d} does not exist")

    def keyed(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root).with_suffix("")): p for p in collect_images([root], recursive=True)}

    lrs, hrs = keyed(lr_dir), keyed(hr_dir)
    only_lr, only_hr = sorted(set(lrs) - set(hrs)), sorted(set(hrs) - set(lrs))
    if only_lr or only_hr:
        raise InputError(
            f"LR folder {lr_dir} and HR folder {hr_dir} do not pair up by file name: "
            f"{len(only_lr)} LR without HR (e.g. {only_lr[:3]}), {len(only_hr)} HR without LR (e.g. {only_hr[:3]})"
        )
    return [(lrs[k], hrs[k]) for k in sorted(lrs)]

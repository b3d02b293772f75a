"""Helpers for the official-implementation parity fixtures in ../shared/parity (see its README).

``sinfill`` reproduces the deterministic weight formula the fixtures were generated with; the fill
class of each key is read from the manifest (``sinfill-v1`` and ``sinfill-v2`` both record it).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from nsarm_core.color_fix import adaptive_instance_normalization, wavelet_reconstruction


def fill_values(key: str, shape: tuple[int, ...], fill: str) -> np.ndarray:
    """The fixture weight formula for one parameter (float32, row-major)."""
    n = int(np.prod(shape)) if len(shape) else 1
    k = zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF
    base = np.sin((np.arange(n, dtype=np.float64) + 1.0) * (0.1 + (k % 1000) / 1000.0) + float(k % 7))
    if fill == "matrix":
        v = base * (1.0 / math.sqrt(n / shape[0]))
    elif fill == "norm":
        v = 1.0 + 0.1 * base
    elif fill == "other":
        v = 0.02 * base
    else:
        raise ValueError(f"unknown fill class {fill!r}")
    return v.astype(np.float32).reshape(shape)


def load_manifest(parity_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((parity_dir / f"{name}.json").read_text())


def load_tensors(parity_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(parity_dir / f"{name}.safetensors"))


def official_state_dict(
    manifest: dict[str, Any], section: str = "state_dict", *, include: Callable[[str], bool] | None = None
) -> dict[str, torch.Tensor]:
    """Build the official-keyed state dict of a fixture: params filled, buffers from the manifest.

    Also checks each filled tensor against the manifest's recorded ``sum``/``first`` values, so a
    mistake in the formula shows up here and not as a confusing parity failure later. ``include`` selects keys
    (filling the 385M-parameter map network takes a while; tests that do not need it skip it).
    """
    out: dict[str, torch.Tensor] = {}
    for key, entry in manifest[section].items():
        if include is not None and not include(key):
            continue
        shape = tuple(entry["shape"])
        if entry["kind"] == "param":
            values = fill_values(key, shape, entry["fill"])
            if "sum" in entry:
                np.testing.assert_allclose(
                    values.astype(np.float64).sum(), entry["sum"], rtol=1e-5, atol=1e-5
                )
            if "first" in entry:
                np.testing.assert_allclose(
                    values.reshape(-1)[: len(entry["first"])], entry["first"], rtol=1e-6, atol=1e-7
                )
            out[key] = torch.from_numpy(values)
        else:
            dtype = getattr(torch, entry["dtype"].replace("torch.", ""))
            if "value" in entry:
                out[key] = torch.tensor(entry["value"], dtype=dtype).reshape(shape)
            else:
                out[key] = torch.zeros(shape, dtype=dtype)
    return out


# -----------------------------------------------------------------------------------------------------------
# PIL-level semantics of the official color_adjust (uint8 round trips), to check the float colour fix against
# -----------------------------------------------------------------------------------------------------------


def _to_tensor(img_u8: np.ndarray) -> Tensor:
    # torchvision ToTensor: HWC uint8 -> CHW float32 / 255
    return torch.from_numpy(np.array(img_u8, copy=True)).permute(2, 0, 1).float().div(255.0)[None]


def _to_u8(x: Tensor) -> np.ndarray:
    # torchvision ToPILImage on a float tensor: (x * 255).byte() -> truncation toward zero, not rounding
    return x[0].clamp(0.0, 1.0).mul(255.0).to(torch.uint8).permute(1, 2, 0).numpy()


def _as_rgb_u8(img: object, name: str) -> np.ndarray:
    from PIL import Image

    if isinstance(img, Image.Image):
        img = np.array(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"color_adjust_pil: {name} must be an HxWx3 uint8 array or PIL image, got {arr.dtype} {arr.shape}"
        )
    return arr


def resize_lr_like_official(lr_u8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWx3 uint8 LR to ``size = (H, W)`` with Pillow's default resample (bicubic for RGB)."""
    from PIL import Image

    h, w = size
    lr = Image.fromarray(lr_u8)
    if lr.size == (w, h):
        return np.array(lr)  # the official resize is then the identity as well
    return np.array(lr.resize((w, h), Image.Resampling.BICUBIC))


def color_adjust_pil(sr_u8: object, lr_u8: object, adain: bool = True, wavelet: bool = True) -> np.ndarray:
    """NSARM's ``color_adjust`` with its exact uint8 semantics.

    The LR is resized to the SR size with Pillow's default bicubic; AdaIN and then the wavelet fix are applied,
    each as a PIL round trip (``ToTensor`` -> fix -> clamp -> ``ToPILImage``, which truncates to uint8).

    Args:
        sr_u8: SR image, HxWx3 uint8 (numpy array or PIL image).
        lr_u8: LR image, hxwx3 uint8 (any size; resized to HxW).
        adain: apply the AdaIN step (official default on).
        wavelet: apply the wavelet step (official default on).

    Returns:
        HxWx3 uint8 numpy array.
    """
    sr = _as_rgb_u8(sr_u8, "sr_u8")
    lr = resize_lr_like_official(_as_rgb_u8(lr_u8, "lr_u8"), sr.shape[:2])
    lr_t = _to_tensor(lr)
    if adain:
        sr = _to_u8(adaptive_instance_normalization(_to_tensor(sr), lr_t))
    if wavelet:
        sr = _to_u8(wavelet_reconstruction(_to_tensor(sr), lr_t))
    return np.array(sr)

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

"""What the speed benchmarks share: the test image, the CPU clock, and how a result record is printed and saved.

Imported as ``from _common import ...``: the benchmarks run as scripts (``python benchmarks/speed.py``), which
puts this folder on ``sys.path``.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def lr_image(size: int) -> torch.Tensor:
    """``[1, 3, size, size]`` in [0, 1]: the astronaut photo downscaled x4, mirrored to fill ``size``."""
    from PIL import Image

    photo = Image.open(ROOT / "examples" / "photos" / "astronaut.png").convert("RGB")
    lr = photo.resize((photo.width // 4, photo.height // 4), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(lr, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    while x.shape[-1] < size or x.shape[-2] < size:
        x = torch.cat([x, x.flip(-1)], dim=-1)
        x = torch.cat([x, x.flip(-2)], dim=-2)
    return x[..., :size, :size].contiguous()


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a loaded machine it counts the work, not the waiting for a core."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_record(record: dict[str, Any], json_out: Path | None) -> None:
    """Print ``record`` as JSON on stdout and, with ``json_out``, save it there too."""
    text = json.dumps(record, indent=1)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n")

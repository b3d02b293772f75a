"""How much of the HR photo can the LR-derived scales carry? Oracle ceilings of an NSARM geometry.

Not a paper component: a diagnostic for choosing the geometry of a small model. In NSARM the transformation
network gives the first K_t residual scales and the transformer generates the rest from them alone (the LR
reaches the transformer only through those K_t scales of BSQ bits, spec E.3). So even a perfect transformation
network cannot keep more of the LR than the first K_t scales of the *HR* decomposition hold. This script
decodes, per native HR window of the held-out photos:

* ``gt_prefix``: the HR image's own first K_t scales (Alg. 1 codes, upsampled and summed) - what a perfect
  transformation network would hand over, with nothing added by the transformer;
* ``gt_all``: all scales (the tokenizer's reconstruction) - what a perfect transformer could reach;
* ``gt_prefix_ar``: ``gt_prefix`` continued by the model's transformer (NSARM sampling: tau 0.5, top-p 0.97,
  seed 0) - the best any transformation network can reach with this transformer;
* ``net_prefix``: the model's own transformation network on the LR, its K_t scales alone (how close the
  network comes to ``gt_prefix``);

both colour-fixed against the LR as the pipeline does (AdaIN + wavelet), next to bicubic upsampling of the LR,
and scores PSNR / SSIM on Y. Used for nsarm-tiny (docs/model_card.md, "Geometry").

    nsarm degrade data/val /tmp/deg --preset realesrgan --seed 0
    python scripts/prefix_ceiling.py runs/nsarm-tiny data/val /tmp/deg/lr --json-out ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from nsarm_core.color_fix import color_fix
from nsarm_core.data.files import collect_images
from nsarm_core.data.io import atomic_write_text, read_image
from nsarm_core.errors import NSARMError
from nsarm_core.eval.metrics import psnr, ssim, to_8bit_levels
from nsarm_core.models.bsq import bsq_quantize, resize_latent
from nsarm_core.models.nsarm import NSARM
from nsarm_core.models.sampler import sample_scales
from nsarm_core.models.transform_net import outputs_to_latent_maps
from nsarm_core.pipeline import UpscaleSettings, load_pipeline
from nsarm_core.resize import pil_bicubic


def _to_levels(x: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> [H, W, 3] 8-bit levels, as a saved PNG."""
    return to_8bit_levels(x[0].permute(1, 2, 0).numpy())


@torch.no_grad()
def ceilings(
    model: NSARM, hr_dir: Path, lr_dir: Path, prefix_scales: int | None = None
) -> dict[str, list[dict[str, float]]]:
    """Per-image PSNR/SSIM-Y of every decode of the module docstring, and of bicubic upsampling."""
    cfg = model.config
    grids = cfg.schedule.vae_grids
    k_t = cfg.num_transform_scales if prefix_scales is None else prefix_scales
    if not 1 <= k_t <= len(grids):
        raise SystemExit(f"error: --prefix-scales must be in 1..{len(grids)}, got {k_t}")
    (wh, ww), scale = cfg.hr_size, cfg.scale
    vae, net = model.vae.eval(), model.transform_net.eval()
    if cfg.transformer.use_text:
        raise SystemExit(
            f"error: {cfg.name} needs a text encoder; this diagnostic supports text-free models only"
        )
    sampling = UpscaleSettings()
    names = ("gt_prefix", "gt_prefix_ar", "gt_all", "net_prefix", "bicubic")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    files = collect_images([str(hr_dir)], recursive=True)
    if not files:
        raise SystemExit(f"error: {hr_dir} holds no images")
    for path in files:
        lr_path = lr_dir / Path(path).name
        if not lr_path.is_file():
            raise SystemExit(f"error: no LR image {lr_path} for {path}; make it with `nsarm degrade`")
        hr = read_image(path).rgb
        lr = read_image(lr_path).rgb
        h, w = (hr.shape[0] // wh) * wh, (hr.shape[1] // ww) * ww
        if h == 0 or w == 0 or lr.shape[0] * scale < h or lr.shape[1] * scale < w:
            raise SystemExit(
                f"error: {path} is smaller than one {ww}x{wh} window or does not match its x{scale} LR"
            )
        hr, lr = hr[:h, :w], lr[: h // scale, : w // scale]
        x = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))[None].float()
        lr_t = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None].float()
        outs = {k: torch.zeros_like(x) for k in rows}
        for i in range(0, h, wh):
            for j in range(0, w, ww):
                lr_win = lr_t[..., i // scale : (i + wh) // scale, j // scale : (j + ww) // scale]
                lr_up = pil_bicubic(lr_win, (wh, ww))
                scales = vae.encode(x[..., i : i + wh, j : j + ww] * 2 - 1, grids)
                prefix = sum(resize_latent(c, grids[-1], "bilinear") for c in scales.codes[:k_t])
                maps = outputs_to_latent_maps(net(vae.encode_raw(lr_win * 2 - 1)), net.config.branch_grids)
                predicted = sum(
                    resize_latent(bsq_quantize(m.float())[0], grids[-1], "bilinear") for m in maps
                )
                continued = sample_scales(
                    model.transformer.eval(),
                    None,
                    cfg.schedule,
                    generator=torch.Generator().manual_seed(0),
                    tau=sampling.tau,
                    top_p=sampling.top_p,
                    next_input_mode=cfg.next_input_mode,
                    prefix_codes=list(scales.codes[:k_t]),
                    return_logits=False,
                    batch_size=1,
                ).summed_codes
                latents = {
                    "gt_prefix": prefix,
                    "gt_prefix_ar": continued,
                    "gt_all": scales.f_hat,
                    "net_prefix": predicted,
                }
                for name, latent in latents.items():
                    dec = (vae.decode(latent).float() + 1) / 2
                    outs[name][..., i : i + wh, j : j + ww] = color_fix(dec, lr_up, "both")
                outs["bicubic"][..., i : i + wh, j : j + ww] = lr_up
        ref = _to_levels(x)
        for name, img in outs.items():
            levels = _to_levels(img)
            rows[name].append(
                {"image": Path(path).name, "psnr": psnr(levels, ref), "ssim": ssim(levels, ref)}
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an NSARM model folder (config.json + model.safetensors) or a preset name")
    ap.add_argument("hr_dir", type=Path, help="held-out HR photos")
    ap.add_argument("lr_dir", type=Path, help="their LR images (same file names), e.g. from `nsarm degrade`")
    ap.add_argument(
        "--prefix-scales",
        type=int,
        default=None,
        help="K for gt_prefix(_ar): the photo's first K scales (default K_t)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_pipeline(args.model, device="cpu", dtype="fp32").model
        rows = ceilings(model, args.hr_dir, args.lr_dir, args.prefix_scales)
    except NSARMError as exc:  # unknown model, unreadable image, ...: one line, as the nsarm commands
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    summary = {
        name: {m: float(np.mean([r[m] for r in per])) for m in ("psnr", "ssim")} for name, per in rows.items()
    }
    k = args.prefix_scales or cfg.num_transform_scales
    print(
        f"{cfg.name}: LR {cfg.lr_size} -> HR {cfg.hr_size}, K_t = {cfg.num_transform_scales} of "
        f"{len(cfg.schedule.vae_grids)} scales, d = {cfg.vae.codebook_dim}; gt_prefix = first {k} scales"
    )
    print(f"{'decode':<13} {'PSNR-Y':>7} {'SSIM-Y':>7}")
    for name, s in summary.items():
        print(f"{name:<13} {s['psnr']:7.2f} {s['ssim']:7.4f}")
    if args.json_out:
        report = {"model": cfg.name, "mean": summary, "per_image": rows}
        atomic_write_text(args.json_out, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

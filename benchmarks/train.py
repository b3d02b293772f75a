"""Training benchmark: throughput per stage on the small presets, and the memory of one 8B stage-2 step.

1. Throughput (samples/s) of one optimizer step (``compute_loss`` + backward + clip + AdamW) of each recipe on
   the nsarm-tiny geometry: the tokenizer (tiny-d14 VAE on ``--tok-crop`` crops, multi-scale BSQ), stage 1
   (transformation network, 256 px HR / 64 px LR, frozen VAE) and stage 2 (tiny transformer + transformation
   network, Alg. 2 labels). Synthetic batches, so the numbers are the models' cost without data loading (the
   on-the-fly Real-ESRGAN degradation is benchmarked by ``benchmarks/degrade.py``). One warm-up step first.

2. Memory of one stage-2 step of the Infinity-8B block shape (width 3584, 28 heads, FFN 14336, 56-bit tokens,
   Flan-T5-XL-sized text: 2048 channels, ``--text-len`` tokens), with the depth reduced to 1 and 2 blocks so it
   runs on a CPU, at a reduced schedule (``--mem-schedule``, default sr-256: 521 tokens), batch 1, bf16 autocast
   with fp32 weights (the ``mixed_precision: bf16`` setting). Bytes are counted by a ``TorchDispatchMode`` that
   tracks the storages of every tensor an aten op returns (live set and peak): what the step allocates, not what
   an allocator caches; kernel-internal scratch buffers are not seen. Measured: gradients, AdamW states, the
   forward peak (autocast bf16 weight copies + saved activations) and the forward + backward peak.

   Extrapolation to the full model (40 blocks, sr-1024 = 10,521 tokens, local batch ``--batch-8b``):
       states       = 16 B x trained parameters (fp32 weight + fp32 grad + AdamW m and v), transformer and
                      transformation network (both train in stage 2, E.4); plus 2 B x transformer parameters
                      of bf16 autocast copies. FSDP FULL_SHARD over N GPUs divides both by N and adds about
                      two gathered blocks (6 B per block parameter).
       activations  = forward peak - bf16 copies, split into base + depth x per_block (depth 1 vs 2), scaled
                      linearly to 10,521 tokens and the batch: linear in L as with a fused (flash /
                      memory-efficient) attention on the GPU. ``attn_probs_bytes`` shows what a kernel that
                      keeps the L x L probabilities would add per block.
       checkpointed = 40 x block input (B x L x 3584 x 4 B) + one block's activations (full-block activation
                      checkpointing, as ``fsdp_8b.yaml`` enables). FSDP does not shard activations.
   The step's peak is taken as states + copies + activations (gradients are counted in full from the start,
   an upper bound).

Usage:
    python benchmarks/train.py                       # both parts, about 3 minutes on 2 CPU cores
    python benchmarks/train.py --skip-memory --steps 5 --json-out train_bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nsarm_core.models.nsarm import get_preset as nsarm_preset
from nsarm_core.scales import get_named_schedule

GIB = 1024**3


# ----------------------------------------------------------------------------------------------------------
# 1. Throughput per stage
# ----------------------------------------------------------------------------------------------------------


def _stage_recipe(stage: str, tok_crop: str) -> Any:
    tiny = nsarm_preset("tiny")
    net = tiny.transform_net.to_dict()
    data = {"hr_dirs": ["unused"], "degradation": "bicubic", "scale": tiny.scale}
    if stage == "tokenizer":
        from nsarm_core.train.tokenizer import TokenizerRecipe, TokenizerSettings

        return TokenizerRecipe(TokenizerSettings(schedule=tok_crop, vae="tiny-d14", hr_dirs=("unused",)))
    if stage == "stage1":
        from nsarm_core.train.stage1 import Stage1Recipe, Stage1Settings

        settings = Stage1Settings.from_stage(
            {"schedule": "tiny-256", "vae": "tiny-d14", "transform_net": net, **data}
        )
        return Stage1Recipe(settings)
    from nsarm_core.train.stage2 import Stage2Recipe, Stage2Settings

    settings = Stage2Settings.from_stage(
        {"schedule": "tiny-256", "vae": "tiny-d14", "transform_net": net, "transformer": "tiny", **data}
    )
    return Stage2Recipe(settings)


def bench_stage(stage: str, batch: int, steps: int, tok_crop: str) -> dict[str, Any]:
    """Samples/s of ``steps`` optimizer steps of one recipe on synthetic batches (after one warm-up step)."""
    import logging

    logging.getLogger("nsarm_core").setLevel(logging.ERROR)  # "random VAE" warnings are expected here
    recipe = _stage_recipe(stage, tok_crop)
    models = recipe.build_models()
    for m in models.values():
        m.train(any(p.requires_grad for p in m.parameters()))
    params = [p for g in recipe.trainable_parameters(models) for p in g["params"]]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.97))
    g = torch.Generator().manual_seed(0)
    if stage == "tokenizer":
        px = recipe.schedule.pixel_size
        batch_data: dict[str, Any] = {"image": torch.rand(batch, 3, *px, generator=g) * 2 - 1}
    else:
        hr = recipe.pixel_size
        s = recipe.settings.data.scale
        batch_data = {
            "hr": torch.rand(batch, 3, *hr, generator=g) * 2 - 1,
            "lr": torch.rand(batch, 3, hr[0] // s, hr[1] // s, generator=g) * 2 - 1,
            "caption": [""] * batch,
        }

    def step() -> float:
        loss, _ = recipe.compute_loss(models, batch_data, torch.Generator().manual_seed(1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {
        "stage": stage,
        "batch": batch,
        "steps": steps,
        "trainable_params": sum(p.numel() for p in params),
        "samples_per_s": steps * batch / dt,
        "s_per_step": dt / steps,
        "input": "x".join(map(str, batch_data["image" if stage == "tokenizer" else "hr"].shape[-2:])),
    }


# ----------------------------------------------------------------------------------------------------------
# 2. Memory of one 8B-shaped stage-2 step
# ----------------------------------------------------------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages created by aten ops while active, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}  # storage data_ptr -> live tensors viewing it
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        if key not in self.refs:
            self.refs[key] = 0
            self.sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def reset_peak(self) -> None:
        """Start a new peak from the current live bytes."""
        self.peak = self.live


def measure_8b_block(depth: int, schedule_name: str, text_len: int, batch: int) -> dict[str, Any]:
    """Bytes of one bf16-autocast stage-2 step of an infinity-8b-shaped transformer of ``depth`` blocks."""
    from nsarm_core.models.transformer import InfinityTransformer, TextCondition
    from nsarm_core.models.transformer import get_preset as gpt_preset
    from nsarm_core.train.stage2 import bitwise_ce

    cfg = dataclasses.replace(gpt_preset("infinity-8b"), depth=depth, block_chunks=depth, cond_drop_rate=0.0)
    sched = get_named_schedule(schedule_name)
    g = torch.Generator().manual_seed(0)
    model = InfinityTransformer(cfg, generator=g).train()
    n_params = sum(p.numel() for p in model.parameters())
    L = sum(sched.scale_lengths)
    x = torch.randn(batch, L - 1, cfg.d_vae, generator=g)
    labels = torch.randint(0, 2, (batch, L, cfg.d_vae), generator=g, dtype=torch.uint8)
    text = TextCondition.from_list(
        [torch.randn(text_len, cfg.text_channels, generator=g) for _ in range(batch)]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.97), foreach=False)
    tracker = LiveBytes()
    t0 = time.perf_counter()
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(text, x, sched)
        ce, _ = bitwise_ce(logits, labels)
        loss = ce.mean()
        fwd_peak = tracker.peak  # bf16 weight copies (autocast cache) + saved activations
        loss.backward()
        step_peak = tracker.peak  # + gradients, as they appear
        del logits, ce, loss
        opt.step()
    states = sum(t.nbytes for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor))
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    return {
        "depth": depth,
        "schedule": schedule_name,
        "tokens": L,
        "batch": batch,
        "params": n_params,
        "param_bytes": 4 * n_params,
        "grad_bytes": grads,
        "adam_state_bytes": states,
        "forward_peak_bytes": fwd_peak,
        "forward_backward_peak_bytes": step_peak,  # fp32 weights and Adam states excluded (not made by ops here)
        "attn_probs_bytes": cfg.num_heads * L * L * 2 * batch,  # bf16 L x L per head, if a kernel kept them
        "seconds": time.perf_counter() - t0,
    }


def extrapolate(
    m1: dict[str, Any], m2: dict[str, Any], depth: int, tokens: int, batch: int, gpus: int
) -> dict:
    """Full-model bytes per GPU from the depth-1 and depth-2 measurements (see the module docstring).

    The forward peak is split into the autocast bf16 weight copies (2 B per parameter, an upper bound) and the
    activations, which grow linearly with depth and tokens; the step peak adds 16 B per trained parameter.
    """
    from nsarm_core.models.nsarm import NSARM
    from nsarm_core.models.nsarm import get_preset as np_

    with torch.device("meta"):
        counts = NSARM(np_("nsarm-8b"), init=False).parameter_counts()
    trained = counts["transformer"] + counts["transform_net"]
    block_params = m2["params"] - m1["params"]
    act = [m["forward_peak_bytes"] - 2 * m["params"] for m in (m1, m2)]
    per_block, base = act[1] - act[0], 2 * act[0] - act[1]
    scale = (tokens / m1["tokens"]) * (batch / m1["batch"])
    activations = (base + depth * per_block) * scale
    checkpointed = depth * batch * tokens * 3584 * 4 + (base + per_block) * scale  # block inputs + one block
    states = 16 * trained  # fp32 weights, fp32 grads, AdamW m and v
    copies = 2 * counts["transformer"]  # autocast bf16 weight copies
    gathered = 2 * 6 * block_params  # FSDP: ~two unsharded blocks (fp32 + bf16) in flight
    return {
        "trained_params": trained,
        "tokens": tokens,
        "batch": batch,
        "depth": depth,
        "per_block_activation_bytes": per_block * scale,
        "states_bytes": states,
        "bf16_copy_bytes": copies,
        "activations_bytes": activations,
        "activations_checkpointed_bytes": checkpointed,
        "no_sharding": {
            "no_checkpointing_gib": (states + copies + activations) / GIB,
            "checkpointing_gib": (states + copies + checkpointed) / GIB,
        },
        f"fsdp_full_shard_{gpus}": {
            "no_checkpointing_gib": ((states + copies) / gpus + gathered + activations) / GIB,
            "checkpointing_gib": ((states + copies) / gpus + gathered + checkpointed) / GIB,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", default=["tokenizer", "stage1", "stage2"])
    ap.add_argument("--batch", type=int, default=4, help="samples per step for the throughput part")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per stage")
    ap.add_argument("--tok-crop", default="tiny-128", help="tokenizer crop schedule (tiny-64/128/256)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--mem-schedule", default="sr-256")
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--batch-8b", type=int, default=2, help="local batch of the extrapolation (stage2_nsarm)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "machine": platform.machine()}
    rows = [bench_stage(s, args.batch, args.steps, args.tok_crop) for s in args.stages]
    print(
        f"training throughput on CPU ({env['cpu_threads']} threads, torch {env['torch']}), synthetic batches:"
    )
    print(f"{'stage':<11}{'input':>9}{'batch':>7}{'params':>11}{'samples/s':>11}{'s/step':>9}")
    for r in rows:
        print(f"{r['stage']:<11}{r['input']:>9}{r['batch']:>7}{r['trainable_params']:>11,}"
              f"{r['samples_per_s']:>11.2f}{r['s_per_step']:>9.2f}")  # fmt: skip
    result: dict[str, Any] = {"benchmark": "train", "env": env, "throughput": rows}
    if not args.skip_memory:
        m = [measure_8b_block(d, args.mem_schedule, args.text_len, 1) for d in (1, 2)]
        full_tokens = sum(get_named_schedule("sr-1024").scale_lengths)
        ext = extrapolate(m[0], m[1], 40, full_tokens, args.batch_8b, args.gpus)
        print(
            f"\n8B-shaped stage-2 step ({args.mem_schedule}, {m[0]['tokens']} tokens, batch 1, bf16 autocast):"
        )
        print(
            f"{'depth':>5}{'params':>15}{'grads GiB':>11}{'Adam GiB':>10}{'fwd peak GiB':>14}{'fwd+bwd GiB':>13}{'s':>7}"
        )
        for r in m:
            print(f"{r['depth']:>5}{r['params']:>15,}{r['grad_bytes'] / GIB:>11.2f}{r['adam_state_bytes'] / GIB:>10.2f}"
                  f"{r['forward_peak_bytes'] / GIB:>14.3f}{r['forward_backward_peak_bytes'] / GIB:>13.3f}"
                  f"{r['seconds']:>7.1f}")  # fmt: skip
        print(f"extrapolated to 40 blocks, sr-1024 ({full_tokens} tokens), local batch {args.batch_8b}, "
              f"{ext['trained_params']:,} trained parameters (GiB per GPU):")  # fmt: skip
        print(f"{'':<24}{'no act. ckpt':>14}{'block ckpt':>12}")
        for key in ("no_sharding", f"fsdp_full_shard_{args.gpus}"):
            v = ext[key]
            print(f"{key:<24}{v['no_checkpointing_gib']:>14.1f}{v['checkpointing_gib']:>12.1f}")
        result["memory_8b"] = {"measured": m, "extrapolated": ext}
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()

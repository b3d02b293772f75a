"""The generic training loop (accelerate): what both NSARM stages share.

Spec: docs/architecture.md S.4 item 10 ("training is the accelerate idiom in three short files"),
docs/architecture.md C.10 (AdamW, warm-up + decay, clipping, bf16, FSDP, block checkpointing) and
E.4 (the two stages). A stage is a :class:`Recipe`: it declares only its models, which parameters train, its
dataset and its loss; this file does everything else.

One optimizer step, with ``P`` processes, micro-batch ``b`` and ``A = grad_accum``::

    for a in 1..A:   batch [b, ...] -> recipe.compute_loss -> loss / A -> backward (DDP sync only at a = A)
    clip global grad norm -> AdamW step -> LR schedule step -> EMA update
    every log_every steps: metrics.csv + TensorBoard;  every checkpoint_every steps: a checkpoint

Exact resume (the loss of step ``N + 1`` after ``--resume latest`` equals the uninterrupted run's) rests on
four things, none of which depends on saved RNG streams being consumed identically:

* the data order is a pure function of ``(seed, epoch)`` and the checkpoint stores how many micro-batches were
  consumed, so the resumed run skips exactly those samples (:class:`EpochSampler`);
* per-sample data randomness (crops, degradations) is seeded by ``(seed, epoch, index)`` inside the dataset
  (``set_epoch`` is called before every epoch), so it does not depend on worker processes;
* the generator handed to ``compute_loss`` and the global RNGs (used by e.g. dropout, which cannot take a
  generator) are re-seeded at the start of every step from ``(seed, step, process index)``;
* model, optimizer, LR schedule, EMA and the step counters are restored from the checkpoint, written and read
  in safe formats only (safetensors and JSON, :mod:`nsarm_core.train.checkpoint`): resuming never unpickles
  code, which accelerate's ``load_state`` would (``weights_only=False``).

Frozen modules are not checkpointed: the recipe rebuilds them from their weights. Resumption is bit-exact on
the CPU; on GPUs it is exact up to non-deterministic kernels (``torch.use_deterministic_algorithms``).

Multi-GPU: launch with ``accelerate launch --config_file nsarm_core/train/accelerate_configs/ddp_8gpu.yaml
-m nsarm_cli.main train-stage2 --config stage2.yaml`` (``fsdp_8b.yaml`` for the 8B transformer, ``cpu.yaml``
for a single CPU process). The loop itself is the same for all of them.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from nsarm_core.errors import ConfigError, InputError, NSARMError, missing_extra
from nsarm_core.train.checkpoint import load_training_state, save_training_state
from nsarm_core.train.config import TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
ParamGroups = list[nn.Parameter] | list[dict[str, Any]]


# ----------------------------------------------------------------------------------------------------------
# What a stage declares
# ----------------------------------------------------------------------------------------------------------


@runtime_checkable
class Recipe(Protocol):
    """What a training stage declares; :func:`train` does the rest.

    The loop calls, in this order: ``build_models()`` once; prepares (DDP/FSDP-wraps) every module that has
    trainable parameters and moves the others to the device; ``trainable_parameters(models)`` with the
    prepared modules; ``make_dataset()``; then ``compute_loss(models, batch, generator)`` per micro-batch
    (inside ``accelerator.autocast()``); finally ``export(out_dir, state_dicts)`` on the main process.
    A recipe may also define ``collate(samples) -> batch``, used as the DataLoader's ``collate_fn``, and
    ``set_step(step)``, called before each optimizer step with the 0-based global step.
    """

    def build_models(self) -> dict[str, nn.Module]:
        """All modules by name. Frozen ones must already have ``requires_grad=False`` on every parameter."""
        ...

    def trainable_parameters(self, models: Mapping[str, nn.Module]) -> ParamGroups:
        """Parameters (or AdamW parameter groups) to optimise, taken from the prepared ``models``."""
        ...

    def make_dataset(self) -> Dataset:
        """A map-style dataset of dict samples; may define ``set_epoch(epoch)`` for per-epoch randomness."""
        ...

    def compute_loss(
        self, models: Mapping[str, nn.Module], batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss of one micro-batch, plus metrics to log (e.g. ``"loss/scale_03"``: per-scale values).

        ``generator`` is a CPU generator re-seeded every step from ``(seed, step, rank)``: draw on the CPU and
        move the result to the batch's device.
        """
        ...

    def export(self, out_dir: Path, state_dicts: Mapping[str, dict[str, Tensor]]) -> None:
        """Write the final model(s) to ``out_dir`` (main process only).

        ``state_dicts`` holds the full (gathered, unwrapped; EMA weights when EMA is on) state dict of every
        trainable module, by the names of :meth:`build_models`.
        """
        ...


@dataclass
class TrainResult:
    """What one call of :func:`train` did.

    Attributes:
        run_dir: the run folder.
        start_step: global step the call started from (0, or the resumed checkpoint's step).
        step: global step reached.
        losses: this process's training loss of every step run in this call (index 0 = step start_step + 1).
        last_metrics: the metrics of the last step (averaged over micro-batches).
        checkpoint: newest checkpoint folder written, if any.
        final_dir: folder of the exported model when training reached ``max_steps``, else ``None``.
        seconds: wall time of the call.
    """

    run_dir: Path
    start_step: int
    step: int
    losses: list[float] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    final_dir: Path | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------------------
# Building blocks: sampler, schedule, EMA, step counters, checkpoints, metric sinks
# ----------------------------------------------------------------------------------------------------------


def _mix_seed(*values: int) -> int:
    """A 31-bit seed from several integers (numpy SeedSequence hashing; no collisions in practice)."""
    return int(
        np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0] & 0x7FFFFFFF
    )


class EpochSampler(Sampler[int]):
    """Shuffled indices for this process, a pure function of ``(seed, epoch)``.

    Each epoch permutes the dataset, drops the tail that does not fill a whole global batch
    (``batch_size * num_processes``), and gives process ``p`` the ``p``-th slice of every global batch, so all
    processes run the same number of micro-batches. ``set_epoch(epoch, skip_batches)`` starts the epoch after
    ``skip_batches`` micro-batches (resume).
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0
    ) -> None:
        global_batch = batch_size * num_processes
        if num_samples < global_batch:
            raise InputError(
                f"the training set has {num_samples} samples, fewer than one global batch "
                f"({batch_size} per process x {num_processes} processes); add data or lower batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.batches_per_epoch = num_samples // global_batch
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch (its order) and how many of this process's micro-batches to skip."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 0x5A3))
        order = torch.randperm(self.num_samples, generator=g).tolist()
        b, p = self.batch_size, self.num_processes
        for k in range(self.skip_batches, self.batches_per_epoch):
            start = k * b * p + self.process_index * b
            yield from order[start : start + b]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based): linear warm-up, then the schedule.

    Warm-up: ``(step + 1) / warmup_steps``. After it, with ``t`` going from 0 to 1 over the remaining steps,
    "linear" is ``1 - (1 - m) t``, "cosine" is ``m + (1 - m)(1 + cos(pi t)) / 2`` and "constant" is 1, where
    ``m = min_lr_ratio``.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    m = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - m) * t
    return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of parameters, kept in float32: ``s <- d s + (1 - d) p``."""

    def __init__(self, params: Iterable[nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step after an optimizer step."""
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the live parameters with the averages (done once, before export)."""
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise InputError(
                f"the checkpoint's EMA holds {len(state['shadow'])} tensors but the model has "
                f"{len(self.shadow)} trainable parameters; resume with the same recipe and settings"
            )
        self.decay = float(state["decay"])
        self.shadow = [
            s.to(p.device, torch.float32) for s, p in zip(state["shadow"], self.params, strict=True)
        ]


@dataclass
class _Counters:
    """Checkpointed position of the run: optimizer steps and micro-batches consumed per process."""

    step: int = 0
    micro_batches: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "micro_batches": self.micro_batches}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step = int(state["step"])
        self.micro_batches = int(state["micro_batches"])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Completed checkpoints of a run, oldest first (``run_dir/checkpoints/step_XXXXXX``)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        suffix = p.name[len(CHECKPOINT_PREFIX) :]
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from: ``None``, ``"latest"`` (newest, or ``None`` if none) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(run_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not path.is_dir():
        raise InputError(
            f"resume checkpoint {path} is not a folder; pass 'latest' or a folder such as "
            f"{Path(run_dir) / 'checkpoints' / (CHECKPOINT_PREFIX + '000100')}"
        )
    return path


RUN_ARTEFACTS = ("config.yaml", "metrics.csv", "checkpoints", "final", "tensorboard")
"""What :func:`train` writes into a run folder (and all that ``overwrite`` deletes)."""


def check_run_dir(
    run_dir: Path, *, resume: str | None, checkpoint: Path | None, overwrite: bool
) -> list[str]:
    """Refuse to start a fresh run on top of a previous one; return the previous run's entries in ``run_dir``.

    A fresh start (no ``resume``, or ``resume="latest"`` with no checkpoint) in a folder that holds any of
    :data:`RUN_ARTEFACTS` would replace its final weights, cut its ``metrics.csv`` and rewrite its config, so
    it needs ``overwrite``. Resuming from a checkpoint continues the run and needs nothing.

    Raises:
        ConfigError: the folder holds a previous run and neither a checkpoint nor ``overwrite`` was given.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} is a file; pass another --run-dir")
    if overwrite and resume is not None:
        raise ConfigError(
            f"--resume {resume} continues the run in {run_dir} and --overwrite replaces it; pass only one of them"
        )
    previous = [name for name in RUN_ARTEFACTS if (run_dir / name).exists()]
    if not previous or checkpoint is not None or overwrite:
        return previous
    held = f"run folder {run_dir} already holds a run ({', '.join(previous)})"
    if resume == "latest":
        raise ConfigError(
            f"{held} but no checkpoint to resume from; pass --overwrite to replace it, or another --run-dir"
        )
    raise ConfigError(
        f"{held}; pass --resume latest to continue it, --overwrite to replace it, or another --run-dir"
    )


class _MetricsCSV:
    """``run_dir/metrics.csv``: one row per logged step; the header grows when new metric names appear."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.rows: list[dict[str, str]] = []
        self.columns: list[str] = []
        if resume_step is not None and path.is_file():
            # Rows written after the checkpoint belong to the interrupted run; the resumed run rewrites them.
            try:
                with path.open(newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    self.columns = list(reader.fieldnames or [])
                    self.rows = [r for r in reader if int(r["step"]) <= resume_step]
            except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as exc:
                raise InputError(
                    f"{path} is not a metrics log nsarm can continue ({type(exc).__name__}: {exc}); move it "
                    "aside to resume with a fresh log"
                ) from exc

    def start(self) -> None:
        """Write the kept rows (none for a fresh run): called once the run folder may be changed."""
        self._rewrite()

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def write(self, row: Mapping[str, float | int]) -> None:
        text = {k: (repr(float(v)) if isinstance(v, float) else str(v)) for k, v in row.items()}
        new = [k for k in text if k not in self.columns]
        self.rows.append(text)
        if new or not self.columns:
            self.columns += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerow(text)


def _open_tensorboard(log_dir: Path) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning(
            "tensorboard is not installed; logging to metrics.csv only (pip install 'nsarm[train]')"
        )
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _enable_activation_checkpointing(models: Mapping[str, nn.Module], trainable: list[str]) -> None:
    done = []
    for name in trainable:
        hook = getattr(models[name], "enable_activation_checkpointing", None)
        if callable(hook):
            hook()
            done.append(name)
    if done:
        logger.info("activation checkpointing enabled on: %s", ", ".join(done))
    else:
        logger.warning(
            "activation_checkpointing=true but no trainable module defines enable_activation_checkpointing(); "
            "with FSDP set fsdp_activation_checkpointing in the accelerate config instead"
        )


def param_groups(module: nn.Module, no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """AdamW groups: the config's weight decay on matrices; none on biases, norms, 1-D tensors and on names
    containing one of ``no_decay``.

    Args:
        module: the (prepared) module whose ``requires_grad`` parameters train.
        no_decay: extra name fragments without decay (Infinity, C.10: ``pos_start``, ``lvl_embed``, ...).

    Returns:
        Up to two groups; the first takes AdamW's default ``weight_decay`` (``TrainConfig.weight_decay``).
    """
    skip = tuple(no_decay)
    decay, plain = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim <= 1 or any(s in name for s in skip) else decay).append(p)
    groups = [{"params": decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


def _make_accelerator(cfg: TrainConfig) -> Any:
    try:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration
    except ImportError as exc:
        raise missing_extra("accelerate", "train", "training") from exc
    project = ProjectConfiguration(project_dir=str(cfg.run_dir), automatic_checkpoint_naming=False)
    return Accelerator(mixed_precision=cfg.mixed_precision, project_config=project, cpu=cfg.cpu)


def _seed_step(seed: int, step: int, rank: int) -> torch.Generator:
    """Re-seed the global RNGs and build this step's generator, from ``(seed, step, rank)`` only.

    The global RNGs are seeded because modules such as dropout cannot take a generator; seeding them per step
    (rather than once) is what makes a resumed run bit-identical.
    """
    import random

    s = _mix_seed(seed, step, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)  # also seeds every CUDA device
    # A CPU generator: draws are made on the CPU and moved (as bsq.flip_bits does), so the same seed gives the
    # same numbers on every device.
    return torch.Generator().manual_seed(_mix_seed(seed, step, rank, 1))


def train(
    recipe: Recipe,
    cfg: TrainConfig,
    *,
    accelerator: Any | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``recipe`` for ``cfg.max_steps`` optimizer steps (or resume and finish a run).

    Args:
        recipe: the stage (models, trainable parameters, dataset, loss, export).
        cfg: the training config; ``cfg.resume`` selects a fresh start, ``"latest"`` or a checkpoint.
        accelerator: an existing ``accelerate.Accelerator``; by default one is built from ``cfg``
            (mixed precision; the launch config decides CPU/GPU/DDP/FSDP).
        stop_after: stop (with a checkpoint) once this global step is reached, as if interrupted; the LR
            schedule still spans ``cfg.max_steps``. ``None`` runs to the end and exports the final model.
        overwrite: replace a previous run in ``cfg.run_dir`` (see :func:`check_run_dir`); its files are deleted
            only once the models, data and config have been checked.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NSARMError: a non-finite loss, a dataset smaller than one batch, an invalid resume folder, a run folder
            that holds a previous run (without resume or overwrite), or a checkpoint past ``max_steps``.
    """
    t0 = time.perf_counter()
    acc = accelerator if accelerator is not None else _make_accelerator(cfg)
    run_dir = Path(cfg.run_dir)
    is_main = acc.is_main_process
    # Nothing is written to the run folder until the models, data and checkpoint have been checked: a command
    # that fails validation leaves a previous run as it was.
    ckpt = resolve_resume(cfg.resume, run_dir)
    previous = check_run_dir(run_dir, resume=cfg.resume, checkpoint=ckpt, overwrite=overwrite)
    acc.wait_for_everyone()  # every process has looked before the main process changes anything

    # Models: wrap the trainable ones (DDP/FSDP, autocast), just move the frozen ones.
    models = dict(recipe.build_models())
    if not models:
        raise ConfigError("the recipe built no models")
    trainable = [n for n, m in models.items() if any(p.requires_grad for p in m.parameters())]
    if not trainable:
        raise ConfigError(f"none of the recipe's models ({', '.join(models)}) has trainable parameters")
    if cfg.activation_checkpointing:
        _enable_activation_checkpointing(models, trainable)
    for name, module in models.items():
        if name in trainable:
            module.train()
            models[name] = acc.prepare(module)
        else:
            module.to(acc.device).eval()

    groups = recipe.trainable_parameters(models)
    raw_optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    params = [p for g in raw_optimizer.param_groups for p in g["params"]]
    # The schedule is stepped by hand once per optimizer step (accelerate's wrapper would step it once per
    # process) and checkpointed as a registered object.
    scheduler = torch.optim.lr_scheduler.LambdaLR(raw_optimizer, lambda s: lr_multiplier(s, cfg))
    optimizer = acc.prepare(raw_optimizer)
    counters = _Counters()
    ema = None
    if cfg.ema_decay is not None:
        if str(acc.distributed_type).endswith("FSDP"):
            raise ConfigError("ema_decay with FSDP is not supported (sharded parameters); set ema_decay=null")
        ema = EMA(params, cfg.ema_decay)
    # What a checkpoint holds besides the data order (counters) and models: see checkpoint.py.
    state = {
        "models": {n: models[n] for n in trainable},
        "optimizer": optimizer,
        "objects": {"counters": counters, "scheduler": scheduler},
        "ema": ema,
    }

    # Data: a fixed order per (seed, epoch), this process's slice, skipped forward on resume.
    dataset = recipe.make_dataset()
    sampler = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, acc.num_processes, acc.process_index)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=acc.device.type == "cuda",
        collate_fn=getattr(recipe, "collate", None),
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps worker seeding off the global RNG
    )

    if ckpt is not None:
        load_training_state(acc, ckpt, **state)
        if counters.step > cfg.max_steps:
            raise ConfigError(
                f"checkpoint {ckpt} is at step {counters.step}, past max_steps={cfg.max_steps}; pass a "
                f"--max-steps above {counters.step} to train on (or the run's own value to finish it)"
            )
        logger.info("resumed from %s at step %d", ckpt, counters.step)
    elif cfg.resume == "latest" and is_main:
        logger.warning(
            "resume=latest but %s has no checkpoint yet; starting from step 0", run_dir / "checkpoints"
        )
    start_step = counters.step
    end_step = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)

    # Read (and check) the metrics log before anything in the run folder changes; every process reads it so that
    # a bad log stops all of them (an error on the main process alone would leave the others at the barrier).
    metrics_log = _MetricsCSV(run_dir / "metrics.csv", start_step if ckpt is not None else None)
    csv_log = metrics_log if is_main else None
    if is_main:
        if overwrite and previous:
            logger.warning("--overwrite: replacing the previous run in %s (%s)", run_dir, ", ".join(previous))
            for name in previous:
                target = run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        assert csv_log is not None
        csv_log.start()
    acc.wait_for_everyone()

    tb = _open_tensorboard(run_dir / "tensorboard") if (is_main and cfg.tensorboard) else None

    def batches() -> Iterator[Any]:
        from accelerate.utils import send_to_device

        epoch, skip = divmod(counters.micro_batches, sampler.batches_per_epoch)
        while True:
            sampler.set_epoch(epoch, skip)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)  # workers are re-created per epoch, so they see it
            for batch in loader:
                yield send_to_device(batch, acc.device)
            epoch, skip = epoch + 1, 0

    result = TrainResult(run_dir=run_dir, start_step=start_step, step=start_step)
    bar = _progress(cfg, start_step, is_main)
    data = batches()
    wrapped = [models[n] for n in trainable]
    try:
        for step in range(start_step, end_step):
            generator = _seed_step(cfg.seed, step, acc.process_index)
            if hasattr(recipe, "set_step"):
                recipe.set_step(step)  # recipes whose loss changes with the step (e.g. a GAN warm-up)
            loss_sum, metric_sums = 0.0, {}
            for micro in range(cfg.grad_accum):
                batch = next(data)
                sync = micro == cfg.grad_accum - 1
                # Gradient all-reduce only on the last micro-batch of the step.
                with contextlib.ExitStack() as stack:
                    if not sync:
                        for m in wrapped:
                            stack.enter_context(acc.no_sync(m))
                    with acc.autocast():
                        loss, metrics = recipe.compute_loss(models, batch, generator)
                    if not torch.isfinite(loss.detach()).all():
                        raise NSARMError(
                            f"non-finite training loss {loss.item()} at step {step + 1}; lower lr, enable "
                            "clip_grad or use bf16 instead of fp16"
                        )
                    acc.backward(loss / cfg.grad_accum)
                loss_sum += float(loss.detach())
                for k, v in metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
            grad_norm = None
            if cfg.clip_grad is not None:
                grad_norm = float(acc.clip_grad_norm_(params, cfg.clip_grad))
            optimizer.step()
            if not acc.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            counters.step = step + 1
            counters.micro_batches += cfg.grad_accum

            step_loss = loss_sum / cfg.grad_accum
            result.losses.append(step_loss)
            result.last_metrics = {k: v / cfg.grad_accum for k, v in metric_sums.items()}
            if counters.step % cfg.log_every == 0 or counters.step == end_step:
                _log_metrics(acc, csv_log, tb, counters, sampler, scheduler, step_loss, grad_norm, result)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4g}")
            periodic = cfg.checkpoint_every > 0 and counters.step % cfg.checkpoint_every == 0
            if periodic or counters.step == end_step:
                result.checkpoint = _save_checkpoint(acc, run_dir, counters.step, cfg.keep_checkpoints, state)
    finally:
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
    result.step = counters.step

    if counters.step >= cfg.max_steps:
        if ema is not None:
            ema.copy_to_params()
        state_dicts = {n: acc.get_state_dict(models[n]) for n in trainable}
        out_dir = run_dir / "final"
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            recipe.export(out_dir, state_dicts)
        acc.wait_for_everyone()
        result.final_dir = out_dir
    result.seconds = time.perf_counter() - t0
    return result


def _progress(cfg: TrainConfig, start_step: int, is_main: bool) -> Any | None:
    if not (cfg.progress and is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_steps, initial=start_step, desc="train", dynamic_ncols=True)


def _log_metrics(
    acc: Any,
    csv_log: _MetricsCSV | None,
    tb: Any | None,
    counters: _Counters,
    sampler: EpochSampler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step_loss: float,
    grad_norm: float | None,
    result: TrainResult,
) -> None:
    # Mean over processes (a collective: every process calls it).
    values = {"loss": step_loss, **result.last_metrics}
    keys = sorted(values)
    stacked = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=acc.device)
    reduced = acc.reduce(stacked, reduction="mean").tolist()
    if csv_log is None:
        return
    row: dict[str, float | int] = {
        "step": counters.step,
        "epoch": counters.micro_batches // sampler.batches_per_epoch,
        "lr": float(scheduler.get_last_lr()[0]),
    }
    if grad_norm is not None:
        row["grad_norm"] = grad_norm
    row.update(dict(zip(keys, reduced, strict=True)))
    csv_log.write(row)
    if tb is not None:
        for k, v in row.items():
            if k != "step":
                tb.add_scalar(k, v, counters.step)


def _save_checkpoint(acc: Any, run_dir: Path, step: int, keep: int, state: Mapping[str, Any]) -> Path:
    """Save ``state`` into ``checkpoints/step_XXXXXX`` (written to ``.tmp`` then renamed); keep the newest K."""
    final = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    save_training_state(acc, tmp, **state)
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    acc.wait_for_everyone()
    return final

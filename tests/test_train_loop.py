"""The generic accelerate loop on a toy recipe: finite loss, overfitting, exact resume, EMA, logs, pruning."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from nsarm_core.errors import InputError
from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import (
    EMA,
    EpochSampler,
    Recipe,
    list_checkpoints,
    lr_multiplier,
    param_groups,
    train,
)

pytest.importorskip("accelerate")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class _ToyData(Dataset):
    """Random 8x8 inputs and a fixed target map; a per-(epoch, index) jitter exercises set_epoch."""

    def __init__(self, n: int = 20) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.tanh(self.x.mean(1, keepdim=True) * 2)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        return {"x": self.x[i] + 0.01 * torch.randn(3, 8, 8, generator=g), "y": self.y[i], "index": i}


class _ToyRecipe:
    """Conv -> dropout -> conv regression with a frozen 'encoder' (like a frozen VAE)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.exported: dict[str, dict[str, Tensor]] = {}

    def build_models(self) -> dict[str, nn.Module]:
        torch.manual_seed(0)  # the frozen part stands for pretrained weights: always the same
        frozen = nn.Conv2d(3, 3, 1)
        torch.manual_seed(self.seed)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Dropout(0.1), nn.Conv2d(8, 1, 3, padding=1)
        )
        frozen.requires_grad_(False)
        return {"net": net, "frozen": frozen}

    def trainable_parameters(self, models: Mapping[str, nn.Module]) -> list[dict[str, Any]]:
        return param_groups(models["net"])

    def make_dataset(self) -> Dataset:
        return _ToyData()

    def compute_loss(
        self, models: Mapping[str, nn.Module], batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        x = models["frozen"](batch["x"])
        x = x + 0.05 * torch.randn(x.shape, generator=generator).to(x.device)
        err = (models["net"](x) - batch["y"]) ** 2
        loss = err.mean()
        err = err.detach()
        return loss, {
            "loss/scale_00": float(err[..., :4, :].mean()),
            "loss/scale_01": float(err[..., 4:, :].mean()),
        }

    def export(self, out_dir: Path, state_dicts: Mapping[str, dict[str, Tensor]]) -> None:
        self.exported = {k: {n: t.clone() for n, t in v.items()} for k, v in state_dicts.items()}
        save_file({k: v.contiguous() for k, v in state_dicts["net"].items()}, out_dir / "net.safetensors")


def _cfg(tmp_path: Path, **kw: Any) -> TrainConfig:
    base = dict(
        run_dir=str(tmp_path / "run"),
        max_steps=2,
        batch_size=4,
        lr=1e-2,
        warmup_steps=0,
        checkpoint_every=0,
        log_every=1,
        num_workers=0,
        progress=False,
        tensorboard=False,
        cpu=True,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_recipe_protocol() -> None:
    assert isinstance(_ToyRecipe(), Recipe)


def test_two_steps_finite_loss_and_run_folder(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tensorboard=True)
    res = train(_ToyRecipe(), cfg)
    run = Path(cfg.run_dir)
    assert res.step == 2 and len(res.losses) == 2
    assert all(torch.isfinite(torch.tensor(res.losses)))
    assert (run / "config.yaml").is_file()
    assert res.final_dir == run / "final" and (run / "final" / "net.safetensors").is_file()
    assert [p.name for p in list_checkpoints(run)] == ["step_000002"]  # the last step is always saved
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert {"loss", "lr", "grad_norm", "loss/scale_00", "loss/scale_01"} <= set(rows[0])
    assert float(rows[1]["loss"]) == res.losses[1]
    assert any((run / "tensorboard").iterdir())


def test_bf16_two_steps(tmp_path: Path) -> None:
    res = train(_ToyRecipe(), _cfg(tmp_path, mixed_precision="bf16"))
    assert all(torch.isfinite(torch.tensor(res.losses)))


def test_overfit_lowers_loss(tmp_path: Path) -> None:
    res = train(_ToyRecipe(), _cfg(tmp_path, max_steps=30, lr=3e-2, schedule="constant", log_every=10))
    first, last = sum(res.losses[:4]) / 4, sum(res.losses[-4:]) / 4
    assert last < 0.5 * first, (first, last)


def test_resume_reproduces_next_steps_exactly(tmp_path: Path) -> None:
    # 20 samples / batch 4 = 5 micro-batches per epoch, grad_accum 2: epochs end mid-step; warm-up + cosine
    # and EMA make every piece of state matter; one worker process exercises per-epoch dataset seeding.
    common = dict(
        max_steps=6, grad_accum=2, warmup_steps=2, schedule="cosine", ema_decay=0.9, checkpoint_every=3,
        num_workers=1,
    )  # fmt: skip
    full_rec = _ToyRecipe()
    full = train(full_rec, _cfg(tmp_path / "a", **common))

    part_cfg = _cfg(tmp_path / "b", **common)
    part = train(_ToyRecipe(), part_cfg, stop_after=3)
    assert part.step == 3 and part.final_dir is None
    assert part.losses == full.losses[:3]

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    resumed_rec = _ToyRecipe(seed=99)  # different init: everything must come from the checkpoint
    resumed = train(resumed_rec, dataclasses.replace(part_cfg, resume="latest"))
    assert resumed.start_step == 3 and resumed.step == 6
    assert resumed.losses == full.losses[3:]  # exact, not approximate
    for k, v in full_rec.exported["net"].items():
        assert torch.equal(v, resumed_rec.exported["net"][k]), k
    rows = list(csv.DictReader((Path(part_cfg.run_dir) / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_bad_path_and_latest_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        train(_ToyRecipe(), _cfg(tmp_path, resume=str(tmp_path / "missing")))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    res = train(_ToyRecipe(), _cfg(tmp_path / "fresh", resume="latest"))
    assert res.start_step == 0 and res.step == 2


def test_keep_last_checkpoints(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, max_steps=4, checkpoint_every=1, keep_checkpoints=2)
    train(_ToyRecipe(), cfg)
    names = [p.name for p in list_checkpoints(cfg.run_dir)]
    assert names == ["step_000003", "step_000004"]
    assert not list((Path(cfg.run_dir) / "checkpoints").glob("*.tmp"))


def test_ema_weights_are_exported(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, max_steps=3, ema_decay=0.5)
    rec = _ToyRecipe()
    train(rec, cfg)
    ckpt = list_checkpoints(cfg.run_dir)[-1]
    raw = load_file(str(ckpt / "model_net.safetensors"))
    shadow_file = load_file(str(ckpt / "ema.safetensors"))
    ema_state = {"shadow": [shadow_file[str(i)] for i in range(len(shadow_file))]}
    names = [n for n, p in _ToyRecipe().build_models()["net"].named_parameters()]
    # param_groups puts matrices first, then biases: map the EMA list back to names in that order.
    order = [n for n in names if not n.endswith("bias")] + [n for n in names if n.endswith("bias")]
    for name, shadow in zip(order, ema_state["shadow"], strict=True):
        assert torch.equal(rec.exported["net"][name], shadow)
        assert not torch.equal(raw[name], shadow)


def test_ema_update_formula() -> None:
    p = nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.1))
    ema.copy_to_params()
    assert torch.allclose(p, torch.full((3,), 0.1))


def test_lr_schedule_shapes() -> None:
    cfg = TrainConfig(max_steps=10, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    m = [lr_multiplier(s, cfg) for s in range(10)]
    assert m[0] == 0.5 and m[1] == 1.0 and m[2] == 1.0
    assert all(a >= b for a, b in zip(m[2:], m[3:], strict=False)) and m[-1] > 0.1
    lin = TrainConfig(max_steps=4, schedule="linear")
    assert [lr_multiplier(s, lin) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_multiplier(7, TrainConfig(schedule="constant")) == 1.0


def test_epoch_sampler_shards_and_skips() -> None:
    s0 = EpochSampler(10, batch_size=2, seed=0, num_processes=2, process_index=0)
    s1 = EpochSampler(10, batch_size=2, seed=0, num_processes=2, process_index=1)
    a, b = list(s0), list(s1)
    assert len(a) == len(b) == 4 and not set(a) & set(b)  # 10 // 4 = 2 global batches; tail dropped
    s0.set_epoch(0, skip_batches=1)
    assert list(s0) == a[2:]
    s0.set_epoch(1)
    assert list(s0) != a
    with pytest.raises(InputError, match="fewer than one global batch"):
        EpochSampler(3, batch_size=4, seed=0)


@pytest.mark.parametrize(
    ("name", "kind", "procs"), [("cpu", "NO", 1), ("ddp_8gpu", "MULTI_GPU", 8), ("fsdp_8b", "FSDP", 8)]
)
def test_shipped_accelerate_configs_parse(name: str, kind: str, procs: int) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    import nsarm_core.train

    path = Path(nsarm_core.train.__file__).parent / "accelerate_configs" / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type.name == kind and cfg.num_processes == procs
    if kind == "FSDP":
        fsdp = cfg.fsdp_config
        assert (
            fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_activation_checkpointing"] is True
        )
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "CrossAttnBlock"
        from nsarm_core.models import layers

        assert hasattr(layers, "CrossAttnBlock")  # the class FSDP wraps must exist under that name


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_rerun_without_resume_is_refused_and_leaves_the_run_alone(tmp_path: Path) -> None:
    from nsarm_core.errors import ConfigError

    cfg = _cfg(tmp_path, max_steps=4)
    train(_ToyRecipe(), cfg)
    before = _snapshot(Path(cfg.run_dir))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    with pytest.raises(ConfigError, match="already holds a run .*--resume latest.*--overwrite") as err:
        train(_ToyRecipe(), dataclasses.replace(cfg, max_steps=2))  # a smoke test aimed at a real run
    assert "\n" not in str(err.value)
    assert _snapshot(Path(cfg.run_dir)) == before


def test_overwrite_replaces_the_previous_run(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, max_steps=4, checkpoint_every=1)
    train(_ToyRecipe(), cfg)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    res = train(_ToyRecipe(), dataclasses.replace(cfg, max_steps=2), overwrite=True)
    assert res.start_step == 0 and res.step == 2
    rows = list(csv.DictReader((Path(cfg.run_dir) / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["step_000001", "step_000002"]  # none left over


def test_resume_latest_without_checkpoint_in_a_used_folder_is_refused(tmp_path: Path) -> None:
    from nsarm_core.errors import ConfigError

    cfg = _cfg(tmp_path)
    train(_ToyRecipe(), cfg)
    for ckpt in list_checkpoints(cfg.run_dir):
        import shutil

        shutil.rmtree(ckpt)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    with pytest.raises(ConfigError, match="but no checkpoint to resume from; pass --overwrite"):
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))


def test_resume_with_max_steps_below_the_checkpoint_says_so_and_writes_nothing(tmp_path: Path) -> None:
    from nsarm_core.errors import ConfigError

    cfg = _cfg(tmp_path, max_steps=5)
    train(_ToyRecipe(), cfg)
    before = _snapshot(Path(cfg.run_dir))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    with pytest.raises(ConfigError, match=r"is at step 5, past max_steps=2; pass a --max-steps above 5"):
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest", max_steps=2))
    assert _snapshot(Path(cfg.run_dir)) == before  # config.yaml not rewritten with max_steps=2


def test_failed_validation_does_not_create_or_touch_the_run_folder(tmp_path: Path) -> None:
    class _TooSmall(_ToyRecipe):
        def make_dataset(self) -> Dataset:
            return _ToyData(n=2)  # fewer than one batch of 4

    cfg = _cfg(tmp_path)
    with pytest.raises(InputError, match="fewer than one global batch"):
        train(_TooSmall(), cfg)
    assert not Path(cfg.run_dir).exists()


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    from nsarm_core.errors import ConfigError

    with pytest.raises(ConfigError, match="pass only one of them"):
        train(_ToyRecipe(), _cfg(tmp_path, resume="latest"), overwrite=True)
    assert not (tmp_path / "run").exists()


def test_unreadable_metrics_log_on_resume_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, max_steps=4, checkpoint_every=2)
    train(_ToyRecipe(), cfg, stop_after=2)
    run = Path(cfg.run_dir)
    (run / "metrics.csv").write_bytes(b"step,loss\n1,0.5\n\xff\xfe,0.4\n")
    before = _snapshot(run)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    with pytest.raises(InputError, match=r"metrics.csv is not a metrics log nsarm can continue"):
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))
    assert _snapshot(run) == before

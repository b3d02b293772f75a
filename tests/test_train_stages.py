"""Stage recipes on the tiny presets: two steps give a finite loss, the model exports, a checkpoint resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsarm_core.errors import ConfigError
from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import train
from nsarm_core.train.stage1 import Stage1Recipe, Stage1Settings

pytest.importorskip("accelerate")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture()
def hr_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hr"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        # smooth random images (upsampled noise), a little larger than the 256 px crop
        small = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        Image.fromarray(small).resize((80, 72), Image.Resampling.BICUBIC).save(root / f"{i}.png")
    return root


# A network for a 4x4 LR latent: 64 px HR (tiny-64: VAE grids 2, 4, 8), x2, 32 px LR; K_t = 2 of 3 scales.
TINY_NET = {
    "in_channels": 8, "latent_size": [4, 4], "feature_widths": [8, 16], "branch_grids": [[2, 2], [4, 4]],
    "branch_dims": [16, 16], "branch_depths": [1, 1], "branch_heads": [2, 2],
}  # fmt: skip
STAGE1 = {
    "schedule": "tiny-64", "vae": "tiny", "transform_net": TINY_NET, "degradation": "bicubic", "scale": 2,
}  # fmt: skip


def _stage1_cfg(tmp_path: Path, hr_dir: Path, **kw) -> TrainConfig:
    stage = {**STAGE1, "hr_dirs": [str(hr_dir)]}
    base = dict(
        run_dir=str(tmp_path / "run1"), max_steps=2, batch_size=2, lr=1e-3, checkpoint_every=1, log_every=1,
        num_workers=0, progress=False, tensorboard=False, cpu=True, stage=stage,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_stage1_two_steps_export_and_resume(tmp_path: Path, hr_dir: Path) -> None:
    from nsarm_core.models.transform_net import TransformNet

    cfg = _stage1_cfg(tmp_path, hr_dir)
    full = train(Stage1Recipe.from_config(cfg), cfg)
    assert len(full.losses) == 2 and all(np.isfinite(full.losses))
    assert set(full.last_metrics) == {"mse/scale_00", "mse/scale_01"}
    net = TransformNet.from_pretrained(full.final_dir / "transform_net")
    assert net.config.branch_grids == ((2, 2), (4, 4))

    from accelerate.state import AcceleratorState

    part_cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run2"))
    AcceleratorState._reset_state(True)
    train(Stage1Recipe.from_config(part_cfg), part_cfg, stop_after=1)
    AcceleratorState._reset_state(True)
    resumed = train(Stage1Recipe.from_config(part_cfg), dataclasses.replace(part_cfg, resume="latest"))
    assert resumed.start_step == 1 and resumed.losses == full.losses[1:]


def test_stage1_settings_are_validated(tmp_path: Path, hr_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stage setting"):
        Stage1Settings.from_stage({"hr_dirs": [str(hr_dir)], "sheduel": "tiny-64"})
    with pytest.raises(ConfigError, match="either"):
        Stage1Settings.from_stage({})
    # x4 from 64 px gives a 2x2 LR latent, but the network expects 4x4
    cfg = _stage1_cfg(tmp_path, hr_dir)
    cfg = dataclasses.replace(cfg, stage={**cfg.stage, "scale": 4})
    with pytest.raises(ConfigError, match="LR latent"):
        Stage1Recipe.from_config(cfg).build_models()


def test_stage1_loss_targets_are_the_hr_residuals(hr_dir: Path) -> None:
    # With the network's maps replaced by the true residuals the loss is exactly zero: the target is right.
    from nsarm_core.models.bsq import decompose_into_residual_scales
    from nsarm_core.models.transform_net import latent_maps_to_outputs

    settings = Stage1Settings.from_stage({**STAGE1, "hr_dirs": [str(hr_dir)]})
    recipe = Stage1Recipe(settings)
    models = recipe.build_models()
    batch = torch.utils.data.default_collate([recipe.make_dataset()[i] for i in range(2)])
    hr_latent = models["vae"].encode_raw(batch["hr"])
    residuals = decompose_into_residual_scales(hr_latent, recipe.schedule.vae_grids).residuals[:2]

    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return latent_maps_to_outputs(residuals)

    loss, metrics = recipe.compute_loss(
        {"vae": models["vae"], "transform_net": Oracle()}, batch, torch.Generator()
    )
    assert float(loss) == 0.0 and set(metrics.values()) == {0.0}


# ------------------------------------------------------------------------------------------------ stage 2

STAGE2 = {
    "schedule": "tiny-64", "vae": "tiny-d14", "transformer": "tiny",
    "transform_net": {**TINY_NET, "in_channels": 14}, "degradation": "bicubic", "scale": 2,
    "flip_layers": 3, "flip_strength": 0.3,
}  # fmt: skip


def test_stage2_two_steps_export_and_resume(tmp_path: Path, hr_dir: Path) -> None:
    from nsarm_core.train.stage2 import Stage2Recipe

    cfg = _stage1_cfg(
        tmp_path, hr_dir, stage={**STAGE2, "hr_dirs": [str(hr_dir)]}, run_dir=str(tmp_path / "s2a")
    )
    full = train(Stage2Recipe.from_config(cfg), cfg)
    assert len(full.losses) == 2 and all(np.isfinite(full.losses))
    assert {"ce/scale_00", "ce/scale_02", "bit_acc/scale_02"} <= set(full.last_metrics)
    assert (full.final_dir / "transformer" / "model.safetensors").is_file()
    assert (full.final_dir / "transform_net" / "model.safetensors").is_file()

    from accelerate.state import AcceleratorState

    part_cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "s2b"))
    AcceleratorState._reset_state(True)
    train(Stage2Recipe.from_config(part_cfg), part_cfg, stop_after=1)
    AcceleratorState._reset_state(True)
    resumed = train(Stage2Recipe.from_config(part_cfg), dataclasses.replace(part_cfg, resume="latest"))
    assert resumed.losses == full.losses[1:]


def test_stage2_gradient_reaches_the_transformation_network(hr_dir: Path) -> None:
    from nsarm_core.train.stage2 import Stage2Recipe, Stage2Settings

    recipe = Stage2Recipe(Stage2Settings.from_stage({**STAGE2, "hr_dirs": [str(hr_dir)], "flip_layers": 0}))
    models = recipe.build_models()
    batch = torch.utils.data.default_collate([recipe.make_dataset()[i] for i in range(2)])
    loss, metrics = recipe.compute_loss(models, batch, torch.Generator().manual_seed(0))
    # Random init: about log(2) per bit.
    assert 0.3 < float(loss.detach()) < 1.5 and len([k for k in metrics if k.startswith("ce/")]) == 3
    loss.backward()
    net_grads = [p.grad for p in models["transform_net"].parameters() if p.grad is not None]
    assert net_grads and any(float(g.abs().sum()) > 0 for g in net_grads)  # straight-through BSQ, E.4
    assert all(p.grad is None for p in models["vae"].parameters())


def test_stage2_transform_net_learning_rate_scale(hr_dir: Path) -> None:
    from nsarm_core.train.stage2 import Stage2Recipe, Stage2Settings

    stage = {**STAGE2, "hr_dirs": [str(hr_dir)], "transform_net_lr_scale": 0.1}
    recipe = Stage2Recipe(Stage2Settings.from_stage(stage), base_lr=2e-4)
    models = recipe.build_models()
    groups = recipe.trainable_parameters(models)
    net_ids = {id(p) for p in models["transform_net"].parameters()}
    net_groups = [g for g in groups if id(g["params"][0]) in net_ids]
    other = [g for g in groups if id(g["params"][0]) not in net_ids]
    assert net_groups and all(g["lr"] == pytest.approx(2e-5) for g in net_groups)
    assert other and all("lr" not in g for g in other)  # the transformer takes the optimiser's lr
    # The scheduler multiplies each group's own starting rate, so the ratio holds through training.
    opt = torch.optim.AdamW(groups, lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert sorted({round(lr, 9) for lr in sched.get_last_lr()}) == [1e-5, 1e-4]

    with pytest.raises(ConfigError, match="base learning rate"):
        Stage2Recipe(Stage2Settings.from_stage(stage)).trainable_parameters(models)
    with pytest.raises(ConfigError, match="transform_net_lr_scale must be > 0"):
        Stage2Settings.from_stage({**stage, "transform_net_lr_scale": 0})


def test_base_pretraining_uses_the_plain_hr_decomposition(hr_dir: Path) -> None:
    from nsarm_core.models.bsq import decompose_into_residual_scales
    from nsarm_core.models.sampler import vae_bits_to_tokens
    from nsarm_core.train.stage1 import encode_frozen
    from nsarm_core.train.stage2 import Stage2Recipe, Stage2Settings, bitwise_ce

    stage = {**STAGE2, "hr_dirs": [str(hr_dir)], "flip_layers": 0, "transform_net": None}
    recipe = Stage2Recipe(Stage2Settings.from_stage(stage))
    models = recipe.build_models()
    assert set(models) == {"vae", "transformer"}
    assert [n for g in recipe.trainable_parameters(models) for n in g["params"]]  # the transformer trains
    batch = torch.utils.data.default_collate([recipe.make_dataset()[i] for i in range(2)])

    # A transformer that predicts exactly the Alg. 1 bits of the HR latent gets a near-zero loss, so the labels
    # are the plain decomposition (no LR-derived scales).
    hr_bits = decompose_into_residual_scales(
        encode_frozen(models["vae"], batch["hr"]), recipe.schedule.vae_grids
    ).bits
    labels = torch.cat([vae_bits_to_tokens(b, True) for b in hr_bits], dim=1)  # [B, L, d_vae]

    class Oracle(torch.nn.Module):
        def forward(self, text, x_blc, schedule, cond_drop=None):  # noqa: ANN001, ANN201
            logits = torch.full((*labels.shape, 2), -20.0)
            logits.scatter_(-1, labels.long()[..., None], 20.0)
            return logits.reshape(*labels.shape[:2], -1)

    loss, _ = recipe.compute_loss({"vae": models["vae"], "transformer": Oracle()}, batch, torch.Generator())
    assert float(loss) < 1e-6
    assert float(bitwise_ce(Oracle()(None, None, None), 1 - labels)[0].mean()) > 10  # and not any labels

    with pytest.raises(ConfigError, match="base pretraining"):
        Stage2Recipe(Stage2Settings.from_stage({**stage, "transform_net_weights": "x"})).build_models()


def test_bitwise_ce_layout() -> None:
    from nsarm_core.train.stage2 import bitwise_ce

    labels = torch.tensor([[[1, 0, 1]]], dtype=torch.uint8)  # [B=1, l=1, d_vae=3]
    # [..., 2j] is bit j = 0, [..., 2j+1] bit j = 1: strongly predict 1, 0, 0
    logits = torch.tensor([[[-9.0, 9.0, 9.0, -9.0, 9.0, -9.0]]])
    ce, acc = bitwise_ce(logits, labels)
    assert acc.item() == pytest.approx(2 / 3)
    assert ce.item() == pytest.approx((2 * 1.5e-8 + 18.0) / 3, abs=1e-4)


@pytest.mark.parametrize("name", ["stage1_nsarm", "stage2_nsarm"])
def test_shipped_stage_configs_load_and_fit_the_official_geometry(name: str) -> None:
    import nsarm_core.train
    from nsarm_core.models.transform_net import build_transform_net
    from nsarm_core.models.vae import build_vae
    from nsarm_core.scales import get_named_schedule
    from nsarm_core.train.config import load_config
    from nsarm_core.train.stage1 import check_geometry
    from nsarm_core.train.stage2 import Stage2Settings

    cfg = load_config(Path(nsarm_core.train.__file__).parent / "configs" / f"{name}.yaml")
    settings = (Stage1Settings if name == "stage1_nsarm" else Stage2Settings).from_stage(cfg.stage)
    with torch.device("meta"):
        vae = build_vae(settings.vae)
    net = build_transform_net(settings.transform_net, device="meta")
    assert check_geometry(get_named_schedule(settings.schedule), vae, net, settings.data.scale) == (
        1024,
        1024,
    )


def test_stage2_with_a_text_encoder(tmp_path: Path, hr_dir: Path) -> None:
    """Captions -> a tiny random T5 (local sentencepiece model) -> the transformer's text path."""
    sentencepiece = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    from nsarm_core.train.stage2 import Stage2Recipe, Stage2Settings

    words = (
        "a photo of the cat dog bird on grass under blue sky high definition image with rich details".split()
    )
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(4 + i % 9)) for i in range(400)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "spiece"), vocab_size=100,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    spm = tmp_path / "spm"
    spm.mkdir()
    (spm / "spiece.model").write_bytes((tmp_path / "spiece.model").read_bytes())
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(spm), extra_ids=0)
    t5 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=len(tokenizer), d_model=128, d_kv=32, num_layers=1, num_heads=2, d_ff=128,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    )  # fmt: skip
    t5.save_pretrained(str(tmp_path / "t5"))
    tokenizer.save_pretrained(str(tmp_path / "t5"))
    (hr_dir / "0.txt").write_text(
        "a photo of a cat on grass under blue sky with many rich details everywhere"
    )

    transformer = {
        "depth": 2, "embed_dim": 128, "num_heads": 2, "d_vae": 56, "patchify": True, "text_channels": 128,
        "text_maxlen": 8, "block_chunks": 1, "cond_drop_rate": 0.5, "use_text": True,
    }  # fmt: skip
    stage = {
        **STAGE2,
        "transformer": transformer,
        "text_encoder": str(tmp_path / "t5"),
        "hr_dirs": [str(hr_dir)],
    }
    recipe = Stage2Recipe(Stage2Settings.from_stage(stage))
    models = recipe.build_models()
    assert "text_encoder" in models
    batch = torch.utils.data.default_collate([recipe.make_dataset()[i] for i in range(2)])
    assert batch["caption"][0].startswith(
        "a photo"
    )  # the sidecar caption, longer than text_maxlen: truncated
    loss, _ = recipe.compute_loss(models, batch, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    loss.backward()
    assert models["transformer"].text_proj_for_ca[0].weight.grad is not None
    assert all(p.grad is None for p in models["text_encoder"].parameters())


def test_infinity_token_weights() -> None:
    """Spec C.7: a token of scale k weighs sqrt(area_K / area_k), normalised to sum 1 over the sequence."""
    from nsarm_core.train.stage2 import token_weights, weighted_ce

    lengths = [1, 4, 16]
    w = token_weights(lengths, "infinity")
    raw = torch.tensor([4.0] + [2.0] * 4 + [1.0] * 16)  # sqrt(16/1), sqrt(16/4), sqrt(16/16)
    assert torch.allclose(w, raw / raw.sum())
    assert torch.allclose(token_weights(lengths, "tokens"), torch.full((21,), 1 / 21))
    per_scale = [float(x.sum()) for x in token_weights(lengths, "scales").split(lengths)]
    assert per_scale == pytest.approx([1 / 3] * 3)
    ce = torch.arange(42, dtype=torch.float32).reshape(2, 21)
    assert torch.allclose(weighted_ce(ce, lengths, "infinity"), (ce * w).sum(1).mean())
    with pytest.raises(ConfigError, match="valid"):
        token_weights(lengths, "area")

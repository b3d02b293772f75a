"""The CFW stage (train/cfw.py), its discriminator and the degradation mixture, on a random tiny NSARM model.

A few steps on synthetic photos: the latent cache is built once and reused on resume, the adversarial term
switches on at ``gan_start``, and the exported model folder loads with its CFW module and default fidelity.
An overfit run checks that CFW plus the decoder actually learn (the L1 to the HR falls).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nsarm_core.data.datasets import HRFolderDataset, degradation_mixture
from nsarm_core.errors import ConfigError
from nsarm_core.models.discriminator import PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss
from nsarm_core.models.nsarm import NSARM
from nsarm_core.train.cfw import (
    CACHE_NAME,
    CachedWindows,
    CFWRecipe,
    CFWSettings,
    draw_fidelity,
    init_student,
    perturb_latent,
)
from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import train

pytest.importorskip("accelerate")
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state", "one_torch_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(3):
        small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(small).resize((300, 280), Image.Resampling.BICUBIC).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def base_model(tiny_dir: Path) -> Path:
    """The frozen model the CFW stage fits on: conftest's random-weight tiny NSARM (only read, never changed)."""
    return tiny_dir


def _cfg(tmp_path: Path, photos: Path, base_model: Path, **kw: object) -> TrainConfig:
    stage = {
        "model": str(base_model),
        "cfw": {"width": 16, "num_blocks": 1, "up_width": 8},
        "default_fidelity": 0.75,
        "crop_size": 32,
        "cache_windows": 4,
        "cache_batch": 2,
        "gan_start": 1,
        "disc_channels": 8,
        "disc_layers": 2,
        "hr_dirs": [str(photos)],
        "degradation": ["bicubic", "light"],
        "degradation_weights": [0.5, 0.5],
    }
    stage.update(kw.pop("stage", {}))  # type: ignore[arg-type]
    base = dict(
        run_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, lr=1e-3, checkpoint_every=1, log_every=1,
        num_workers=0, progress=False, tensorboard=False, cpu=True, stage=stage,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _upscales_keeping_frozen_parts(
    model_dir: Path, frozen_from: Path
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """An exported model upscales a window, and its transformer is ``frozen_from``'s, unchanged."""
    from nsarm_core.pipeline import load_pipeline

    pipe = load_pipeline(model_dir, device="cpu")
    lr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = pipe.upscale_window(lr, seed=1)
    assert out.shape == (1, 3, 256, 256) and torch.isfinite(out).all()
    frozen = NSARM.from_pretrained(frozen_from)
    for key, value in frozen.transformer.state_dict().items():
        assert torch.equal(pipe.model.transformer.state_dict()[key], value)
    return pipe, lr, out


def test_cfw_stage_trains_caches_resumes_and_exports(tmp_path: Path, photos: Path, base_model: Path) -> None:
    from safetensors.torch import load_file

    from nsarm_core.pipeline import UpscaleSettings, load_pipeline
    from nsarm_core.speck_guard import SpeckGuardConfig

    cfg = _cfg(tmp_path, photos, base_model)
    recipe = CFWRecipe.from_config(cfg)
    result = train(recipe, cfg)
    assert result.final_dir is not None and all(np.isfinite(result.losses))
    # Step 1 is before gan_start: no generator adversarial term; step 2 has it (and its adaptive weight).
    rows = (Path(cfg.run_dir) / "metrics.csv").read_text().splitlines()
    assert "g_loss" in rows[0] and "d_loss" in rows[0]
    assert "gan_lambda" in result.last_metrics and result.last_metrics["gan_lambda"] >= 0
    cache = Path(cfg.run_dir) / CACHE_NAME
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns

    # Resume to a longer run: the cache is reused, not sampled again.
    longer = _cfg(tmp_path, photos, base_model, max_steps=3, resume="latest")
    again = train(CFWRecipe.from_config(longer), longer)
    assert again.start_step == 2 and again.step == 3
    assert cache.stat().st_mtime_ns == stamp
    exported = json.loads((again.final_dir / "model" / "config.json").read_text())
    assert "speck_guard" not in exported  # stage.speck_guard is off by default
    # A damaged cache (bad safetensors header) is sampled again with a warning, not an internal error.
    cache.write_bytes(b"\xff" * 16)
    # stage.speck_guard writes the default speck guard into the exported config (nsarm-tiny's recipe sets it)
    longest = _cfg(tmp_path, photos, base_model, max_steps=4, resume="latest", stage={"speck_guard": True})
    last = train(CFWRecipe.from_config(longest), longest)
    assert last.step == 4
    assert load_file(str(cache))["hr"].shape[0] > 0
    guarded = json.loads((last.final_dir / "model" / "config.json").read_text())
    assert guarded["speck_guard"] == SpeckGuardConfig().to_dict()
    assert load_pipeline(last.final_dir / "model", device="cpu").speck_guard() == SpeckGuardConfig()

    model_dir = again.final_dir / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["cfw"]["default_fidelity"] == 0.75 and config["cfw"]["width"] == 16
    pipe, lr, out = _upscales_keeping_frozen_parts(model_dir, base_model)
    assert pipe.fidelity() == 0.75
    assert not torch.equal(pipe.upscale_window(lr, seed=1, settings=UpscaleSettings(fidelity=0.0)), out)


def test_cfw_settings_are_validated() -> None:
    ok = {"hr_dirs": ["x"]}
    with pytest.raises(ConfigError, match="default_fidelity"):
        CFWSettings.from_stage({**ok, "default_fidelity": 1.5})
    with pytest.raises(ConfigError, match="hr_dirs"):
        CFWSettings.from_stage({})
    with pytest.raises(ConfigError, match="unknown stage setting"):
        CFWSettings.from_stage({**ok, "gan_wieght": 0.1})
    with pytest.raises(ConfigError, match="Did you mean 'tiny'"):
        CFWSettings.from_stage({**ok, "cfw": "tinny"})  # refused before any model is loaded
    with pytest.raises(ConfigError, match="unknown CFW config keys"):
        CFWSettings.from_stage({**ok, "cfw": {"widht": 16}})
    with pytest.raises(ConfigError, match="stage.gan_start"):  # --set gives text; typed like the other keys
        CFWSettings.from_stage({**ok, "gan_start": "soon"})
    with pytest.raises(ConfigError, match="CFW preset name or a mapping"):
        CFWSettings.from_stage({**ok, "cfw": 3})
    with pytest.raises(ConfigError, match="not both 0"):
        CFWSettings.from_stage({**ok, "hr_weight": 0.0})
    with pytest.raises(ConfigError, match="set stage.distill_weight > 0 too"):
        CFWSettings.from_stage({**ok, "teacher": "nsarm-tiny"})
    with pytest.raises(ConfigError, match="set stage.decoder_shuffle too"):
        CFWSettings.from_stage({**ok, "cfw_blocks": 2})
    with pytest.raises(ConfigError, match="stage.gradient_weight"):
        CFWSettings.from_stage({**ok, "gradient_weight": 1.0})  # no teacher output to compare with
    with pytest.raises(ConfigError, match="stage.gradient_weight"):
        CFWSettings.from_stage({**ok, "distill_weight": 1.0, "gradient_weight": -1.0})
    with pytest.raises(ConfigError, match="crop_size"):
        CachedWindows(
            {"hr": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)}, crop=36, stride=8, scale=4, seed=0
        )


def test_a_fast_student_decoder_is_distilled_from_the_frozen_models_own(
    tmp_path: Path, photos: Path, base_model: Path
) -> None:
    """stage.decoder_shuffle (docs/architecture.md E.12): the student starts from the teacher's weights, learns
    with the distillation term logged, and exports a model with the new decoder geometry that upscales; the
    frozen parts stay the teacher's."""

    teacher_cfg = _cfg(tmp_path, photos, base_model, run_dir=str(tmp_path / "teacher"))
    teacher_dir = train(CFWRecipe.from_config(teacher_cfg), teacher_cfg).final_dir / "model"
    # Without a CFW module there is no teacher to distil from: refused before any sampling.
    no_teacher = _cfg(tmp_path, photos, base_model, stage={"decoder_shuffle": 2, "distill_weight": 1.0})
    with pytest.raises(ConfigError, match="need a teacher with CFW"):
        CFWRecipe.from_config(no_teacher).build_models()

    stage = {
        "model": str(teacher_dir),
        "decoder_shuffle": 2,
        "cfw_blocks": 1,
        "distill_weight": 1.0,
        "hr_weight": 0.5,
    }
    cfg = _cfg(tmp_path, photos, base_model, run_dir=str(tmp_path / "student"), stage=stage)
    recipe = CFWRecipe.from_config(cfg)
    result = train(recipe, cfg)
    assert "distill" in result.last_metrics and result.last_metrics["distill"] > 0
    exported = json.loads((result.final_dir / "model" / "config.json").read_text())
    assert exported["vae"]["decoder_shuffle"] == 2 and exported["cfw"]["num_blocks"] == 1
    pipe, _, _ = _upscales_keeping_frozen_parts(result.final_dir / "model", teacher_dir)
    teacher = NSARM.from_pretrained(teacher_dir)
    assert torch.equal(pipe.model.vae.encoder.conv_in.conv.weight, teacher.vae.encoder.conv_in.conv.weight)
    # The teacher itself was never trained: its copy in the recipe still holds the folder's weights.
    assert recipe.teacher is not None
    for key, value in recipe.teacher.decoder.state_dict().items():
        assert torch.equal(teacher.vae.decoder.state_dict()[key], value)

    # A second round continues the student (stage.model) against the same teacher (stage.teacher).
    student_dir = result.final_dir / "model"
    stage2 = {
        "model": str(student_dir),
        "teacher": str(teacher_dir),
        "decoder_shuffle": 2,
        "distill_weight": 1.0,
    }
    cfg2 = _cfg(tmp_path, photos, base_model, run_dir=str(tmp_path / "student2"), max_steps=1, stage=stage2)
    recipe2 = CFWRecipe.from_config(cfg2)
    models = recipe2.build_models()
    student = NSARM.from_pretrained(student_dir)
    for key, value in models["generator"].decoder.state_dict().items():  # continued, not re-initialised
        assert torch.equal(student.vae.decoder.state_dict()[key], value)
    assert recipe2.teacher is not None
    assert torch.equal(recipe2.teacher.decoder.conv_out.conv.weight, teacher.vae.decoder.conv_out.conv.weight)
    # A teacher whose sampler differs would teach for other latents: refused.
    other = NSARM.from_pretrained(teacher_dir)
    with torch.no_grad():
        next(other.transformer.parameters()).add_(1.0)
    other_dir = other.save_pretrained(tmp_path / "other")
    wrong = _cfg(tmp_path, photos, base_model, stage={**stage2, "teacher": str(other_dir)})
    with pytest.raises(ConfigError, match="must be .* with another decoder"):
        CFWRecipe.from_config(wrong).build_models()


def test_init_student_copies_what_fits_and_repeats_the_output_filters() -> None:
    import dataclasses

    from nsarm_core.models.vae import Decoder, get_preset

    full_cfg = get_preset("tiny")
    torch.manual_seed(0)
    teacher, student = Decoder(full_cfg), Decoder(dataclasses.replace(full_cfg, decoder_shuffle=2))
    assert init_student(student, teacher) == []
    for key, value in teacher.state_dict().items():
        if not key.startswith("conv_out."):
            assert torch.equal(student.state_dict()[key], value)
    w = student.conv_out.conv.weight
    assert torch.equal(w[0::4], teacher.conv_out.conv.weight) and torch.equal(
        w[3::4], teacher.conv_out.conv.weight
    )
    # After the pixel shuffle, each 2x2 block of the student's output repeats the teacher's conv_out value.
    h = torch.randn(1, full_cfg.base_ch, 4, 4)
    with torch.no_grad():
        out = torch.nn.functional.pixel_shuffle(student.conv_out(h), 2)
        blocks = torch.repeat_interleave(torch.repeat_interleave(teacher.conv_out(h), 2, 2), 2, 3)
    torch.testing.assert_close(out, blocks, rtol=0, atol=1e-5)  # the same sums, blocked differently
    # A deeper trunk than the teacher's has nothing to copy for its extra blocks: named as new.
    small = torch.nn.Sequential(torch.nn.Linear(2, 2))
    big = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert init_student(big, small) == ["1.weight", "1.bias"]


def test_cfw_settings_convert_stage_values() -> None:
    # stage.model is the CFW stage's own frozen model (a folder or a name), not a geometry preset
    folder = CFWSettings.from_stage({"model": "runs/nsarm-tiny-v1", "hr_dirs": ["x"]})
    assert folder.model == "runs/nsarm-tiny-v1"
    named = CFWSettings.from_stage(
        {"model": "nsarm-tiny", "cfw": "large", "degradation": "light", "gan_start": "7", "hr_dirs": ["x"]}
    )
    assert (named.model, named.cfw, named.data.degradation, named.gan_start) == (
        "nsarm-tiny",
        "large",
        "light",
        7,
    )
    mixed = CFWSettings.from_stage(
        {"cfw": {"width": 16, "num_blocks": 1, "up_width": 8}, "degradation": ["bicubic", "light"],
         "degradation_weights": [1, 3], "default_fidelity": "0.25", "hr_dirs": ["x"]}
    )  # fmt: skip
    assert mixed.cfw == {"width": 16, "num_blocks": 1, "up_width": 8} and mixed.default_fidelity == 0.25
    assert mixed.data.degradation == ("bicubic", "light") and mixed.data.degradation_weights == (1, 3)


def test_cached_windows_are_aligned_crops() -> None:
    g = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 255, (2, 3, 64, 64), generator=g, dtype=torch.uint8)
    lr = torch.randint(0, 255, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    z = torch.arange(2 * 14 * 8 * 8, dtype=torch.float32).reshape(2, 14, 8, 8)
    ds = CachedWindows({"hr": hr, "lr": lr, "latent": z}, crop=32, stride=8, scale=4, seed=0)
    seen = set()
    for i in range(2):
        for e in range(6):
            ds.set_epoch(e)
            s = ds[i]
            assert (
                s["hr"].shape == (3, 32, 32)
                and s["lr"].shape == (3, 8, 8)
                and s["latent"].shape == (14, 4, 4)
            )
            # Recover the crop position from the latent (its values are the element indices).
            flat = int(s["latent"][0, 0, 0]) - i * 14 * 64
            y, x = divmod(flat, 8)
            assert torch.equal(s["hr"], hr[i, :, 8 * y : 8 * y + 32, 8 * x : 8 * x + 32].float() / 127.5 - 1)
            assert torch.equal(s["lr"], lr[i, :, 2 * y : 2 * y + 8, 2 * x : 2 * x + 8].float() / 127.5 - 1)
            seen.add((y, x))
    assert len(seen) > 1


def test_draw_fidelity_puts_mass_on_the_endpoints() -> None:
    w = draw_fidelity(20000, torch.Generator().manual_seed(0), 0.3)
    assert float(w.min()) == 0.0 and float(w.max()) == 1.0
    assert abs(float((w == 0).float().mean()) - 0.15) < 0.01
    assert abs(float((w == 1).float().mean()) - 0.15) < 0.01
    assert torch.equal(w, draw_fidelity(20000, torch.Generator().manual_seed(0), 0.3))


def test_discriminator_and_losses() -> None:
    torch.manual_seed(0)
    d = PatchDiscriminator(8, 3)
    logits = d(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert logits.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6 patches
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - 2) + relu(1 - 0.5) = 0.5 over 2 -> 0.25; relu(1 - 2) + relu(1 + 0) = 1 over 2 -> 0.5; halved.
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))
    assert float(generator_loss(fake)) == pytest.approx(1.0)
    # The adaptive weight balances the two gradients at the last layer: here exactly their norm ratio.
    w = torch.ones(3, requires_grad=True)
    rec, g = (3 * w).sum(), (0.5 * w).sum()
    assert float(adaptive_weight(rec, g, w)) == pytest.approx(6.0, rel=1e-3)


def test_degradation_mixture(photos: Path) -> None:
    configs, p = degradation_mixture(["realesrgan", "bicubic"], [3, 1])
    assert len(configs) == 2 and p.tolist() == [0.75, 0.25]
    for bad in ([1.0], [-1, 2], [0, 0], [float("nan"), 1]):
        with pytest.raises(ConfigError, match="degradation weights"):
            degradation_mixture(["realesrgan", "bicubic"], bad)
    with pytest.raises(ConfigError, match="empty"):
        degradation_mixture([])
    ds = HRFolderDataset([str(photos)], (64, 64), ["bicubic", "light"], 4, 0, degradation_weights=[1, 1])
    picks = []
    for e in range(10):
        ds.set_epoch(e)
        picks += [ds[i]["degradation"] for i in range(len(ds))]
    assert set(picks) == {0, 1}
    # One preset: no extra random draw, so the samples are those of the plain single-preset dataset.
    one = HRFolderDataset([str(photos)], (64, 64), "light", 4, 0)
    listed = HRFolderDataset([str(photos)], (64, 64), ["light"], 4, 0)
    assert torch.equal(one[1]["lr"], listed[1]["lr"]) and one[1]["degradation"] == 0


@pytest.mark.slow
def test_cfw_brings_the_lr_content_into_the_decoder(tmp_path: Path, photos: Path, base_model: Path) -> None:
    """After a short L1-only run on 4 cached windows, decoding with CFW at w = 1 is much closer to the HR than the
    base model's decoder, and closer than the trained decoder alone (w = 0): the LR pixels carry the content."""
    from safetensors.torch import load_file

    cfg = _cfg(
        tmp_path, photos, base_model, max_steps=80, batch_size=4, lr=2e-3, schedule="constant",
        checkpoint_every=0, log_every=10, stage={"gan_weight": 0.0, "fidelity_endpoints": 1.0},
    )  # fmt: skip
    result = train(CFWRecipe.from_config(cfg), cfg)
    cache = load_file(str(Path(cfg.run_dir) / CACHE_NAME))
    lr, hr, z = (cache["lr"].float() / 127.5 - 1), (cache["hr"].float() / 127.5 - 1), cache["latent"]
    trained = NSARM.from_pretrained(result.final_dir / "model")
    base = NSARM.from_pretrained(base_model)
    with torch.no_grad():
        l1_base = float((base.vae.decode(z) - hr).abs().mean())
        l1_w0 = float((trained.vae.decode(z) - hr).abs().mean())
        l1_w1 = float((trained.vae.decode(z, trained.cfw.wrap(lr, 1.0)) - hr).abs().mean())
    # measured: base 0.467, trained w = 0 0.400, w = 1 0.355 (80 steps)
    assert l1_w1 < 0.85 * l1_base and l1_w1 < 0.95 * l1_w0, (l1_base, l1_w0, l1_w1)


def test_train_cfw_command_runs_the_cfw_stage_and_needs_overwrite(
    tmp_path: Path, photos: Path, base_model: Path
) -> None:
    """`nsarm train-cfw` goes through train/run.py's `cfw` stage: cfw_tiny by default, --overwrite as elsewhere."""
    from accelerate.state import AcceleratorState
    from typer.testing import CliRunner

    from nsarm_cli.main import app

    run = tmp_path / "run"
    sets = [
        f"stage.model={base_model}", f"stage.hr_dirs=[{photos}]", "stage.cfw={width: 16, num_blocks: 1, up_width: 8}",
        "stage.crop_size=32", "stage.cache_windows=2", "stage.cache_batch=2", "stage.disc_channels=8",
        "stage.disc_layers=2", "stage.degradation=bicubic", "stage.degradation_weights=null",
        "stage.preload_images=false", "batch_size=2", "checkpoint_every=0", "progress=false", "tensorboard=false",
        "cpu=true",
    ]  # fmt: skip
    args = ["train-cfw", *[a for s in sets for a in ("--set", s)], "--run-dir", str(run), "--max-steps", "1"]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["stage"] == "cfw" and summary["step"] == 1
    model_dir = Path(summary["model_dir"])
    assert model_dir == run / "final" / "model" and json.loads((model_dir / "config.json").read_text())["cfw"]
    AcceleratorState._reset_state(True)
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    AcceleratorState._reset_state(True)
    replaced = runner.invoke(app, [*args, "--overwrite", "--json"])
    assert replaced.exit_code == 0, replaced.output


def test_perturb_latent_touches_only_samples_with_fidelity_and_about_the_fraction() -> None:
    latent = torch.randn(4, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    w = torch.tensor([0.0, 0.5, 1.0, 0.0])
    out = perturb_latent(latent, w, 0.05, torch.Generator().manual_seed(0))
    changed = (out != latent).any(dim=1)  # [B, H, W]
    assert not changed[0].any() and not changed[3].any()  # w = 0: the paper's decoder input, untouched
    for i in (1, 2):
        assert 0.02 < changed[i].float().mean() < 0.09
    assert torch.equal(perturb_latent(latent, w, 0.0, torch.Generator()), latent)
    assert torch.equal(out, perturb_latent(latent, w, 0.05, torch.Generator().manual_seed(0)))


def test_latent_noise_is_bounded() -> None:
    with pytest.raises(ConfigError, match="latent_noise"):
        CFWSettings.from_stage({"hr_dirs": ["x"], "latent_noise": 1.5})


def test_gradient_l1_compares_neighbour_differences() -> None:
    """``stage.gradient_weight``'s term: the mean of the horizontal and the vertical difference errors; blind to a
    constant offset, and a diagonal edge drawn in 2-pixel steps (a pixel-shuffle student's staircase) costs it
    twice what it costs the pixel L1."""
    from nsarm_core.train.cfw import gradient_l1

    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    assert torch.isclose(gradient_l1(x, torch.zeros_like(x)), torch.tensor(0.5))  # dx errors 1, dy errors 0
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = ((xx - yy) / 4).clamp(-1, 1)[None, None]
    stairs = ((2 * (xx // 2) - 2 * (yy // 2)) / 4).clamp(-1, 1)[None, None]
    assert gradient_l1(smooth, smooth) == 0
    assert torch.isclose(gradient_l1(smooth + 0.3, smooth), torch.tensor(0.0), atol=1e-6)
    assert gradient_l1(stairs, smooth) > 1.9 * torch.nn.functional.l1_loss(stairs, smooth)

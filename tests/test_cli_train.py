"""The training commands end to end through CliRunner: tokenizer -> stage 1 -> stage 2 (with resume) -> export ->
``nsarm upscale --model <exported folder>`` gives an x4 image.

The geometry is the smallest x4 one: 128 px HR (schedule tiny-128, VAE grids 2..16), 32 px LR (4x4 latent), a
transformation network for K_t = 2 scales; everything else comes from the shipped *_tiny configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nsarm_cli.main import app

pytest.importorskip("accelerate")

runner = CliRunner()

NET = (
    "stage.transform_net={in_channels: 14, latent_size: [4, 4], feature_widths: [8, 16], "
    "branch_grids: [[2, 2], [4, 4]], branch_dims: [16, 16], branch_depths: [1, 1], branch_heads: [2, 2]}"
)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _images(root: Path, n: int, size: tuple[int, int], seed: int) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(root / f"{i}.png")
    return root


def _invoke(*args: str) -> dict:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # one process runs several trainings: reset accelerate's singleton
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _common(run: Path, hr: Path) -> list[str]:
    sets = [
        "batch_size=2", "num_workers=0", "tensorboard=false", "progress=false", "cpu=true", "checkpoint_every=1",
        f"stage.hr_dirs=[{hr}]",
    ]  # fmt: skip
    return ["--run-dir", str(run), *[a for s in sets for a in ("--set", s)]]


@pytest.mark.slow  # three short trainings, an export and an upscale end to end: ~20 s on 2 loaded cores
def test_tokenizer_stage1_stage2_export_and_upscale(tmp_path: Path) -> None:
    hr = _images(tmp_path / "hr", 4, (150, 140), 0)
    val = _images(tmp_path / "val", 2, (64, 64), 1)

    # 1. Tokenizer: 2 steps on 64 px crops, held-out PSNR on 64 px windows.
    tok = _invoke(
        "train-tokenizer", *_common(tmp_path / "tok", hr), "--max-steps", "2",
        "--set", "stage.schedule=tiny-64", "--set", "stage.eval_schedule=tiny-64", "--set", f"stage.val_dir={val}",
    )  # fmt: skip
    assert tok["step"] == 2 and all(np.isfinite(tok["losses"])) and np.isfinite(tok["psnr"])
    vae_dir = tmp_path / "tok" / "final" / "vae"
    assert (vae_dir / "model.safetensors").is_file()
    assert json.loads((tmp_path / "tok" / "final" / "reconstruction.json").read_text())["psnr"] == tok["psnr"]

    # 2. Stage 1: stop after one step, then --resume latest finishes the second.
    s1_args = [
        "train-stage1", *_common(tmp_path / "s1", hr), "--set", "stage.schedule=tiny-128",
        "--set", f"stage.vae_weights={vae_dir}", "--set", NET, "--set", "stage.degradation=bicubic",
    ]  # fmt: skip
    first = _invoke(*s1_args, "--max-steps", "1")
    assert first["step"] == 1 and np.isfinite(first["last_loss"])
    resumed = _invoke(*s1_args, "--max-steps", "2", "--resume", "latest")
    assert (resumed["start_step"], resumed["step"]) == (1, 2) and len(resumed["losses"]) == 1
    assert (tmp_path / "s1" / "final" / "transform_net" / "model.safetensors").is_file()

    # 2b. Base pretraining (no transformation network), then the stage-1-only model: stage-1 net + base.
    base = _invoke(
        "train-base", *_common(tmp_path / "base", hr), "--max-steps", "2", "--set", "stage.schedule=tiny-128",
        "--set", f"stage.vae_weights={vae_dir}", "--set", "stage.transformer=tiny",
    )  # fmt: skip
    assert base["step"] == 2 and all(np.isfinite(base["losses"])) and "model_dir" not in base
    base_gpt = tmp_path / "base" / "final" / "transformer" / "model.safetensors"
    assert base_gpt.is_file() and not (tmp_path / "base" / "final" / "transform_net").exists()
    res = runner.invoke(
        app,
        ["export-model", str(tmp_path / "base"), str(tmp_path / "s1only"), "--stage1", str(tmp_path / "s1")],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train-base", "--config", "stage2_tiny", "--max-steps", "1"])
    assert res.exit_code == 2 and "stage.transform_net: null" in res.output

    # 3. Stage 2 from the stage-1 network and the base transformer: 2 steps, resumable, assembles final/model.
    s2_args = [
        "train-stage2", *_common(tmp_path / "s2", hr), "--set", "stage.schedule=tiny-128",
        "--set", f"stage.vae_weights={vae_dir}", "--set", NET, "--set", "stage.degradation=bicubic",
        "--set", f"stage.transform_net_weights={tmp_path / 's1' / 'final' / 'transform_net'}",
        "--set", "stage.transformer=tiny", "--set", f"stage.transformer_weights={base_gpt}",
    ]  # fmt: skip
    s2_first = _invoke(*s2_args, "--max-steps", "2", "--resume", "latest")  # no checkpoint yet: a fresh start
    assert s2_first["step"] == 2 and all(np.isfinite(s2_first["losses"]))
    assert s2_first["model_dir"] == str(tmp_path / "s2" / "final" / "model")
    again = _invoke(*s2_args, "--max-steps", "2", "--resume", "latest")  # already finished: nothing to do
    assert (again["start_step"], again["step"], again["losses"]) == (2, 2, [])

    # 4. Explicit export, then upscale with the exported folder: x4.
    out_model = tmp_path / "model"
    res = runner.invoke(app, ["export-model", str(tmp_path / "s2"), str(out_model), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model_dir"] == str(out_model)
    cfg = json.loads((out_model / "config.json").read_text())
    assert cfg["name"] == "model" and cfg["transform_net"]["latent_size"] == [4, 4]

    lr = _images(tmp_path / "lr", 1, (40, 24), 2)
    res = runner.invoke(app, ["upscale", str(lr), "-o", str(tmp_path / "up"), "--model", str(out_model)])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(tmp_path / "up" / "0.png") as im:
        assert im.size == (160, 96)


def test_config_names_and_errors(tmp_path: Path) -> None:
    from nsarm_core.train.run import resolve_config

    assert resolve_config("stage1_tiny", "stage1").name == "stage1_tiny.yaml"
    assert resolve_config(None, "stage2").name == "stage2_tiny.yaml"
    assert resolve_config(None, "cfw").name == "cfw_tiny.yaml"
    res = runner.invoke(app, ["train-stage1", "--config", "stage1_tiyn"])
    assert res.exit_code == 2 and "stage1_tiny" in res.output
    res = runner.invoke(app, ["train-stage1", "--set", "lrr=1"])
    assert res.exit_code == 2 and "Did you mean 'lr'" in res.output
    res = runner.invoke(app, ["export-model", str(tmp_path), str(tmp_path / "m")])
    assert res.exit_code == 2 and "config.yaml" in res.output


@pytest.mark.parametrize("name", ["tokenizer_tiny", "base_tiny", "stage1_tiny", "stage2_tiny"])
def test_shipped_tiny_configs_fit_the_nsarm_tiny_geometry(name: str) -> None:
    from nsarm_core.models.nsarm import get_preset
    from nsarm_core.models.vae import get_preset as get_vae_preset
    from nsarm_core.scales import get_named_schedule
    from nsarm_core.train.config import load_config

    cfg = load_config(resolve_shipped(name))
    tiny = get_preset("nsarm-tiny")
    if name == "tokenizer_tiny":
        from nsarm_core.train.tokenizer import TokenizerSettings

        s = TokenizerSettings.from_stage(cfg.stage)
        assert s.vae == "tiny-d14" and tiny.vae == get_vae_preset(s.vae)
        assert get_named_schedule(s.eval_schedule) == tiny.schedule  # held-out PSNR on nsarm-tiny's HR window
        return
    from nsarm_core.models.transformer import get_preset as gpt_preset

    assert cfg.stage["scale"] == tiny.scale
    if name == "base_tiny":  # the transformer alone: its geometry is spelled out
        assert cfg.stage["transform_net"] is None
        assert get_named_schedule(cfg.stage["schedule"]) == tiny.schedule
        assert get_vae_preset(cfg.stage["vae"]) == tiny.vae
        assert gpt_preset(cfg.stage["transformer"]) == tiny.transformer
    else:  # the stages name the model; its geometry lives once, in models/nsarm.py
        assert cfg.stage["model"] == "nsarm-tiny"
        assert not {"schedule", "vae", "transformer", "transform_net"} & set(cfg.stage)


def resolve_shipped(name: str) -> Path:
    from nsarm_core.train.run import shipped_config_dir

    return shipped_config_dir() / f"{name}.yaml"


def test_a_previous_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    hr = _images(tmp_path / "hr", 2, (150, 140), 0)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("max_steps: 20\n")
    args = [
        "train-stage1", *_common(run, hr), "--set", "stage.degradation=bicubic", "--set", "stage.vae_weights=null",
        "--max-steps", "1",
    ]  # fmt: skip
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "already holds a run (config.yaml, final)" in res.output and "--overwrite" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert (run / "config.yaml").read_text() == "max_steps: 20\n"
    out = _invoke(*args, "--overwrite")
    assert out["step"] == 1 and "max_steps: 1" in (run / "config.yaml").read_text()


def test_stage_model_supplies_the_geometry_once() -> None:
    from nsarm_core.errors import ConfigError
    from nsarm_core.models.nsarm import get_preset
    from nsarm_core.models.transform_net import TransformNetConfig
    from nsarm_core.train.stage1 import Stage1Settings
    from nsarm_core.train.stage2 import Stage2Settings

    s1 = Stage1Settings.from_stage({"model": "nsarm-tiny", "hr_dirs": ["x"]})
    assert (s1.schedule, s1.vae, s1.transform_net) == ("tiny-256", "tiny-d14", "nsarm-tiny")
    s2 = Stage2Settings.from_stage({"model": "nsarm-8b", "hr_dirs": ["x"]})
    assert (s2.schedule, s2.vae, s2.transformer, s2.transform_net) == (
        "sr-1024", "infinity-vae-d56", "infinity-8b", "nsarm-8b"
    )  # fmt: skip
    # a geometry without a preset of its own comes as a mapping of config fields
    s3 = Stage1Settings.from_stage({"model": "tiny", "hr_dirs": ["x"]})
    assert TransformNetConfig.from_dict(s3.transform_net) == get_preset("tiny").transform_net
    # an explicit key (e.g. --set stage.schedule=...) wins over the model's
    explicit = Stage1Settings.from_stage({"model": "nsarm-tiny", "schedule": "tiny-128", "hr_dirs": ["x"]})
    assert explicit.schedule == "tiny-128"
    with pytest.raises(ConfigError, match="Did you mean 'nsarm-tiny'"):
        Stage1Settings.from_stage({"model": "nsarm-tinny", "hr_dirs": ["x"]})

"""TrainConfig: YAML loading, typed --set overrides, validation and the saved copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsarm_core.errors import ConfigError, InputError
from nsarm_core.train.config import TrainConfig, load_config, valid_keys


def test_defaults_are_valid_and_frozen() -> None:
    cfg = TrainConfig()
    assert cfg.betas == (0.9, 0.97)
    assert cfg.ema_decay is None
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_yaml_values_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    # PyYAML reads "1e-4" as a string and "5" as an int; both must become the annotated types.
    path.write_text(
        "run_dir: runs/x\nlr: 1e-4\nclip_grad: 5\nbetas: [0.9, 0.95]\nema_decay: null\n"
        "mixed_precision: bf16\nstage:\n  preset: tiny\n  k_t: 3\n"
    )
    cfg = load_config(path)
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    assert cfg.clip_grad == 5.0 and isinstance(cfg.clip_grad, float)
    assert cfg.betas == (0.9, 0.95)
    assert cfg.mixed_precision == "bf16"
    assert cfg.stage == {"preset": "tiny", "k_t": 3}


def test_overrides_convert_types() -> None:
    cfg = load_config(
        None,
        [
            "lr=3e-4",
            "max_steps=20",
            "betas=0.8,0.99",
            "clip_grad=none",
            "ema_decay=0.999",
            "activation_checkpointing=true",
            "schedule=cosine",
            "resume=latest",
            "stage.preset=tiny",
            "stage.grids=[1, 2, 4]",
        ],
    )
    assert cfg.lr == pytest.approx(3e-4)
    assert cfg.max_steps == 20 and isinstance(cfg.max_steps, int)
    assert cfg.betas == (0.8, 0.99)
    assert cfg.clip_grad is None
    assert cfg.ema_decay == pytest.approx(0.999)
    assert cfg.activation_checkpointing is True
    assert cfg.schedule == "cosine"
    assert cfg.resume == "latest"
    assert cfg.stage == {"preset": "tiny", "grids": [1, 2, 4]}


def test_unknown_key_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["learning_rat=1"])
    msg = str(info.value)
    assert "learning_rat" in msg and "max_steps" in msg
    path = tmp_path / "c.yaml"
    path.write_text("max_step: 3\n")
    with pytest.raises(ConfigError, match="Did you mean 'max_steps'"):
        load_config(path)


@pytest.mark.parametrize(
    "override",
    ["max_steps=0", "max_steps=abc", "lr=-1", "schedule=cosin", "mixed_precision=fp8", "ema_decay=1.5", "lr"],
)
def test_bad_values_raise(override: str) -> None:
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_save_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["lr=2e-4", "ema_decay=0.99", "stage.preset=tiny", f"run_dir={tmp_path}"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert set(cfg.to_dict()) == set(valid_keys())


def test_yes_no_strings_stay_strings() -> None:
    """YAML 1.1 reads `no` as False; `--set mixed_precision=no` and an unquoted `no` in a file must still work."""
    from nsarm_core.train.config import TrainConfig, load_config

    assert load_config(None, ["mixed_precision=no"]).mixed_precision == "no"
    assert load_config(None, ["mixed_precision=bf16"]).mixed_precision == "bf16"
    assert TrainConfig.from_dict({"mixed_precision": False}).mixed_precision == "no"
    assert load_config(None, ["resume=null"]).resume is None


def test_non_utf8_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_bytes(b"lr: 1e-4\n# \xff\xfe\n")
    with pytest.raises(InputError, match=r"train.yaml is not UTF-8 text \(byte 11\)"):
        load_config(path)


@pytest.mark.parametrize(
    ("module", "cls", "stage", "message"),
    [
        ("stage1", "Stage1Settings", {"scale": "four"}, "stage.scale='four' must be an integer"),
        ("stage2", "Stage2Settings", {"flip_strength": "yes"}, "stage.flip_strength='yes' must be a number"),
        ("stage2", "Stage2Settings", {"train_transform_net": "maybe"}, "stage.train_transform_net='maybe'"),
        ("tokenizer", "TokenizerSettings", {"l1_weight": "abc"}, "stage.l1_weight='abc' must be a number"),
    ],
)
def test_stage_settings_are_typed_with_the_key_named(
    module: str, cls: str, stage: dict, message: str
) -> None:
    import importlib

    settings = getattr(importlib.import_module(f"nsarm_core.train.{module}"), cls)
    with pytest.raises(ConfigError, match=message):
        settings.from_stage({"hr_dirs": ["x"], **stage})
    from nsarm_core.train.stage1 import Stage1Settings

    assert Stage1Settings.from_stage({"hr_dirs": ["x"], "scale": "8"}).data.scale == 8  # text from --set

"""The NSARM model (transformer + transformation network + tokenizer): official layout, presets, save/load."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from nsarm_core.errors import ConfigError, WeightsNotFoundError
from nsarm_core.models.nsarm import MAP_PREFIX, NSARM, NSARMConfig, get_preset


def _official_layout(model: NSARM) -> dict[str, tuple[int, ...]]:
    """Our state dict in the official NSARM.pth naming: transformer keys + ``map_transformer.*``."""
    out = {k: tuple(v.shape) for k, v in model.transformer.state_dict().items()}
    out.update({MAP_PREFIX + k: tuple(v.shape) for k, v in model.transform_net.state_dict().items()})
    return out


def test_nsarm_8b_matches_the_official_keys_and_parameter_count(parity_dir) -> None:
    with torch.device("meta"):
        model = NSARM(get_preset("nsarm-8b"), init=False)
    counts = model.parameter_counts()
    assert counts["transformer"] == 8_375_791_824
    assert counts["transform_net"] == 385_103_600
    assert counts["total"] == 8_760_895_424
    assert counts["vae"] == 81_624_209
    official = json.loads((parity_dir / "official_keys.json").read_text())["models"]["nsarm_8b"]
    assert official["n_params"] == counts["total"]
    ours = _official_layout(model)
    theirs = {k: tuple(v["shape"]) for k, v in official["keys"].items()}
    assert set(ours) == set(theirs)
    assert all(ours[k] == theirs[k] for k in theirs)


def test_geometry_of_the_presets() -> None:
    big = get_preset("nsarm-8b")
    assert (big.lr_size, big.hr_size, big.scale, big.num_transform_scales) == ((256, 256), (1024, 1024), 4, 7)
    tiny = get_preset("tiny")
    assert (tiny.lr_size, tiny.hr_size, tiny.scale) == ((64, 64), (256, 256), 4)


def test_inconsistent_configs_are_refused() -> None:
    tiny = get_preset("tiny")
    with pytest.raises(ConfigError, match="branch grids"):
        replace(tiny, transform_net=replace(tiny.transform_net, branch_grids=((2, 2), (4, 4), (6, 6))))
    with pytest.raises(ConfigError, match="text encoder"):
        replace(tiny, text_encoder="google/flan-t5-xl")
    with pytest.raises(ConfigError, match="unknown NSARM preset"):
        get_preset("nsarm-9b")


def test_save_and_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = NSARM(get_preset("tiny"))
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = NSARM.from_pretrained(tmp_path / "m")
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert NSARMConfig.from_dict(model.config.to_dict()) == model.config


def test_loading_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        NSARM.from_pretrained(tmp_path)
    model = NSARM(get_preset("tiny"))
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["transformer"]["depth"] = 4
    cfg["transformer"]["block_chunks"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="does not match"):
        NSARM.from_pretrained(tmp_path / "m")


def test_official_loading_needs_the_map_network() -> None:
    model = NSARM(get_preset("tiny"))
    with pytest.raises(ConfigError, match="map_transformer"):
        model.load_official(model.transformer.state_dict(), None)

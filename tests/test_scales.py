"""Scale schedules against the official tables (../shared/parity/scale_schedules.json) and validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nsarm_core import scales as S
from nsarm_core.errors import ConfigError
from tests.parity import load_manifest


@pytest.fixture(scope="module")
def manifest(parity_dir: Path) -> dict[str, Any]:
    return load_manifest(parity_dir, "scale_schedules")


def test_template_order_matches_official(manifest: dict[str, Any]) -> None:
    assert list(S.H_DIV_W_TEMPLATES) == [float(t) for t in manifest["h_div_w_templates"]]
    assert [str(t) for t in S.H_DIV_W_TEMPLATES] == list(manifest["templates"])


def test_every_template_and_pixel_budget(manifest: dict[str, Any]) -> None:
    checked = 0
    for template, budgets in manifest["templates"].items():
        assert list(budgets) == list(S.PIXEL_BUDGETS)
        for pn, entry in budgets.items():
            for key in (template, float(template)):
                sched = S.get_schedule(key, pn)
                assert [list(g) for g in sched.token_grids] == entry["scales"], (template, pn)
                assert list(sched.pixel_size) == entry["pixel_hw"], (template, pn)
                assert sched.seq_len == entry["seq_len"], (template, pn)
                assert sched.num_scales == S.PIXEL_BUDGETS[pn] == len(entry["scales_raw"])
                # scales_raw differ only by the video t, which every image caller replaces with 1
                assert [r[1:] for r in entry["scales_raw"]] == entry["scales"]
            checked += 1
    assert checked == 15 * 4


def test_patchify_doubles_vae_grids_only() -> None:
    plain = S.get_schedule(1.0, "1M")
    patch = S.get_schedule(1.0, "1M", patchify=True)
    assert patch.token_grids == plain.token_grids
    assert patch.vae_grids == tuple((2 * h, 2 * w) for h, w in plain.token_grids)
    assert plain.vae_grids == plain.token_grids
    assert patch.seq_len == plain.seq_len == 10521
    assert patch.pixel_size == plain.pixel_size == (1024, 1024)
    assert patch.vae_grids[-1] == (128, 128)  # NSARM: 1024 px / stride 8
    assert S.get_named_schedule("sr-1024") == patch
    assert S.get_schedule(1.0, "0.06M").seq_len == 521
    assert S.get_schedule(1.0, "0.25M").seq_len == 2521
    assert S.get_schedule(1.0, "0.60M").seq_len == 6425


def test_offsets_lengths_and_prefix() -> None:
    sched = S.get_schedule(2.0, "0.06M", patchify=True)
    assert sched.scale_lengths == (1, 4, 8, 18, 50, 128, 242)
    assert sched.scale_offsets == (0, 1, 5, 13, 31, 81, 209)
    assert sched.final_grid == (22, 11)
    pre = S.get_schedule(1.0, "1M", patchify=True).prefix(7)
    assert pre == S.get_schedule(1.0, "0.06M", patchify=True)
    with pytest.raises(ConfigError, match="1..13"):
        S.get_schedule(1.0, "1M").prefix(14)


def test_nearest_template_matches_numpy_argmin_including_ties() -> None:
    templates = np.array(S.H_DIV_W_TEMPLATES)
    ordered = sorted(S.H_DIV_W_TEMPLATES)
    ratios = [*ordered, *[(a + b) / 2 for a, b in zip(ordered, ordered[1:], strict=False)]]
    ratios += list(np.linspace(0.2, 4.0, 400))
    for r in ratios:
        expected = float(templates[np.argmin(np.abs(r - templates))])
        assert S.nearest_template(r) == expected, r
    # an exact tie resolves to the template listed first (1.0 before 1.25)
    assert abs(1.125 - 1.0) == abs(1.125 - 1.25)
    assert S.nearest_template(1.125) == 1.0
    assert S.nearest_template(1024, 512) == 2.0
    assert S.nearest_template(900, 1600) == 0.571
    assert S.get_schedule(1080 / 1920, "0.06M") == S.get_schedule("0.571", "0.06M")


def test_rope_positions_every_template(manifest: dict[str, Any]) -> None:
    for template, entry in manifest["rope"].items():
        sched = S.get_schedule(template, "1M")
        assert list(S.TEMPLATES[float(template)][-1]) == entry["final_grid"]
        expected = [[r, c] for scale in entry["per_scale"] for r in scale["rows"] for c in scale["cols"]]
        pos = S.rope_positions(sched)
        assert pos.dtype == torch.int64 and pos.shape == (sched.seq_len, 2)
        assert pos.tolist() == expected, template
        # smaller budgets use the 1M positions (prefix of the 1M sequence), patchify or not
        small = S.get_schedule(template, "0.25M", patchify=True)
        assert S.rope_positions(small).tolist() == expected[: small.seq_len]
        # explicit final grid = the same thing
        assert S.rope_positions(small.token_grids, entry["final_grid"]).tolist() == expected[: small.seq_len]
    flat = S.rope_positions(S.get_schedule(1.0, "1M")).tolist()
    assert flat == manifest["rope_1x1_1M_flat_positions"]


def test_rope_positions_reproduce_official_cos_sin_cache(parity_dir: Path) -> None:
    """Angles from our positions with the C.6 frequencies equal the official cache rows (1:1, 0.06M, hd 128)."""
    cos_sin = load_file(str(parity_dir / "scale_schedules.rope_1x1_hd128.safetensors"))["cos_sin"]
    pos = S.rope_positions(S.get_schedule(1.0, "0.06M")).float()
    half = 64
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    angles = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=1)
    assert cos_sin.shape == (2, 521, 64)
    torch.testing.assert_close(angles.cos(), cos_sin[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(angles.sin(), cos_sin[1], rtol=0, atol=1e-6)


def test_rope_positions_of_a_custom_schedule_use_its_own_last_grid() -> None:
    sched = S.custom([(1, 1), (2, 3), (4, 6)])
    assert S.template_of(sched) is None
    pos = S.rope_positions(sched)
    assert pos[-24:].tolist() == [[r, c] for r in range(4) for c in range(6)]
    assert pos[1:7].tolist() == [[0, 0], [0, 2], [0, 4], [2, 0], [2, 2], [2, 4]]
    with pytest.raises(ConfigError, match="final_grid"):
        S.rope_positions(sched, (0, 4))


def test_vae_default_schedules(manifest: dict[str, Any]) -> None:
    table = manifest["vae_default_schedules"]
    assert {f"{h}x{w}" for h, w in S.VAE_DEFAULT_SCHEDULES} == set(table)
    for key, raw in table.items():
        h, w = map(int, key.split("x"))
        sched = S.vae_default_schedule(h, w)
        assert [list(g) for g in sched.vae_grids] == [r[1:] for r in raw], key
        assert sched.final_grid == (h, w)
    assert S.vae_default_schedule(32, 32).num_scales == 10  # the d14 VAE on a 256x256 image
    with pytest.raises(ConfigError, match=r"8x8 latent; valid latent sizes: .*16x16.*64x64"):
        S.vae_default_schedule(8, 8)


@pytest.mark.parametrize(
    ("grids", "pattern"),
    [
        ([(1, 1), (2, 2), (2, 2)], r"grid 2 \(2, 2\) does not grow from grid 1"),
        ([(1, 1), (4, 4), (3, 5)], "grid 2"),
        ([(1, 1), (0, 2)], r"grid 1 is \(0, 2\)"),
        ([(1, 1), (2, 2, 2)], "grid 1"),
        ([], "at least one scale"),
        ([(1, 1), ("a", 2)], "int pairs"),
    ],
)
def test_schedule_validation_names_the_offending_index(grids: list[Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        S.custom(grids)


def test_schedule_is_frozen_and_round_trips() -> None:
    sched = S.custom([[1, 1], [2, 2], [4, 4]], patchify=True, name="mine")
    assert sched.grids == ((1, 1), (2, 2), (4, 4))
    with pytest.raises(AttributeError):
        sched.patchify = False  # type: ignore[misc]
    again = S.ScaleSchedule.from_dict(sched.to_dict())
    assert again == sched and again.name == "mine"
    assert S.get_named_schedule("tiny-64").vae_grids == ((2, 2), (4, 4), (8, 8))
    assert S.get_named_schedule("tiny-64").pixel_size == (64, 64)
    with pytest.raises(ConfigError, match="grids"):
        S.ScaleSchedule.from_dict({"patchify": True})


def test_lookup_errors_list_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean '0.25M'"):
        S.get_schedule(1.0, "0.25m")
    with pytest.raises(ConfigError, match="not one of"):
        S.get_schedule("1.1", "1M")
    with pytest.raises(ConfigError, match="not a number"):
        S.get_schedule("square", "1M")
    with pytest.raises(ConfigError, match="positive finite"):
        S.nearest_template(0.0)
    with pytest.raises(ConfigError, match=r"Did you mean 'sr-1024'"):
        S.get_named_schedule("sr-1042")

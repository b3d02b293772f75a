"""Degradation configs, parameter sampling (probabilities of docs/architecture.md P.2.1/P.2.2) and the pure ``apply``."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nsarm_core.data import degrade as D
from nsarm_core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "degrade_config.yaml"
N_DRAWS = 4000


def _hr(b: int = 1, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth content + texture, so blur/noise/JPEG all change something
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.5 + 0.4 * torch.sin(6 * xx + c) * torch.cos(4 * yy) for c in range(3)])
    return (0.8 * base + 0.2 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


# ------------------------------------------------------------------ presets and sampling


def test_presets_and_unknown_name():
    assert set(D.PRESETS) == {"realesrgan", "light", "bicubic"}
    assert len(D.get_preset("realesrgan").stages) == 2 and len(D.get_preset("light").stages) == 1
    with pytest.raises(ConfigError, match="valid: realesrgan, light, bicubic. Did you mean 'realesrgan'"):
        D.get_preset("realesrgam")


def test_realesrgan_preset_values_match_protocol():
    cfg = D.get_preset("realesrgan")
    s1, s2 = cfg.stages
    assert s1.blur.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and s1.blur.kernel_sizes == tuple(
        range(7, 22, 2)
    )
    assert (s1.blur.sigma_range, s1.blur.betag_range, s1.blur.betap_range, s1.blur.sinc_prob) == (
        (0.2, 3.0),
        (0.5, 4.0),
        (1.0, 2.0),
        0.1,
    )
    assert (s1.resize.prob, s1.resize.range) == ((0.2, 0.7, 0.1), (0.15, 1.5))
    assert (
        s1.noise.gaussian_prob,
        s1.noise.sigma_range,
        s1.noise.poisson_scale_range,
        s1.noise.gray_prob,
    ) == (0.5, (1, 30), (0.05, 3), 0.4)
    assert s1.jpeg_range == (30, 95) and s2.jpeg_range is None
    assert (s2.blur.prob, s2.blur.sigma_range, s2.resize.prob, s2.resize.range) == (
        0.8,
        (0.2, 1.5),
        (0.3, 0.4, 0.3),
        (0.3, 1.2),
    )
    assert (s2.noise.sigma_range, s2.noise.poisson_scale_range) == (
        (1, 25),
        (0.05, 2.5),
    ) and s2.resize.relative_to_output
    assert (cfg.final.sinc_prob, cfg.final.jpeg_range, cfg.final.resize_first_prob) == (0.8, (30, 95), 0.5)
    assert cfg.gt_usm and (cfg.usm_weight, cfg.usm_radius, cfg.usm_threshold) == (0.5, 50, 10)
    light = D.get_preset("light")
    n = light.stages[0].noise
    assert (
        light.stages[0].resize.range,
        n.gaussian_prob,
        n.sigma_range,
        n.poisson_scale_range,
        n.gray_prob,
    ) == ((0.5, 1.5), 0.3, (1, 20), (0.05, 2), 0.2)
    assert light.stages[0].jpeg_range is None and light.final.jpeg_range == (60, 95)


def _within(count: int, n: int, p: float, name: str) -> None:
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) <= 4.5 * sd + 1e-9, (
        f"{name}: observed {count / n:.4f}, expected {p:.4f} (sd {sd:.4f})"
    )


@pytest.fixture(scope="module")
def draws() -> list[D.DegradationParams]:
    rng = np.random.default_rng(12345)
    return [D.sample_params(D.get_preset("realesrgan"), 4, rng) for _ in range(N_DRAWS)]


def test_histogram_kernels(draws):
    probs = dict(zip(D.BLUR_KINDS, D.BLUR_PROBS, strict=True))
    k1 = Counter(p.stages[0].blur.kind for p in draws)
    _within(k1["sinc"], N_DRAWS, 0.1, "stage-1 sinc")
    for kind, pk in probs.items():
        _within(k1[kind], N_DRAWS, 0.9 * pk, f"stage-1 {kind}")
    blurred2 = [p.stages[1].blur for p in draws if p.stages[1].blur is not None]
    _within(len(blurred2), N_DRAWS, 0.8, "second_blur_prob")
    k2 = Counter(k.kind for k in blurred2)
    _within(k2["sinc"], len(blurred2), 0.1, "stage-2 sinc")
    _within(k2["iso"], len(blurred2), 0.9 * 0.45, "stage-2 iso")
    sizes = Counter(p.stages[0].blur.size for p in draws)
    for s in range(7, 22, 2):
        _within(sizes[s], N_DRAWS, 1 / 8, f"kernel size {s}")
    sinc_final = [p.final.sinc for p in draws]
    _within(sum(k.kind == "sinc" for k in sinc_final), N_DRAWS, 0.8, "final_sinc_prob")
    # ranges
    for p in draws:
        b = p.stages[0].blur
        if b.kind == "sinc":
            lo = math.pi / 3 if b.size < 13 else math.pi / 5
            assert lo <= b.cutoff <= math.pi
        else:
            assert 0.2 <= b.sigma_x <= 3.0 and 0.2 <= b.sigma_y <= 3.0 and -math.pi <= b.theta <= math.pi
            if b.kind.endswith("iso") and not b.kind.endswith("aniso"):
                assert b.sigma_y == b.sigma_x and b.theta == 0
        if p.final.sinc.kind == "sinc":
            assert math.pi / 3 <= p.final.sinc.cutoff <= math.pi
    gen = [p.stages[0].blur.beta for p in draws if p.stages[0].blur.kind.startswith("generalized")]
    _within(sum(b < 1 for b in gen), len(gen), 0.5, "betag below 1")
    assert all(0.5 <= b <= 4 for b in gen)
    plat = [p.stages[0].blur.beta for p in draws if p.stages[0].blur.kind.startswith("plateau")]
    _within(sum(b == 1.0 for b in plat), len(plat), 0.5, "plateau beta = 1 (degenerate lower branch)")


def test_histogram_resize_noise_jpeg_order(draws):
    for i, expected in enumerate([(0.2, 0.7, 0.1), (0.3, 0.4, 0.3)]):
        c = Counter(p.stages[i].resize.direction for p in draws)
        for d, pd in zip(D.RESIZE_DIRECTIONS, expected, strict=True):
            _within(c[d], N_DRAWS, pd, f"stage-{i + 1} resize {d}")
        modes = Counter(p.stages[i].resize.mode for p in draws)
        for m in D.RESIZE_MODES:
            _within(modes[m], N_DRAWS, 1 / 3, f"stage-{i + 1} mode {m}")
        noise = [p.stages[i].noise for p in draws]
        _within(sum(n.kind == "gaussian" for n in noise), N_DRAWS, 0.5, f"stage-{i + 1} gaussian vs poisson")
        _within(sum(n.gray for n in noise), N_DRAWS, 0.4, f"stage-{i + 1} gray")
        hi = (30, 3) if i == 0 else (25, 2.5)
        assert all(
            (1 <= n.strength <= hi[0]) if n.kind == "gaussian" else (0.05 <= n.strength <= hi[1])
            for n in noise
        )
    r1 = [p.stages[0].resize for p in draws]
    assert all(
        (1 <= r.factor <= 1.5)
        if r.direction == "up"
        else (0.15 <= r.factor <= 1)
        if r.direction == "down"
        else r.factor == 1
        for r in r1
    )
    _within(sum(p.final.order == "resize_then_jpeg" for p in draws), N_DRAWS, 0.5, "final order")
    assert all(30 <= p.stages[0].jpeg_quality <= 95 and 30 <= p.final.jpeg_quality <= 95 for p in draws)
    assert len({p.stages[0].noise.seed for p in draws}) == N_DRAWS  # independent noise seeds


def test_light_preset_probabilities():
    rng = np.random.default_rng(7)
    ps = [D.sample_params(D.get_preset("light"), 4, rng) for _ in range(2000)]
    assert all(len(p.stages) == 1 and p.stages[0].jpeg_quality is None for p in ps)
    _within(sum(p.stages[0].noise.kind == "gaussian" for p in ps), 2000, 0.3, "light gaussian")
    _within(sum(p.stages[0].noise.gray for p in ps), 2000, 0.2, "light gray")
    assert all(60 <= p.final.jpeg_quality <= 95 and 0.5 <= p.stages[0].resize.factor <= 1.5 for p in ps)


def test_torch_generator_and_int_seed_are_reproducible():
    cfg = D.get_preset("realesrgan")
    a = D.sample_params(cfg, 4, torch.Generator().manual_seed(3))
    b = D.sample_params(cfg, 4, torch.Generator().manual_seed(3))
    assert a == b
    assert D.sample_params(cfg, 4, 11) == D.sample_params(cfg, 4, np.random.default_rng(11))
    assert D.sample_params(cfg, 4, 11) != D.sample_params(cfg, 4, 12)
    with pytest.raises(ConfigError, match="scale must be a positive integer"):
        D.sample_params(cfg, 0, 1)


# ------------------------------------------------------------------ apply


def test_apply_is_deterministic_and_noise_comes_from_params():
    hr = _hr()
    cfg = D.get_preset("realesrgan")
    for seed in range(4):
        p = D.sample_params(cfg, 4, seed)
        lr = D.apply(hr, p)
        assert lr.shape == (1, 3, 16, 16)
        assert torch.equal(lr, D.apply(hr.clone(), p))
        assert torch.equal(lr, torch.round(lr * 255) / 255) and lr.min() >= 0 and lr.max() <= 1
    # The noise seed is part of the params: changing only it changes the output.
    p = D.sample_params(cfg, 4, 0)
    st = p.stages[0]
    p2 = dataclasses.replace(
        p,
        stages=(dataclasses.replace(st, noise=dataclasses.replace(st.noise, seed=st.noise.seed + 1)),)
        + p.stages[1:],
    )
    assert not torch.equal(D.apply(hr, p), D.apply(hr, p2))


def test_json_round_trip_gives_identical_output():
    hr = _hr(h=48, w=40)
    for preset in D.PRESETS:
        p = D.sample_params(D.get_preset(preset), 4, 5)
        text = p.to_json()
        q = D.DegradationParams.from_json(text)
        assert q == p and q.to_json() == text
        assert torch.equal(D.apply(hr, p), D.apply(hr, q))


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_output_sizes_for_integer_scales(scale):
    hr = _hr(h=72, w=50)
    p = D.sample_params(D.get_preset("realesrgan"), scale, scale)
    target, lr = D.apply_pair(hr, p)
    assert lr.shape == (1, 3, 72 // scale, 50 // scale)
    assert target.shape == (1, 3, (72 // scale) * scale, (50 // scale) * scale)


def test_batched_and_per_sample_params():
    hr = _hr(b=3, h=32, w=32)
    cfg = D.get_preset("realesrgan")
    ps = [D.sample_params(cfg, 2, s) for s in range(3)]
    lr = D.apply(hr, ps)
    assert lr.shape == (3, 3, 16, 16)
    for i in range(3):
        assert torch.equal(lr[i : i + 1], D.apply(hr[i : i + 1], ps[i]))
    assert D.apply(hr, ps[0]).shape == (3, 3, 16, 16)  # one record for the whole batch
    with pytest.raises(ConfigError, match="params records for a batch"):
        D.apply(hr, ps[:2])


def test_gt_usm_returns_sharpened_hr():
    hr = _hr(h=32, w=32)
    p = D.sample_params(D.get_preset("realesrgan"), 4, 0)
    target, _ = D.apply_pair(hr, p)
    assert not torch.equal(target, hr)
    target_off, _ = D.apply_pair(hr, dataclasses.replace(p, gt_usm=False))
    assert torch.equal(target_off, hr)


def test_bicubic_preset_is_plain_bicubic():
    hr = _hr(h=64, w=48)
    p = D.sample_params(D.get_preset("bicubic"), 4, 0)
    expected = F.interpolate(hr, size=(16, 12), mode="bicubic", align_corners=False, antialias=True)
    expected = torch.clamp((expected * 255).round(), 0, 255) / 255
    assert torch.equal(D.apply(hr, p), expected)


def test_tiny_images_do_not_crash():
    p = D.sample_params(D.get_preset("realesrgan"), 4, 1)
    stage1 = dataclasses.replace(p.stages[0], resize=D.ResizeParams("down", 0.15, "area"))
    p = dataclasses.replace(p, stages=(stage1,) + p.stages[1:])
    assert D.apply(_hr(h=8, w=8), p).shape == (1, 3, 2, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_deterministic():
    hr = _hr(b=2).cuda()
    p = D.sample_params(D.get_preset("realesrgan"), 4, 3)
    a, b = D.apply(hr, p), D.apply(hr, p)
    assert a.is_cuda and torch.equal(a, b)
    assert (
        a.cpu() - D.apply(hr.cpu(), p)
    ).abs().mean() < 0.05  # same degradation; noise draws differ by device


# ------------------------------------------------------------------ configuration


def test_unknown_kernel_name_fails_loudly():
    with pytest.raises(ConfigError, match="unknown kernel type 'isotropic'; valid: "):
        D.apply_overrides(D.get_preset("realesrgan"), {"kernel_list": ["isotropic"], "kernel_prob": [1.0]})
    with pytest.raises(ConfigError, match="kernel_prob must be 2"):
        D.apply_overrides(D.get_preset("realesrgan"), {"kernel_list": ["iso", "aniso"]})


def test_yaml_overrides(tmp_path):
    path = tmp_path / "deg.yaml"
    path.write_text(
        "noise_range: [1, 5]\ngaussian_noise_prob: 1.0\nkernel_list: [iso]\nkernel_prob: [1]\nsinc_prob: 0\n"
        "resize_prob2: [0, 1, 0]\nsecond_blur_prob: 0.0\njpeg_range2: [90, 95]\nfinal_sinc_prob: 1.0\ngt_usm: false\n"
    )
    cfg = D.load_config_overrides(path, D.get_preset("realesrgan"))
    assert cfg.stages[0].noise.sigma_range == (1, 5) and cfg.stages[1].resize.prob == (0, 1, 0)
    assert cfg.final.jpeg_range == (90, 95) and not cfg.gt_usm and cfg.name == "realesrgan"
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = D.sample_params(cfg, 4, rng)
        assert (
            p.stages[0].blur.kind == "iso"
            and p.stages[0].noise.kind == "gaussian"
            and p.stages[0].noise.strength <= 5
        )
        assert (
            p.stages[1].blur is None and p.stages[1].resize.direction == "down" and p.final.jpeg_quality >= 90
        )
        assert p.final.sinc.kind == "sinc" and not p.gt_usm
    assert D.get_preset("realesrgan").stages[0].noise.sigma_range == (1, 30)  # presets untouched


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("noise_rang: [1, 2]\n")
    with pytest.raises(
        ConfigError, match=r"noise_rang.*Did you mean 'noise_range'.*valid keys:.*resize_prob2"
    ):
        D.load_config_overrides(bad, D.get_preset("realesrgan"))
    bad.write_text("resize_prob2: [0.3, 0.4, 0.3]\n")
    with pytest.raises(ConfigError, match="has 1 stage"):
        D.load_config_overrides(bad, D.get_preset("light"))
    bad.write_text("gray_noise_prob: 1.5\n")
    with pytest.raises(ConfigError, match="probability"):
        D.load_config_overrides(bad, D.get_preset("realesrgan"))
    bad.write_text("kernel_list: iso\n")
    with pytest.raises(ConfigError, match="must be a list"):
        D.load_config_overrides(bad, D.get_preset("realesrgan"))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        D.load_config_overrides(bad, D.get_preset("realesrgan"))
    with pytest.raises(ConfigError, match="does not exist"):
        D.load_config_overrides(tmp_path / "missing.yaml", D.get_preset("realesrgan"))


def test_example_config_loads():
    cfg = D.load_config_overrides(EXAMPLE, D.get_preset("realesrgan"))
    assert isinstance(cfg, D.DegradationConfig)
    D.apply(_hr(h=32, w=32), D.sample_params(cfg, 4, 0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("usm_radius: 100000\n", "usm_radius must be an integer between 1 and 200, got 100000"),
        ("blur_kernel_size: 100001\n", "blur_kernel_size must be an odd integer between 1 and 101"),
        ("blur_kernel_size: -5\n", "blur_kernel_size must be an odd integer between 1 and 101, got -5"),
        ("blur_kernel_size2: 20\n", "blur_kernel_size2 must be an odd integer"),
        ("kernel_range: [7, 9, 1001]\n", "kernel_range must be odd kernel sizes between 1 and 101"),
        ("noise_range: 5\n", "noise_range must be a list of 2 values, got 5"),
        ("noise_range2: [1, 500]\n", r"noise_range2 must be \[low, high\] with 0 <= low <= high <= 255"),
        (
            "resize_range: [0.5, 100000]\n",
            r"resize_range must be \[low, high\] with 0.05 <= low <= high <= 4",
        ),
        ("resize_prob: yes\n", "resize_prob must be a list of 3 values, got True"),
        ("gaussian_noise_prob: yes\n", "gaussian_noise_prob must be a number, got True .YAML reads yes/no"),
        ("second_blur_prob: '0.5x'\n", "second_blur_prob must be a number, got '0.5x'"),
        (
            "usm_weight: 1e9\n",
            "usm_weight must be a number between 0 and 10, got '1e9'",
        ),  # YAML 1.1: a string
        ("jpeg_range: 1e9\n", "jpeg_range must be a list of 2 values, got '1e9'"),
        ("jpeg_range2: [50, .inf]\n", "jpeg_range2 must be a finite number"),
        ("poisson_scale_range: [-1, 2]\n", "poisson_scale_range must be"),
        ("gt_usm: 'yes'\n", "gt_usm must be true or false"),
        ("kernel_prob: [1, -1, 0, 0, 0, 0]\n", "kernel_prob must be non-negative weights"),
        ("final_sinc_cutoff_range: [1, 10]\n", "final_sinc_cutoff_range must be"),
        ("jpeg_mode: fast\n", "jpeg_mode must be one of"),
    ],
)
def test_every_option_is_bounded_and_named(tmp_path, text, message):
    path = tmp_path / "deg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        D.load_config_overrides(path, D.get_preset("realesrgan"))
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_numeric_strings_are_numbers_and_bounds_admit_real_esrgan_values(tmp_path):
    path = tmp_path / "deg.yaml"
    path.write_text("usm_weight: 1e-1\nblur_sigma: ['2e-1', 3]\nusm_radius: 50\nblur_kernel_size: 21\n")
    cfg = D.load_config_overrides(path, D.get_preset("realesrgan"))
    assert cfg.usm_weight == 0.1 and cfg.stages[0].blur.sigma_range == (0.2, 3.0) and cfg.usm_radius == 50


def test_non_utf8_degradation_config_names_the_file(tmp_path):
    path = tmp_path / "deg.yaml"
    path.write_bytes(b"usm_weight: 0.5\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"deg.yaml is not UTF-8 text .byte 21.; save it as UTF-8"):
        D.load_config_overrides(path, D.get_preset("realesrgan"))


def test_library_construction_is_bounded_too():
    with pytest.raises(ConfigError, match="usm_radius must be an integer between 1 and 200"):
        dataclasses.replace(D.get_preset("realesrgan"), usm_radius=100000)
    with pytest.raises(ConfigError, match="blur_kernel_size must be an odd integer between 1 and 101"):
        D.BlurConfig(pad_to=1001, kernel_sizes=(7,))

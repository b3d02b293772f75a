"""The evaluation workflow as a new user types it: degrade -> upscale -> evaluate -> robustness --report.

Covers the default composite on a base install (no pyiqa), the report without matplotlib, the size mismatch
after `nsarm degrade`, the evaluation index behind `nsarm robustness --report`, and `evaluate --dataset` with
its Hub download (a local fake Hub: nothing goes to the network).
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.data.io import write_image
from nsarm_core.eval import report as REP
from nsarm_core.eval import robustness as R
from nsarm_core.eval.benchmarks import get_preset
from nsarm_core.eval.evaluate import EvalResult, ImageScores
from nsarm_core.eval.hub_sets import HASHES_NAME, dataset_cache_dir

runner = CliRunner()


def _out(result) -> str:
    return " ".join((result.output + str(result.exception or "")).split())


def _rgb(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _scores_csv(path: Path, values: list[float]) -> Path:
    lines = ["key,sr_path,hr_path,psnr,ssim"] + [f"i{i},,,{20 + 10 * v},{v}" for i, v in enumerate(values)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------ item 11: base-install robustness


def test_default_composite_falls_back_to_the_metrics_present(tmp_path: Path) -> None:
    a = _scores_csv(tmp_path / "a.csv", [0.9, 0.8, 0.7])
    b = _scores_csv(tmp_path / "b.csv", [0.5, 0.95, 0.6])
    r = runner.invoke(app, ["robustness", f"nsarm={a}", f"bicubic={b}", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, _out(r)
    text = _out(r)
    assert "is not in the scores; using the metrics every method has: psnr, ssim" in text
    assert "composite: psnr + ssim" in text
    assert (tmp_path / "rep" / "robustness.html").is_file() and (tmp_path / "rep" / "robustness.md").is_file()


def test_default_composite_keeps_the_paper_metrics_when_present() -> None:
    recs = [
        ImageScores("a", Path("a.png"), None, (8, 8), (8, 8), False, dict.fromkeys(R.DEFAULT_COMPOSITE, 0.5))
    ]
    res = EvalResult(recs, list(R.DEFAULT_COMPOSITE), {})
    assert R.default_composite({"m": res}) == (list(R.DEFAULT_COMPOSITE), None)
    other = EvalResult(
        [ImageScores("a", Path("a.png"), None, (8, 8), (8, 8), False, {"niqe": 5.0})], ["niqe"], {}
    )
    with pytest.raises(Exception, match="no metric is in the scores of every method"):
        R.default_composite({"m": res, "o": other})


def _analysis(tmp_path: Path) -> R.RobustnessResult:
    results = {}
    for m, base in (("good", 0.8), ("shaky", 0.6)):
        recs = []
        for i in range(3):
            p = tmp_path / m / f"im{i}.png"
            write_image(p, _rgb(i, 24, 24))
            recs.append(ImageScores(f"im{i}", p, None, (24, 24), (24, 24), False, {"ssim": base + 0.05 * i}))
        results[m] = EvalResult(recs, ["ssim"], {})
    return R.analyse(results, ["ssim"])


def test_report_without_matplotlib_is_written_without_plots(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # a base install: no `report` extra
    files = REP.write_report(_analysis(tmp_path), tmp_path / "rep", worst_k=2)
    assert files.plots == [] and sorted(p.name for p in (tmp_path / "rep").iterdir()) == [
        "robustness.html",
        "robustness.md",
    ]
    assert any("pip install 'nsarm[report]'" in n for n in files.notes)
    assert "pip install 'nsarm[report]'" in files.markdown.read_text()
    assert (
        "pip install &#x27;nsarm[report]&#x27;" in files.html.read_text()
        and "Deficient" in files.html.read_text()
    )


def test_cli_report_without_matplotlib(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    a = _scores_csv(tmp_path / "a.csv", [0.9, 0.8, 0.7])
    b = _scores_csv(tmp_path / "b.csv", [0.5, 0.95, 0.6])
    r = runner.invoke(
        app, ["robustness", f"a={a}", f"b={b}", "-m", "ssim", "--report", str(tmp_path / "rep")]
    )
    assert r.exit_code == 0, _out(r)
    assert "report without plots" in _out(r) and "nsarm[report]" in _out(r)
    assert (tmp_path / "rep" / "robustness.md").is_file()


def test_a_failed_report_leaves_no_empty_folder(tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(REP, "_tables", broken)
    with pytest.raises(RuntimeError):
        REP.write_report(_analysis(tmp_path), tmp_path / "rep", worst_k=0)
    assert not (tmp_path / "rep").exists()


# ------------------------------------------------------------------ item 13: evaluate after nsarm degrade


def test_evaluate_after_degrade_names_save_hr(tmp_path: Path) -> None:
    write_image(tmp_path / "photos" / "odd.png", _rgb(0, 30, 45))  # not a multiple of 4: degrade cuts it
    r = runner.invoke(
        app, ["degrade", str(tmp_path / "photos"), str(tmp_path / "deg"), "--preset", "bicubic"]
    )
    assert r.exit_code == 0, _out(r)
    ev = ["evaluate", "--model", "bicubic", "--lr", str(tmp_path / "deg" / "lr"), "-o", str(tmp_path / "ev")]
    r = runner.invoke(app, [*ev, "--hr", str(tmp_path / "photos")])
    assert r.exit_code == 1
    assert "cut to a multiple of 4" in _out(r) and "nsarm degrade --save-hr" in _out(r), _out(r)

    r = runner.invoke(app, ["degrade", str(tmp_path / "photos"), str(tmp_path / "deg2"), "--preset", "bicubic",
                            "--save-hr"])  # fmt: skip
    assert r.exit_code == 0, _out(r)
    r = runner.invoke(app, ["evaluate", "--model", "bicubic", "--lr", str(tmp_path / "deg2" / "lr"), "-o",
                            str(tmp_path / "ev2"), "--hr", str(tmp_path / "deg2" / "hr")])  # fmt: skip
    assert r.exit_code == 0, _out(r)


# ------------------------------------------------------------ item 21: the index behind robustness --report


def _two_methods(tmp_path: Path) -> tuple[Path, list[str]]:
    hr = tmp_path / "hr"
    for i in range(3):
        write_image(hr / f"im{i}.png", _rgb(i, 16, 16))
        write_image(tmp_path / "sr_good" / f"im{i}.png", np.clip(_rgb(i, 16, 16) + 0.02, 0, 1))
        write_image(tmp_path / "sr_bad" / f"im{i}.png", _rgb(10 + i, 16, 16))
    return hr, ["sr_good", "sr_bad"]


def test_robustness_report_compares_the_methods_of_the_index(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NSARM_EVAL_INDEX")  # the default: the working folder
    hr, methods = _two_methods(tmp_path)
    for m in methods:
        r = runner.invoke(app, ["evaluate", m, "--hr", "hr"])
        assert r.exit_code == 0, _out(r)
    lines = [json.loads(x) for x in (tmp_path / "nsarm-evaluations.jsonl").read_text().splitlines()]
    assert [x["method"] for x in lines] == methods and {x["dataset"] for x in lines} == {"hr:hr"}
    assert lines[0]["scores"] == "sr_good_eval/scores.csv" and lines[0]["settings"]["metrics"] == [
        "psnr",
        "ssim",
    ]

    r = runner.invoke(app, ["robustness", "--report"])
    assert r.exit_code == 0, _out(r)
    assert "comparing sr_good, sr_bad: the methods evaluated on hr:hr" in _out(r)
    assert "report: reports/robustness-hr/robustness.html" in _out(r)
    md = (tmp_path / "reports" / "robustness-hr" / "robustness.md").read_text()
    assert "| sr_good |" in md and "| sr_bad |" in md

    # re-evaluating a method replaces its entry; explicit methods and --report DIR keep working
    assert runner.invoke(app, ["evaluate", "sr_bad", "--hr", "hr", "-m", "psnr,ssim"]).exit_code == 0
    r = runner.invoke(app, ["robustness", "--json"])
    assert list(json.loads(r.stdout)["methods"]) == ["sr_good", "sr_bad"]
    r = runner.invoke(app, ["robustness", "g=sr_good_eval/scores.csv", "--report", "mine"])
    assert r.exit_code == 0 and (tmp_path / "mine" / "robustness.html").is_file(), _out(r)

    shutil.rmtree(tmp_path / "sr_bad_eval")  # a recorded run whose scores were deleted is left out, loudly
    r = runner.invoke(app, ["robustness", "--json"])
    assert r.exit_code == 0 and list(json.loads(r.stdout)["methods"]) == ["sr_good"], _out(r)
    assert "left out, their score files no longer exist: sr_bad" in _out(r)


def test_robustness_without_methods_or_index_says_what_to_run(tmp_path: Path) -> None:
    r = runner.invoke(app, ["robustness", "--report"])
    assert r.exit_code == 2 and "run `nsarm evaluate SR_DIR --hr HR_DIR`" in _out(r)
    r = runner.invoke(app, ["robustness", "--report", "a.csv", "b.csv"])
    assert r.exit_code == 2 and "put the methods before --report" in _out(r)


def test_robustness_picks_a_dataset_of_the_index(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    hr, methods = _two_methods(tmp_path)
    shutil.copytree(hr, tmp_path / "hr2")
    assert runner.invoke(app, ["evaluate", "sr_good", "--hr", "hr"]).exit_code == 0
    assert runner.invoke(app, ["evaluate", "sr_bad", "--hr", "hr2"]).exit_code == 0
    r = runner.invoke(app, ["robustness", "--json"])
    assert list(json.loads(r.stdout)["methods"]) == ["sr_bad"]  # the latest dataset
    assert "other datasets there: hr:" in _out(r) and "--dataset" in _out(r)
    r = runner.invoke(app, ["robustness", "--dataset", "nope"])
    assert r.exit_code == 2 and "is not in the evaluation index" in _out(r)


# ------------------------------------------------------------------ item 20: evaluate --dataset from the Hub


def _fake_archive(folder: Path, n: int = 2) -> Path:
    """A zip laid out like StableSR_testsets.zip, with a RealSR folder of n pairs (and another set beside it)."""
    archive = folder / "StableSR_testsets.zip"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(n):
            for sub, name, side in (
                ("test_LR", f"Canon_00{i}_LR4.png", 8),
                ("test_HR", f"Canon_00{i}_LR4.png", 32),
            ):
                write_image(folder / "tmp.png", _rgb(i, side, side))
                zf.write(folder / "tmp.png", f"StableSR_testsets/RealSRVal_crop128/{sub}/{name}")
        zf.write(folder / "tmp.png", "StableSR_testsets/DrealSRVal_crop128/test_HR/other.png")
    return archive


@pytest.fixture()
def fake_hub(tmp_path: Path, monkeypatch):
    """huggingface_hub.hf_hub_download served from a local folder; records its calls."""
    remote = _fake_archive(tmp_path / "remote")
    calls: list[dict] = []

    def hf_hub_download(repo_id, filename, *, repo_type=None, local_files_only=False, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, "repo_type": repo_type})
        assert (repo_id, filename, repo_type) == (
            "Iceclear/StableSR-TestSets",
            "StableSR_testsets.zip",
            "dataset",
        )
        cached = tmp_path / "hub_cache" / filename
        if not cached.is_file():
            if local_files_only:
                from huggingface_hub.errors import LocalEntryNotFoundError

                raise LocalEntryNotFoundError("not in the local cache")
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(remote, cached)
        return str(cached)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hf_hub_download)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # The Hub "answers" the one reachability probe (nsarm_core.hub): no test touches the network.
    monkeypatch.setattr("nsarm_core.hub.host_unreachable", lambda url: None)
    return calls


def _fake_model(monkeypatch) -> None:
    def run_model_on_folder(model, lr_dir, out_dir, **opts):
        for p in sorted(Path(lr_dir).glob("*.png")):
            write_image(Path(out_dir) / p.name, _rgb(int(p.stem[8]), 32, 32))  # the HR itself

    monkeypatch.setattr("nsarm_core.eval.run.run_model_on_folder", run_model_on_folder)


def test_evaluate_dataset_downloads_records_hashes_and_checks_them(
    tmp_path: Path, monkeypatch, fake_hub
) -> None:
    _fake_model(monkeypatch)
    args = ["evaluate", "--dataset", "RealSR", "--model", "fake", "-o", str(tmp_path / "ev"), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, _out(r)
    assert len(fake_hub) == 1 and json.loads(r.stdout)["metrics"]["psnr"]["n"] == 2
    root = dataset_cache_dir(get_preset("RealSR"))
    record = json.loads((root / HASHES_NAME).read_text())
    assert record["repo_id"] == "Iceclear/StableSR-TestSets" and len(record["files"]) == 4
    assert not (root / "other.png").exists()  # only the preset's folder of the archive

    r = runner.invoke(app, args)  # cached: checked against the hashes, not downloaded again
    assert r.exit_code == 0 and len(fake_hub) == 1, _out(r)

    write_image(root / "test_HR" / "Canon_001_LR4.png", _rgb(7, 32, 32))  # the cached copy changed
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "changed since it was downloaded" in _out(r) and f"delete {root}" in _out(r)


def test_evaluate_dataset_offline_is_one_line_naming_repo_layout_and_data_root(
    tmp_path: Path, monkeypatch, fake_hub
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["evaluate", "--dataset", "RealSR", "--model", "bicubic"])
    assert r.exit_code == 2
    err = r.output.strip().splitlines()
    assert len(err) == 1, r.output
    for part in ("Iceclear/StableSR-TestSets", "HF_HUB_OFFLINE=1", "test_LR/*_LR4.png and test_HR/*.png",
                 "--data-root"):  # fmt: skip
        assert part in err[0]


def test_evaluate_dataset_without_network_fails_at_once_from_the_cache_only(
    tmp_path: Path, monkeypatch, fake_hub
) -> None:
    monkeypatch.setattr("nsarm_core.hub.host_unreachable", lambda url: "did not answer within 3 s")
    r = runner.invoke(app, ["evaluate", "--dataset", "RealSR", "--model", "bicubic"])
    assert r.exit_code == 2
    err = r.output.strip().splitlines()
    assert len(err) == 1, r.output
    for part in ("Iceclear/StableSR-TestSets", "no network", "did not answer", "--data-root"):
        assert part in err[0]


def test_dataset_without_hub_copy_needs_data_root() -> None:
    r = runner.invoke(app, ["evaluate", "--dataset", "RP60", "--model", "bicubic"])
    assert r.exit_code == 2 and "needs --data-root DIR holding RP60_256/*.png" in _out(r)


def test_preset_is_a_hidden_alias_of_dataset(tmp_path: Path, monkeypatch, fake_hub) -> None:
    _fake_model(monkeypatch)
    r = runner.invoke(app, ["evaluate", "--preset", "RealSR", "--model", "fake", "-o", str(tmp_path / "ev")])
    assert r.exit_code == 0, _out(r)
    help_text = runner.invoke(app, ["evaluate", "--help"]).output
    assert "--dataset" in help_text and "--preset" not in help_text

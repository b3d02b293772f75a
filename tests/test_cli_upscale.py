"""``nsarm upscale`` through CliRunner: the bicubic baseline, pipeline plumbing, exit codes, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.batch.upscale import InterpolationUpscaler
from nsarm_core.data.io import Image, read_image, write_image

runner = CliRunner()


def _write(path: Path, h: int = 6, w: int = 10, seed: int = 0) -> Path:
    write_image(path, Image(rgb=np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)))
    return path


def _run(*args: str) -> Any:
    return runner.invoke(app, ["upscale", *args])


def test_bicubic_folder_json_and_layout(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.png")
    _write(tmp_path / "in" / "sub" / "b.jpg", seed=1)
    out = tmp_path / "out"
    res = _run(str(tmp_path / "in"), "-o", str(out), "--model", "bicubic", "--json", "--suffix", "_x4")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["totals"]["done"] == 2 and data["upscaler"] == "bicubic"
    assert {r["seed"] for r in data["records"]} == {1}
    assert (out / "a_x4.png").is_file() and (out / "sub" / "b_x4.jpg").is_file()
    assert read_image(out / "a_x4.png").width == 40
    again = _run(str(tmp_path / "in"), "-o", str(out), "--model", "bicubic", "--json", "--suffix", "_x4")
    assert again.exit_code == 0 and json.loads(again.stdout)["totals"]["skipped"] == 2


def test_scale_ext_and_table(tmp_path: Path) -> None:
    _write(tmp_path / "a.png")
    out = tmp_path / "o"
    res = _run(str(tmp_path / "a.png"), "-o", str(out), "--model", "bicubic", "--scale", "3", "--ext", "jpg")
    assert res.exit_code == 0, res.output
    assert "10x6 -> 30x18" in res.stdout and "done" in res.stdout and "1 upscaled" in res.stdout
    with PILImage.open(out / "a.jpg") as im:
        assert im.format == "JPEG" and im.size == (30, 18)


def test_bad_file_gives_exit_1_and_others_are_written(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = _run(str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", "bicubic", "--json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    status = {Path(r["input"]).name: r["status"] for r in data["records"]}
    assert status == {"bad.png": "failed", "good.png": "done"}
    assert [p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")] == ["good.png"]


def test_refuses_to_overwrite_inputs(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.png")
    before = src.read_bytes()
    res = _run(str(tmp_path), "-o", str(tmp_path), "--model", "bicubic", "--overwrite", "--suffix", "")
    assert res.exit_code == 1
    assert "would overwrite the input" in res.output
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ext", "gif"], "unknown output format 'gif'"),
        (["--scale", "0"], "scale must be a number > 0"),
        (["--color-fix", "hue"], "unknown colour fix 'hue'"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--cfg", "inf"], "cfg must be a finite number"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--tile-overlap", "-1"], "tile_overlap must be >= 0"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    _write(tmp_path / "a.png")
    res = _run(str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "bicubic", *args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_missing_input_exits_2(tmp_path: Path) -> None:
    res = _run(str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--model", "bicubic")
    assert res.exit_code == 2 and "input not found" in res.output


def test_pipeline_options_are_passed_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    prompts: list[str | None] = []

    class Fake(InterpolationUpscaler):
        """Reports the prompt it used as SRPipeline does: the given one, else its config's default_prompt."""

        def upscale(self, rgb: Any, *, seed: int, prompt: str | None) -> Any:
            prompts.append(prompt)
            result = super().upscale(rgb, seed=seed, prompt=prompt)
            result.settings["prompt"] = prompt or "the model's own default_prompt"
            return result

    def load_pipeline(model: str, **kwargs: Any) -> Fake:
        seen.update(kwargs, model=model)
        return Fake("bicubic", 4)

    monkeypatch.setattr("nsarm_core.batch.upscale.load_pipeline", load_pipeline)
    _write(tmp_path / "in" / "a.png")
    _write(tmp_path / "in" / "b.png", seed=1)
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"image_path": "a.png", "long_caption": "a red boat"}) + "\n")
    weights = tmp_path / "w.safetensors"
    res = _run(
        str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", "nsarm-8b", "--weights", str(weights),
        "--seed", "5", "--tau", "0.7", "--top-p", "0.9", "--cfg", "2", "--color-fix", "adain", "--tile", "64",
        "--tile-overlap", "8", "--device", "cpu", "--dtype", "bf16", "--captions", str(caps), "--fidelity", "0.25",
        "--batch-windows", "3", "--stitch", "latent", "--speck-guard", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen == {
        "model": "nsarm-8b", "device": "cpu", "dtype": "bf16", "weights": weights, "vae_weights": None,
        "text_encoder": None, "sampling": {"tau": 0.7, "top_p": 0.9, "cfg": 2.0}, "color_fix": "adain",
        "tile_overlap": 8, "fidelity": 0.25, "speck_guard": True, "batch_windows": 3, "stitch": "latent",
    }  # fmt: skip
    # The bug: the command sent a prompt of its own, so the model's default_prompt (config.json) was never used.
    assert prompts == ["a red boat", None]
    records = json.loads(res.stdout)["records"]
    assert [r["seed"] for r in records] == [5, 5] and records[1]["prompt_source"] == "default"
    assert records[1]["prompt"] == "the model's own default_prompt"
    assert "no caption" in res.stderr
    # --tile is applied by the batch layer around the pipeline (nsarm_core.batch.tiled), not by load_pipeline.
    assert records[0]["settings"]["outer_tiles"] == 1  # a 10x6 image fits in one 64-pixel tile


def test_default_tile_options_are_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def load_pipeline(model: str, **kwargs: Any) -> InterpolationUpscaler:
        seen.update(kwargs, model=model)
        return InterpolationUpscaler("bicubic", 4)

    monkeypatch.setattr("nsarm_core.batch.upscale.load_pipeline", load_pipeline)
    _write(tmp_path / "a.png")
    assert _run(str(tmp_path / "a.png"), "-o", str(tmp_path / "o")).exit_code == 0
    assert seen["model"] == "nsarm-tiny" and "tile" not in seen and seen["tile_overlap"] is None
    assert seen["sampling"] == {"tau": 0.5, "top_p": 0.97, "cfg": 1.0} and seen["color_fix"] == "both"


def test_strip_metadata_flag(tmp_path: Path) -> None:
    exif = PILImage.Exif()
    exif[0x010F] = "cam"
    (tmp_path / "in").mkdir()
    PILImage.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "in" / "p.jpg", exif=exif.tobytes())
    assert _run(str(tmp_path / "in"), "-o", str(tmp_path / "k"), "--model", "bicubic").exit_code == 0
    res = _run(str(tmp_path / "in"), "-o", str(tmp_path / "s"), "--model", "bicubic", "--strip-metadata")
    assert res.exit_code == 0
    with PILImage.open(tmp_path / "k" / "p.jpg") as im:
        assert im.getexif().get(0x010F) == "cam"
    with PILImage.open(tmp_path / "s" / "p.jpg") as im:
        assert 0x010F not in im.getexif()


def test_help_names_the_weight_options_and_scale_resize() -> None:
    from nsarm_core.weights import ROLE_OPTIONS

    res = runner.invoke(app, ["upscale", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for option in set(ROLE_OPTIONS.values()) | {"--scale", "--captions", "--overwrite", "--max-pixels"}:
        assert option in res.stdout
    assert "bicubic" in res.stdout and "antialiased" in res.stdout


def test_interrupt_exits_130_and_rerun_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    class Interrupting(InterpolationUpscaler):
        def upscale(self, rgb: Any, *, seed: int, prompt: str | None) -> Any:
            calls.append(seed)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return super().upscale(rgb, seed=seed, prompt=prompt)

    monkeypatch.setattr("nsarm_core.batch.upscale.load_pipeline", lambda m, **k: Interrupting("bicubic", 4))
    for i in range(3):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "o")]
    res = _run(*args)
    assert res.exit_code == 130 and "interrupted after 1 of 3" in res.stderr
    assert [p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")] == ["0.png"]
    res = _run(*args, "--json")
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in json.loads(res.stdout)["records"]] == ["skipped", "done", "done"]


# --------------------------------------------------------------------------- resume and output names (issue 17)


def _errors(res: Any) -> list[str]:
    return [line for line in res.output.splitlines() if line.startswith("Error:")]


def test_resume_notices_changed_settings_and_asks_for_overwrite(tmp_path: Path) -> None:
    for i in range(2):
        _write(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "o"
    base = [str(tmp_path / "in"), "-o", str(out)]
    assert _run(*base, "--model", "bicubic").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    res = _run(*base, "--model", "bicubic", "--scale", "2")
    assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
    assert "2 existing output(s)" in _errors(res)[0] and "scale 4.0 recorded, 2.0 now" in _errors(res)[0]
    assert "--overwrite" in _errors(res)[0]
    res = _run(*base, "--model", "lanczos")
    assert res.exit_code == 2 and "model 'bicubic' recorded, 'lanczos' now" in _errors(res)[0], res.output
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before  # nothing touched
    res = _run(*base, "--model", "bicubic", "--scale", "2", "--overwrite", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["totals"]["done"] == 2, res.output
    assert read_image(out / "0.png").width == 20
    res = _run(*base, "--model", "bicubic", "--scale", "2", "--json")  # the same settings: resumed
    assert res.exit_code == 0 and json.loads(res.stdout)["totals"]["skipped"] == 2, res.output


def test_nsarm_settings_are_part_of_the_record(tiny_dir: Path) -> None:
    from nsarm_core.batch.outputs import output_settings, settings_differences, weights_identity
    from nsarm_core.batch.upscale import load_upscaler

    pipe = load_upscaler(tiny_dir, device="cpu", dtype="fp32", sampling={"tau": 0.5})
    weights = weights_identity(tiny_dir)
    assert weights is not None and weights.startswith("sha256:")
    settings = output_settings(pipe, scale=4, seed=1, weights=weights)
    assert {
        "model",
        "weights",
        "scale",
        "seed",
        "tau",
        "top_p",
        "cfg",
        "color_fix",
        "fidelity",
        "dtype",
    } <= set(settings)
    other = output_settings(
        load_upscaler(tiny_dir, device="cpu", dtype="fp32", sampling={"tau": 0.7}),
        scale=4,
        seed=2,
        weights=weights,
    )
    assert settings_differences(settings, other) == ["seed 1 recorded, 2 now", "tau 0.5 recorded, 0.7 now"]
    # The speck guard is recorded only when on: outputs of a model without one, made before it existed, still match.
    assert "speck_guard" not in settings
    guarded = output_settings(
        load_upscaler(tiny_dir, device="cpu", dtype="fp32", sampling={"tau": 0.5}, speck_guard=True),
        scale=4,
        seed=1,
        weights=weights,
    )
    assert settings_differences(settings, guarded) == ["speck_guard None recorded, True now"]
    from nsarm_core.weights import get_model_spec

    registered = get_model_spec("nsarm-tiny").files["checkpoint"].sha256
    assert weights_identity("nsarm-tiny") == f"sha256:{registered}"  # the registered checksum, not re-hashed
    assert weights_identity("bicubic") is None


def test_only_a_complete_output_counts_as_done(tmp_path: Path) -> None:
    for name in ("folder", "empty", "broken", "good"):
        _write(tmp_path / "in" / f"{name}.png")
    out = tmp_path / "o"
    (out / "folder.png").mkdir(parents=True)
    (out / "empty.png").write_bytes(b"")
    good = _write(tmp_path / "x.png", h=24, w=40).read_bytes()
    (out / "broken.png").write_bytes(good[: len(good) // 2])  # cut short: no IEND
    res = _run(str(tmp_path / "in"), "-o", str(out), "--model", "bicubic", "--json")
    assert res.exit_code == 1, res.output
    records = {Path(r["input"]).stem: r for r in json.loads(res.stdout)["records"]}
    assert records["folder"]["status"] == "failed" and "is a folder" in records["folder"]["error"]
    for name in ("empty", "broken", "good"):
        assert records[name]["status"] == "done", records[name]
        assert read_image(out / f"{name}.png").width == 40
    assert "empty (0 bytes); made again" in records["empty"]["notes"][0]
    assert "not decodable" in records["broken"]["notes"][0]


def test_output_file_for_one_input_and_a_clear_error_for_several(tmp_path: Path) -> None:
    _write(tmp_path / "a.png")
    _write(tmp_path / "b.png", seed=1)
    res = _run(str(tmp_path / "a.png"), "-o", str(tmp_path / "result.png"), "--model", "bicubic")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "result.png").is_file() and read_image(tmp_path / "result.png").width == 40
    res = _run(str(tmp_path / "a.png"), "-o", str(tmp_path / "result.png"), "--model", "bicubic", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["totals"]["skipped"] == 1, (
        res.output
    )  # an existing file
    res = _run(str(tmp_path / "a.png"), "-o", str(tmp_path / "result.png"), "--model", "bicubic", "-s", "2")
    assert res.exit_code == 2 and "scale 4.0 recorded, 2.0 now" in _errors(res)[0], res.output
    res = _run(
        str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "r.jpg"), "--model", "bicubic"
    )
    assert res.exit_code == 2 and len(_errors(res)) == 1, res.output
    assert "names one output file, but the inputs are 2 images" in _errors(res)[0]
    assert not (tmp_path / "r.jpg").exists()


def test_several_input_folders_are_mirrored_under_their_names(tmp_path: Path) -> None:
    for folder in ("dirA", "dirB", "x/photos", "y/photos"):
        _write(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    res = _run(str(tmp_path / "dirA"), str(tmp_path / "dirB"), "-o", str(out), "--model", "bicubic")
    assert res.exit_code == 0, res.output
    assert (out / "dirA" / "x.png").is_file() and (out / "dirB" / "x.png").is_file()
    res = _run(str(tmp_path / "x/photos"), str(tmp_path / "y/photos"), "-o", str(out), "--model", "bicubic")
    assert res.exit_code == 0, res.output
    assert (out / "x" / "photos" / "x.png").is_file() and (out / "y" / "photos" / "x.png").is_file()
    res = _run(
        str(tmp_path / "dirA"), "-o", str(tmp_path / "one"), "--model", "bicubic"
    )  # one folder: as before
    assert res.exit_code == 0 and (tmp_path / "one" / "x.png").is_file()


def test_suffix_is_automatic_next_to_the_inputs_only(tmp_path: Path) -> None:
    _write(tmp_path / "in" / "a.png")
    res = _run(str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--model", "bicubic")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "in" / "a_x4.png").is_file()
    res = _run(str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "in"), "--model", "bicubic", "-s", "1.5")
    assert res.exit_code == 0 and (tmp_path / "in" / "a_x1.5.png").is_file(), res.output
    sep = tmp_path / "sep"
    res = runner.invoke(app, ["-v", "upscale", str(tmp_path / "in"), "-o", str(sep), "--model", "bicubic"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in sep.glob("*.png")) == ["a.png"]  # a_x4.png and a_x1.5.png: earlier outputs
    text = " ".join(res.output.split())
    assert (
        "a_x4.png': an output of an earlier run" in text
        and "a_x1.5.png': an output of an earlier run" in text
    )


def test_a_refused_run_prints_its_error_line_alone(tmp_path: Path) -> None:
    # rich's progress bar, stopped before it started, used to add an empty line in front of the error
    src = tmp_path / "a.png"
    PILImage.new("RGB", (16, 16)).save(src)
    r = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "out"), "--tau", "-1"])
    assert r.exit_code == 2
    assert r.output.splitlines() == [r.output.strip()], repr(r.output)
    assert r.output.startswith("Error: tau")

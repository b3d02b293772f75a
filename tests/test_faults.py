"""Hostile and broken inputs (issue 16): every case ends as a clear one-line error naming the file or key.

Unit-level cases first (weight loaders refuse code-carrying pickles without running them); the CLI corpus
(``CASES``) runs each broken input through ``nsarm`` and counts one-line exit-2 errors against "Internal error".
"""

from __future__ import annotations

import pickle
from pathlib import Path

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

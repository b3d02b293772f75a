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

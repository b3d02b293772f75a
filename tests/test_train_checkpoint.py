"""Training checkpoints never run code on resume (issue 16, item 1), and still resume exactly.

A checkpoint is written as safetensors + JSON (``nsarm_core.train.checkpoint``); folders in accelerate's older
layout are read with ``torch.load(weights_only=True)`` only, and sharded (DCP) ``.metadata`` pickles are vetted
by a restricted unpickler before accelerate's FSDP reader sees them.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nsarm_core.errors import InputError
from nsarm_core.train.checkpoint import MANIFEST, check_dcp_metadata
from nsarm_core.train.config import TrainConfig
from nsarm_core.train.loop import list_checkpoints, train
from tests.test_train_loop import _cfg, _ToyRecipe

pytest.importorskip("accelerate")

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

COMMON = dict(max_steps=6, grad_accum=2, warmup_steps=2, schedule="cosine", ema_decay=0.9, checkpoint_every=3)


class _Evil:
    """Unpickling this runs code: it writes ``marker`` (what a crafted checkpoint file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _reset() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def _stopped_run(tmp_path: Path) -> tuple[Path, TrainConfig]:
    cfg = _cfg(tmp_path / "b", **COMMON)
    train(_ToyRecipe(), cfg, stop_after=3)
    _reset()
    return list_checkpoints(cfg.run_dir)[-1], cfg


def _to_accelerate_layout(ckpt: Path) -> None:
    """Rewrite one of our checkpoints as accelerate's ``save_state`` wrote it (torch.save pickles)."""
    manifest = json.loads((ckpt / MANIFEST).read_text())
    (ckpt / "model_net.safetensors").rename(ckpt / "model.safetensors")
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    state: dict = {}
    for key, t in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    groups = [{**g, "betas": tuple(g["betas"])} for g in manifest["optimizer"]["param_groups"]]
    torch.save({"state": state, "param_groups": groups}, ckpt / "optimizer.bin")
    shadow = load_file(str(ckpt / "ema.safetensors"))
    objects = [
        manifest["objects"]["counters"],
        manifest["objects"]["scheduler"],
        {"decay": manifest["ema"]["decay"], "shadow": [shadow[str(i)] for i in range(len(shadow))]},
    ]
    for i, obj in enumerate(objects):
        torch.save(obj, ckpt / f"custom_checkpoint_{i}.pkl")
    for name in (MANIFEST, "optimizer.safetensors", "ema.safetensors"):
        (ckpt / name).unlink()


def test_checkpoint_holds_no_pickle(tmp_path: Path) -> None:
    ckpt, _ = _stopped_run(tmp_path)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["checkpoint.json", "ema.safetensors", "model_net.safetensors", "optimizer.safetensors"]


def test_planted_pickle_in_old_layout_is_refused_and_never_runs(tmp_path: Path) -> None:
    ckpt, cfg = _stopped_run(tmp_path)
    _to_accelerate_layout(ckpt)
    marker = tmp_path / "pwned"
    torch.save({"step": _Evil(marker)}, ckpt / "custom_checkpoint_0.pkl")
    with pytest.raises(InputError, match="custom_checkpoint_0.pkl needs unsafe unpickling") as err:
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_old_layout_resumes_exactly(tmp_path: Path) -> None:
    full = train(_ToyRecipe(), _cfg(tmp_path / "a", **COMMON))
    _reset()
    ckpt, cfg = _stopped_run(tmp_path)
    _to_accelerate_layout(ckpt)
    resumed = train(_ToyRecipe(seed=99), dataclasses.replace(cfg, resume="latest"))
    assert resumed.start_step == 3 and resumed.losses == full.losses[3:]


def test_pickle_planted_in_new_layout_is_never_opened(tmp_path: Path) -> None:
    ckpt, cfg = _stopped_run(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"step": _Evil(marker)}, ckpt / "custom_checkpoint_0.pkl")
    res = train(_ToyRecipe(seed=99), dataclasses.replace(cfg, resume="latest"))
    assert res.start_step == 3 and not marker.exists()


@pytest.mark.parametrize("victim", ["optimizer.safetensors", "ema.safetensors", "model_net.safetensors"])
def test_pickle_in_place_of_a_safetensors_file_is_refused(tmp_path: Path, victim: str) -> None:
    ckpt, cfg = _stopped_run(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(marker)}, ckpt / victim)
    with pytest.raises(InputError, match=f"{victim} is not a readable safetensors file") as err:
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))
    assert "\n" not in str(err.value) and not marker.exists()


def test_corrupt_manifest_is_refused_naming_it(tmp_path: Path) -> None:
    ckpt, cfg = _stopped_run(tmp_path)
    (ckpt / MANIFEST).write_bytes(b"\xff\xfe not json")
    with pytest.raises(InputError, match="checkpoint.json is not readable JSON"):
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))


def test_truncated_tensor_file_is_refused_naming_it(tmp_path: Path) -> None:
    ckpt, cfg = _stopped_run(tmp_path)
    data = (ckpt / "optimizer.safetensors").read_bytes()
    (ckpt / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="optimizer.safetensors is not a readable safetensors file"):
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))


def test_dcp_metadata_is_vetted_before_unpickling(tmp_path: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3)).sum().backward()
    opt.step()
    good = tmp_path / "good" / "pytorch_model_fsdp_0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized": one process is intended
        dcp.save(
            {"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=str(good), no_dist=True
        )
    check_dcp_metadata(good.parent)  # a real sharded checkpoint passes

    bad = tmp_path / "bad" / "optimizer_0"
    bad.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (bad / ".metadata").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(InputError, match=r"optimizer_0/\.metadata needs unsafe unpickling.*builtins\.exec"):
        check_dcp_metadata(bad.parent)
    assert not marker.exists()


def test_refused_checkpoint_does_not_touch_the_tensors_it_guards(tmp_path: Path) -> None:
    # The manifest's optimizer section no longer matches its tensors: a clear error, not a KeyError.
    ckpt, cfg = _stopped_run(tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["optimizer"]["param_groups"] = manifest["optimizer"]["param_groups"][:1]
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    save_file({"0.exp_avg": torch.zeros(1)}, str(ckpt / "optimizer.safetensors"))
    with pytest.raises(InputError, match="does not match this run's optimizer"):
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m["objects"]["counters"].update(step="three"),
            "checkpoint.json is incomplete or does not match",
        ),
        (lambda m: m.pop("optimizer"), "checkpoint.json is incomplete or does not match this run .KeyError"),
        (
            lambda m: m.update(models=["net", "other"]),
            "holds the models .'net', 'other'. but this run trains",
        ),
        (lambda m: m.pop("ema"), "was written without EMA but this run sets ema_decay"),
        (lambda m: m.update(version=2), "has version 2; this nsarm reads version 1"),
    ],
)
def test_tampered_manifest_is_a_one_line_error(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    ckpt, cfg = _stopped_run(tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    edit(manifest)
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=message) as err:
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))
    assert "\n" not in str(err.value)


def test_renamed_ema_tensors_are_refused(tmp_path: Path) -> None:
    ckpt, cfg = _stopped_run(tmp_path)
    shadow = load_file(str(ckpt / "ema.safetensors"))
    save_file({f"x{k}": v for k, v in shadow.items()}, str(ckpt / "ema.safetensors"))
    with pytest.raises(InputError, match="ema.safetensors does not hold the EMA tensors"):
        train(_ToyRecipe(), dataclasses.replace(cfg, resume="latest"))

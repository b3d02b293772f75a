"""Training checkpoints written and read in safe formats only: no checkpoint file can run code on resume.

accelerate's ``save_state``/``load_state`` pickle the registered objects and read them back with
``torch.load(weights_only=False)``, so a crafted ``custom_checkpoint_0.pkl`` in a checkpoint folder ran code
when a run was resumed from it (issue 16, item 1). This module saves every part itself:

* ``checkpoint.json``: format tag, step counters, LR schedule, optimizer hyper-parameters and non-tensor
  state, EMA decay, gradient-scaler state (JSON; floats round-trip exactly), written last;
* ``model_<name>.safetensors``: each trainable module (unwrapped from DDP / autocast);
* ``optimizer.safetensors``: the optimizer's tensors (AdamW moments and step counts), key ``<param>.<name>``;
* ``ema.safetensors``: the EMA shadow tensors, key ``<index>``.

RNG states are not saved: the loop re-seeds every RNG at the start of every step (see ``loop.py``).

Under FSDP the sharded model and optimizer go through accelerate's ``save_fsdp_model``/``save_fsdp_optimizer``.
Their reader uses ``torch.load(weights_only=True)`` for tensor files but plain ``pickle`` for the
``.metadata`` file of a sharded (DCP) checkpoint, so every such file is first read with an unpickler that only
knows DCP's metadata classes, and the checkpoint is refused when it names anything else.

Folders written by earlier versions (accelerate's layout: ``model.safetensors``, ``optimizer.bin``,
``custom_checkpoint_N.pkl``) are still read, every pickle with ``torch.load(weights_only=True)``; a file that
needs more than that is refused.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nsarm_core.errors import InputError, NSARMError

logger = logging.getLogger(__name__)

FORMAT = "nsarm-training-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
_JSON_SCALARS = (bool, int, float, str, type(None))


def _is_fsdp(acc: Any) -> bool:
    return str(acc.distributed_type).endswith("FSDP")


def _refuse(path: Path, why: str) -> InputError:
    return InputError(
        f"checkpoint file {path} {why}; resume from another checkpoint (--resume PATH) or start the run again "
        "with --overwrite"
    )


def _json_value(value: Any, where: str) -> Any:
    """``value`` as JSON (tuples become lists), or a bug report naming ``where``."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v, f"{where}.{k}") for k, v in value.items()}
    # Not a user error: a new optimizer/scheduler field that this module must learn to store.
    raise TypeError(f"cannot store {where} ({type(value).__name__}) in a training checkpoint")


def _like(value: Any, template: Any) -> Any:
    """JSON ``value`` with lists turned back into tuples where ``template`` (the live object's value) has one."""
    if isinstance(template, tuple) and isinstance(value, list):
        return tuple(value)
    return value


# ----------------------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------------------


def _optimizer_to_safe(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and everything else (JSON)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = _json_value(value, f"optimizer.state.{pid}.{name}")
    groups = [_json_value(dict(g), "optimizer.param_groups") for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "state": scalars}


def save_training_state(
    acc: Any,
    folder: Path,
    *,
    models: Mapping[str, nn.Module],
    optimizer: Any,
    objects: Mapping[str, Any],
    ema: Any | None,
) -> None:
    """Write a checkpoint of the trainable ``models``, the ``optimizer``, ``objects`` and ``ema`` to ``folder``.

    Called on every process (FSDP gathers are collectives); only the main process writes the files.

    Args:
        acc: the ``accelerate.Accelerator``.
        folder: an existing, empty folder.
        models: the prepared trainable modules, by name.
        optimizer: the prepared optimizer.
        objects: small stateful objects (step counters, LR scheduler) whose ``state_dict()`` is JSON-able.
        ema: the EMA (``shadow`` tensors and ``decay``) or ``None``.
    """
    from safetensors.torch import save_file, save_model

    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "models": list(models)}
    manifest["objects"] = {k: _json_value(o.state_dict(), k) for k, o in objects.items()}
    if _is_fsdp(acc):
        from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

        plugin = acc.state.fsdp_plugin
        for i, module in enumerate(models.values()):
            save_fsdp_model(plugin, acc, module, str(folder), i)
        # As accelerate pairs them: the optimizer is sharded like the first model.
        save_fsdp_optimizer(plugin, acc, optimizer, next(iter(models.values())), str(folder), 0)
        manifest["fsdp"] = True
    else:
        manifest["fsdp"] = False
        if acc.is_main_process:
            for name, module in models.items():
                save_model(acc.unwrap_model(module), str(folder / f"model_{name}.safetensors"))
            tensors, rest = _optimizer_to_safe(optimizer.state_dict())
            save_file(tensors, str(folder / "optimizer.safetensors"))
            manifest["optimizer"] = rest
    if ema is not None:
        manifest["ema"] = {"decay": ema.decay, "count": len(ema.shadow)}
        if acc.is_main_process:
            save_file(
                {str(i): s.cpu().contiguous() for i, s in enumerate(ema.shadow)},
                str(folder / "ema.safetensors"),
            )
    if acc.scaler is not None:
        manifest["scaler"] = _json_value(acc.scaler.state_dict(), "scaler")
    if acc.is_main_process:
        # Written last: a folder without it is incomplete (the caller also renames .tmp only when done).
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=True), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"is not readable JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _refuse(path, f"is not an nsarm training checkpoint manifest (no format '{FORMAT}')")
    if manifest.get("version") != VERSION:
        raise _refuse(path, f"has version {manifest.get('version')!r}; this nsarm reads version {VERSION}")
    return manifest


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise _refuse(path, "is missing")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError and OSError: a corrupt or truncated file
        raise _refuse(path, f"is not a readable safetensors file ({exc})") from exc


def _load_weights_only(path: Path) -> Any:
    """A pickle read with ``torch.load(weights_only=True)``: tensors and plain containers, never code."""
    if not path.is_file():
        raise _refuse(path, "is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next(
            (line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else ""
        )
        raise _refuse(
            path,
            f"needs unsafe unpickling and was not loaded (nsarm reads pickles with weights_only=True: {detail.strip()})",
        ) from exc
    except Exception as exc:
        raise _refuse(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc


# The only globals a DCP ``.metadata`` pickle names (torch 2.4 - 2.13): its dataclasses, tensor properties and
# the checkpoint path. Anything else is refused before DCP's plain ``pickle.load`` sees the file.
_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "BytesStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and (
            name == "Size"
            or isinstance(getattr(torch, name, None), torch.dtype | torch.layout | torch.memory_format)
        ):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not part of a checkpoint's metadata")


def check_dcp_metadata(folder: Path) -> None:
    """Refuse a sharded (DCP) checkpoint whose ``.metadata`` pickle names anything but DCP's own classes."""
    for meta in sorted(folder.rglob(".metadata")):
        try:
            with meta.open("rb") as fh:
                _MetadataUnpickler(fh).load()
        except Exception as exc:
            raise _refuse(meta, f"needs unsafe unpickling and was not loaded ({exc})") from exc


def _load_optimizer(
    optimizer: Any, tensors: Mapping[str, Tensor], rest: Mapping[str, Any], where: Path
) -> None:
    live = optimizer.state_dict()
    try:
        groups = [
            {k: _like(v, live_g.get(k)) for k, v in g.items()}
            for g, live_g in zip(rest["param_groups"], live["param_groups"], strict=True)
        ]
        state: dict[int, dict[str, Any]] = {}
        for key, t in tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = t
        for pid, values in rest.get("state", {}).items():
            state.setdefault(int(pid), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, ValueError, TypeError) as exc:
        raise _refuse(where, f"does not match this run's optimizer ({exc})") from exc


def load_training_state(
    acc: Any,
    folder: Path,
    *,
    models: Mapping[str, nn.Module],
    optimizer: Any,
    objects: Mapping[str, Any],
    ema: Any | None,
) -> None:
    """Restore what :func:`save_training_state` wrote (or an older accelerate-layout folder) from ``folder``.

    Raises:
        InputError: a missing, corrupt or mismatched file, or one that would need unsafe unpickling; the
            message names the file.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        _load_accelerate_layout(acc, folder, models=models, optimizer=optimizer, objects=objects, ema=ema)
        return
    manifest = _read_manifest(manifest_path)
    try:
        _load_manifest_layout(acc, folder, manifest, models, optimizer, objects, ema)
    except NSARMError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a hand-edited or mismatched manifest
        raise _refuse(
            manifest_path, f"is incomplete or does not match this run ({type(exc).__name__}: {exc})"
        ) from exc


def _load_model_file(acc: Any, module: nn.Module, name: str, path: Path) -> None:
    from safetensors.torch import load_model

    _load_safetensors(path)  # a readable file first, so that a corrupt one is not reported as a mismatch
    try:
        load_model(acc.unwrap_model(module), str(path), strict=True)
    except Exception as exc:
        raise _refuse(path, f"does not fit the model '{name}' ({str(exc).splitlines()[0]})") from exc


def _load_manifest_layout(
    acc: Any,
    folder: Path,
    manifest: Mapping[str, Any],
    models: Mapping[str, nn.Module],
    optimizer: Any,
    objects: Mapping[str, Any],
    ema: Any | None,
) -> None:
    manifest_path = folder / MANIFEST
    if list(manifest.get("models", [])) != list(models):
        raise _refuse(
            manifest_path,
            f"holds the models {manifest.get('models')} but this run trains {list(models)}; resume with the same stage",
        )
    if manifest.get("fsdp") != _is_fsdp(acc):
        raise _refuse(
            manifest_path, "was written with a different FSDP setting; resume with the same accelerate config"
        )
    if _is_fsdp(acc):
        _load_fsdp(acc, folder, models, optimizer)
    else:
        for name, module in models.items():
            _load_model_file(acc, module, name, folder / f"model_{name}.safetensors")
        _load_optimizer(
            optimizer,
            _load_safetensors(folder / "optimizer.safetensors"),
            manifest["optimizer"],
            folder / "optimizer.safetensors",
        )
    for key, obj in objects.items():
        if key not in manifest.get("objects", {}):
            raise _refuse(manifest_path, f"has no '{key}' state")
        obj.load_state_dict(manifest["objects"][key])
    if ema is not None:
        if "ema" not in manifest:
            raise _refuse(
                manifest_path,
                "was written without EMA but this run sets ema_decay; resume with the same config",
            )
        shadow = _load_safetensors(folder / "ema.safetensors")
        if sorted(shadow) != sorted(str(i) for i in range(len(shadow))):
            raise _refuse(folder / "ema.safetensors", "does not hold the EMA tensors 0..N-1")
        ema.load_state_dict(
            {"decay": manifest["ema"]["decay"], "shadow": [shadow[str(i)] for i in range(len(shadow))]}
        )
    if acc.scaler is not None and "scaler" in manifest:
        acc.scaler.load_state_dict(manifest["scaler"])


def _load_fsdp(acc: Any, folder: Path, models: Mapping[str, nn.Module], optimizer: Any) -> None:
    from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

    check_dcp_metadata(folder)
    plugin = acc.state.fsdp_plugin
    for i, module in enumerate(models.values()):
        load_fsdp_model(plugin, acc, module, str(folder), i)
    load_fsdp_optimizer(plugin, acc, optimizer, next(iter(models.values())), str(folder), 0)


def _load_accelerate_layout(
    acc: Any,
    folder: Path,
    *,
    models: Mapping[str, nn.Module],
    optimizer: Any,
    objects: Mapping[str, Any],
    ema: Any | None,
) -> None:
    """A checkpoint from ``accelerate.save_state`` (nsarm <= 0.x): same content, every pickle weights-only.

    accelerate numbered the registered objects in registration order: the counters and the LR scheduler given
    in ``objects``, then the EMA.
    """

    if not (folder / "custom_checkpoint_0.pkl").exists() and not (folder / "model.safetensors").exists():
        raise _refuse(folder / MANIFEST, "is missing: the folder is not a training checkpoint")
    logger.info("reading %s in accelerate's checkpoint layout (pickles with weights_only=True)", folder)
    stateful = list(objects.values()) + ([ema] if ema is not None else [])
    # Read (and so vet) every pickle before any state changes: a refused file leaves the run untouched.
    states = [_load_weights_only(folder / f"custom_checkpoint_{i}.pkl") for i in range(len(stateful))]
    if (folder / f"custom_checkpoint_{len(stateful)}.pkl").exists():
        raise _refuse(
            folder / f"custom_checkpoint_{len(stateful)}.pkl", "belongs to a run with other settings"
        )
    if _is_fsdp(acc):
        _load_fsdp(acc, folder, models, optimizer)
    else:
        opt_state = _load_weights_only(folder / "optimizer.bin")
        for i, (name, module) in enumerate(models.items()):
            _load_model_file(
                acc, module, name, folder / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            )
        optimizer.load_state_dict(opt_state)
    for obj, state in zip(stateful, states, strict=True):
        obj.load_state_dict(state)
    if acc.scaler is not None and (folder / "scaler.pt").is_file():
        acc.scaler.load_state_dict(_load_weights_only(folder / "scaler.pt"))

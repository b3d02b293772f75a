"""Training configuration: one frozen dataclass, loaded from YAML with ``--set key=value`` overrides.

Spec: docs/architecture.md S.4 item 10 (training as the accelerate idiom) and
docs/architecture.md C.10 (Infinity's example hyper-parameters: AdamW betas (0.9, 0.97), weight
decay 0.005, linear decay, grad clip 5, bf16), E.4 (NSARM's two training stages).

A config file is a YAML mapping whose top-level keys are the fields of :class:`TrainConfig`; stage-specific
settings (for example the stage-1 model preset or the degradation preset) live under ``stage:`` and are passed
to the recipe untouched. Overrides use the same names, dotted for stage keys::

    nsarm train-stage1 --config stage1.yaml --set lr=3e-4 --set stage.degradation=light

Values from YAML and from ``--set`` go through the same typed conversion (so ``lr: 1e-4``, which PyYAML
reads as a string, still becomes a float), and an unknown key raises :class:`ConfigError` listing the valid
ones with the closest match.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nsarm_core.errors import ConfigError, InputError, did_you_mean

Schedule = Literal["cosine", "constant", "linear"]
MixedPrecision = Literal["no", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything the generic training loop (``nsarm_core.train.loop.train``) needs.

    Attributes:
        run_dir: folder of the run: ``config.yaml``, ``metrics.csv``, ``tensorboard/``, ``checkpoints/`` and
            the exported ``final/`` model.
        max_steps: number of optimizer steps (one step = ``grad_accum`` micro-batches per process).
        batch_size: micro-batch size per process.
        grad_accum: micro-batches accumulated before each optimizer step.
        lr: peak learning rate (after warm-up).
        weight_decay: AdamW decoupled weight decay (parameter groups may override it, e.g. no decay on norms).
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0 to ``lr`` over this many steps.
        schedule: shape of the learning rate after warm-up: "cosine" or "linear" decay to
            ``min_lr_ratio * lr`` at ``max_steps``, or "constant".
        min_lr_ratio: final learning rate as a fraction of ``lr`` for the decaying schedules.
        clip_grad: clip the global gradient norm to this value; ``None`` disables clipping.
        mixed_precision: "no", "bf16" or "fp16" (autocast through accelerate).
        checkpoint_every: save the full training state every N steps (the last step is always saved);
            0 saves only at the end.
        keep_checkpoints: keep the newest K checkpoints, delete older ones.
        ema_decay: exponential moving average of the trainable weights with this decay; ``None`` = off.
        log_every: write metrics (CSV, TensorBoard) every N steps.
        seed: seed of the data order, per-sample data randomness and per-step generators.
        num_workers: DataLoader worker processes.
        activation_checkpointing: ask the trainable modules to recompute activations in the backward pass
            (modules that define ``enable_activation_checkpointing()``).
        resume: ``None`` (fresh run), ``"latest"`` (newest checkpoint in ``run_dir/checkpoints``; a fresh start
            when there is none) or a checkpoint folder.
        tensorboard: also log to TensorBoard (skipped with a warning when the package is missing).
        progress: show a progress bar on the main process.
        cpu: run on the CPU even when a GPU is present (debugging, tests).
        stage: stage-specific settings, passed to the recipe as given (values parsed as YAML).
    """

    run_dir: str = "runs/default"
    max_steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.005
    betas: tuple[float, float] = (0.9, 0.97)
    warmup_steps: int = 0
    schedule: Schedule = "linear"
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 5.0
    mixed_precision: MixedPrecision = "no"
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    ema_decay: float | None = None
    log_every: int = 10
    seed: int = 0
    num_workers: int = 2
    activation_checkpointing: bool = False
    resume: str | None = None
    tensorboard: bool = True
    progress: bool = True
    cpu: bool = False
    stage: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ so that direct construction gets the same
        # typed conversion as YAML loading (e.g. betas given as a list).
        hints = _field_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _convert(f.name, value, hints[f.name]))
        self._validate()

    def _validate(self) -> None:
        def need(cond: bool, name: str, expected: str) -> None:
            if not cond:
                raise ConfigError(
                    f"train config: {name}={getattr(self, name)!r} is invalid; expected {expected}"
                )

        need(bool(self.run_dir), "run_dir", "a non-empty folder path")
        need(self.max_steps >= 1, "max_steps", "an integer >= 1")
        need(self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(self.grad_accum >= 1, "grad_accum", "an integer >= 1")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite float > 0")
        need(self.weight_decay >= 0, "weight_decay", "a float >= 0")
        need(all(0 <= b < 1 for b in self.betas), "betas", "two floats in [0, 1)")
        need(self.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a float in [0, 1]")
        need(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "a float > 0 or null (no clipping)")
        need(self.checkpoint_every >= 0, "checkpoint_every", "an integer >= 0 (0 = only at the end)")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "an integer >= 1")
        need(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay", "a float in (0, 1) or null (off)")
        need(self.log_every >= 1, "log_every", "an integer >= 1")
        need(self.num_workers >= 0, "num_workers", "an integer >= 0")

    # ------------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able mapping (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping of field names; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"train config must be a mapping of field names, got {type(data).__name__}")
        for key in data:
            _check_key(str(key))
        stage = data.get("stage") or {}
        if not isinstance(stage, Mapping):
            raise ConfigError(f"train config: 'stage' must be a mapping, got {type(stage).__name__}")
        kwargs = {k: v for k, v in data.items() if k != "stage"}
        return cls(**kwargs, stage=dict(stage))

    def with_overrides(self, overrides: Sequence[str]) -> TrainConfig:
        """Apply ``key=value`` strings (``stage.name=value`` for stage keys) and return a new config."""
        changes: dict[str, Any] = {}
        stage = dict(self.stage)
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"override {item!r} is not of the form key=value (e.g. --set lr=3e-4)")
            if key.startswith("stage."):
                sub = key[len("stage.") :]
                if not sub:
                    raise ConfigError(f"override {item!r}: missing the stage key after 'stage.'")
                stage[sub] = _parse_yaml_scalar(raw)
                continue
            _check_key(key)
            if key == "stage":
                raise ConfigError("override the stage settings one by one: --set stage.NAME=VALUE")
            changes[key] = _parse_override(key, raw)
        return dataclasses.replace(self, **changes, stage=stage)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (``run_dir/config.yaml``)."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a :class:`TrainConfig` from a YAML file (or the defaults) and apply ``--set`` overrides.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: ``key=value`` strings, applied in order after the file.

    Returns:
        The validated config.

    Raises:
        InputError: the file is missing or not valid YAML.
        ConfigError: an unknown key, a value of the wrong type or out of range.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file {p} does not exist; pass an existing YAML file or omit --config")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(
                f"config file {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML"
            ) from exc
        except OSError as exc:
            raise InputError(f"config file {p} cannot be read ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise InputError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p} must hold a mapping of field names, got {type(loaded).__name__}"
            )
        data = loaded
    return TrainConfig.from_dict(data).with_overrides(overrides)


# ----------------------------------------------------------------------------------------------------------
# Typed conversion
# ----------------------------------------------------------------------------------------------------------


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def valid_keys() -> list[str]:
    """Names accepted at the top level of a config file or a ``--set`` override."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _is_scalar_type(tp: Any) -> bool:
    if tp in (int, float, bool, str) or typing.get_origin(tp) is Literal:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(rest) == 1 and _is_scalar_type(rest[0])
    return False


def convert_scalar_fields(cls: type, values: Mapping[str, Any], prefix: str = "stage.") -> dict[str, Any]:
    """``values`` for dataclass ``cls`` with every int/float/bool/str/Literal field converted as in the config.

    Stage settings arrive as YAML values (``--set stage.scale=four`` gives the text "four"); this gives them the
    same typed conversion, and the same one-line ConfigError naming the key, as the top-level fields. Fields of
    other types (paths lists, preset-or-mapping unions, nested settings) are passed through for their class to
    check.
    """
    hints = typing.get_type_hints(cls)
    return {
        k: _convert(f"{prefix}{k}", v, hints[k]) if k in hints and _is_scalar_type(hints[k]) else v
        for k, v in values.items()
    }


def _check_key(key: str) -> None:
    keys = valid_keys()
    if key not in keys:
        raise ConfigError(
            f"unknown train config key '{key}'.{did_you_mean(key, keys)} Valid keys: {', '.join(keys)} "
            "(stage-specific settings go under 'stage', e.g. --set stage.NAME=VALUE)"
        )


def _parse_yaml_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _parse_override(key: str, raw: str) -> Any:
    # Strings from the command line: let YAML read lists/null/booleans, and let _convert do the typing. A string
    # field keeps the text as typed: YAML would turn `mixed_precision=no` into False.
    tp = typing.get_type_hints(TrainConfig).get(key)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if tp is not None else []
    textual = tp is str or typing.get_origin(tp) is Literal or (len(args) == 1 and args[0] is str)
    if textual and raw.strip().lower() not in {"none", "null", "~"}:
        return raw.strip()
    return _parse_yaml_scalar(raw) if raw.strip() != "" else raw


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the annotated type ``tp`` of field ``name`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", "~", ""}):
            return None
        assert len(non_none) == 1, "only Optional[X] unions are used in TrainConfig"
        return _convert(name, value, non_none[0])
    if origin is Literal:
        choices = list(args)
        if isinstance(value, bool) and ("no" if not value else "yes") in choices:
            value = "no" if not value else "yes"  # YAML 1.1 reads an unquoted `no` as False
        if value not in choices:
            raise ConfigError(
                f"train config: {name}={value!r} is not one of {choices}.{did_you_mean(value, choices)}"
            )
        return value
    if origin is tuple:
        items = value
        if isinstance(value, str):
            items = [s for s in value.replace("(", "").replace(")", "").split(",") if s.strip()]
        if not isinstance(items, (list, tuple)) or len(items) != len(args):
            raise ConfigError(f"train config: {name}={value!r} must be {len(args)} values, e.g. 0.9,0.97")
        return tuple(_convert(name, v, a) for v, a in zip(items, args, strict=True))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"train config: {name} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ConfigError(f"train config: {name}={value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"train config: {name}={value!r} must be an integer, not a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                as_float = math.nan
            if math.isfinite(as_float) and as_float.is_integer():
                return int(as_float)
        raise ConfigError(f"train config: {name}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"train config: {name}={value!r} must be a number, not a boolean")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"train config: {name}={value!r} must be a number (e.g. 1e-4)") from None
    if tp is str:
        if isinstance(value, (str, int, float, Path)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"train config: {name}={value!r} must be a string")
    if tp is Any:
        return value
    raise AssertionError(f"unsupported TrainConfig annotation {tp!r} for field {name}")

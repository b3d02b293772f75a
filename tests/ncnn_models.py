"""Test helper: write a PyTorch RRDBNet as an ncnn model (``.param`` + ``.bin``), the layout ncnn exports use.

Written from ncnn's public format description, independently of ``nsarm_core/convert_ncnn.py`` (which reads it):
the same layer graph as the realesrgan-x4plus export (Input, Convolution with fused leaky ReLU, Split, Concat,
Eltwise with coefficients, BinaryOp, Interp), with a Split inserted wherever a blob has several consumers (ncnn
requires every blob to be consumed once).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

TAG_FP16 = 0x01306B47


def _graph(net: torch.nn.Module) -> tuple[list[tuple[str, str, list[str], list[str], str]], list[str]]:
    """Layers ``(type, name, inputs, outputs, params)`` with logical blob names, and the conv keys in order."""
    layers: list[tuple[str, str, list[str], list[str], str]] = [("Input", "input", [], ["data"], "")]
    convs: list[str] = []
    counter = [0]

    def blob() -> str:
        counter[0] += 1
        return f"b{counter[0]}"

    def conv(key: str, x: str, lrelu: bool) -> str:
        w = net.get_submodule(key).weight
        out = blob()
        act = " 9=2 -23310=1,2.000000e-01" if lrelu else ""
        layers.append(("Convolution", key, [x], [out], f"0={w.shape[0]} 1=3 4=1 5=1 6={w.numel()}{act}"))
        convs.append(key)
        return out

    def concat(xs: list[str]) -> str:
        out = blob()
        layers.append(("Concat", f"cat{counter[0]}", xs, [out], ""))
        return out

    def scaled_add(branch: str, skip: str) -> str:
        out = blob()
        layers.append(
            ("Eltwise", f"add{counter[0]}", [branch, skip], [out], "0=1 -23301=2,2.000000e-01,1.000000e+00")
        )
        return out

    feat = conv("conv_first", "data", False)
    x = feat
    for i in range(len(net.body)):
        rrdb_in = x
        for k in (1, 2, 3):
            pre = f"body.{i}.rdb{k}"
            xs = [x]
            for j in (1, 2, 3, 4):
                xs.append(conv(f"{pre}.conv{j}", xs[0] if j == 1 else concat(list(xs)), True))
            x = scaled_add(conv(f"{pre}.conv5", concat(list(xs)), False), x)
        x = scaled_add(x, rrdb_in)
    body = conv("conv_body", x, False)
    summed = blob()
    layers.append(("BinaryOp", "add_body", [feat, body], [summed], "0=0"))
    x = summed
    for key in ("conv_up1", "conv_up2"):
        up = blob()
        layers.append(("Interp", f"up_{key}", [x], [up], "0=1 1=2.000000e+00 2=2.000000e+00"))
        x = conv(key, up, True)
    x = conv("conv_hr", x, True)
    last = conv("conv_last", x, False)
    layers[-1] = (*layers[-1][:3], ["output"], layers[-1][4])
    del last
    return layers, convs


def _with_splits(
    layers: list[tuple[str, str, list[str], list[str], str]],
) -> list[tuple[str, str, list[str], list[str], str]]:
    consumers: dict[str, int] = {}
    for _, _, ins, _, _ in layers:
        for b in ins:
            consumers[b] = consumers.get(b, 0) + 1
    taken: dict[str, int] = {}
    out: list[tuple[str, str, list[str], list[str], str]] = []
    for typ, name, ins, outs, params in layers:
        renamed = []
        for b in ins:
            if consumers[b] > 1:
                taken[b] = taken.get(b, 0) + 1
                renamed.append(f"{b}_splitncnn_{taken[b] - 1}")
            else:
                renamed.append(b)
        out.append((typ, name, renamed, outs, params))
        for b in outs:
            if consumers.get(b, 0) > 1:
                splits = [f"{b}_splitncnn_{n}" for n in range(consumers[b])]
                out.append(("Split", f"split_{b}", [b], splits, ""))
    return out


def write_ncnn_rrdbnet(
    net: torch.nn.Module, folder: Path, *, fp16: bool = True, name: str = "tiny"
) -> tuple[Path, Path]:
    """Write ``net`` (an RRDBNet) as ``folder/name.param`` and ``folder/name.bin``; returns both paths."""
    layers, convs = _graph(net)
    layers = _with_splits(layers)
    blobs = {b for _, _, ins, outs, _ in layers for b in (*ins, *outs)}
    lines = ["7767517", f"{len(layers)} {len(blobs)}"]
    for typ, lname, ins, outs, params in layers:
        lines.append(" ".join([typ, lname, str(len(ins)), str(len(outs)), *ins, *outs, *params.split()]))
    folder.mkdir(parents=True, exist_ok=True)
    param = folder / f"{name}.param"
    param.write_text("\n".join(lines) + "\n", encoding="ascii")
    data = bytearray()
    for key in convs:
        module = net.get_submodule(key)
        w = module.weight.detach().float().numpy().reshape(-1)
        if fp16:
            raw = w.astype("<f2").tobytes()
            data += struct.pack("<I", TAG_FP16) + raw + b"\0" * (-len(raw) % 4)
        else:
            data += struct.pack("<I", 0) + w.astype("<f4").tobytes()
        data += module.bias.detach().float().numpy().astype("<f4").tobytes()
    binf = folder / f"{name}.bin"
    binf.write_bytes(bytes(data))
    return param, binf


def fp16_rounded(net: torch.nn.Module) -> dict[str, np.ndarray]:
    """``net``'s state dict as the fp16 export stores it (weights rounded to float16, biases float32)."""
    return {
        k: (v.detach().half().float() if k.endswith(".weight") else v.detach().float()).numpy()
        for k, v in net.state_dict().items()
    }

"""benchmarks/nsarm8b_synthetic.py on tiny geometries: the code path of the nsarm-8b benchmark, kept from rotting."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from nsarm_core.models.nsarm import NSARMConfig, get_preset

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script() -> ModuleType:
    path = ROOT / "benchmarks" / "nsarm8b_synthetic.py"
    spec = importlib.util.spec_from_file_location("nsarm8b_synthetic", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_with_text() -> NSARMConfig:
    """The tiny geometry with a text-conditioned transformer, so the synthetic T5 features go through nsarm-8b's
    text path (RMSNorm, attention pool, cross-attention memory)."""
    base = get_preset("tiny")
    return replace(
        base,
        name="tiny-text",
        transformer=replace(base.transformer, use_text=True),
        text_encoder="synthetic",
    )


def test_reduced_config_keeps_the_width_and_checks_the_block_count() -> None:
    s = _script()
    full = get_preset("nsarm-8b")
    four = s.reduced_config(full, 4)
    assert (four.transformer.depth, four.transformer.block_chunks) == (4, 4)
    assert replace(four.transformer, depth=40, block_chunks=8) == full.transformer  # width, heads, MLP, text
    assert (four.vae, four.transform_net, four.schedule) == (full.vae, full.transform_net, full.schedule)
    assert s.reduced_config(full, 40) == full  # all blocks: the official 8 chunks of 5
    for bad in (0, 41):
        with pytest.raises(SystemExit, match="--blocks"):
            s.reduced_config(full, bad)


def test_build_synthetic_gives_each_part_its_run_dtype_and_seeded_values() -> None:
    s = _script()
    cfg = s.reduced_config(_tiny_with_text(), 1)
    cpu = torch.device("cpu")
    model = s.build_synthetic(cfg, device=cpu, dtype=torch.bfloat16, seed=3)
    tr = model.transformer
    assert len(list(tr.blocks())) == 1
    # SRPipeline's bf16 layout: blocks, transformation net and decoder bf16; encoder, embeddings and head fp32.
    assert {p.dtype for p in tr.block_chunks.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.transform_net.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.decoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.encoder.parameters()} == {torch.float32}
    assert tr.head.weight.dtype == tr.word_embed.weight.dtype == tr.cfg_uncond.dtype == torch.float32
    state = model.state_dict()
    assert all(t.device == cpu and bool(torch.isfinite(t.float()).all()) for t in state.values())
    # Fan-in scaling: word_embed [C, 56] has standard deviation 1/sqrt(56); norms start at 1, biases at 0.
    assert tr.word_embed.weight.std().item() == pytest.approx(1 / math.sqrt(56), rel=0.1)
    assert bool((tr.block_chunks[0].module[0].ca_norm.weight == 1).all())
    assert not bool(tr.word_embed.bias.any())
    same = s.build_synthetic(cfg, device=cpu, dtype=torch.bfloat16, seed=3).state_dict()
    other = s.build_synthetic(cfg, device=cpu, dtype=torch.bfloat16, seed=4).state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not torch.equal(state["transformer.word_embed.weight"], other["transformer.word_embed.weight"])


def test_fill_synthetic_refuses_a_buffer_it_has_no_value_for() -> None:
    module = nn.Linear(2, 2)
    module.register_buffer("running_mean", torch.zeros(2))
    with pytest.raises(RuntimeError, match="running_mean.*fill_synthetic"):
        _script().fill_synthetic(module, torch.Generator().manual_seed(0))


def test_measure_runs_one_window_through_the_whole_pipeline_with_synthetic_text() -> None:
    s = _script()
    record = s.measure(s.reduced_config(_tiny_with_text(), 1), text_tokens=5)
    assert (record["blocks"], record["text_tokens"], record["dtype"]) == (1, 5, "fp32")
    assert record["lr_size"] == [64, 64] and record["hr_size"] == [256, 256]
    for clock in ("seconds", "cpu_seconds"):  # the pipeline's wall clocks and this process's CPU time
        stages = [record[clock][k] for k in s.STAGES]
        assert min(stages) > 0 and record[clock]["total"] >= sum(stages)
    assert 0 < record["weights_gb"] < record["memory_after_build_gb"] <= record["peak_sampling_gb"]
    assert record["peak_decoding_gb"] > 0


def _rows(s: ModuleType) -> list[dict]:
    """Two synthetic rows: only ar_scales grows with the blocks; the other stages differ by noise."""
    rows = []
    for n, noise in ((2, 1.0), (4, -1.0)):
        seconds = {k: 10.0 + i + noise for i, k in enumerate(s.STAGES)}
        wall = {
            **seconds,
            "ar_scales": 10 + 3 * n,
            "total": sum(seconds.values()) - seconds["ar_scales"] + 10 + 3 * n + 0.5,
        }
        cpu = {**seconds, "ar_scales": 5 + 2 * n}
        cpu["total"] = sum(cpu.values())
        rows.append(
            {
                "blocks": n,
                "seconds": wall,
                "cpu_seconds": cpu,
                "weights_gb": 3 + 0.8 * n,
                "peak_sampling_gb": 4 + 1.1 * n,  # weights + KV cache: steeper, but lower at few blocks
                "peak_decoding_gb": 8 + 0.8 * n,  # weights + decoder activations
            }
        )
    return rows


def test_extrapolate_fits_the_blocks_stage_and_averages_the_others() -> None:
    s = _script()
    rows = _rows(s)
    ext = s.extrapolate(rows, 40)
    ar = ext["seconds"]["ar_scales"]
    assert (ar["per_block"], ar["at_depth"]) == (pytest.approx(3), pytest.approx(10 + 3 * 40))
    # The decoder runs no blocks: its two noisy values average to 13, not a line through them (13 - 40).
    assert ext["seconds"]["decode"] == {"per_block": 0.0, "intercept": 13.0, "at_depth": 13.0}
    others = sum(10.0 + i for i, k in enumerate(s.STAGES) if k != "ar_scales")
    assert ext["seconds"]["total"]["at_depth"] == pytest.approx(others + 10 + 3 * 40 + 0.5)  # + time outside
    assert ext["cpu_seconds"]["total"]["at_depth"] == pytest.approx(others + 5 + 2 * 40)
    assert ext["memory"]["weights_gb"]["at_depth"] == pytest.approx(3 + 0.8 * 40)
    assert ext["peak_gb"] == pytest.approx(4 + 1.1 * 40)  # the sampling phase overtakes the decoder's
    reference = s.reference_figures(rows, ext, "bf16", True, "cpu_seconds")
    assert reference["how"] == "extrapolated" and reference["memory_md_peak_gb"] == 24.32
    assert reference["seconds_per_1024_output"] == pytest.approx(others + 5 + 2 * 40)
    full = {**rows[1], "blocks": 40}
    measured = s.reference_figures([full], None, "fp32", False, "seconds")
    assert measured["how"] == "measured" and measured["seconds_per_1024_output"] == full["seconds"]["total"]
    assert s.extrapolate(rows[:1], 40) is None
    assert s.reference_figures(rows[:1], None, "fp32", False, "seconds") is None


def test_from_json_reports_an_earlier_run_without_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = _script()
    rows = [
        {**r, "device_name": "cpu", "threads": 1, "width": 3584, "tokens": 10521, "lr_size": [256, 256],
         "hr_size": [1024, 1024], "memory_kind": "peak RSS (VmHWM)"}
        for r in _rows(s)
    ]  # fmt: skip
    meta = {"preset": "nsarm-8b", "device": "cpu", "dtype": "fp32", "offload": False}
    earlier, out = tmp_path / "earlier.json", tmp_path / "again.json"
    earlier.write_text(json.dumps({"meta": meta, "rows": rows}))
    assert s.main(["--from-json", str(earlier), "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "40 (fit)" in printed and "paper: 1.2 s on an A800" in printed
    payload = json.loads(out.read_text())
    assert payload["rows"] == rows and payload["extrapolation"] == s.extrapolate(rows, 40)
    assert payload["reference"]["memory_md_peak_gb"] == pytest.approx(50.61 - 2.447)


def test_main_prints_the_table_and_writes_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert (
        _script().main(["--preset", "tiny", "--blocks", "1", "--device", "cpu", "--json-out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "ar_scales" in printed and "peak sampling GB" in printed
    payload = json.loads(out.read_text())
    assert payload["meta"]["dtype"] == "fp32" and payload["meta"]["device"] == "cpu"
    (row,) = payload["rows"]
    assert row["blocks"] == 1 and row["hr_size"] == [256, 256]
    assert payload["extrapolation"] is None and payload["reference"] is None

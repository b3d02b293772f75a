"""Windows per batch from a memory budget (``nsarm_core.window_batch``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nsarm_core.errors import ConfigError
from nsarm_core.models.nsarm import get_preset
from nsarm_core.window_batch import (
    MAX_AUTO_BATCH,
    _available_ram,
    auto_batch_windows,
    check_batch_windows,
    decode_chunk,
    memory_budget,
    window_bytes,
)

CPU = torch.device("cpu")


def test_window_bytes_follow_the_memory_formulas() -> None:
    cfg = get_preset("nsarm-tiny")  # 64 px LR window, 256 px HR window, decoder C1 = 64, no CFW in the preset
    batched, decoder = window_bytes(cfg, torch.float32)
    assert decoder == 4 * 64 * 256 * 256 * 4  # docs/memory.md: 4 x C1 x P x s
    assert window_bytes(cfg, torch.bfloat16)[1] == decoder // 2
    tokens = sum(h * w for h, w in cfg.schedule.token_grids)
    kv = cfg.transformer.depth * 2 * tokens * cfg.transformer.embed_dim * 4
    assert batched == 4 * 32 * 64 * 64 * 4 + kv + 16 * 3 * 256 * 256 * 4


def test_auto_batch_grows_with_the_budget_and_stays_in_range() -> None:
    cfg = get_preset("nsarm-tiny")
    batched, decoder = window_bytes(cfg, torch.float32)
    assert auto_batch_windows(cfg, torch.float32, CPU, budget=0) == 1  # never below one window
    # On a CPU one window decodes at a time, so the budget pays one decoder and n batched windows.
    assert auto_batch_windows(cfg, torch.float32, CPU, budget=decoder + 3 * batched) == 3
    assert auto_batch_windows(cfg, torch.float32, CPU, budget=2**40) == MAX_AUTO_BATCH
    assert 1 <= auto_batch_windows(cfg, torch.float32, CPU) <= MAX_AUTO_BATCH  # this machine's budget
    # nsarm-8b: its 6 GB bf16 KV cache per window dominates; on CUDA a batch needs the larger of the batched
    # stages and the decoder (they run one after the other), so 13 GB hold two windows and 12 GB one.
    big, cuda = get_preset("nsarm-8b"), torch.device("cuda")
    batched, decoder = window_bytes(big, torch.bfloat16)
    assert 6.0e9 < batched < 6.5e9 and decoder == 4 * 256 * 1024 * 1024 * 2
    assert auto_batch_windows(big, torch.bfloat16, cuda, budget=13 * 10**9) == 2
    assert auto_batch_windows(big, torch.bfloat16, cuda, budget=12 * 10**9) == 1


def test_decode_chunk_and_cpu_budget(tmp_path: Path) -> None:
    assert decode_chunk(CPU, 8) == 1 and decode_chunk(torch.device("cuda"), 8) == 8
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    1000000 kB\n")
    assert _available_ram(meminfo) == 1000000 * 1024
    assert 0 < memory_budget(CPU) <= 2 * 2**30


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_bad_batch_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="batch_windows must be a positive number of windows"):
        check_batch_windows(bad)  # type: ignore[arg-type]
    assert check_batch_windows(None) is None and check_batch_windows(3) == 3

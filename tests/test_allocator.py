"""``nsarm_core.allocator``: glibc keeps freed blocks for reuse, the opt-outs, and the commands that set it."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import nsarm_core.allocator as allocator
from nsarm_cli.main import app
from nsarm_core.data.io import Image, write_image


def _is_glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


# Three 8 MiB blocks filled and freed 20 times, as a decoder's activations are: with glibc's defaults the freed
# heap top (24 MiB) passes the trim threshold (twice the adaptive mmap threshold, 16 MiB) and goes back to the
# system every round, so each round faults its pages in again.
_PATTERN = """
import ctypes, json, resource, sys
from nsarm_core.allocator import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, rounds = 8 * 2**20, 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(rounds):
    blocks = [libc.malloc(size) for _ in range(3)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks:
        libc.free(b)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "pages_per_round": 3 * size // 4096}))
"""


def _run_pattern(env_malloc: str | None) -> dict[str, int]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("NSARM_MALLOC", "LD_PRELOAD")}
    if env_malloc is not None:
        env["NSARM_MALLOC"] = env_malloc
    out = subprocess.run(
        [sys.executable, "-c", _PATTERN], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _is_glibc(), reason="glibc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    kept = _run_pattern(None)
    system = _run_pattern("system")
    assert kept["kept"] is True and system["kept"] is False
    pages = kept["pages_per_round"]
    # Kept: only the first round touches new pages. glibc's defaults: (nearly) every round does.
    assert kept["faults"] < 2 * pages, kept
    assert system["faults"] > 10 * pages, system


def test_opt_out_and_other_platforms_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: calls.append("CDLL"))  # must not be reached
    for env, platform, preload in (
        ("system", "linux", ""),
        ("SYSTEM", "linux", ""),
        ("", "darwin", ""),
        ("", "win32", ""),
        ("", "linux", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ):
        monkeypatch.setattr(allocator, "_applied", None)
        monkeypatch.setenv("NSARM_MALLOC", env)
        monkeypatch.setenv("LD_PRELOAD", preload)
        monkeypatch.setattr(sys, "platform", platform)
        assert allocator.keep_freed_memory() is False, (env, platform, preload)
    assert calls == []


def test_the_first_outcome_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", None)
    outcomes = iter([True, False])
    monkeypatch.setattr(allocator, "_apply", lambda: next(outcomes))
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True  # process-wide: not applied (or undone) twice


def test_upscale_command_sets_it_before_loading_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("kept") or True)
    write_image(tmp_path / "a.png", Image(rgb=np.random.default_rng(0).random((6, 8, 3), dtype=np.float32)))
    res = CliRunner().invoke(
        app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "bicubic"]
    )
    assert res.exit_code == 0, res.output
    assert calls == ["kept"]

"""``--dtype auto`` on a CPU: bf16 only where the CPU's flags say bf16 is native (AVX512-BF16 or AMX).

Every test fakes the flags (a written ``/proc/cpuinfo``-style file or a flag set), so the result does not depend
on the machine that runs the tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nsarm_core import cpu_features
from nsarm_core.cpu_features import cpu_flags, has_native_bf16
from nsarm_core.pipeline import resolve_dtype

AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c"
AVX512_NO_BF16 = AVX2 + " avx512f avx512dq avx512bw avx512vl avx512_vnni"  # e.g. Skylake-SP, Zen 4 without it
AVX512_BF16 = AVX512_NO_BF16 + " avx512_bf16"  # Cooper Lake, Zen 4/5
AMX = AVX512_NO_BF16 + " amx_tile amx_int8 amx_bf16"  # Sapphire Rapids


def _cpuinfo(tmp_path: Path, flags: str, cpus: int = 2) -> Path:
    block = "processor\t: {i}\nvendor_id\t: Faked\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n"
    path = tmp_path / "cpuinfo"
    path.write_text("".join(block.format(i=i, flags=flags) for i in range(cpus)))
    return path


@pytest.mark.parametrize(
    ("flags", "native"),
    [(AVX2, False), (AVX512_NO_BF16, False), (AVX512_BF16, True), (AMX, True), ("", False)],
    ids=["avx2", "avx512-without-bf16", "avx512-bf16", "amx", "no-flags"],
)
def test_native_bf16_is_read_from_the_flags(tmp_path: Path, flags: str, native: bool) -> None:
    path = _cpuinfo(tmp_path, flags)
    assert cpu_flags(path) == frozenset(flags.split())
    assert has_native_bf16(cpu_flags(path)) is native
    assert has_native_bf16(flags.split()) is native


def test_auto_dtype_follows_this_cpus_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_features, "CPUINFO", _cpuinfo(tmp_path, AVX2))
    assert resolve_dtype("auto", "cpu") == "fp32"
    monkeypatch.setattr(cpu_features, "CPUINFO", _cpuinfo(tmp_path, AVX512_BF16))
    assert resolve_dtype("auto", "cpu") == "bf16"
    monkeypatch.setattr(cpu_features, "CPUINFO", tmp_path / "missing")  # macOS, Windows: not known -> fp32
    assert cpu_flags() is None
    assert resolve_dtype("auto", "cpu") == "fp32"


def test_auto_dtype_on_other_devices_and_explicit_dtypes() -> None:
    amx, avx2 = frozenset(AMX.split()), frozenset(AVX2.split())
    assert resolve_dtype("auto", "cpu", cpu_flags=amx) == "bf16"
    assert resolve_dtype("auto", "cpu", cpu_flags=avx2) == "fp32"
    assert resolve_dtype("auto", "cuda", cpu_flags=avx2) == "bf16"
    assert resolve_dtype("auto", "mps", cpu_flags=amx) == "fp32"  # the flags describe the CPU, not MPS
    assert resolve_dtype("fp32", "cpu", cpu_flags=amx) == "fp32"  # --dtype fp32 stays available
    assert resolve_dtype("bf16", "cpu", cpu_flags=avx2) == "bf16"

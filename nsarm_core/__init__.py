"""nsarm: robust real-world image super-resolution by next-scale autoregressive modeling.

The package import stays light (no torch); import the submodules you need, for example
``nsarm_core.pipeline`` or ``nsarm_core.data.degrade``.
"""

from __future__ import annotations

from nsarm_core.errors import (
    ChecksumError,
    ConfigError,
    InputError,
    MissingExtraError,
    NSARMError,
    WeightsNotFoundError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "NSARMError",
    "ConfigError",
    "InputError",
    "WeightsNotFoundError",
    "ChecksumError",
    "MissingExtraError",
]

"""Exceptions raised by nsarm for bad input, configuration or missing weights.

Every message says what was received, what was expected and how to fix it. The CLI prints an
``NSARMError`` as one red line and exits with code 2; other exceptions are bugs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any


class NSARMError(Exception):
    """Base class of every error that is the user's to fix."""


class ConfigError(NSARMError, ValueError):
    """An invalid configuration value, preset name or option combination."""


class InputError(NSARMError, ValueError):
    """An input file or array that cannot be used (corrupt, wrong mode, too large, ...)."""


class WeightsNotFoundError(NSARMError, FileNotFoundError):
    """A weight file is missing locally and cannot be downloaded (offline, or not on the Hub)."""


class ChecksumError(NSARMError):
    """A weight file's checksum differs from the registered one."""


class MissingExtraError(NSARMError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def missing_extra(package: str, extra: str, purpose: str) -> MissingExtraError:
    """Build the error for an optional package that failed to import."""
    return MissingExtraError(
        f"{purpose} needs the optional package '{package}', which is not installed; "
        f"install it with: pip install 'nsarm[{extra}]'"
    )


def refused_pickle(path: object, exc: BaseException) -> InputError:
    """The one-line error for a pickle that ``torch.load(weights_only=True)`` refused or could not parse.

    torch's own message is a page of advice ending in "re-run with weights_only=False"; this names the file and
    what it imports instead (``GLOBAL builtins.exec``), and never suggests unsafe loading.
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found is None:  # not a forbidden object but an unreadable stream (garbage, truncation)
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
        return InputError(
            f"cannot read {path} as a weights-only torch checkpoint (corrupt, truncated or not one)"
            + (f": {detail}" if detail else "")
        )
    return InputError(
        f"refused to load {path}: it holds Python objects, not only tensors (it imports {found.group(1)}); nsarm "
        "reads pickles with torch.load(weights_only=True) only: pass a .safetensors file or a plain state dict"
    )


def did_you_mean(name: object, candidates: Iterable[object]) -> str:
    """``" Did you mean 'x'?"`` for the closest candidate to ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_known_keys(data: Mapping[str, Any], valid: Iterable[str], what: str) -> None:
    """Raise ConfigError naming every key of ``data`` not in ``valid``: ``unknown <what> ['x']; valid: [...]``.

    The one check behind every config dataclass's ``from_dict``, so a typo in a ``config.json`` reads the same
    whichever part it is in.
    """
    known = sorted(valid)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; valid: {known}")


def unknown_choice(what: str, name: object, valid: Iterable[object], *, note: str = "") -> ConfigError:
    """The error for a name that is not one of ``valid``: ``unknown <what> 'x'; valid: a, b. Did you mean 'a'?``.

    Every registry lookup of the project (presets, models, metrics, kernels, schedules) raises this, so the
    messages read the same everywhere. ``note`` is appended (e.g. where to see the list).
    """
    names = [str(v) for v in valid]
    text = f"unknown {what} {str(name)!r}; valid: {', '.join(names)}.{did_you_mean(name, names)}"
    return ConfigError(text + (f" {note}" if note else ""))

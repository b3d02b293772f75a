"""The Hugging Face Hub from nsarm's side: may we download now, and how does a user get a file by hand.

Not a paper component. Two rules every loader of the project follows (weights, the text encoder, the captioner,
the metrics):

* **No network is detected once, in seconds.** Without ``HF_HUB_OFFLINE=1``, huggingface_hub and transformers
  retry a Hub that cannot be reached for minutes (156 s for ``nsarm caption`` measured on a machine without
  network). :func:`offline_reason` opens one TCP connection to the Hub's host (through the HTTPS proxy when one
  is set) with a :data:`TIMEOUT_S` limit, once per process; when it fails, loaders read only the local cache
  (``local_files_only``) and their error says why at once.
* **One helper writes the "how to get this file" command** (:func:`download_command`): ``hf download``, the CLI
  of the huggingface-hub we install (``huggingface-cli`` no longer exists there).

Only the standard library is imported here (huggingface_hub's endpoint is read when a check runs).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import urllib.parse
from collections.abc import Sequence

__all__ = ["TIMEOUT_S", "env_offline", "offline_reason", "host_unreachable", "download_command"]

#: Seconds the one reachability check may take (connect, DNS included) before the Hub counts as unreachable.
TIMEOUT_S = 3.0

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def env_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _address(url: str) -> tuple[str, int]:
    """``(host, port)`` a connection for ``url`` goes to: the HTTPS proxy when one is set, else the URL's host."""
    proxy = next((os.environ[v] for v in _PROXY_VARS if os.environ.get(v)), None)
    parts = urllib.parse.urlsplit(proxy if proxy else url)
    if not parts.hostname:  # "proxy:3128" without a scheme
        parts = urllib.parse.urlsplit(f"http://{proxy or url}")
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default


@functools.cache
def _probe(host: str, port: int, timeout: float) -> str | None:
    """One TCP connect to ``host:port``; None when it succeeds, else why not. A thread bounds the whole attempt
    (``create_connection``'s timeout does not cover the DNS lookup, which can hang on a machine without network)."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    worker = threading.Thread(target=connect, name="nsarm-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"{host}:{port} did not answer within {timeout:g} s"
    return None if outcome[0] is None else f"{host}:{port} could not be reached ({outcome[0]})"


def host_unreachable(url: str) -> str | None:
    """None when the host of ``url`` (or the HTTPS proxy) accepts a connection within :data:`TIMEOUT_S`, else a
    short reason. Checked once per host and process; a ``file://`` URL needs no network (None)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return None
    host, port = _address(url)
    return _probe(host, port, TIMEOUT_S)


def offline_reason() -> str | None:
    """Why nothing may be downloaded from the Hub now: ``HF_HUB_OFFLINE=1`` is set, or the Hub's host (``HF_ENDPOINT``,
    default huggingface.co) did not answer (:func:`host_unreachable`); None when downloads may go ahead."""
    if env_offline():
        return "offline (HF_HUB_OFFLINE=1)"
    from huggingface_hub import constants

    reason = host_unreachable(constants.ENDPOINT)
    if reason is None:
        return None
    return f"no network: the Hugging Face Hub {reason}; only the local cache was searched"


def download_command(
    repo_id: str, filename: str | None = None, *, include: Sequence[str] = (), revision: str | None = None
) -> str:
    """The command that puts a Hub file (or a whole repository, or the files matching ``include``) in the cache
    nsarm reads: ``hf download REPO [FILE] [--include PATTERN ...] [--revision REV]``."""
    parts = ["hf", "download", repo_id]
    if filename:
        parts.append(filename)
    parts += [f"--include '{pattern}'" for pattern in include]
    if revision:
        parts.append(f"--revision {revision}")
    return " ".join(parts)

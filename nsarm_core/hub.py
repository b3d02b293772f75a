"""The Hugging Face Hub from nsarm's side: may we download now, and how does a user get a file by hand.

Not a paper component. Two rules every loader of the project follows (weights, the text encoder, the captioner,
the metrics):

* **No network is detected once, in seconds.** Without ``HF_HUB_OFFLINE=1``, huggingface_hub and transformers
  retry a Hub that cannot be reached for minutes (156 s for ``nsarm caption`` measured on a machine without
  network). :func:`offline_reason` sends one HEAD request to the Hub's server (through the environment's proxy,
  as huggingface_hub does) with a :data:`TIMEOUT_S` limit, once per process; when no server answers (no route,
  no DNS, a TLS certificate that does not verify, a timeout), loaders read only the local cache
  (``local_files_only``) and their error says why at once. Any HTTP answer, even an error status, counts as a
  network (a bare TCP connect does not: an intercepting proxy accepts those for any address).
* **One helper writes the "how to get this file" command** (:func:`download_command`): ``hf download``, the CLI
  of the huggingface-hub we install (``huggingface-cli`` no longer exists there).

Only the standard library is imported here (huggingface_hub's endpoint is read when a check runs).
Every test replaces ``urllib.request.urlopen``: no test uses the network.
"""

from __future__ import annotations

import functools
import os
import threading
import urllib.parse
from collections.abc import Sequence

__all__ = ["TIMEOUT_S", "env_offline", "offline_reason", "host_unreachable", "download_command"]

#: Seconds the one reachability check may take (connect, DNS included) before the Hub counts as unreachable.
TIMEOUT_S = 3.0


def env_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _base(url: str) -> str:
    """``scheme://host[:port]/`` of ``url``: the probe asks the server, not a file."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


@functools.cache
def _probe(base: str, timeout: float) -> str | None:
    """One HEAD request to ``base`` (through the proxy of the environment, as huggingface_hub's own requests);
    None when a server answers, whatever its status, else why not. A thread bounds the whole attempt: urllib's
    timeout does not cover the DNS lookup, which can hang on a machine without network."""
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(base, method="HEAD"), timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered (401, 404, ...): the network is there
        except (urllib.error.URLError, OSError, ValueError) as exc:
            why = getattr(exc, "reason", exc)
            outcome.append(f"{type(exc).__name__}: {why}" if str(why) else type(exc).__name__)

    worker = threading.Thread(target=ask, name="nsarm-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"{base} did not answer within {timeout:g} s"
    return None if outcome[0] is None else f"{base} could not be reached ({outcome[0]})"


def host_unreachable(url: str) -> str | None:
    """None when the server of ``url`` answers a HEAD request within :data:`TIMEOUT_S`, else a short reason.
    Asked once per server and process; a ``file://`` URL needs no network (None)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return None
    return _probe(_base(url), TIMEOUT_S)


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

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsarm_core.errors import WeightsNotFoundError

__all__ = [
    "TIMEOUT_S",
    "env_offline",
    "offline_reason",
    "host_unreachable",
    "download_command",
    "TransformersSource",
    "transformers_source",
]

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


@dataclass(frozen=True)
class TransformersSource:
    """Where a ``transformers`` model (the text encoder, the captioner) is loaded from, resolved once.

    Attributes:
        source: the name or path as given.
        is_local: ``source`` is an existing folder.
        load_from: what ``from_pretrained`` is given (the expanded folder, or the hub id).
        where: where the files were looked for (the folder, or the Hub cache), for messages.
        no_network: why the Hub could not be reached (:func:`offline_reason`), or None.
        kwargs: ``local_files_only`` (and ``cache_dir``) for every ``from_pretrained`` call.
    """

    source: str
    is_local: bool
    load_from: str
    where: str
    no_network: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def not_found(self, what: str, exc: BaseException, hint: str) -> WeightsNotFoundError:
        """The one-line error for a model ``from_pretrained`` could not load: what, why offline, where, ``hint``."""
        offline = ""
        if self.no_network is not None:
            offline = f" ({self.no_network})"
        elif self.kwargs.get("local_files_only") and not self.is_local:
            offline = " (offline: HF_HUB_OFFLINE / local_files_only)"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return WeightsNotFoundError(
            f"{what} {self.source!r} not found{offline}; looked in {self.where}; {hint}. Original error: {first}"
        )


def transformers_source(
    name_or_path: str | os.PathLike[str],
    *,
    local_files_only: bool | None,
    cache_dir: str | os.PathLike[str] | None,
    folder: str,
    folder_hint: str,
) -> TransformersSource:
    """Resolve a folder or hub id for ``transformers``' ``from_pretrained`` by the project's rules.

    ``local_files_only=None`` follows ``HF_HUB_OFFLINE``; otherwise, for a hub id, the Hub is probed once
    (:func:`offline_reason`) so an unreachable network reads the cache at once instead of retrying for minutes.
    A path-like name (absolute, ``./``, ``~``, two slashes) that is no folder is refused as "``folder`` PATH
    does not exist; ``folder_hint``" (what to pass instead), not sent to the Hub as an id.

    Raises:
        WeightsNotFoundError: a path-like name that does not exist.
    """
    from huggingface_hub import constants

    if local_files_only is None:
        local_files_only = env_offline() or bool(constants.HF_HUB_OFFLINE)
    source = str(name_or_path)
    path = Path(source).expanduser()
    is_local = path.is_dir()
    if not is_local and (path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1):
        raise WeightsNotFoundError(f"{folder} {path} does not exist; {folder_hint}")
    no_network = None
    if not is_local and not local_files_only:  # found out once, in seconds, instead of minutes of retries
        no_network = offline_reason()
        local_files_only = no_network is not None
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    return TransformersSource(
        source=source,
        is_local=is_local,
        load_from=str(path) if is_local else source,
        where=str(path) if is_local else str(cache_dir or constants.HF_HUB_CACHE),
        no_network=no_network,
        kwargs=kwargs,
    )

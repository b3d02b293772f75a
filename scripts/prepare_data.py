#!/usr/bin/env python3
"""Prepare the nsarm-tiny real-photo data: check the Debian photos, verify them and write train/val images.

Not a paper component: this is the data step of the reproducible nsarm-tiny run (the paper trains on LSDIR /
FFHQ-like HR sets, which are not available offline; ``data/README.md`` explains the substitute). It reads the
tracked manifest ``data/photos.json`` (37 real photographs from the Debian packages lomiri-wallpapers-16.04,
mate-backgrounds and plasma-workspace-wallpapers) and writes two git-ignored folders:

* ``data/train/<name>.png``: each training photo resized with Pillow's Lanczos filter so its **short side is
  768 px** (aspect kept), RGB, 8 bit, PNG. WHY a resized copy and not a symlink to the 2.5K-6K JPEG: the
  tiny model trains on random 256x256 crops; on the full-size originals one crop covers 1/6-1/12 of the short
  side, mostly defocused bokeh or flat sky, while at 768 px a crop covers a third of the scene. Downscaling by
  2-7x also averages out the wallpapers' JPEG blocking and sensor noise, so the HR targets are clean, and the
  loader decodes a ~1 MP PNG instead of a 13 MP JPEG for every sample.
* ``data/val/<name>.png``: each validation photo given the **same** short-side-768 Lanczos resize, then a
  centre **512x512** crop. Same resize as training so train and val HR images share one pixel scale.

Guarantees: the script is deterministic (same manifest + same Pillow/zlib = byte-identical PNGs; their sha256
is recorded), idempotent (an output is rebuilt only when missing, modified, or made with other settings or
other source bytes; see the hidden ``.prepared.json`` stamp in each folder), refuses nothing silently (a
source whose sha256 differs from the manifest is reported and skipped) and never leaves a validation photo in
``data/train`` (outputs of photos that changed split are deleted).

Usage::

    python scripts/prepare_data.py               # check packages, verify, write data/train and data/val
    python scripts/prepare_data.py --check       # only check packages and sha256, write nothing
    python scripts/prepare_data.py --install     # as root: apt-get install the missing packages first
    python scripts/prepare_data.py --root DIR    # photos extracted with `dpkg -x` under DIR instead of /

Exit status: 0 success, 1 a photo was skipped and ``--strict`` was given, 2 an error (missing packages,
bad manifest, a split left empty).

Only the standard library and Pillow are used, so the script runs before nsarm itself is installed.

Shape legend:
    W, H   width and height of an image in pixels
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO / "data" / "photos.json"
DEFAULT_DATA_DIR = REPO / "data"
SPLITS = ("train", "val")
STAMP_NAME = ".prepared.json"
#: Bumped whenever the pixels this script writes would change for the same settings (invalidates stamps).
PROCESS_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os has no getter)


class PrepareError(Exception):
    """A problem the user must fix (message says what was found, what was expected and how to fix it)."""


@dataclass(frozen=True)
class Settings:
    """How outputs are made; stored in each folder's stamp so other settings trigger a rebuild."""

    train_short_side: int = 768
    val_short_side: int = 768
    val_size: int = 512
    resample: str = "lanczos"
    png_compress_level: int = 6
    process_version: int = PROCESS_VERSION


@dataclass
class Summary:
    """What one run did, per split (printed as text, or as JSON with ``--json``)."""

    written: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    kept: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    skipped: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    removed: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    warnings: list[str] = field(default_factory=list)


def warn(summary: Summary, message: str) -> None:
    """Print a warning on stderr at once and keep it for the final summary."""
    summary.warnings.append(message)
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------------------


def load_manifest(path: Path) -> dict[str, Any]:
    """Read and validate ``data/photos.json``.

    Args:
        path: the manifest file.

    Returns:
        The parsed manifest (``packages`` mapping and ``photos`` list).

    Raises:
        PrepareError: unreadable JSON, a missing field, a duplicate or unsafe name, an unknown split or package,
            a malformed sha256, or a split without photos.
    """
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrepareError(f"manifest not found: {path} (expected the tracked data/photos.json)") from None
    except (OSError, ValueError) as exc:
        raise PrepareError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("photos"), list):
        raise PrepareError(f"manifest {path} must be a JSON object with a 'photos' list")
    packages = manifest.get("packages")
    if not isinstance(packages, dict) or not packages:
        raise PrepareError(f"manifest {path} must have a non-empty 'packages' object")
    seen: set[str] = set()
    required = ("name", "split", "package", "path", "sha256")
    for i, photo in enumerate(manifest["photos"]):
        missing = [k for k in required if not isinstance(photo.get(k), str)]
        if missing:
            raise PrepareError(f"manifest {path}: photo #{i} lacks string field(s) {', '.join(missing)}")
        name = photo["name"]
        if not _NAME_RE.match(name):
            raise PrepareError(f"manifest {path}: photo name {name!r} must match {_NAME_RE.pattern}")
        if name in seen:
            raise PrepareError(f"manifest {path}: photo name {name!r} appears twice; names must be unique")
        seen.add(name)
        if photo["split"] not in SPLITS:
            raise PrepareError(
                f"manifest {path}: photo {name!r} has split {photo['split']!r}; use 'train' or 'val'"
            )
        if photo["package"] not in packages:
            raise PrepareError(
                f"manifest {path}: photo {name!r} names package {photo['package']!r}, not in 'packages'"
            )
        if not _SHA_RE.match(photo["sha256"]):
            raise PrepareError(f"manifest {path}: photo {name!r} sha256 must be 64 lowercase hex digits")
        if not photo["path"].startswith("/"):
            raise PrepareError(
                f"manifest {path}: photo {name!r} path must be absolute, got {photo['path']!r}"
            )
    for split in SPLITS:
        if not any(p["split"] == split for p in manifest["photos"]):
            raise PrepareError(f"manifest {path} has no '{split}' photo")
    return manifest


# ----------------------------------------------------------------------------------------------------------
# Debian packages
# ----------------------------------------------------------------------------------------------------------


def installed_version(package: str) -> str | None:
    """Installed version of a Debian package, None when not installed, "" when dpkg-query is unavailable."""
    if shutil.which("dpkg-query") is None:
        return ""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = proc.stdout.partition("|")
    # "ii " = desired install, actually installed; anything else (rc, un, not found) counts as missing.
    return version.strip() if proc.returncode == 0 and status.startswith("ii") else None


def install_command(packages: Sequence[str]) -> str:
    """The shell command that installs ``packages`` (Debian 12 main archive, root)."""
    return f"apt-get update && apt-get install -y {' '.join(packages)}"


def check_packages(
    manifest: Mapping[str, Any], root: Path, *, install: bool, summary: Summary
) -> dict[str, str | None]:
    """Make sure every package the manifest uses is present; optionally install the missing ones.

    With ``root`` other than "/" (files extracted by ``dpkg -x``) dpkg's database says nothing about them, so
    presence is judged from the files alone.

    Args:
        manifest: the loaded manifest.
        root: the directory the manifest's absolute paths live under.
        install: run apt-get for missing packages (root only) instead of failing.
        summary: collects warnings.

    Returns:
        package -> installed version (None when unknown, e.g. under ``--root``).

    Raises:
        PrepareError: packages are missing (the message has the exact apt-get command), or ``--install``
            failed or was asked for without root privileges.
    """
    used = {p["package"] for p in manifest["photos"]}
    packages: dict[str, Any] = {k: v for k, v in manifest["packages"].items() if k in used}
    versions: dict[str, str | None] = {}
    missing: list[str] = []
    for package in packages:
        files = [p for p in manifest["photos"] if p["package"] == package]
        present = any(under_root(root, p["path"]).is_file() for p in files)
        version = installed_version(package) if root == Path("/") else ""
        if version is None or (version == "" and not present):
            missing.append(package)
        versions[package] = version or None
    if missing and install:
        if os.geteuid() != 0:
            raise PrepareError(
                f"--install needs root; run as root: {install_command(missing)}  (or: sudo python {sys.argv[0]} "
                "--install)"
            )
        print(f"installing: {' '.join(missing)}", file=sys.stderr)
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
            if subprocess.run(cmd, check=False).returncode != 0:
                raise PrepareError(f"'{' '.join(cmd)}' failed; see its output above")
        return check_packages(manifest, root, install=False, summary=summary)
    if missing:
        raise PrepareError(
            f"Debian package(s) not installed: {', '.join(missing)} (they hold the training photographs).\n"
            f"  Install them as root:   {install_command(missing)}\n"
            f"  or rerun with --install (as root), or without root extract them:\n"
            f'    apt-get download {" ".join(missing)} && for f in *.deb; do dpkg -x "$f" ~/nsarm-debroot; done\n'
            f"    python scripts/prepare_data.py --root ~/nsarm-debroot"
        )
    for package, info in packages.items():
        expected = info.get("version") if isinstance(info, dict) else None
        if expected and versions[package] and versions[package] != expected:
            warn(
                summary,
                f"{package} {versions[package]} is installed, the manifest was made with {expected}; "
                "photos whose bytes changed will fail the sha256 check and be skipped",
            )
    return versions


def under_root(root: Path, absolute: str) -> Path:
    """The manifest's absolute path ``absolute`` as found under ``root`` ("/" = the system itself)."""
    return root / absolute.lstrip("/")


# ----------------------------------------------------------------------------------------------------------
# Hashing, image processing, atomic writes
# ----------------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resize_short_side(image: Any, short_side: int) -> Any:
    """Lanczos-resize a Pillow image so min(W, H) == ``short_side``, aspect kept (long side rounded).

    Raises:
        PrepareError: the image is smaller than ``short_side`` (we never upsample an HR target).
    """
    from PIL import Image

    width, height = image.size
    short = min(width, height)
    if short < short_side:
        raise PrepareError(f"image {width}x{height} is smaller than the target short side {short_side}")
    if short == short_side:
        return image
    scale = short_side / short
    # The short side is set exactly; only the long side is rounded, so the aspect error is < 0.5 px.
    size = (short_side, round(height * scale)) if width == short else (round(width * scale), short_side)
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=None)


def centre_crop(image: Any, size: int) -> Any:
    """The centre ``size`` x ``size`` window of a Pillow image (offsets floored, so deterministic)."""
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_rgb(path: Path) -> Any:
    """Decode a photo into an 8-bit RGB Pillow image with its EXIF orientation applied."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)  # a no-op copy for the current files; kept for safety
    return image.convert("RGB")  # plasma "Grey" is mode L


def encode_png(image: Any, compress_level: int) -> bytes:
    """PNG bytes without metadata (no text, time or ICC chunks), so equal pixels give equal files."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level, optimize=False)
    return buffer.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file next to ``path`` and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_output(source: Path, split: str, settings: Settings) -> tuple[bytes, tuple[int, int]]:
    """Decode ``source`` and produce the PNG bytes of its train or val image.

    Returns:
        (png bytes, (W, H) of the written image).
    """
    image = load_rgb(source)
    if split == "train":
        image = resize_short_side(image, settings.train_short_side)
    else:
        if settings.val_short_side < settings.val_size:
            raise PrepareError(
                f"--val-short-side {settings.val_short_side} is below --val-size {settings.val_size}"
            )
        image = centre_crop(resize_short_side(image, settings.val_short_side), settings.val_size)
    return encode_png(image, settings.png_compress_level), image.size


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


def split_settings(settings: Settings, split: str) -> dict[str, Any]:
    """The settings that shape one split's outputs (so changing a train size does not rebuild val)."""
    own = ("train_short_side",) if split == "train" else ("val_short_side", "val_size")
    shared = ("resample", "png_compress_level", "process_version")
    return {k: v for k, v in asdict(settings).items() if k in own or k in shared}


def read_stamp(folder: Path) -> dict[str, Any]:
    """The folder's ``.prepared.json`` (settings + one record per output), or an empty stamp."""
    try:
        stamp = json.loads((folder / STAMP_NAME).read_text(encoding="utf-8"))
        if isinstance(stamp, dict) and isinstance(stamp.get("files"), dict):
            return stamp
    except (OSError, ValueError):
        pass
    return {"settings": None, "files": {}}


def prepare(
    manifest: Mapping[str, Any],
    data_dir: Path,
    root: Path,
    settings: Settings,
    *,
    force: bool,
    check_only: bool,
    summary: Summary,
) -> dict[str, dict[str, Any]]:
    """Verify every listed photo and (unless ``check_only``) write/refresh ``data_dir/{train,val}``.

    Args:
        manifest: the loaded manifest.
        data_dir: the folder that receives ``train/`` and ``val/``.
        root: where the manifest's absolute paths live ("/" or a ``dpkg -x`` folder).
        settings: output sizes and encoding.
        force: rebuild every output even if its stamp says it is current.
        check_only: verify sources only.
        summary: filled with what happened.

    Returns:
        split -> the new stamp of that folder (``files``: name -> source/output sha256 and size).
    """
    photos = manifest["photos"]
    verified: dict[str, Path] = {}
    for photo in photos:
        source = under_root(root, photo["path"])
        if not source.is_file():
            warn(summary, f"{photo['name']}: {source} is missing (package {photo['package']}); skipped")
            continue
        actual = sha256_file(source)
        if actual != photo["sha256"]:
            warn(
                summary,
                f"{photo['name']}: sha256 of {source} is {actual[:16]}..., the manifest says "
                f"{photo['sha256'][:16]}...; the file changed (other package version?); skipped",
            )
            continue
        verified[photo["name"]] = source
    stamps: dict[str, dict[str, Any]] = {}
    if check_only:
        for photo in photos:
            if photo["name"] not in verified:
                summary.skipped[photo["split"]].append(photo["name"])
        return stamps

    wanted = {split: {p["name"] for p in photos if p["split"] == split} for split in SPLITS}
    for split in SPLITS:
        folder = data_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        old = read_stamp(folder)
        same_settings = old.get("settings") == split_settings(settings, split)
        records: dict[str, Any] = {}
        for photo in (p for p in photos if p["split"] == split):
            name, out = photo["name"], folder / f"{photo['name']}.png"
            rec = old["files"].get(name)
            current = (
                not force
                and same_settings
                and isinstance(rec, dict)
                and rec.get("source_sha256") == photo["sha256"]
                and out.is_file()
                and sha256_file(out) == rec.get("output_sha256")
            )
            if current:
                # Made from exactly the manifest's bytes with these settings: valid even if the source
                # has since changed or disappeared.
                records[name] = rec
                summary.kept[split].append(name)
                continue
            if name not in verified:
                summary.skipped[split].append(name)
                if out.is_file():
                    out.unlink()  # stale: made from other bytes or settings, and cannot be remade now
                    summary.removed[split].append(name)
                continue
            try:
                data, size = make_output(verified[name], split, settings)
            except PrepareError as exc:
                warn(summary, f"{name}: {exc}; skipped")
                summary.skipped[split].append(name)
                continue
            atomic_write(out, data)
            records[name] = {
                "source": photo["path"],
                "source_sha256": photo["sha256"],
                "output_sha256": hashlib.sha256(data).hexdigest(),
                "size": list(size),
                "bytes": len(data),
            }
            summary.written[split].append(name)
        # Outputs this script made earlier that no longer belong here (split changed, photo dropped): delete,
        # so a validation photo can never stay in data/train.
        other = {n for s in SPLITS if s != split for n in wanted[s]}
        for name in sorted(set(old["files"]) - wanted[split]):
            stale = folder / f"{name}.png"
            if stale.is_file():
                stale.unlink()
                summary.removed[split].append(name)
        for path in sorted(folder.glob("*.png")):
            if path.stem in other:
                path.unlink()
                summary.removed[split].append(path.stem)
            elif path.stem not in wanted[split]:
                warn(summary, f"{path} is not in the manifest (left in place; delete it if it is not yours)")
        stamp = {"settings": split_settings(settings, split), "files": dict(sorted(records.items()))}
        atomic_write(folder / STAMP_NAME, (json.dumps(stamp, indent=1) + "\n").encode())
        stamps[split] = stamp
    return stamps


def dataset_digest(stamp: Mapping[str, Any]) -> str:
    """One sha256 over the sorted (name, output sha256) pairs of a split: equal digests = identical folders."""
    lines = "".join(f"{name} {rec['output_sha256']}\n" for name, rec in sorted(stamp["files"].items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def report(
    summary: Summary,
    stamps: Mapping[str, Mapping[str, Any]],
    data_dir: Path,
    versions: Mapping[str, str | None],
    *,
    as_json: bool,
    check_only: bool,
) -> None:
    """Print the run summary (text on stdout, or one JSON object with ``--json``)."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        files = stamps.get(split, {}).get("files", {})
        splits[split] = {
            "folder": str(data_dir / split),
            "photos": len(files),
            "written": len(summary.written[split]),
            "kept": len(summary.kept[split]),
            "skipped": summary.skipped[split],
            "removed": summary.removed[split],
            "pixels": sum(r["size"][0] * r["size"][1] for r in files.values()),
            "bytes": sum(r["bytes"] for r in files.values()),
            "digest": dataset_digest(stamps[split]) if split in stamps else None,
            "names": sorted(files) if split == "val" else None,
        }
    if as_json:
        payload = {
            "packages": versions,
            "check_only": check_only,
            "splits": splits,
            "warnings": summary.warnings,
        }
        print(json.dumps(payload, indent=2))
        return
    print("packages: " + ", ".join(f"{p} {v or '(files present)'}" for p, v in versions.items()))
    if check_only:
        bad = summary.skipped["train"] + summary.skipped["val"]
        print(
            f"check only: {'all sources verified' if not bad else f'{len(bad)} source(s) failed: ' + ', '.join(bad)}"
        )
        return
    for split, info in splits.items():
        sizes = {tuple(r["size"]) for r in stamps[split]["files"].values()}
        shape = f"{next(iter(sizes))[0]}x{next(iter(sizes))[1]}" if len(sizes) == 1 else f"{len(sizes)} sizes"
        print(
            f"{split:5s}: {info['photos']:2d} photos in {info['folder']} ({info['written']} written, "
            f"{info['kept']} up to date, {len(info['skipped'])} skipped, {len(info['removed'])} removed), "
            f"{shape}, {info['pixels'] / 1e6:.1f} MP, {info['bytes'] / 2**20:.1f} MiB, digest {info['digest'][:16]}"
        )
    print("val photos: " + ", ".join(splits["val"]["names"]))
    if summary.warnings:
        print(f"{len(summary.warnings)} warning(s), see above")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check the Debian wallpaper photos listed in data/photos.json and write data/train, data/val."
    )
    parser.add_argument(
        "--manifest", type=Path, default=DEFAULT_MANIFEST, help="photo manifest (data/photos.json)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where train/ and val/ go (data/)"
    )
    parser.add_argument(
        "--root", type=Path, default=Path("/"), help="folder the photos live under (dpkg -x target)"
    )
    parser.add_argument(
        "--train-short-side", type=int, default=Settings.train_short_side, help="train short side px"
    )
    parser.add_argument(
        "--val-short-side", type=int, default=Settings.val_short_side, help="val resize short side"
    )
    parser.add_argument(
        "--val-size", type=int, default=Settings.val_size, help="val centre-crop size (square)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild every output")
    parser.add_argument("--check", action="store_true", help="only check packages and sha256; write nothing")
    parser.add_argument("--install", action="store_true", help="apt-get install missing packages (root)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any photo was skipped")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = parser.parse_args(argv)
    for opt in ("train_short_side", "val_short_side", "val_size"):
        if getattr(args, opt) < 16:
            parser.error(f"--{opt.replace('_', '-')} must be at least 16, got {getattr(args, opt)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    summary = Summary()
    settings = Settings(
        train_short_side=args.train_short_side, val_short_side=args.val_short_side, val_size=args.val_size
    )
    try:
        import PIL  # noqa: F401  (fail early with a clear message rather than mid-run)
    except ImportError:
        print("error: Pillow is required: pip install pillow", file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(args.manifest)
        versions = check_packages(manifest, args.root, install=args.install, summary=summary)
        stamps = prepare(
            manifest,
            args.data_dir,
            args.root,
            settings,
            force=args.force,
            check_only=args.check,
            summary=summary,
        )
        for split, stamp in stamps.items():
            if not stamp["files"]:
                raise PrepareError(f"no '{split}' photo could be prepared; see the warnings above")
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(summary, stamps, args.data_dir, versions, as_json=args.json, check_only=args.check)
    skipped = summary.skipped["train"] + summary.skipped["val"]
    return 1 if args.strict and skipped else 0


if __name__ == "__main__":
    sys.exit(main())

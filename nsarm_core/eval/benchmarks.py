"""Evaluation dataset presets (local layout + paper protocol) and SR <-> HR file pairing.

NSARM Table 1 (docs/architecture.md P.1.1, P.1.2, P.6) evaluates on RealSR, DRealSR and RP60 ("real-world, generating
512x512") and on DIV2K-val ("simulated, generating 1024x1024"). The datasets are not shipped, so a preset
*describes* the expected local copy (folder and file names) and the protocol; the user points at it with
``--data-root``, or, for the sets with a public Hugging Face Hub copy (``hub``: StableSR's RealSR and DRealSR
centre crops), :mod:`nsarm_core.eval.hub_sets` downloads it into the cache. Layouts follow the StableSR / OSEDiff benchmark copies (``test_LR`` / ``test_HR``
with identical file names), the NSARM release (``RealSR_LR_256`` ...) and the original releases.

Pairing matches files by a normalised stem: the suffixes ``_LR4``, ``_HR``, ``_SR``, ``_x4`` ... are dropped
(``Canon_001_LR4.png`` <-> ``Canon_001_HR.png``), so SR outputs that keep the LR basename pair with the HR.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nsarm_core.errors import InputError, unknown_choice

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Suffixes removed from a stem before pairing: _LR4, _HR, _SR, _x4, x4 (DIV2K "0801x4"), case-insensitive.
DEFAULT_PAIR_SUFFIX = r"(_(lr|hr|sr|gt)\d*|_x\d+|(?<=\d)x\d+)$"


@dataclass(frozen=True)
class Protocol:
    """How a dataset is evaluated in the paper (docs/architecture.md P.1.1–P.1.2); every field is reported in the summary.

    Attributes:
        lr_size: side of the stored LR crops (pixels).
        model_input_size: side of the image the model is fed (NSARM: 256).
        output_size: side of the model output (NSARM: 1024).
        eval_size: side at which metrics are computed (512 real-world, 1024 DIV2K).
        resize_sr: resize the SR output to the HR size (or to ``eval_size`` without HR) before scoring.
        resize_method: the resampling used for that resize.
        crop_border: border cropped before PSNR/SSIM (OSEDiff's test_metrics.py: pyiqa default 0).
        notes: provenance and open questions.
    """

    lr_size: int | None
    model_input_size: int | None
    output_size: int | None
    eval_size: int | None
    resize_sr: bool
    resize_method: str
    crop_border: int
    notes: str


@dataclass(frozen=True)
class HubCopy:
    """A public copy of a benchmark set in a Hugging Face Hub dataset repository: one zip archive, and the
    folder inside it that holds the preset's LR/HR folders.

    Attributes:
        repo_id: the dataset repository.
        filename: the archive in it.
        folder: the folder inside the archive whose contents become the preset's data root.
        revision: a branch, tag or commit (None: the default branch).
    """

    repo_id: str
    filename: str
    folder: str
    revision: str | None = None


# StableSR's test sets (Wang et al., IJCV 2024), the centre crops every recent Real-ISR paper reports on.
STABLESR_TEST_SETS = "Iceclear/StableSR-TestSets"


@dataclass(frozen=True)
class DatasetPreset:
    """Expected local layout of one evaluation set and its protocol.

    Attributes:
        name: preset name (``RealSR`` ...).
        description: one line about the content.
        lr_dirs: candidate LR folder names under ``--data-root`` (first existing wins).
        hr_dirs: candidate HR folder names; empty for no-reference sets (RP60).
        lr_pattern: glob of the LR files.
        hr_pattern: glob of the HR files.
        n_images: number of images in the paper's split.
        source: where to obtain the data.
        protocol: the paper's evaluation protocol.
        hub: its public Hugging Face Hub copy, downloaded when no ``--data-root`` is given (None: none known).
    """

    name: str
    description: str
    lr_dirs: tuple[str, ...]
    hr_dirs: tuple[str, ...]
    lr_pattern: str
    hr_pattern: str
    n_images: int
    source: str
    protocol: Protocol
    hub: HubCopy | None = None

    @property
    def full_reference(self) -> bool:
        """True when the set has HR references (PSNR/SSIM/LPIPS possible)."""
        return bool(self.hr_dirs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON output."""
        return asdict(self)


_REAL_WORLD = Protocol(
    lr_size=128,
    model_input_size=256,
    output_size=1024,
    eval_size=512,
    resize_sr=True,
    resize_method="PIL bicubic on 8-bit RGB",
    crop_border=0,
    notes=(
        "StableSR centre crops (LR 128 / HR 512). NSARM feeds the LR bicubic-upsampled x2 to 256 (its shipped "
        "*_LR_256 folders are exactly that) and outputs 1024; Table 1 scores 'generating 512x512', so the 1024 "
        "output is resized to the 512 HR (the exact resize is not in the released code: bicubic assumed)."
    ),
)

PRESETS: dict[str, DatasetPreset] = {
    "RealSR": DatasetPreset(
        name="RealSR",
        description="RealSR v3 test, 100 pairs (50 Canon + 50 Nikon), StableSR centre crops",
        lr_dirs=("test_LR", "LR", "RealSR_LR_256", "RealSR_LR"),
        hr_dirs=("test_HR", "HR", "RealSR_HR"),
        lr_pattern="*_LR4.png",
        hr_pattern="*.png",
        n_images=100,
        source="huggingface.co/datasets/Iceclear/StableSR-TestSets (RealSR_CenterCrop) or OSEDiff preset/datasets",
        protocol=_REAL_WORLD,
        hub=HubCopy(STABLESR_TEST_SETS, "StableSR_testsets.zip", "StableSR_testsets/RealSRVal_crop128"),
    ),
    "DRealSR": DatasetPreset(
        name="DRealSR",
        description="DRealSR x4 test, 93 pairs, StableSR centre crops (files *_x1.png in both folders)",
        lr_dirs=("test_LR", "LR", "DRealSR_LR_256", "DRealSR_LR"),
        hr_dirs=("test_HR", "HR", "DRealSR_HR"),
        lr_pattern="*.png",
        hr_pattern="*.png",
        n_images=93,
        source="huggingface.co/datasets/Iceclear/StableSR-TestSets (DRealSR_CenterCrop) or OSEDiff preset/datasets",
        protocol=_REAL_WORLD,
        hub=HubCopy(STABLESR_TEST_SETS, "StableSR_testsets.zip", "StableSR_testsets/DrealSRVal_crop128"),
    ),
    "RP60": DatasetPreset(
        name="RP60",
        description="RealPhoto60 (SUPIR): 60 real low-quality photos, no ground truth (no-reference metrics only)",
        lr_dirs=("RP60_256", "RP60", "LR", "test_LR"),
        hr_dirs=(),
        lr_pattern="*.png",
        hr_pattern="",
        n_images=60,
        source="SUPIR README (Google Drive / Baidu); NSARM ships 256x256 copies in data/test/data/RP60_256",
        protocol=Protocol(
            lr_size=256,
            model_input_size=256,
            output_size=1024,
            eval_size=512,
            resize_sr=True,
            resize_method="PIL bicubic on 8-bit RGB",
            crop_border=0,
            notes="No HR: the 1024 output is resized to eval_size 512 ('generating 512x512', Table 1).",
        ),
    ),
    "DIV2K-val": DatasetPreset(
        name="DIV2K-val",
        description="DIV2K validation 100 images, 1024 GT crops with Real-ESRGAN-degraded 256 LR",
        lr_dirs=("LR", "test_LR", "DIV2K_val_LR_256"),
        hr_dirs=("HR", "test_HR", "GT", "DIV2K_val_HR_1024"),
        lr_pattern="*.png",
        hr_pattern="*.png",
        n_images=100,
        source="data.vision.ee.ethz.ch/cvl/DIV2K; make the pairs with `nsarm degrade` (NSARM add_deg.py recipe)",
        protocol=Protocol(
            lr_size=256,
            model_input_size=256,
            output_size=1024,
            eval_size=1024,
            resize_sr=False,
            resize_method="none",
            crop_border=0,
            notes="GT: LANCZOS short-side resize + centre crop 1024, USM, Real-ESRGAN 2nd-order degradation x4.",
        ),
    ),
}


def get_preset(name: str) -> DatasetPreset:
    """Look up a dataset preset (case-insensitive); raises ``ConfigError`` listing the valid names."""
    for key, preset in PRESETS.items():
        if key.lower() == name.strip().lower():
            return preset
    raise unknown_choice("dataset preset", name, PRESETS)


@dataclass(frozen=True)
class DatasetLayout:
    """The resolved local folders of a preset."""

    preset: DatasetPreset
    root: Path
    lr_dir: Path
    hr_dir: Path | None

    def lr_files(self) -> list[Path]:
        """LR files matching the preset's pattern, sorted."""
        return _glob_images(self.lr_dir, self.preset.lr_pattern)

    def hr_files(self) -> list[Path]:
        """HR files matching the preset's pattern, sorted (empty for NR sets)."""
        return _glob_images(self.hr_dir, self.preset.hr_pattern) if self.hr_dir else []


def _glob_images(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _first_existing(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def resolve_layout(preset: DatasetPreset | str, data_root: str | Path) -> DatasetLayout:
    """Find the preset's LR/HR folders under ``data_root``.

    Raises:
        InputError: the root or an expected folder is missing (the message lists the folder names tried).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise InputError(f"--data-root {root} is not a folder; point it at your local copy of {preset.name}")
    lr_dir = _first_existing(root, preset.lr_dirs)
    if lr_dir is None:
        raise InputError(
            f"{preset.name}: no LR folder under {root}; expected one of {', '.join(preset.lr_dirs)} "
            f"holding {preset.lr_pattern} ({preset.n_images} images; source: {preset.source})"
        )
    hr_dir = None
    if preset.hr_dirs:
        hr_dir = _first_existing(root, preset.hr_dirs)
        if hr_dir is None:
            raise InputError(
                f"{preset.name}: no HR folder under {root}; expected one of {', '.join(preset.hr_dirs)} "
                f"holding {preset.hr_pattern} (source: {preset.source})"
            )
    layout = DatasetLayout(preset, root, lr_dir, hr_dir)
    if not layout.lr_files():
        raise InputError(f"{preset.name}: {lr_dir} holds no file matching {preset.lr_pattern}")
    return layout


def pair_key(path: str | Path, suffix_regex: str = DEFAULT_PAIR_SUFFIX) -> str:
    """Stem used for pairing: ``Canon_001_LR4.png`` -> ``Canon_001``, ``0801x4.png`` -> ``0801``."""
    return re.sub(suffix_regex, "", Path(path).stem, flags=re.IGNORECASE)


@dataclass(frozen=True)
class ImagePair:
    """One SR image and its HR reference (``hr`` None for no-reference evaluation)."""

    key: str
    sr: Path
    hr: Path | None


def _index(
    paths: Iterable[Path], what: str, suffix_regex: str, problems: list[PairProblem] | None = None
) -> dict[str, Path]:
    out: dict[str, Path] = {}
    clashes: dict[str, list[Path]] = {}
    for p in paths:
        key = pair_key(p, suffix_regex)
        if key in out:
            if problems is None:
                raise InputError(
                    f"two {what} files map to the same pairing key '{key}': {out[key]} and {p}; "
                    "rename one of them or evaluate the folders separately"
                )
            clashes.setdefault(key, [out[key]]).append(p)
        out[key] = p
    for key, files in clashes.items():
        # Neither file can be trusted to be "the" output for this key: both are reported, neither scored.
        del out[key]
        names = " and ".join(str(f) for f in files)
        problems.append(  # type: ignore[union-attr]
            PairProblem(
                key, files[0], f"{what} files {names} map to the same pairing key '{key}'; rename one"
            )
        )
    return out


@dataclass(frozen=True)
class PairProblem:
    """An image left out of an evaluation, and why (one line naming the file)."""

    key: str
    path: Path
    reason: str


def _list(items: Sequence[str], limit: int = 8) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def pair_images(
    sr_paths: Sequence[Path],
    hr_paths: Sequence[Path] | None,
    strict: bool = True,
    suffix_regex: str = DEFAULT_PAIR_SUFFIX,
    problems: list[PairProblem] | None = None,
) -> list[ImagePair]:
    """Pair SR files with HR files by normalised stem (:func:`pair_key`).

    Args:
        sr_paths: SR image files.
        hr_paths: HR files; ``None`` for no-reference evaluation (every SR file becomes a pair with hr None).
        strict: raise when an HR file has no SR output (an incomplete run would bias the mean); SR files
            without an HR always raise.
        suffix_regex: suffixes dropped from stems before matching.
        problems: when given, files that share a pairing key are appended here (and left out) instead of
            raising, so the other pairs can still be scored.

    Returns:
        Pairs sorted by key.

    Raises:
        InputError: empty input, duplicate keys or unmatched files (listed by name).
    """
    if not sr_paths:
        raise InputError("no SR images to evaluate (the SR folder is empty or holds no image files)")
    sr = _index(sr_paths, "SR", suffix_regex, problems)
    if hr_paths is None:
        return [ImagePair(k, sr[k], None) for k in sorted(sr)]
    hr = _index(hr_paths, "HR", suffix_regex, problems)
    if problems is not None:  # a key whose SR or HR files clash is reported once, not also as unmatched
        clashed = {pr.key for pr in problems}
        sr = {k: v for k, v in sr.items() if k not in clashed}
        hr = {k: v for k, v in hr.items() if k not in clashed}
    missing_hr = sorted(set(sr) - set(hr))
    missing_sr = sorted(set(hr) - set(sr))
    if missing_hr:
        raise InputError(
            f"{len(missing_hr)} SR image(s) have no HR reference: {_list([sr[k].name for k in missing_hr])}. "
            f"Pairing uses the file stem without suffixes like _LR4/_HR/_x4; HR keys look like "
            f"{_list(sorted(hr), 3)}"
        )
    if missing_sr and strict:
        raise InputError(
            f"{len(missing_sr)} HR image(s) have no SR output: {_list([hr[k].name for k in missing_sr])}; "
            "finish the run, or pass --allow-missing to score only the pairs that exist"
        )
    return [ImagePair(k, sr[k], hr[k]) for k in sorted(sr)]

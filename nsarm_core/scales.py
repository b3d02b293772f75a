"""Scale schedules of the next-scale AR model: the (h, w) token grid of every scale.

Spec: docs/architecture.md B (Infinity's ``infinity/utils/dynamic_resolution.py``), A.6 (the VAE's default
schedules, ``get_latent2scale_schedule``) and C.6 (2-D RoPE positions normalised to the 1M grid).
NSARM (arXiv 2510.00820) inherits these schedules from Infinity-8B unchanged.

Shape legend:
    K        number of scales
    (h, w)   token grid of one scale, as seen by the transformer
    (H, W)   last token grid of a schedule
    L        sequence length = sum_k h_k * w_k (the first token is the SOS/scale-0 token)

Token grid vs VAE grid: with ``patchify=True`` (Infinity-8B / NSARM, the stride-8 d=14 VAE) the transformer sees
2x2 pixel-unshuffled latents, so the VAE quantises a grid twice as large per side (B, last bullet). Every
official token cell covers 16x16 pixels (``vae_stride = 16``), with or without patchify.

This module imports torch lazily (only :func:`rope_positions` needs it), so CLI code may import it freely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nsarm_core.errors import ConfigError, unknown_choice

if TYPE_CHECKING:
    import torch

Grid = tuple[int, int]

TOKEN_STRIDE = 16
"""Pixels per token cell in every official model (``vae_stride`` in dynamic_resolution.py)."""

PIXEL_BUDGETS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
"""Pixel budget name -> number of scales (a prefix of the template's 13 grids), B."""

# The 8 base aspect templates (h/w) with their 13 token grids, exactly as in the official ``ratio2hws`` table
# (docs/architecture.md B.1). The inverse ratios are derived below by swapping (h, w).
_BASE_TEMPLATES: dict[float, tuple[Grid, ...]] = {
    1.0: (
        (1, 1),
        (2, 2),
        (4, 4),
        (6, 6),
        (8, 8),
        (12, 12),
        (16, 16),
        (20, 20),
        (24, 24),
        (32, 32),
        (40, 40),
        (48, 48),
        (64, 64),
    ),
    1.25: (
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
        (10, 8),
        (15, 12),
        (20, 16),
        (25, 20),
        (30, 24),
        (35, 28),
        (45, 36),
        (55, 44),
        (70, 56),
    ),
    1.333: (
        (1, 1),
        (2, 2),
        (4, 3),
        (8, 6),
        (12, 9),
        (16, 12),
        (20, 15),
        (24, 18),
        (28, 21),
        (36, 27),
        (48, 36),
        (60, 45),
        (72, 54),
    ),
    1.5: (
        (1, 1),
        (2, 2),
        (3, 2),
        (6, 4),
        (9, 6),
        (15, 10),
        (21, 14),
        (27, 18),
        (33, 22),
        (39, 26),
        (48, 32),
        (63, 42),
        (78, 52),
    ),
    1.75: (
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 4),
        (11, 6),
        (14, 8),
        (21, 12),
        (28, 16),
        (35, 20),
        (42, 24),
        (56, 32),
        (70, 40),
        (84, 48),
    ),
    2.0: (
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 3),
        (10, 5),
        (16, 8),
        (22, 11),
        (30, 15),
        (38, 19),
        (46, 23),
        (60, 30),
        (74, 37),
        (90, 45),
    ),
    2.5: (
        (1, 1),
        (2, 2),
        (5, 2),
        (10, 4),
        (15, 6),
        (20, 8),
        (25, 10),
        (30, 12),
        (40, 16),
        (50, 20),
        (65, 26),
        (80, 32),
        (100, 40),
    ),
    3.0: (
        (1, 1),
        (2, 2),
        (6, 2),
        (9, 3),
        (15, 5),
        (21, 7),
        (27, 9),
        (36, 12),
        (45, 15),
        (54, 18),
        (72, 24),
        (90, 30),
        (111, 37),
    ),
}


def _build_templates() -> dict[float, tuple[Grid, ...]]:
    """Base ratios plus their inverses, in the official insertion order (ratio, then 1/ratio)."""
    out: dict[float, tuple[Grid, ...]] = {}
    for ratio, grids in _BASE_TEMPLATES.items():
        out[ratio] = grids
        if ratio != 1.0:
            # official: int(1 / ratio * 1000) / 1000, i.e. truncated to 3 decimals (1/1.333 -> 0.75, 1/1.5 -> 0.666)
            out[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in grids)
    return out


TEMPLATES: dict[float, tuple[Grid, ...]] = _build_templates()
"""Aspect template h/w -> its 13 token grids (1M schedule). Order = official ``h_div_w_templates``."""

H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(TEMPLATES)
"""(1.0, 1.25, 0.8, 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333)."""


@dataclass(frozen=True)
class ScaleSchedule:
    """A validated sequence of token grids, one per scale (coarse to fine).

    Attributes:
        grids: token grid ``(h, w)`` of every scale, as the transformer sees it.
        patchify: the transformer sees 2x2 pixel-unshuffled VAE latents (Infinity-8B / NSARM), so the VAE grids are
            twice the token grids per side.
        stride: pixels per token cell (16 for every official model), used by :attr:`pixel_size`.
        name: optional label for logs and error messages (ignored by ``==``).

    Raises:
        ConfigError: in ``__post_init__`` when a grid is not two positive ints, when h or w decreases, or when a
            grid does not grow (equal consecutive grids); the message names the offending index.
    """

    grids: tuple[Grid, ...]
    patchify: bool = False
    stride: int = TOKEN_STRIDE
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        label = f"scale schedule {self.name!r}" if self.name else "scale schedule"
        try:
            grids = tuple((int(g[0]), int(g[1])) for g in self.grids)
            bad_len = next((k for k, g in enumerate(self.grids) if len(g) != 2), None)
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(
                f"{label}: grids must be a sequence of (h, w) int pairs, got {self.grids!r}"
            ) from exc
        if bad_len is not None:
            raise ConfigError(f"{label}: grid {bad_len} is {self.grids[bad_len]!r}; expected an (h, w) pair")
        if not grids:
            raise ConfigError(f"{label}: needs at least one scale, got an empty grid list")
        for k, (h, w) in enumerate(grids):
            if h <= 0 or w <= 0:
                raise ConfigError(f"{label}: grid {k} is {(h, w)}; h and w must be positive")
            if k > 0:
                ph, pw = grids[k - 1]
                # Next-scale prediction upsamples the accumulated latent to every later grid, so each side must not
                # shrink and each scale must add tokens (B: every official schedule satisfies this).
                if h < ph or w < pw or h * w <= ph * pw:
                    raise ConfigError(
                        f"{label}: grid {k} {(h, w)} does not grow from grid {k - 1} {(ph, pw)}; grids must be "
                        "non-decreasing in h and w and strictly increasing in h*w"
                    )
        if int(self.stride) <= 0:
            raise ConfigError(f"{label}: stride must be a positive number of pixels, got {self.stride!r}")
        object.__setattr__(self, "grids", grids)
        object.__setattr__(self, "patchify", bool(self.patchify))
        object.__setattr__(self, "stride", int(self.stride))

    @property
    def token_grids(self) -> tuple[Grid, ...]:
        """Token grid ``(h, w)`` of every scale (what the transformer sees)."""
        return self.grids

    @property
    def vae_grids(self) -> tuple[Grid, ...]:
        """Grid the VAE quantiser works on per scale: 2x the token grid per side with ``patchify``."""
        if not self.patchify:
            return self.grids
        return tuple((2 * h, 2 * w) for h, w in self.grids)

    @property
    def num_scales(self) -> int:
        """Number of scales K."""
        return len(self.grids)

    @property
    def seq_len(self) -> int:
        """Total number of tokens L = sum_k h_k * w_k."""
        return sum(h * w for h, w in self.grids)

    @property
    def scale_lengths(self) -> tuple[int, ...]:
        """Tokens per scale, ``h_k * w_k``."""
        return tuple(h * w for h, w in self.grids)

    @property
    def scale_offsets(self) -> tuple[int, ...]:
        """Start index of every scale in the flat token sequence (running sum of :attr:`scale_lengths`)."""
        offsets, total = [], 0
        for n in self.scale_lengths:
            offsets.append(total)
            total += n
        return tuple(offsets)

    @property
    def final_grid(self) -> Grid:
        """Last (finest) token grid."""
        return self.grids[-1]

    @property
    def pixel_size(self) -> Grid:
        """Image size ``(H_px, W_px)`` = last token grid x stride (e.g. 64x64 tokens -> 1024x1024 for 1:1 1M)."""
        h, w = self.grids[-1]
        return (h * self.stride, w * self.stride)

    def prefix(self, num_scales: int) -> ScaleSchedule:
        """The first ``num_scales`` scales (e.g. NSARM's K_t = 7 scales produced by the transformation network)."""
        if not 1 <= num_scales <= self.num_scales:
            raise ConfigError(
                f"prefix of {num_scales} scales requested; this schedule has 1..{self.num_scales}"
            )
        return ScaleSchedule(self.grids[:num_scales], self.patchify, self.stride, name=self.name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (used in model ``config.json`` files)."""
        return {
            "grids": [list(g) for g in self.grids],
            "patchify": self.patchify,
            "stride": self.stride,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScaleSchedule:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                tuple(tuple(g) for g in data["grids"]),  # type: ignore[misc]
                patchify=bool(data.get("patchify", False)),
                stride=int(data.get("stride", TOKEN_STRIDE)),
                name=str(data.get("name", "")),
            )
        except KeyError as exc:
            raise ConfigError(f"scale schedule dict {dict(data)!r} lacks the 'grids' entry") from exc


def custom(
    grids: Sequence[Sequence[int]], *, patchify: bool = False, stride: int = TOKEN_STRIDE, name: str = ""
) -> ScaleSchedule:
    """Build a validated schedule from explicit token grids (for our own small models).

    Args:
        grids: ``[(h_0, w_0), ..., (h_{K-1}, w_{K-1})]`` token grids, coarse to fine.
        patchify: the VAE grids are 2x the token grids per side.
        stride: pixels per token cell.
        name: label for logs.

    Returns:
        The :class:`ScaleSchedule`.
    """
    return ScaleSchedule(tuple(tuple(g) for g in grids), patchify=patchify, stride=stride, name=name)  # type: ignore[arg-type]


def nearest_template(h: float, w: float = 1.0) -> float:
    """The aspect template nearest to ``h / w`` (official: ``argmin |h/w - t|``, first template on ties).

    Args:
        h: image height (pixels or tokens), or the ratio h/w itself when ``w`` is left at 1.
        w: image width.

    Returns:
        One of :data:`H_DIV_W_TEMPLATES`.
    """
    if not (h > 0 and w > 0) or math.isinf(h) or math.isinf(w):
        raise ConfigError(f"aspect ratio needs positive finite h and w, got h={h!r}, w={w!r}")
    ratio = h / w
    # min() keeps the first of equal distances, as numpy's argmin does over the same template order.
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(ratio - t))


def _parse_template(h_div_w: float | str) -> float:
    if isinstance(h_div_w, str):
        try:
            value = float(h_div_w)
        except ValueError as exc:
            raise ConfigError(
                f"aspect template {h_div_w!r} is not a number; valid templates: {list(H_DIV_W_TEMPLATES)}"
            ) from exc
        if value not in TEMPLATES:
            raise ConfigError(f"aspect template {h_div_w!r} is not one of {list(H_DIV_W_TEMPLATES)}")
        return value
    return nearest_template(float(h_div_w))


def _check_pn(pn: str) -> int:
    if pn not in PIXEL_BUDGETS:
        raise unknown_choice("pixel budget", pn, PIXEL_BUDGETS)
    return PIXEL_BUDGETS[pn]


def get_schedule(h_div_w: float | str, pn: str, *, patchify: bool = False) -> ScaleSchedule:
    """Official Infinity schedule for an aspect ratio and pixel budget (B).

    Args:
        h_div_w: image height / width (snapped to the nearest template), or a template name such as ``"1.333"``.
        pn: pixel budget, one of ``"0.06M"``, ``"0.25M"``, ``"0.60M"``, ``"1M"`` (7, 10, 12, 13 scales).
        patchify: ``True`` for the stride-8 d=14 VAE of Infinity-8B / NSARM (VAE grids 2x token grids).

    Returns:
        The schedule, e.g. ``get_schedule(1.0, "1M", patchify=True)`` = NSARM's 13 scales 1..64 (1024x1024 px).
    """
    template = _parse_template(h_div_w)
    n = _check_pn(pn)
    return ScaleSchedule(TEMPLATES[template][:n], patchify=patchify, name=f"{template}-{pn}")


def template_of(grids: ScaleSchedule | Sequence[Sequence[int]]) -> float | None:
    """The aspect template whose 1M grid list starts with these token grids, or ``None``."""
    token = _token_grids(grids)
    for template, full in TEMPLATES.items():
        if len(token) <= len(full) and full[: len(token)] == token:
            return template
    return None


def _token_grids(grids: ScaleSchedule | Sequence[Sequence[int]]) -> tuple[Grid, ...]:
    if isinstance(grids, ScaleSchedule):
        return grids.token_grids
    return custom(grids).token_grids


def rope_positions(
    schedule: ScaleSchedule | Sequence[Sequence[int]], final_grid: Sequence[int] | None = None
) -> torch.Tensor:
    """2-D RoPE (row, col) position of every token, normalised to the final grid (C.6, ``rope2d_normalized_by_hw=2``).

    A scale of size ``(h, w)`` uses ``row_i = round(i * H1 / h)`` and ``col_j = round(j * W1 / w)``, computed in float32
    with round-half-to-even exactly as the official ``precompute_rope2d_freqs_grid`` (``(arange(h) * (H1/h)).round()``).
    Scales are concatenated in order, row-major inside each scale.

    Args:
        schedule: a schedule or its token grids.
        final_grid: ``(H1, W1)`` to normalise to. ``None`` = the official choice: the last **1M** grid of the aspect
            template whose grids start with these (so a 0.06M or 0.25M run uses the 1M positions); for a schedule
            that is not a template prefix, its own last grid.

    Returns:
        LongTensor ``[L, 2]`` of (row, col).
    """
    import torch

    token = _token_grids(schedule)
    if final_grid is None:
        template = template_of(token)
        final_grid = TEMPLATES[template][-1] if template is not None else token[-1]
    if len(final_grid) != 2 or min(final_grid) <= 0:
        raise ConfigError(f"final_grid must be a positive (H1, W1) pair, got {final_grid!r}")
    h1, w1 = int(final_grid[0]), int(final_grid[1])
    parts = []
    for h, w in token:
        # int64 arange x Python float -> float32 multiply, then torch.round (half to even): the official arithmetic.
        rows = (torch.arange(h) * (h1 / h)).round().long()
        cols = (torch.arange(w) * (w1 / w)).round().long()
        parts.append(torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(h * w, 2))
    return torch.cat(parts, dim=0)


# --- VAE default schedules (A.6: ``get_latent2scale_schedule`` with schedule_mode='dynamic') ---------------------
# The VAE's own table (infinity/models/bsq_vae/dynamic_resolution.py) holds the 0.06M, 0.25M and 1M prefixes of every
# template keyed by the last grid, plus one extra 16:9 entry (36x64) that is not a template prefix.
_VAE_EXTRA_DEFAULTS: dict[Grid, tuple[Grid, ...]] = {
    (36, 64): (
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 4),
        (6, 6),
        (9, 12),
        (13, 16),
        (18, 24),
        (24, 32),
        (32, 48),
        (36, 64),
    ),
}


def _build_vae_defaults() -> dict[Grid, tuple[Grid, ...]]:
    out: dict[Grid, tuple[Grid, ...]] = {}
    for grids in TEMPLATES.values():
        for n in (PIXEL_BUDGETS["0.06M"], PIXEL_BUDGETS["0.25M"], PIXEL_BUDGETS["1M"]):
            out[grids[n - 1]] = grids[:n]
    out.update(_VAE_EXTRA_DEFAULTS)
    return out


VAE_DEFAULT_SCHEDULES: dict[Grid, tuple[Grid, ...]] = _build_vae_defaults()
"""Latent size (h, w) -> VAE grids the official quantiser uses when called without a schedule (46 entries)."""


def vae_default_schedule(h: int, w: int) -> ScaleSchedule:
    """The schedule the official VAE quantiser uses for a latent of size ``h x w`` when none is given.

    E.g. a square latent of side 16/32/64 gets the 1:1 template's first 7/10/13 grids. The returned schedule's
    grids are VAE grids (``patchify=False``).

    Raises:
        ConfigError: for a latent size outside the official table (the official code raises KeyError); the message
            lists the valid sizes.
    """
    key = (int(h), int(w))
    if key not in VAE_DEFAULT_SCHEDULES:
        valid = ", ".join(f"{a}x{b}" for a, b in sorted(VAE_DEFAULT_SCHEDULES))
        raise ConfigError(
            f"no default VAE scale schedule for a {h}x{w} latent; valid latent sizes: {valid}. "
            "Pass an explicit schedule (e.g. nsarm_core.scales.custom(...)) for other sizes."
        )
    return ScaleSchedule(VAE_DEFAULT_SCHEDULES[key], name=f"vae-default-{h}x{w}")


# --- Named schedules -------------------------------------------------------------------------------------------------
SCHEDULES: dict[str, ScaleSchedule] = {
    # NSARM / Infinity-8B (stride-8 d=14 VAE, 2x2 patchify): 1:1 at 256, 512 and 1024 px.
    "sr-256": ScaleSchedule(TEMPLATES[1.0][:7], patchify=True, name="sr-256"),
    "sr-512": ScaleSchedule(TEMPLATES[1.0][:10], patchify=True, name="sr-512"),
    "sr-1024": ScaleSchedule(TEMPLATES[1.0][:13], patchify=True, name="sr-1024"),
    # Infinity-2B (stride-16 d=32 VAE, no patchify): 1:1 at 256 and 1024 px.
    "2b-256": ScaleSchedule(TEMPLATES[1.0][:7], name="2b-256"),
    "2b-1024": ScaleSchedule(TEMPLATES[1.0][:13], name="2b-1024"),
    # Our tiny models: prefixes of the 1:1 grids, patchified over a stride-8 VAE (16 px per token cell).
    # tiny-64: 1,2,4 tokens (VAE grids 2,4,8) for 64x64 images; tiny-128: 1..8 for 128x128; tiny-256 = sr-256.
    "tiny-64": ScaleSchedule(TEMPLATES[1.0][:3], patchify=True, name="tiny-64"),
    "tiny-128": ScaleSchedule(TEMPLATES[1.0][:5], patchify=True, name="tiny-128"),
    "tiny-256": ScaleSchedule(TEMPLATES[1.0][:7], patchify=True, name="tiny-256"),
}


def get_named_schedule(name: str) -> ScaleSchedule:
    """Look up :data:`SCHEDULES`; unknown names raise ConfigError listing the valid ones and the closest match."""
    if name not in SCHEDULES:
        raise unknown_choice("scale schedule", name, sorted(SCHEDULES))
    return SCHEDULES[name]

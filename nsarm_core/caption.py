"""Captioning LR images with a vision-language model (the prompts NSARM conditions on).

Spec: docs/architecture.md E.6. NSARM's captions come from LLaVA-v1.5-13b (``tools/annotate.py``) on
the LR image itself, with the query "Describe this image and its style in a very detailed manner.", temperature
0.2, top-p 0.7 and at most 512 new tokens; they are stored as JSONL lines ``{"image_path", "h_div_w",
"long_caption", "long_caption_type"}``. Here the model runs through ``transformers`` (default the Hub port
``llava-hf/llava-1.5-7b-hf``; any LLaVA-style ``AutoModelForImageTextToText`` with a processor works, e.g.
``llava-hf/llava-1.5-13b-hf`` for the paper's size). The ``fixed`` mode writes NSARM's fixed prompt instead.

Not a paper component of the SR model: a data-preparation tool. ``transformers`` is an optional extra
(``pip install 'nsarm[caption]'``), imported only here.

Shape legend: images are float32 ``[H, W, 3]`` in [0, 1] (``io.read_image``), handed to the processor as 8-bit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsarm_core.data.io import read_image
from nsarm_core.errors import ConfigError, InputError, missing_extra
from nsarm_core.hub import download_command, transformers_source

logger = logging.getLogger(__name__)

DEFAULT_CAPTIONER = "llava-hf/llava-1.5-7b-hf"
#: The query of NSARM's ``tools/annotate.py`` (E.6).
CAPTION_QUERY = "Describe this image and its style in a very detailed manner."
#: The fixed generic prompt of NSARM's commented-out alternative (E.6).
FIXED_PROMPT = "A high-definition image with harmonious colors and rich details."
FIXED_TYPE = "fixed"
#: LLaVA-1.5's Hub prompt format, used when the processor ships no chat template.
_LLAVA15_PROMPT = "USER: <image>\n{query} ASSISTANT:"


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (defaults: NSARM's annotate.py, E.6).

    Attributes:
        query: the instruction given with each image.
        temperature: sampling temperature; 0 = greedy decoding.
        top_p: nucleus sampling mass.
        max_new_tokens: caption length limit in tokens.
        seed: seed of the sampling; each batch samples under ``seed + index of its first image``.
    """

    query: str = CAPTION_QUERY
    temperature: float = 0.2
    top_p: float = 0.7
    max_new_tokens: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.query.strip():
            raise ConfigError("the caption query is empty")


class Captioner:
    """A vision-language model plus its processor, captioning batches of images."""

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        # Decoder-only generation needs the prompts aligned at the right edge.
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"

    @property
    def device(self) -> torch.device:
        """Device of the model weights."""
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_CAPTIONER,
        *,
        local_files_only: bool | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        cache_dir: str | Path | None = None,
    ) -> Captioner:
        """Load a LLaVA-style model and processor from a local folder or a Hugging Face model id.

        Args:
            name_or_path: a folder with ``config.json``, weights and processor files, or a hub id
                (default ``llava-hf/llava-1.5-7b-hf``).
            local_files_only: never touch the network; default: true when ``HF_HUB_OFFLINE`` is set.
            device: where the model runs; default CUDA when available, else CPU.
            dtype: weight dtype; default float16 on CUDA, float32 elsewhere.
            cache_dir: Hugging Face cache folder (default: the hub cache).

        Raises:
            MissingExtraError: ``transformers`` is not installed.
            WeightsNotFoundError: the folder does not exist, or the model is neither in the cache nor
                downloadable; the message names the model, where it looked and how to get it.
        """
        try:
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as exc:
            raise missing_extra("transformers", "caption", "captioning") from exc
        device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        src = transformers_source(
            name_or_path,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            folder="captioner folder",
            folder_hint="pass a folder holding a LLaVA-style model (config.json, weights, processor files) or a "
            f"Hugging Face id such as {DEFAULT_CAPTIONER!r}",
        )
        try:
            processor = AutoProcessor.from_pretrained(src.load_from, **src.kwargs)
            model = AutoModelForImageTextToText.from_pretrained(src.load_from, dtype=dtype, **src.kwargs)
        except OSError as exc:
            if src.is_local:
                hint = "check that the folder holds a complete model (config.json, weights, processor files)"
            else:
                hint = (
                    f"download it once with `{download_command(src.source)}` (about 14 GB for the 7B model; "
                    "needs network), pass a local folder with --model, or use --fixed for the fixed prompt"
                )
            raise src.not_found("captioning model", exc, hint) from exc
        model.to(device).eval()
        logger.info("loaded captioner %s on %s (%s) from %s", src.source, device, dtype, src.where)
        return cls(model, processor, src.source)

    def prompt(self, query: str) -> str:
        """The text prompt for one image: the processor's chat template, else LLaVA-1.5's format."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return _LLAVA15_PROMPT.format(query=query)

    @torch.no_grad()
    def caption(
        self, images: Sequence[np.ndarray], settings: GenerationSettings, batch_seed: int = 0
    ) -> list[str]:
        """Caption a batch of images.

        Args:
            images: float32 ``[H, W, 3]`` arrays in [0, 1] (any sizes; the processor resizes them).
            settings: query and decoding settings.
            batch_seed: added to ``settings.seed`` for this batch's sampling.

        Returns:
            One stripped caption per image.
        """
        from PIL import Image as PILImage

        pil = [PILImage.fromarray(np.round(np.clip(im, 0.0, 1.0) * 255.0).astype(np.uint8)) for im in images]
        text = [self.prompt(settings.query)] * len(pil)
        inputs = self.processor(images=pil, text=text, return_tensors="pt", padding=True)
        inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sample = settings.temperature > 0
        gen: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": sample}
        if sample:
            gen.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            gen.update(temperature=None, top_p=None, top_k=None)
        devices = [self.device] if self.device.type == "cuda" else []
        # transformers' sampling reads the global RNG; fork it so captioning neither depends on nor disturbs it.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(settings.seed + batch_seed)
            out = self.model.generate(**inputs, **gen)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------------
# The JSONL file and the batch driver
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CaptionRun:
    """Outcome of :func:`caption_images`.

    Attributes:
        out: the JSONL file.
        written: images captioned in this run.
        skipped: images already in the file (resume).
        kind: the model id/folder, or ``"fixed"``.
    """

    out: Path
    written: int
    skipped: int
    kind: str


def _key(path: Path) -> str:
    return str(path.expanduser().resolve(strict=False))


def read_done(out: Path) -> set[str]:
    """Resolved ``image_path`` values already in ``out``; a truncated last line (a crash) is dropped.

    Raises:
        InputError: a line other than the last is not a JSON record with ``image_path``.
    """
    if not out.is_file():
        return set()
    text = out.read_text(encoding="utf-8")
    lines = text.splitlines()
    unterminated = bool(text) and not text.endswith("\n")
    done: set[str] = set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            done.add(_key(Path(rec["image_path"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            if n == len(lines) and unterminated:
                logger.warning("dropping the incomplete last line of %s (an interrupted run)", out)
                out.write_text("".join(f"{kept}\n" for kept in lines[:-1]), encoding="utf-8")
                return done
            raise InputError(
                f"{out}:{n} is not a caption record ({exc}); fix or delete the line, or pass --overwrite"
            ) from exc
    if unterminated:  # a complete record without its newline: terminate it before appending
        with out.open("a", encoding="utf-8") as fh:
            fh.write("\n")
    return done


def caption_images(
    paths: Sequence[Path],
    out: str | Path,
    *,
    captioner: Captioner | None = None,
    settings: GenerationSettings | None = None,
    batch_size: int = 4,
    overwrite: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> CaptionRun:
    """Caption ``paths`` into the JSONL file ``out``, appending and flushing one line per image.

    Images whose resolved path is already in ``out`` are skipped (resume) unless ``overwrite``. With
    ``captioner=None`` every image gets :data:`FIXED_PROMPT` (the ``--fixed`` mode; no model is loaded).

    Args:
        paths: image files (``files.collect_images``).
        out: the JSONL file (created with its folder).
        captioner: the model, or ``None`` for the fixed prompt.
        settings: query and decoding settings (default NSARM's).
        batch_size: images per ``generate`` call.
        overwrite: start the file afresh instead of resuming.
        on_batch: called with the number of images just handled (progress; skipped ones included at start).

    Returns:
        A :class:`CaptionRun`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    settings = settings or GenerationSettings()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if overwrite and out.exists():
        out.unlink()
    done = read_done(out)
    todo = [(i, p) for i, p in enumerate(paths) if _key(p) not in done]
    skipped = len(paths) - len(todo)
    if skipped:
        logger.info("%d of %d images are already captioned in %s; skipping them", skipped, len(paths), out)
        if on_batch is not None:
            on_batch(skipped)
    kind = captioner.name if captioner is not None else FIXED_TYPE
    written = 0
    with out.open("a", encoding="utf-8") as fh:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = [read_image(p).rgb for _, p in chunk]
            if captioner is None:
                captions = [FIXED_PROMPT] * len(chunk)
            else:
                captions = captioner.caption(images, settings, batch_seed=chunk[0][0])
            for (_, path), image, caption in zip(chunk, images, captions, strict=True):
                record = {
                    "image_path": _key(path),
                    "h_div_w": image.shape[0] / image.shape[1],
                    "long_caption": caption,
                    "long_caption_type": kind,
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()  # a crash loses at most the batch in flight
            written += len(chunk)
            if on_batch is not None:
                on_batch(len(chunk))
    return CaptionRun(out=out, written=written, skipped=skipped, kind=kind)

"""Text encoder of the prompt branch: Flan-T5-XL encoder -> compact variable-length features (spec C.3).

Infinity/NSARM encode each prompt with ``google/flan-t5-xl`` (``T5EncoderModel``, fp16 on GPU, tokenizer
``legacy=True``, ``model_max_length=512``, padding + truncation) and keep, per prompt, the first
``attention_mask.sum()`` rows of ``last_hidden_state`` (the EOS row included), cast to float32. The rows of all
prompts are concatenated into ``kv_compact [sum L_i, C]`` with ``cu_seqlens`` (the var-len format the
transformer's cross-attention and SOS attention pool consume). NSARM's prompt is optional: with
:class:`NullTextEncoder` ("no text encoder" mode, for small models) no features are produced and the transformer
uses its learned unconditional rows instead (the contract is on :class:`TextFeatures`).

``transformers`` is an optional dependency (extra ``text``), imported only when a T5 encoder is built.

Shape legend: B prompts, L_i tokens of prompt i (incl. EOS, <= max_length), C encoder width (2048 for XL).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from nsarm_core.errors import InputError, NSARMError, missing_extra
from nsarm_core.hub import download_command, transformers_source

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "google/flan-t5-xl"
MAX_LENGTH = 512  # spec C.3: model_max_length=512 (also Infinity's text_maxlen)


@dataclass
class TextFeatures:
    """Encoded prompts in compact var-len form: the contract between a text encoder and the transformer.

    Attributes:
        kv_compact: ``[sum L_i, C]`` float32 rows of all prompts, concatenated in prompt order; or ``None`` for
            "no text": the transformer then uses the first ``lens[i]`` rows of its learned unconditional
            table (``cfg_uncond``) for prompt i, exactly as it does for a dropped caption (spec C.3 step 5).
        lens: per prompt number of rows L_i (>= 1).
    """

    kv_compact: Tensor | None
    lens: list[int]

    def __post_init__(self) -> None:
        if not self.lens or min(self.lens) < 1:
            raise InputError(f"TextFeatures.lens must be a non-empty list of positive ints, got {self.lens}")
        if self.kv_compact is not None and (
            self.kv_compact.ndim != 2 or self.kv_compact.shape[0] != sum(self.lens)
        ):
            raise InputError(
                f"TextFeatures.kv_compact must be [sum(lens)={sum(self.lens)}, C], got {tuple(self.kv_compact.shape)}"
            )

    @property
    def batch_size(self) -> int:
        """Number of prompts B."""
        return len(self.lens)

    @property
    def max_len(self) -> int:
        """Longest prompt (rows)."""
        return max(self.lens)

    @property
    def cu_seqlens(self) -> Tensor:
        """``[B+1]`` int32 cumulative row offsets (flash-attn var-len convention), on the features' device."""
        device = self.kv_compact.device if self.kv_compact is not None else None
        lens = torch.tensor([0, *self.lens], dtype=torch.int32, device=device)
        return lens.cumsum(0, dtype=torch.int32)

    def per_prompt(self) -> list[Tensor] | None:
        """Split ``kv_compact`` into a list of ``[L_i, C]`` tensors (``None`` in "no text" mode)."""
        if self.kv_compact is None:
            return None
        return list(self.kv_compact.split(self.lens, dim=0))

    def to(self, device: str | torch.device) -> TextFeatures:
        """Move the features to ``device``."""
        kv = self.kv_compact.to(device) if self.kv_compact is not None else None
        return TextFeatures(kv, list(self.lens))


def _as_prompt_list(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    return prompts


class NullTextEncoder:
    """ "No text encoder" mode: produces no features, only a fixed number of rows per prompt.

    The transformer then conditions every image on the first ``null_length`` rows of its learned unconditional
    table. Use it for small models trained without text (``channels`` must match the transformer's
    ``text_channels``, since the unconditional table has that width).
    """

    def __init__(self, channels: int, null_length: int = 1) -> None:
        if null_length < 1 or channels < 1:
            raise InputError(
                f"NullTextEncoder needs channels >= 1 and null_length >= 1, got {channels}, {null_length}"
            )
        self.channels = channels
        self.null_length = null_length

    def encode(self, prompts: str | Sequence[str]) -> TextFeatures:
        """Return ``TextFeatures(kv_compact=None, lens=[null_length] * B)``; the prompt texts are ignored."""
        return TextFeatures(None, [self.null_length] * len(_as_prompt_list(prompts)))

    def release(self) -> None:
        """Nothing to free."""


class TextEncoder:
    """Flan-T5 encoder + tokenizer producing :class:`TextFeatures` (spec C.3).

    Args:
        model: a ``transformers.T5EncoderModel``.
        tokenizer: its tokenizer (loaded with ``legacy=True``).
        max_length: truncation length in tokens (512, EOS included).
        padding: ``"longest"`` pads each batch to its longest prompt; ``"max_length"`` pads to ``max_length``
            as the official code does. The kept rows agree up to float rounding (padding is masked out), so the
            cheaper ``"longest"`` is the default.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int = MAX_LENGTH,
        padding: Literal["longest", "max_length"] = "longest",
    ) -> None:
        if padding not in ("longest", "max_length"):
            raise InputError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding

    @property
    def channels(self) -> int:
        """Encoder width C (``d_model``; 2048 for Flan-T5-XL)."""
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        """Device of the encoder weights."""
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_TEXT_ENCODER,
        *,
        local_files_only: bool | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: str | Path | None = None,
        max_length: int = MAX_LENGTH,
        padding: Literal["longest", "max_length"] = "longest",
    ) -> TextEncoder:
        """Load a T5 encoder and tokenizer from a local folder or a Hugging Face model id.

        Args:
            name_or_path: a folder with ``config.json``, the weights and the tokenizer files, or a hub id
                (default ``google/flan-t5-xl``; NSARM's 8B notebooks call a copy of it ``flan-t5-xl-official``).
            local_files_only: never touch the network; default: true when ``HF_HUB_OFFLINE`` is set.
            device: where the encoder runs.
            dtype: weight dtype; default float16 on CUDA (as the official code) and float32 elsewhere.
            cache_dir: Hugging Face cache folder (default: the hub cache, ``$HF_HOME/hub``).
            max_length: truncation length (512).
            padding: see :class:`TextEncoder`.

        Raises:
            MissingExtraError: ``transformers`` is not installed.
            WeightsNotFoundError: the folder does not exist, or the model is not in the cache while offline (or
                cannot be downloaded); the message says where it looked and how to get the weights.
        """
        try:
            from transformers import AutoTokenizer, T5EncoderModel
        except ImportError as e:
            raise missing_extra("transformers", "text", "the T5 text encoder") from e
        device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        src = transformers_source(
            name_or_path,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            folder="text-encoder folder",
            folder_hint="pass a folder containing config.json, the weights and the tokenizer files of a T5 "
            f"encoder, or a Hugging Face id such as {DEFAULT_TEXT_ENCODER!r}",
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                src.load_from, legacy=True, model_max_length=max_length, **src.kwargs
            )
            model = T5EncoderModel.from_pretrained(src.load_from, dtype=dtype, **src.kwargs)
        except OSError as e:
            if src.is_local:
                hint = "check that the folder holds a complete T5 encoder (config.json, weights, tokenizer files)"
            else:
                hint = (
                    f"download it with `{download_command(src.source)}` (needs network), or pass a local folder "
                    "with the model"
                )
            raise src.not_found("text encoder", e, hint) from e
        logger.info("loaded text encoder %s (%s, %s) from %s", src.source, device, dtype, src.where)
        return cls(model.to(device), tokenizer, max_length=max_length, padding=padding)

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> TextFeatures:
        """Encode prompts into compact var-len features.

        Args:
            prompts: one prompt or a list of B prompts (the empty string gives one row: EOS).

        Returns:
            ``TextFeatures(kv_compact [sum L_i, C] float32, lens [L_i])`` on the encoder's device; row block i
            is the first L_i = ``attention_mask[i].sum()`` rows of prompt i's last hidden state (EOS included).
        """
        if self.model is None:
            raise NSARMError("this TextEncoder was released with keep_on_cpu=False; load it again to encode")
        prompts = _as_prompt_list(prompts)
        tok = self.tokenizer(
            prompts, max_length=self.max_length, padding=self.padding, truncation=True, return_tensors="pt"
        )
        device = self.device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [B, Lpad, C]
        lens = [int(n) for n in mask.sum(dim=1).tolist()]
        kv = torch.cat([hidden[i, :n] for i, n in enumerate(lens)], dim=0)  # [sum L_i, C]
        return TextFeatures(kv, lens)

    def encode_list(self, prompts: str | Sequence[str]) -> list[Tensor]:
        """Like :meth:`encode` but returns one ``[L_i, C]`` float32 tensor per prompt."""
        per = self.encode(prompts).per_prompt()
        assert per is not None
        return per

    def release(self, keep_on_cpu: bool = True) -> None:
        """Free accelerator memory: move the encoder to the CPU (still usable), or drop it entirely."""
        if self.model is None:
            return
        if keep_on_cpu:
            self.model.to("cpu")
        else:
            self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


__all__ = ["DEFAULT_TEXT_ENCODER", "MAX_LENGTH", "NullTextEncoder", "TextEncoder", "TextFeatures"]

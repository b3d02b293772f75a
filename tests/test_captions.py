"""nsarm_core.data.captions: one caption reader, one precedence rule, for training and inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nsarm_core.batch.upscale import UpscaleOptions, upscale_files
from nsarm_core.data.captions import CAPTION_FIELDS, caption_of, load_captions
from nsarm_core.data.datasets import HRFolderDataset
from nsarm_core.data.io import Image, write_image
from nsarm_core.errors import InputError


class _PromptRecorder:
    native_scale = 1
    name = "recorder"

    def __init__(self) -> None:
        self.prompts: list[str | None] = []

    def upscale(self, rgb, *, seed: int, prompt: str | None):
        from nsarm_core.pipeline import UpscaleResult

        self.prompts.append(prompt)
        return UpscaleResult(image=rgb.clone(), seed=seed)


def test_one_precedence_rule() -> None:
    assert CAPTION_FIELDS == ("long_caption", "caption", "text")
    assert caption_of({"caption": "short", "long_caption": "long", "text": "t"}) == "long"
    assert caption_of({"caption": "short", "text": "t"}) == "short"
    assert caption_of({"long_caption": "  ", "text": "t"}) == "t"  # an empty field does not count
    assert caption_of({"image_path": "a.png"}) is None


def test_training_and_inference_read_the_same_line_the_same_way(tmp_path: Path) -> None:
    # The bug: inference let "caption" win over "long_caption", training the opposite.
    folder = tmp_path / "hr"
    write_image(folder / "a.png", Image(rgb=np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)))
    line = {"image_path": "hr/a.png", "caption": "a boat", "long_caption": "a red boat on a calm lake"}
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text(json.dumps(line) + "\n")

    train = HRFolderDataset(folder, (16, 16), "bicubic", scale=2, captions=jsonl)
    recorder = _PromptRecorder()
    upscale_files(
        recorder, [folder], tmp_path / "out", UpscaleOptions(scale=1, captions=load_captions(jsonl))
    )
    assert train[0]["caption"] == recorder.prompts[0] == "a red boat on a calm lake"


def test_paths_relative_to_the_file_and_unique_names(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "c.jsonl").write_text(
        json.dumps({"image_path": "rel/a.png", "text": "t"}) + "\n"
        + json.dumps({"image_path": "/elsewhere/x/b.png", "caption": "B1"}) + "\n"
        + json.dumps({"image_path": "/elsewhere/y/b.png", "caption": "B2"}) + "\n"
    )  # fmt: skip
    index = load_captions(tmp_path / "d")
    assert index.lookup(tmp_path / "d" / "rel" / "a.png") == "t"
    assert index.lookup(tmp_path / "other" / "a.png") == "t"  # a unique name matches anywhere
    assert (
        index.lookup("/elsewhere/y/b.png") == "B2" and index.lookup(tmp_path / "b.png") is None
    )  # ambiguous


def test_sidecar_text_files_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("sidecar\n")
    assert load_captions(None, sidecar=True).lookup(tmp_path / "a.png") == "sidecar"
    assert load_captions(None).lookup(tmp_path / "a.png") is None


def test_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_path": "a.png", "caption": "x"}\n{"image_path": "b.png"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl' line 2 .*image_path.*long_caption, caption, text"):
        load_captions(bad)
    with pytest.raises(InputError, match="not found"):
        load_captions(tmp_path / "missing.jsonl")

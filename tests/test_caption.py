"""``nsarm caption`` end to end with a tiny random LLaVA built offline; --fixed; resume; missing weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsarm_cli.main import app
from nsarm_core.caption import FIXED_PROMPT, read_done
from nsarm_core.data.captions import load_captions

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

runner = CliRunner()


def _text(result) -> str:
    return result.output + str(result.exception)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer LLaVA (CLIP vision tower + Llama) with random weights and a locally trained BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        "USER: Describe this image and its style in a very detailed manner. ASSISTANT: a sharp photo"
    ] * 8
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=(
            "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
        ),
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    out = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture()
def lr_images(tmp_path: Path) -> Path:
    root = tmp_path / "lr"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (16, 16), "sub/b.png": (20, 12), "c.png": (8, 24)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_caption_end_to_end_with_tiny_llava(tiny_llava: Path, lr_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "caps.jsonl"
    args = ["caption", str(lr_images), "--out", str(out), "--model", str(tiny_llava)]
    args += ["--batch-size", "2", "--max-new-tokens", "5", "--device", "cpu", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, _text(r)
    summary = json.loads(r.stdout)
    assert summary["written"] == 3 and summary["skipped"] == 0
    recs = _records(out)
    assert len(recs) == 3
    assert {Path(rec["image_path"]).name for rec in recs} == {"a.png", "b.png", "c.png"}
    for rec in recs:
        assert isinstance(rec["long_caption"], str) and rec["long_caption_type"] == str(tiny_llava)
    assert {rec["h_div_w"] for rec in recs} == {1.0, 20 / 12, 8 / 24}
    # Seeded sampling: the same run gives the same captions.
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, _text(r)
    assert [rec["long_caption"] for rec in _records(out)] == [rec["long_caption"] for rec in recs]
    # The training datasets read the file back.
    caps = load_captions(out)
    assert caps.lookup(lr_images / "sub" / "b.png") == next(
        x["long_caption"] for x in recs if "b.png" in x["image_path"]
    )


def test_caption_resume_skips_done_images(tiny_llava: Path, lr_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "caps.jsonl"
    base = ["caption", str(lr_images), "--out", str(out), "--model", str(tiny_llava), "--max-new-tokens", "3"]
    assert runner.invoke(app, base).exit_code == 0
    lines = out.read_text().splitlines()
    # Simulate a crash: the last record lost, the one before it cut in half.
    out.write_text(lines[0] + "\n" + lines[1][:10])
    r = runner.invoke(app, [*base, "--json", "--temperature", "0"])
    assert r.exit_code == 0, _text(r)
    summary = json.loads(r.stdout)
    assert summary["skipped"] == 1 and summary["written"] == 2
    recs = _records(out)
    assert len(recs) == 3 and len({rec["image_path"] for rec in recs}) == 3


def test_caption_fixed_mode_needs_no_model(lr_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "fixed.jsonl"
    r = runner.invoke(
        app, ["caption", str(lr_images), "--out", str(out), "--fixed", "--model", "no/such-model"]
    )
    assert r.exit_code == 0, _text(r)
    recs = _records(out)
    assert [rec["long_caption"] for rec in recs] == [FIXED_PROMPT] * 3
    assert FIXED_PROMPT == "A high-definition image with harmonious colors and rich details."
    assert {rec["long_caption_type"] for rec in recs} == {"fixed"}
    r = runner.invoke(app, ["caption", str(lr_images), "--out", str(out), "--fixed", "--json"])
    assert json.loads(r.stdout)["skipped"] == 3 and len(_records(out)) == 3


def test_missing_weights_give_a_clear_offline_error(lr_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "caps.jsonl"
    r = runner.invoke(app, ["caption", str(lr_images), "--out", str(out)])  # the default llava-hf model
    assert r.exit_code == 2
    msg = " ".join(_text(r).split())
    assert "llava-hf/llava-1.5-7b-hf" in msg and "looked in" in msg
    # the CLI of the huggingface-hub we install is `hf`; `huggingface-cli` does not exist there
    assert "`hf download llava-hf/llava-1.5-7b-hf`" in msg and "huggingface-cli" not in msg
    assert "offline" in msg
    r = runner.invoke(app, ["caption", str(lr_images), "--out", str(out), "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in _text(r)
    assert not out.exists() or out.read_text() == ""


def test_read_done_rejects_a_corrupt_middle_line(tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    out.write_text('{"image_path": "/x/a.png", "long_caption": "a"}\ngarbage\n{"image_path": "/x/b.png"}\n')
    from nsarm_core.errors import InputError

    with pytest.raises(InputError, match="c.jsonl:2"):
        read_done(out)

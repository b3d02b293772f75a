"""Text encoder: a tiny random T5 + a locally trained sentencepiece model, all offline in tmp folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nsarm_core.errors import InputError, MissingExtraError, WeightsNotFoundError
from nsarm_core.models.text_encoder import NullTextEncoder, TextEncoder, TextFeatures

CORPUS_WORDS = (
    "a photo of the cat dog bird sitting on mat grass tree under blue sky with clouds and sun high definition "
    "image harmonious colors rich details sharp texture real world super resolution portrait of an old man "
    "woman child playing in park city street at night lights building river mountain lake forest snow"
).split()
PROMPTS = ["a photo of a cat", "a high definition image with harmonious colors and rich details", ""]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sentencepiece = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("t5")
    # A small deterministic corpus: every word in many contexts, so the unigram trainer reaches ~200 pieces.
    n = len(CORPUS_WORDS)
    lines = [" ".join(CORPUS_WORDS[(i * 7 + j * 3) % n] for j in range(4 + i % 9)) for i in range(600)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    sentencepiece.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"),
        model_prefix=str(root / "spiece"),
        vocab_size=200,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,  # T5 layout: <pad>=0, </s>=1, <unk>=2, no BOS
        minloglevel=2,
    )
    spm_dir = root / "spm"
    spm_dir.mkdir()
    (spm_dir / "spiece.model").write_bytes((root / "spiece.model").read_bytes())
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(spm_dir), extra_ids=0)
    config = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=64, d_kv=32, num_layers=2, num_heads=2, d_ff=128,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)  # random init of the tiny encoder uses torch's default RNG
    model = transformers.T5EncoderModel(config)
    out = root / "tiny-t5"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def encoder(t5_dir: Path) -> TextEncoder:
    return TextEncoder.from_pretrained(t5_dir)


def test_variable_lengths_and_eos_kept(encoder: TextEncoder) -> None:
    feats = encoder.encode(PROMPTS)
    tok = encoder.tokenizer(PROMPTS)  # unpadded ids, EOS appended by the tokenizer
    expected_lens = [len(ids) for ids in tok.input_ids]
    assert feats.lens == expected_lens
    assert len(set(feats.lens)) == 3 and feats.lens[2] == 1  # "" -> only EOS
    assert all(ids[-1] == encoder.tokenizer.eos_token_id for ids in tok.input_ids)
    assert feats.kv_compact is not None and feats.kv_compact.dtype == torch.float32
    assert feats.kv_compact.shape == (sum(expected_lens), encoder.channels) == (sum(expected_lens), 64)
    assert feats.cu_seqlens.tolist() == [0, expected_lens[0], sum(expected_lens[:2]), sum(expected_lens)]
    # Each block equals the encoder run on that prompt alone (all its rows, the EOS row included).
    per = feats.per_prompt()
    assert per is not None
    for i, ids in enumerate(tok.input_ids):
        with torch.no_grad():
            alone = encoder.model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
        assert per[i].shape == alone.shape
        assert (per[i] - alone).abs().max().item() < 1e-5
    assert [t.shape for t in encoder.encode_list(PROMPTS)] == [t.shape for t in per]


def test_official_padding_and_truncation(t5_dir: Path, encoder: TextEncoder) -> None:
    official = TextEncoder.from_pretrained(t5_dir, padding="max_length")
    a, b = encoder.encode(PROMPTS), official.encode(PROMPTS)
    assert a.lens == b.lens
    assert a.kv_compact is not None and b.kv_compact is not None
    assert (a.kv_compact - b.kv_compact).abs().max().item() < 1e-5
    short = TextEncoder.from_pretrained(t5_dir, max_length=4)
    feats = short.encode(PROMPTS[1])
    assert feats.lens == [4]
    ids = short.tokenizer(PROMPTS[1], max_length=4, truncation=True).input_ids
    assert ids[-1] == short.tokenizer.eos_token_id  # truncation keeps the EOS row


def test_release(t5_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(t5_dir)
    enc.release()
    assert enc.device.type == "cpu" and enc.encode("a cat").lens
    enc.release(keep_on_cpu=False)
    with pytest.raises(Exception, match="released"):
        enc.encode("a cat")


def test_null_text_encoder_contract() -> None:
    null = NullTextEncoder(channels=64, null_length=3)
    feats = null.encode(["a", "b"])
    assert feats.kv_compact is None and feats.lens == [3, 3] and feats.per_prompt() is None
    assert feats.cu_seqlens.tolist() == [0, 3, 6]
    assert null.encode("x").batch_size == 1
    with pytest.raises(InputError):
        TextFeatures(torch.zeros(5, 4), [2, 2])
    with pytest.raises(InputError):
        null.encode([])


def test_missing_weights_offline_names_id_cache_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = "nsarm-tests/t5-that-is-not-cached"
    with pytest.raises(WeightsNotFoundError) as info:
        TextEncoder.from_pretrained(model_id)
    msg = str(info.value)
    assert model_id in msg and str(hub_constants.HF_HUB_CACHE) in msg
    assert f"`hf download {model_id}`" in msg and "local folder" in msg and "huggingface-cli" not in msg


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        TextEncoder.from_pretrained(tmp_path / "nope")


def test_missing_transformers_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(MissingExtraError, match=r"nsarm\[text\]"):
        TextEncoder.from_pretrained("google/flan-t5-xl")

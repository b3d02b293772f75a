"""Tests of nsarm_core.weights and `nsarm models`: resolution order, checksums, offline errors, safe loading.

Nothing here touches the network: the Hub cache is a fake folder in tmp_path (the real cache layout), the
environment is HF_HUB_OFFLINE=1, and socket connections raise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file
from typer.testing import CliRunner

import nsarm_core.weights as W
from nsarm_cli.main import app
from nsarm_core.errors import ChecksumError, ConfigError, InputError, WeightsNotFoundError
from nsarm_core.weights import (
    MODELS,
    NSARM_MD5,
    ModelSpec,
    WeightFile,
    assemble_parts,
    find_local,
    get_model_spec,
    load_state_dict,
    nsarm_home,
    resolve_file,
    sort_parts,
    verify_checksum,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, used by hf_hub_download / try_to_load_from_cache."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _put_in_cache(cache: Path, repo_id: str, path: str, data: bytes) -> Path:
    """Place a file in the real Hub cache layout: models--org--name/{refs/main, snapshots/<commit>/path}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def _spec(**files: WeightFile) -> ModelSpec:
    return ModelSpec(
        name="test-model", description="test", files=files, preset="tiny", how_to_get="Ask a friend."
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- registry and home


def test_registry_entries() -> None:
    assert set(MODELS) >= {"nsarm-8b", "infinity-2b", "infinity-8b", "nsarm-tiny"}
    nsarm = MODELS["nsarm-8b"]
    assert nsarm.files["checkpoint"].md5 == NSARM_MD5 and nsarm.files["checkpoint"].kind == "manual"
    assert nsarm.files["vae"].repo_id == "FoundationVision/Infinity"
    assert nsarm.files["vae"].filename == "infinity_vae_d56_f8_14_patchify.pth"
    assert nsarm.files["text_encoder"].repo_id == "google/flan-t5-xl"
    assert MODELS["infinity-2b"].license == "MIT"
    assert (
        MODELS["infinity-8b"].files["checkpoint"].hub_path
        == "infinity_8b_weights/model.safetensors.index.json"
    )
    assert all(f.bundled for f in MODELS["nsarm-tiny"].files.values())
    with pytest.raises(ConfigError, match="md5 must be 32"):
        WeightFile("x.pth", md5="abc")
    with pytest.raises(ConfigError, match="bundled"):
        WeightFile("x.pth", bundled=True, repo_id="a/b")


def test_get_model_spec_suggests_closest_name() -> None:
    assert get_model_spec("nsarm-8b") is MODELS["nsarm-8b"]
    with pytest.raises(ConfigError) as err:
        get_model_spec("nsarm8b")
    msg = str(err.value)
    assert "nsarm-8b" in msg and "infinity-2b" in msg and "Did you mean 'nsarm-8b'" in msg


def test_nsarm_home_respects_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSARM_HOME", str(tmp_path / "home"))
    assert nsarm_home() == tmp_path / "home"
    assert W.downloads_dir() == tmp_path / "home" / "downloads"
    monkeypatch.delenv("NSARM_HOME")
    import platformdirs

    assert nsarm_home() == Path(platformdirs.user_cache_dir("nsarm"))


# --------------------------------------------------------------------------- checksums and local paths


def test_local_file_with_wrong_md5_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "NSARM.pth"
    f.write_bytes(b"not the real checkpoint")
    with pytest.raises(ChecksumError) as err:
        resolve_file(MODELS["nsarm-8b"], "checkpoint", local_path=f)
    msg = str(err.value)
    assert str(f) in msg and NSARM_MD5 in msg and _md5(f.read_bytes()) in msg
    assert f.exists()  # a user's own file is never deleted


def test_local_file_with_wrong_sha256_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"abc")
    expected = _sha256(b"abd")
    spec = _spec(checkpoint=WeightFile("w.safetensors", repo_id="org/repo", sha256=expected))
    with pytest.raises(ChecksumError) as err:
        resolve_file(spec, "checkpoint", local_path=f)
    assert str(f) in str(err.value) and expected in str(err.value) and _sha256(b"abc") in str(err.value)
    with pytest.raises(ChecksumError, match="expected sha256"):
        verify_checksum(f, sha256=expected)
    with pytest.raises(ChecksumError, match="size mismatch"):
        verify_checksum(f, size=4)
    assert verify_checksum(f, sha256=_sha256(b"abc"), md5=_md5(b"abc")) is True
    assert verify_checksum(f) is False  # nothing registered: nothing verified


def test_local_path_wins_and_verification_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"weights" * 100
    f = tmp_path / "mine.pth"
    f.write_bytes(data)
    spec = _spec(checkpoint=WeightFile("infinity_2b_reg.pth", repo_id="org/repo", sha256=_sha256(data)))

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub must not be consulted when a local path is given")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    assert resolve_file(spec, "checkpoint", local_path=f, offline=False) == f
    # a folder holding the registered file name works too
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "infinity_2b_reg.pth").write_bytes(data)
    assert (
        resolve_file(spec, "checkpoint", local_path=tmp_path / "dir")
        == tmp_path / "dir" / "infinity_2b_reg.pth"
    )

    # the second resolution does not hash again (same size and mtime) ...
    monkeypatch.setattr(W, "file_checksums", lambda *a, **k: pytest.fail("re-hashed a verified file"))
    assert resolve_file(spec, "checkpoint", local_path=f) == f
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # ... but a changed file is hashed again and refused
    f.write_bytes(data[:-1] + b"X")
    os.utime(f, ns=(1, 1))
    with pytest.raises(ChecksumError):
        resolve_file(spec, "checkpoint", local_path=f)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_file(spec, "checkpoint", local_path=tmp_path / "nope.pth")


def test_a_changed_file_with_its_mtime_put_back_is_hashed_again(tmp_path: Path) -> None:
    data = b"weights" * 100
    f = tmp_path / "mine.pth"
    f.write_bytes(data)
    spec = _spec(checkpoint=WeightFile("mine.pth", repo_id="org/repo", sha256=_sha256(data)))
    assert resolve_file(spec, "checkpoint", local_path=f) == f  # verified and remembered
    before = f.stat()
    f.write_bytes(data[:-1] + b"X")  # same size ...
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the old mtime put back
    assert f.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        resolve_file(spec, "checkpoint", local_path=f)


def test_models_verify_rehashes_every_present_registered_file(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"weights" * 100
    placed = W.downloads_dir() / "manual.pth"
    placed.parent.mkdir(parents=True, exist_ok=True)
    placed.write_bytes(data)
    wf = WeightFile("manual.pth", sha256=_sha256(data))
    monkeypatch.setitem(W.MODELS, "test-model", _spec(checkpoint=wf))
    res = CliRunner().invoke(app, ["models", "--verify"])
    assert res.exit_code == 0, res.output
    assert f"test-model checkpoint: ok {placed}" in res.output and "nsarm-tiny checkpoint: ok" in res.output
    # a memo that was fooled (it matches the damaged file's stamp) must not stop --verify from hashing
    placed.write_bytes(data[:-1] + b"X")
    W._verified_db().write_text(json.dumps({str(placed.resolve()): W._stamp(placed, wf)}))
    assert resolve_file(MODELS["test-model"], "checkpoint") == placed  # the memo alone is trusted ...
    res = CliRunner().invoke(app, ["models", "--verify", "--json"])
    assert res.exit_code == 1, res.output  # ... --verify is not
    report = json.loads(res.output)
    assert report["mismatches"] == 1
    assert report["models"]["test-model"]["checkpoint"]["outcome"].startswith("mismatch: checksum mismatch")


# --------------------------------------------------------------------------- missing-weights messages


def test_missing_hub_file_offline_message(hf_cache: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_file(MODELS["infinity-2b"], "vae")
    msg = str(err.value)
    assert "infinity_vae_d32reg.pth" in msg and "infinity-2b" in msg  # the file and the model
    assert str(hf_cache) in msg and "HF_HUB_OFFLINE=1" in msg  # where it looked, and why it did not download
    assert "hf download FoundationVision/Infinity infinity_vae_d32reg.pth" in msg  # how to fix
    assert "huggingface-cli" not in msg and "--vae-weights PATH" in msg


def test_missing_text_encoder_folder_message(hf_cache: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_file(MODELS["nsarm-8b"], "text_encoder")
    assert "hf download google/flan-t5-xl --include" in str(err.value)
    assert "--text-encoder PATH" in str(err.value)


def test_missing_manual_checkpoint_message() -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_file(MODELS["nsarm-8b"], "checkpoint")
    msg = str(err.value)
    assert "NSARM.pth" in msg and str(W.downloads_dir() / "NSARM.pth") in msg
    assert "NSARM_part_" in msg and NSARM_MD5 in msg and "--weights PATH" in msg
    assert "github.com/Xiangtaokong/NSARM" in msg


def test_manually_placed_checkpoint_is_found_and_verified() -> None:
    data = b"fake nsarm"
    spec = _spec(checkpoint=WeightFile("NSARM.pth", md5=_md5(data)))
    W.downloads_dir().mkdir(parents=True)
    (W.downloads_dir() / "NSARM.pth").write_bytes(data)
    assert resolve_file(spec, "checkpoint") == W.downloads_dir() / "NSARM.pth"
    assert find_local(spec) == {"checkpoint": W.downloads_dir() / "NSARM.pth"}
    bad = _spec(checkpoint=WeightFile("NSARM.pth", md5=NSARM_MD5))
    with pytest.raises(ChecksumError, match="Delete"):
        resolve_file(bad, "checkpoint")


def test_bundled_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(W, "PACKAGE_DIR", tmp_path / "pkg")
    spec = _spec(checkpoint=WeightFile("assets/nsarm-tiny/model.safetensors", bundled=True))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_file(spec, "checkpoint")
    msg = str(err.value)
    assert (
        str(tmp_path / "pkg" / "assets" / "nsarm-tiny" / "model.safetensors") in msg and "Ask a friend" in msg
    )

    target = tmp_path / "pkg" / "assets" / "nsarm-tiny" / "model.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"tiny")
    with caplog.at_level(logging.WARNING, logger="nsarm_core.weights"):
        assert resolve_file(spec, "checkpoint") == target  # no checksum registered yet: accepted, logged
    assert "not checksum-verified" in caplog.text
    wrong = _spec(
        checkpoint=WeightFile("assets/nsarm-tiny/model.safetensors", bundled=True, sha256=_sha256(b"x"))
    )
    with pytest.raises(ChecksumError, match="reinstall"):
        resolve_file(wrong, "checkpoint")


def test_registered_nsarm_tiny_entry_gives_a_clear_error_when_missing() -> None:
    wf = MODELS["nsarm-tiny"].files["checkpoint"]
    if (W.PACKAGE_DIR / wf.filename).is_file():
        pytest.skip("nsarm-tiny weights are bundled in this install")
    with pytest.raises(WeightsNotFoundError, match="does not have them yet"):
        resolve_file(MODELS["nsarm-tiny"], "checkpoint")


# --------------------------------------------------------------------------- Hub cache and URL downloads


def test_hub_cache_hit_offline_with_shards_and_checksum(hf_cache: Path) -> None:
    shard_a, shard_b = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    index = json.dumps({"metadata": {}, "weight_map": {"a": shard_a, "b": shard_b}}).encode()
    _put_in_cache(hf_cache, "org/repo", "sub/model.safetensors.index.json", index)
    _put_in_cache(hf_cache, "org/repo", f"sub/{shard_a}", b"1")
    spec = _spec(checkpoint=WeightFile("model.safetensors.index.json", repo_id="org/repo", subfolder="sub"))
    # one shard missing: not complete locally, and resolving offline says which shard is missing
    assert find_local(spec)["checkpoint"] is None
    with pytest.raises(WeightsNotFoundError, match="the shard model-00002-of-00002.safetensors"):
        resolve_file(spec, "checkpoint")
    _put_in_cache(hf_cache, "org/repo", f"sub/{shard_b}", b"2")
    path = resolve_file(spec, "checkpoint")
    assert path.name == "model.safetensors.index.json" and (path.parent / shard_b).is_file()
    assert find_local(spec)["checkpoint"] == path

    # a Hub file with a registered checksum that does not match is refused and removed from the cache
    cached = _put_in_cache(hf_cache, "org/repo", "vae.pth", b"corrupt")
    bad = _spec(vae=WeightFile("vae.pth", repo_id="org/repo", sha256=_sha256(b"good")))
    with pytest.raises(ChecksumError):
        resolve_file(bad, "vae")
    assert not cached.exists()


def test_url_download_is_atomic_and_verified(tmp_path: Path) -> None:
    payload = os.urandom(3000)
    src = tmp_path / "remote.bin"
    src.write_bytes(payload)
    url = src.as_uri()  # file:// keeps the test offline while exercising the streamed download
    good = _spec(checkpoint=WeightFile("remote.bin", url=url, md5=_md5(payload)))
    with pytest.raises(WeightsNotFoundError, match="offline"):
        resolve_file(good, "checkpoint")  # HF_HUB_OFFLINE=1: no download
    bad = _spec(checkpoint=WeightFile("remote.bin", url=url, sha256=_sha256(b"other")))
    with pytest.raises(ChecksumError) as err:
        resolve_file(bad, "checkpoint", offline=False)
    assert _sha256(payload) in str(err.value) and "deleted" in str(err.value)
    assert list(W.downloads_dir().iterdir()) == []  # neither the file nor a temporary part is kept
    path = resolve_file(good, "checkpoint", offline=False)
    assert path == W.downloads_dir() / "remote.bin" and path.read_bytes() == payload
    assert sorted(p.name for p in W.downloads_dir().iterdir()) == ["remote.bin"]
    gone = _spec(checkpoint=WeightFile("gone.bin", url=(tmp_path / "gone.bin").as_uri()))
    with pytest.raises(WeightsNotFoundError, match="download failed"):
        resolve_file(gone, "checkpoint", offline=False)


# --------------------------------------------------------------------------- loading


class _Payload:
    """An object whose unpickling would create a folder: must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_load_safetensors_and_sharded_index(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(3, 4, generator=g) for _ in range(3))
    save_file({"vae.a": a, "b": b}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"c": c}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {"vae.a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}
    weight_map["c"] = "model-00002-of-00002.safetensors"
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))

    sd = load_state_dict(index)
    assert set(sd) == {"vae.a", "b", "c"} and torch.equal(sd["c"], c)
    assert set(load_state_dict(tmp_path)) == {"vae.a", "b", "c"}  # a folder with an index
    assert torch.equal(load_state_dict(index, key="vae")["a"], a)  # prefix selection on flat files
    assert set(load_state_dict(tmp_path / "model-00002-of-00002.safetensors")) == {"c"}

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="model-00002-of-00002.safetensors"):
        load_state_dict(index)
    weight_map["d"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps({"weight_map": {k: v for k, v in weight_map.items() if k != "c"}}))
    with pytest.raises(InputError, match="not in its shards"):
        load_state_dict(index)


def test_load_pth_weights_only(tmp_path: Path) -> None:
    t = torch.arange(6.0).view(2, 3)
    torch.save({"w": t}, tmp_path / "plain.pth")
    assert torch.equal(load_state_dict(tmp_path / "plain.pth")["w"], t)
    torch.save({"w": t}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # cannot be mmapped
    assert torch.equal(load_state_dict(tmp_path / "legacy.pt")["w"], t)
    # nested official layout: {"vae": state_dict, "step": int}
    torch.save({"vae": {"enc.w": t}, "step": 3}, tmp_path / "vae.pth")
    assert torch.equal(load_state_dict(tmp_path / "vae.pth", key="vae")["enc.w"], t)
    with pytest.raises(InputError, match="key="):
        load_state_dict(tmp_path / "vae.pth")
    with pytest.raises(InputError, match="top-level keys are: vae, step"):
        load_state_dict(tmp_path / "vae.pth", key="ema")
    (tmp_path / "junk.pth").write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match="cannot read"):
        load_state_dict(tmp_path / "junk.pth")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported weight file"):
        load_state_dict(tmp_path / "weights.txt")


def test_pickle_with_arbitrary_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code_was_executed"
    torch.save({"w": torch.zeros(2), "evil": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(InputError) as err:
        load_state_dict(tmp_path / "evil.pth")
    assert (
        "refused" in str(err.value) and "weights_only=True" in str(err.value) and "evil.pth" in str(err.value)
    )
    assert not marker.exists()


# --------------------------------------------------------------------------- multi-part release


def test_assemble_parts_natural_order_and_md5(tmp_path: Path) -> None:
    chunks = [bytes([i]) * (100 + i) for i in range(12)]
    for i, chunk in enumerate(chunks):
        (tmp_path / f"NSARM_part_{i}").write_bytes(chunk)
    parts = list(tmp_path.glob("NSARM_part_*"))
    assert [p.name for p in sort_parts(parts)][:3] == ["NSARM_part_0", "NSARM_part_1", "NSARM_part_2"]
    whole = b"".join(chunks)
    out = assemble_parts(parts, tmp_path / "NSARM.pth", md5=_md5(whole))
    assert out.read_bytes() == whole

    with pytest.raises(ChecksumError) as err:
        assemble_parts(parts, tmp_path / "bad.pth")  # default: the official md5, which this is not
    assert NSARM_MD5 in str(err.value) and _md5(whole) in str(err.value)
    assert not (tmp_path / "bad.pth").exists()
    assert not list(tmp_path.glob(".bad.pth*"))
    with pytest.raises(InputError, match="not found"):
        assemble_parts([tmp_path / "NSARM_part_99"], tmp_path / "x.pth", md5=None)


# --------------------------------------------------------------------------- CLI


def test_cli_models_json(hf_cache: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {m["name"]: m for m in data["models"]}
    assert set(by_name) >= {"nsarm-8b", "infinity-2b", "infinity-8b", "nsarm-tiny"}
    assert data["nsarm_home"] == str(nsarm_home()) and data["hf_cache"] == str(hf_cache)
    ck = by_name["nsarm-8b"]["files"]["checkpoint"]
    assert ck["present"] is False and ck["md5"] == NSARM_MD5 and by_name["nsarm-8b"]["complete"] is False

    _put_in_cache(hf_cache, "FoundationVision/Infinity", "infinity_vae_d32reg.pth", b"v")
    W.downloads_dir().mkdir(parents=True)
    (W.downloads_dir() / "NSARM.pth").write_bytes(b"x")
    data = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["nsarm-8b"]["files"]["checkpoint"]["path"] == str(W.downloads_dir() / "NSARM.pth")
    vae = by_name["infinity-2b"]["files"]["vae"]
    assert vae["present"] is True and vae["path"].endswith("infinity_vae_d32reg.pth")

    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0 and "nsarm-8b" in table.stdout and "infinity-2b" in table.stdout


# --------------------------------------------------------------------------- one registry: names -> preset + layout


def test_every_registered_name_resolves_to_a_preset_and_a_layout() -> None:
    from nsarm_core.models import nsarm, rrdbnet, transformer

    for name, spec in MODELS.items():
        if spec.layout == "peer":
            presets = rrdbnet.PRESETS
        else:
            presets = nsarm.PRESETS if spec.upscales else transformer.PRESETS
        assert spec.preset in presets, name
        assert spec.layout in W.LAYOUTS and spec.use in W.MODEL_USES
    assert {n for n, s in MODELS.items() if not s.upscales} >= {"infinity-2b", "infinity-8b"}


@pytest.mark.parametrize("name", ["infinity-2b", "infinity-8b"])
def test_training_bases_are_refused_as_upscale_models(name: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"'{name}' is a training base.*upscaling models: nsarm-8b, nsarm-tiny"
    ):
        W.get_upscale_model(name)


@pytest.mark.parametrize("name", ["infinity-2b", "infinity-8b"])
def test_nsarm_upscale_refuses_a_training_base_before_any_download(name: str, tmp_path: Path) -> None:
    # The bug: offline this asked for a 10 GB download first; with --weights it failed on a missing config.json.
    src = tmp_path / "a.png"
    from PIL import Image as PILImage

    PILImage.new("RGB", (8, 8)).save(src)
    res = CliRunner().invoke(app, ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", name])
    assert res.exit_code == 2, res.output
    assert (
        "training base" in res.output and "not found" not in res.output and "Internal error" not in res.output
    )


def test_nsarm_models_says_what_each_model_is_for(hf_cache: Path) -> None:
    data = json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)
    use = {m["name"]: m["use"] for m in data["models"]}
    assert use["nsarm-tiny"] == use["nsarm-8b"] == "upscale"
    assert use["infinity-2b"] == use["infinity-8b"] == "training-base"

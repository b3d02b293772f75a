"""nsarm_core.hub: no network is found out once and in seconds (never minutes of retries), and one helper writes
every "how to get this file" command. The network is never used: ``urllib.request.urlopen`` is replaced in every
test."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import huggingface_hub.constants as hf_constants
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from nsarm_core import hub
from nsarm_core.errors import WeightsNotFoundError
from nsarm_core.weights import MODELS, resolve_file


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """HF_HUB_OFFLINE unset (as a new user has it), an empty Hub cache, a fresh probe cache, and a urlopen that
    finds no route to any host (records the URLs asked for)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # read by huggingface_hub at import
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    asked: list[str] = []

    def refuse(request: urllib.request.Request, timeout: float | None = None) -> Any:
        asked.append(request.full_url)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    hub._probe.cache_clear()
    yield asked
    hub._probe.cache_clear()


def _no_network_download(calls: list[bool]) -> Any:
    """A stand-in for hf_hub_download that fails the test if it is asked to use the network."""

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        calls.append(kwargs["local_files_only"])
        if not kwargs["local_files_only"]:
            pytest.fail("hf_hub_download was asked to go online although the Hub cannot be reached")
        raise LocalEntryNotFoundError(f"{repo_id}/{filename} is not in the cache")

    return download


def test_no_network_fails_at_once_with_the_message(
    monkeypatch: pytest.MonkeyPatch, _no_network: list[str]
) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network_download(calls))
    start = time.perf_counter()
    for _ in range(2):  # two lookups, one probe
        with pytest.raises(WeightsNotFoundError) as err:
            resolve_file(MODELS["infinity-2b"], "vae")
    assert time.perf_counter() - start < 2.0
    msg = " ".join(str(err.value).split())
    assert "no network" in msg and "https://huggingface.co/ could not be reached" in msg
    assert (
        "`hf download FoundationVision/Infinity infinity_vae_d32reg.pth`" in msg
        and "huggingface-cli" not in msg
    )
    assert calls == [True, True]  # the cache was read, the network never tried
    assert _no_network == ["https://huggingface.co/"]  # detected once per process


def test_a_cached_file_still_loads_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cached = tmp_path / "infinity_vae_d32reg.pth"
    cached.write_bytes(b"not checked: no checksum registered here")

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        assert kwargs["local_files_only"], "must not go online"
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr("nsarm_core.weights._verify_file", lambda *a, **k: True)
    assert resolve_file(MODELS["infinity-2b"], "vae") == cached


def test_a_reachable_hub_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Response:
        def __enter__(self) -> Response:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=None: Response())
    assert hub.offline_reason() is None
    hub._probe.cache_clear()

    def not_found(request: urllib.request.Request, timeout: float | None = None) -> Any:
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    assert hub.offline_reason() is None  # a server answered: the network is there
    seen: list[bool] = []

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        seen.append(kwargs["local_files_only"])  # online: huggingface_hub may download
        raise LocalEntryNotFoundError("the fake Hub has no files")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(WeightsNotFoundError):
        resolve_file(MODELS["infinity-2b"], "vae")
    assert seen == [False]  # online: huggingface_hub may download


def test_a_hanging_connect_is_cut_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(request: urllib.request.Request, timeout: float | None = None) -> Any:
        time.sleep(2)  # a DNS lookup that hangs: urlopen's own timeout does not cover it
        raise urllib.error.URLError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", hang)
    monkeypatch.setattr(hub, "TIMEOUT_S", 0.2)
    start = time.perf_counter()
    reason = hub.offline_reason()
    assert time.perf_counter() - start < 1.5
    assert reason is not None and "did not answer within 0.2 s" in reason


def test_offline_env_needs_no_probe(monkeypatch: pytest.MonkeyPatch, _no_network: list[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "offline (HF_HUB_OFFLINE=1)"
    assert _no_network == []


def test_a_certificate_that_does_not_verify_is_no_network(
    monkeypatch: pytest.MonkeyPatch, _no_network: list[str]
) -> None:
    # An intercepting proxy accepts every connection but cannot show the Hub's certificate: nothing can download.
    def intercepted(request: urllib.request.Request, timeout: float | None = None) -> Any:
        raise urllib.error.URLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    monkeypatch.setattr(urllib.request, "urlopen", intercepted)
    reason = hub.offline_reason()
    assert reason is not None and "CERTIFICATE_VERIFY_FAILED" in reason
    assert hub._base("http://mirror.example:8080/x/y") == "http://mirror.example:8080/"


def test_a_url_download_without_network_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, _no_network: list[str]
) -> None:
    from nsarm_core.weights import ModelSpec, WeightFile

    spec = ModelSpec(
        "url-test", "test", files={"checkpoint": WeightFile("w.bin", url="https://example.org/w.bin")}
    )
    monkeypatch.setattr("nsarm_core.weights._download_url", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(WeightsNotFoundError, match="no network: https://example.org/ could not be reached"):
        resolve_file(spec, "checkpoint")
    assert hub.host_unreachable("file:///tmp/w.bin") is None  # a local URL needs no network
    assert _no_network == ["https://example.org/"]


def test_download_command_is_the_hf_cli() -> None:
    assert hub.download_command("org/repo") == "hf download org/repo"
    assert (
        hub.download_command("org/repo", "w.pth", revision="v1") == "hf download org/repo w.pth --revision v1"
    )
    assert (
        hub.download_command("org/repo", include=("*.json", "*.safetensors"))
        == "hf download org/repo --include '*.json' --include '*.safetensors'"
    )


def test_captioner_without_network_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    from nsarm_core.caption import Captioner

    seen: list[Any] = []

    def from_pretrained(name: str, **kwargs: Any) -> Any:
        seen.append(kwargs.get("local_files_only"))
        raise OSError(f"{name} is not in the cache")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", from_pretrained)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        Captioner.from_pretrained("llava-hf/llava-1.5-7b-hf", device="cpu")
    assert time.perf_counter() - start < 2.0
    msg = str(err.value)
    assert seen == [True]  # only the local cache was read
    assert "no network" in msg and "`hf download llava-hf/llava-1.5-7b-hf`" in msg


def test_text_encoder_without_network_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    from nsarm_core.models.text_encoder import TextEncoder

    seen: list[Any] = []

    def from_pretrained(name: str, **kwargs: Any) -> Any:
        seen.append(kwargs.get("local_files_only"))
        raise OSError(f"{name} is not in the cache")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(WeightsNotFoundError) as err:
        TextEncoder.from_pretrained("google/flan-t5-xl")
    assert (
        seen == [True]
        and "no network" in str(err.value)
        and "`hf download google/flan-t5-xl`" in str(err.value)
    )


def test_transformers_source_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one resolver behind TextEncoder and Captioner: a folder loads as a folder, a missing path-like name
    is refused naming the folder kind, a hub id probes the network once and then reads only the cache."""
    folder = tmp_path / "t5"
    folder.mkdir()
    local = hub.transformers_source(
        folder, local_files_only=None, cache_dir=None, folder="f", folder_hint="h"
    )
    assert (local.is_local, local.load_from, local.where, local.no_network) == (
        True,
        str(folder),
        str(folder),
        None,
    )
    with pytest.raises(WeightsNotFoundError, match=r"^text-encoder folder .*nope does not exist; pass one$"):
        hub.transformers_source(
            tmp_path / "nope",
            local_files_only=None,
            cache_dir=None,
            folder="text-encoder folder",
            folder_hint="pass one",
        )
    remote = hub.transformers_source(
        "org/model", local_files_only=None, cache_dir=tmp_path, folder="f", folder_hint="h"
    )
    assert remote.kwargs == {"local_files_only": True, "cache_dir": str(tmp_path)}  # no route: the cache only
    assert remote.no_network is not None and remote.where == str(tmp_path)
    err = remote.not_found("text encoder", OSError("gone\nmore"), "get it")
    assert str(err) == (
        f"text encoder 'org/model' not found ({remote.no_network}); looked in {tmp_path}; get it. Original error: gone"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = hub.transformers_source(
        "org/model", local_files_only=None, cache_dir=None, folder="f", folder_hint="h"
    )
    assert offline.no_network is None and offline.kwargs == {"local_files_only": True}
    assert "(offline: HF_HUB_OFFLINE / local_files_only)" in str(offline.not_found("x", OSError(), "h"))

"""`--model` finds GGUFs users already have: a Hugging Face cache and an Ollama store,
built on disk here around the embedded model's real GGUF (as each tool lays them out)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from warmloop.config import Config, embedded_model_path
from warmloop.models import ModelNotFoundError, resolve_model

GGUF = embedded_model_path()


def hf_cache(root: Path, repo: str, files: list[str], rev: str = "0123abcd") -> Path:
    """Hugging Face's cache layout: blobs by hash, snapshots of symlinks, refs/main."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    blob = base / "blobs" / "f00d"
    blob.parent.mkdir()
    os.symlink(GGUF, blob)
    for name in files:
        target = base / "snapshots" / rev / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    return base / "snapshots" / rev


def ollama_store(root: Path, name: str, tag: str, namespace: str = "library") -> Path:
    digest = hashlib.sha256(b"model").hexdigest()
    blob = root / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(GGUF, blob)
    manifest = root / "manifests" / "registry.ollama.ai" / namespace / name / tag
    manifest.parent.mkdir(parents=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:aa"},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return blob


def test_a_path_is_itself() -> None:
    assert resolve_model(str(GGUF)) == GGUF


def test_hugging_face_cache_by_file_quant_or_only_gguf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snap = hf_cache(tmp_path, "org/tiny-GGUF", ["tiny-Q4_K_M.gguf", "sub/tiny-Q8_0.gguf"])
    assert resolve_model("org/tiny-GGUF/tiny-Q4_K_M.gguf") == snap / "tiny-Q4_K_M.gguf"
    assert resolve_model("org/tiny-GGUF/sub/tiny-Q8_0.gguf") == snap / "sub" / "tiny-Q8_0.gguf"
    assert resolve_model("org/tiny-GGUF:q8_0") == snap / "sub" / "tiny-Q8_0.gguf"
    with pytest.raises(ModelNotFoundError, match=r"2 matching \.gguf files"):
        resolve_model("org/tiny-GGUF")  # two files: the user must name one
    single = hf_cache(tmp_path, "org/one", ["model.gguf", "mmproj-model.gguf"])
    assert resolve_model("org/one") == single / "model.gguf"
    assert resolve_model("org/one").read_bytes()[:4] == b"GGUF"


def test_ollama_store_by_name_and_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    blob = ollama_store(tmp_path, "smollm2", "135m")
    assert resolve_model("smollm2:135m") == blob
    assert resolve_model("library/smollm2:135m") == blob
    latest = ollama_store(tmp_path / "other", "tiny", "latest", namespace="someone")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "other"))
    assert resolve_model("someone/tiny") == latest


def test_what_is_nowhere_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("org/missing:Q4_K_M")
    assert "Hugging Face cache" in str(err.value) and "Ollama manifest" in str(err.value)
    with pytest.raises(ValueError, match="model 'nope:1b' not found"):
        Config(model="nope:1b")


def test_config_resolves_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    blob = ollama_store(tmp_path, "smollm2", "135m")
    assert Config(model="smollm2:135m").model_path() == blob
    assert Config().model_path() == GGUF

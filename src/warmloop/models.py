"""Where `--model` finds a GGUF: a path, a file in the local Hugging Face cache, or a
model in Ollama's store. Nothing is downloaded unless `--model-download` asks for it.

- a path to a `.gguf` file;
- a Hugging Face repo file: `org/repo/file.gguf` (any folder inside the repo),
  `org/repo:QUANT` (the cached `.gguf` whose name holds QUANT, e.g. `Q4_K_M`), or
  `org/repo` (its only cached `.gguf`), read from the cache's layout
  (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`:
  `models--org--repo/refs/main` names the snapshot, `snapshots/<rev>/<file>`);
- an Ollama name, `[host/][namespace/]model[:tag]` (`qwen3:0.6b`): its manifest under
  `$OLLAMA_MODELS` (else `~/.ollama/models`, else `/usr/share/ollama/.ollama/models`)
  names the model layer's blob.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


class ModelNotFoundError(FileNotFoundError):
    """The reference names no GGUF this machine has; the message says where it looked."""


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "huggingface") / "hub"


def ollama_dirs() -> list[Path]:
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"])]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def resolve_model(ref: str, *, download: bool = False) -> Path:
    """The GGUF file `ref` names, or ModelNotFoundError."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if ref.endswith(".gguf") and (ref.count("/") < 2 or ref.startswith((".", "/", "~"))):
        raise ModelNotFoundError(f"{ref}: no such file")  # a path, not a repo file
    looked = [f"no file {path}"]
    if ref.count("/") >= 1 and not ref.startswith((".", "/", "~")):
        found = _from_hf_cache(ref, looked)
        if found is not None:
            return found
    found = _from_ollama(ref, looked)
    if found is not None:
        return found
    if download and ref.count("/") >= 2 and ref.endswith(".gguf"):
        return _download(ref)
    raise ModelNotFoundError(f"model '{ref}' not found: " + "; ".join(looked))


def _hf_parts(ref: str) -> tuple[str, str | None, str | None]:
    """(repo id, file inside the repo or None, quant or None)."""
    parts = ref.split("/")
    if len(parts) >= 3:
        return "/".join(parts[:2]), "/".join(parts[2:]), None
    repo, _, quant = ref.partition(":")
    return repo, None, quant or None


def _from_hf_cache(ref: str, looked: list[str]) -> Path | None:
    repo, file, quant = _hf_parts(ref)
    root = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
    ref_file = root / "refs" / "main"
    if not ref_file.is_file():
        looked.append(f"no Hugging Face cache entry {root}")
        return None
    snapshot = root / "snapshots" / ref_file.read_text().strip()
    if file is not None:
        target = snapshot / file
        if target.is_file():
            return target
        looked.append(f"no {file} in {snapshot}")
        return None
    ggufs = sorted(
        p for p in snapshot.rglob("*.gguf") if p.is_file() and "mmproj" not in p.name.lower()
    )
    if quant is not None:
        ggufs = [p for p in ggufs if quant.lower() in p.name.lower()]
    if len(ggufs) == 1:
        return ggufs[0]
    names = ", ".join(p.relative_to(snapshot).as_posix() for p in ggufs) or "none"
    looked.append(f"{len(ggufs)} matching .gguf files in {snapshot} ({names}): name one")
    return None


def _ollama_name(ref: str) -> tuple[str, str, str, str]:
    name, _, tag = ref.partition(":")
    parts = name.split("/")
    host, namespace = "registry.ollama.ai", "library"
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    return host, namespace, model, tag or "latest"


def _from_ollama(ref: str, looked: list[str]) -> Path | None:
    if ref.endswith(".gguf") or not ref:
        return None
    host, namespace, model, tag = _ollama_name(ref)
    for base in ollama_dirs():
        manifest = base / "manifests" / host / namespace / model / tag
        if not manifest.is_file():
            looked.append(f"no Ollama manifest {manifest}")
            continue
        try:
            layers = json.loads(manifest.read_text()).get("layers") or []
        except ValueError:
            looked.append(f"unreadable Ollama manifest {manifest}")
            continue
        for layer in layers:
            if layer.get("mediaType") == OLLAMA_MODEL_LAYER:
                blob = base / "blobs" / str(layer.get("digest", "")).replace(":", "-")
                if blob.is_file():
                    return blob
                looked.append(f"Ollama blob {blob} missing")
    return None


def _download(ref: str) -> Path:
    """`--model-download`: fetch a Hugging Face repo file into the cache."""
    try:
        from huggingface_hub import hf_hub_download  # type: ignore[import-not-found]
    except ImportError:
        raise ModelNotFoundError(
            f"model '{ref}' is not cached and --model-download needs huggingface_hub: "
            "pip install huggingface_hub"
        ) from None
    repo, file, _ = _hf_parts(ref)
    return Path(hf_hub_download(repo_id=repo, filename=file))

"""Resolving ``org/name`` model ids through the Hugging Face cache.

The standard cache layout (``models--org--name/snapshots/<rev>/`` with ``refs/main``) is
used, so models fetched by any Hugging Face tool are found. ``HF_HUB_OFFLINE`` and
``HF_HUB_CACHE`` are read when a model is resolved, not when this module is imported, and
through the engine's settings, where every environment variable is documented.
"""

from __future__ import annotations

import re
from pathlib import Path

from graph_runtime.settings import document_env, env

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TRUE = {"1", "on", "yes", "true"}
document_env("HF_HUB_OFFLINE", "1: resolve org/name models from the Hugging Face cache only")
document_env("HF_HUB_CACHE", "the Hugging Face hub cache folder (default: huggingface_hub's)")
document_env("HUGGINGFACE_HUB_CACHE", "older name of HF_HUB_CACHE")

# Files a pipeline needs; weight variants are chosen per folder in _wanted_files.
_CONFIG_SUFFIXES = (".json", ".txt")


class ModelNotFoundError(FileNotFoundError):
    """A model source could not be found locally or in the Hugging Face cache."""


def looks_like_repo_id(source: str) -> bool:
    return bool(REPO_ID.match(source)) and not source.startswith((".", "/"))


def is_offline() -> bool:
    return (env("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE


def cache_dir() -> str | None:
    """The hub cache folder from the environment (None lets huggingface_hub decide)."""
    return env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE")


def _pick_weights(candidates: list[str]) -> list[str]:
    """safetensors over .bin, full precision over ``.fp16`` variants; all shards of the pick."""
    for ext in (".safetensors", ".bin"):
        for fp16 in (False, True):
            chosen = [f for f in candidates if f.endswith(ext) and (".fp16." in f) == fp16]
            if chosen:
                return chosen
    return []


def _wanted_files(files: list[str]) -> list[str]:
    """Configs, tokenizer files and one weight format per folder, so a download does not
    fetch every format a repository offers. A repository with no ``model_index.json`` is
    taken as single-file checkpoints at its root."""
    wanted = [f for f in files if f.endswith(_CONFIG_SUFFIXES)]
    weights = [f for f in files if f.endswith((".safetensors", ".bin"))]
    if "model_index.json" not in files:
        return wanted + [f for f in weights if "/" not in f and f.endswith(".safetensors")]
    by_folder: dict[str, list[str]] = {}
    for f in weights:
        folder = f.rsplit("/", 1)[0] if "/" in f else ""
        if folder or f.startswith("diffusion_pytorch_model"):
            by_folder.setdefault(folder, []).append(f)
    for candidates in by_folder.values():
        wanted += _pick_weights(candidates)
    return wanted


def snapshot(repo_id: str) -> Path:
    """The local snapshot folder of ``repo_id``, downloading it unless offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = is_offline()
    try:
        if offline:
            return Path(snapshot_download(repo_id, cache_dir=cache_dir(), local_files_only=True))
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(repo_id)
        return Path(snapshot_download(repo_id, cache_dir=cache_dir(),
                                      allow_patterns=_wanted_files(files)))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        where = cache_dir() or "the default Hugging Face cache (~/.cache/huggingface/hub)"
        how = (
            f"HF_HUB_OFFLINE is set, so nothing is downloaded. Fetch it on a machine with "
            f"network access (`hf download {repo_id}` or `huggingface-cli download {repo_id}`) "
            f"into that cache, or put the model folder under models/."
            if offline
            else f"Check the name and your network access, or put the model folder under "
            f"models/ ({type(exc).__name__}: {exc})."
        )
        raise ModelNotFoundError(f"model {repo_id!r} is not in {where}. {how}") from exc

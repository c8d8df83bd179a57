"""What the ComfyUI API routes ask the node library for: model lists and embeddings.

The engine's ComfyUI protocol (`graph_runtime.server.comfy`) knows no model kinds; it asks
the registry's providers, and these answer from the model folders (ours, ComfyUI's layout
and any extra_model_paths.yaml), so `/models/checkpoints` lists what a CheckpointLoaderSimple
can load.
"""

from __future__ import annotations

from graph_runtime import REGISTRY, Folders
from nodes.comfyui.model_paths import FOLDER_KINDS, embedding_names, list_models


def model_folders(folders: Folders) -> dict[str, list[str]]:
    """Every ComfyUI model folder kind with the model names found for it (`GET /models`
    lists the kinds, `GET /models/{kind}` one list)."""
    return {kind: list_models(kind, folders) for kind in FOLDER_KINDS}


def embeddings(folders: Folders) -> list[str]:
    """Embedding names without extension (`GET /embeddings`)."""
    return embedding_names(folders)


REGISTRY.provide("model_folders", model_folders)
REGISTRY.provide("embeddings", embeddings)

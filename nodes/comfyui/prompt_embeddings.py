"""The embeddings the pack's text nodes read: found in the run's folders, checked before a
run, and part of the nodes' cache signatures.

A prompt typed into CLIPTextEncode that names an embedding no folder has is a validation
error on that input, so the run never starts; a prompt that arrives through a link is
checked when the node runs. Either way the message names the close or known embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from graph_runtime import Folders
from graph_runtime import folders as run_folders
from nodes.comfyui.prompt_syntax import UnknownEmbeddings, prompt_words
from nodes.textual_inversion import (
    embedding_lookup,
    embeddings_fingerprint,
    find_embedding,
    missing_message,
)

Hook = Callable[[Mapping[str, Any], Folders], Mapping[str, str]]
FingerprintHook = Callable[[Mapping[str, Any], Folders], "str | None"]


def _exists(folders: Folders) -> Callable[[str], bool | None]:
    """A lookup that only checks for the file (True, or None when no folder has it)."""

    def exists(name: str) -> bool | None:
        try:
            find_embedding(name, folders)
        except FileNotFoundError:
            return None
        return True

    return exists


def unknown_embeddings(text: str, folders: Folders) -> list[str]:
    """Names the prompt references, read as the pack reads them, that no folder has."""
    try:
        prompt_words(text, _exists(folders))
    except UnknownEmbeddings as exc:
        return exc.names
    return []


def check_embeddings(*inputs: str) -> Hook:
    """A `check_inputs` hook: each named prompt input may only name embeddings that the
    run's folders have."""

    def check(literals: Mapping[str, Any], folders: Folders) -> dict[str, str]:
        problems: dict[str, str] = {}
        for name in inputs:
            text = literals.get(name)
            missing = unknown_embeddings(text, folders) if isinstance(text, str) else []
            if missing:
                problems[name] = missing_message(missing, folders)
        return problems

    return check


def embeddings_changed(*inputs: str) -> FingerprintHook:
    """A fingerprint hook: the files of the embeddings the prompt inputs name, so a
    replaced file encodes again."""

    def fingerprint(literals: Mapping[str, Any], folders: Folders) -> str | None:
        texts = [t for t in (literals.get(name) for name in inputs) if isinstance(t, str)]
        return embeddings_fingerprint(texts, folders) or None

    return fingerprint


@contextmanager
def run_lookup() -> Iterator[Callable[[str], Any]]:
    """The running node's embedding lookup; an unknown name raises `UnknownEmbeddings`
    with the close and known names of its folders."""
    folders = run_folders()
    try:
        yield embedding_lookup(folders)
    except UnknownEmbeddings as exc:
        raise UnknownEmbeddings(exc.names, missing_message(exc.names, folders)) from None

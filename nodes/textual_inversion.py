"""Textual inversion: learned token vectors ("embeddings") that a prompt names as
`embedding:name`.

An embedding file holds one or more vectors as wide as a text encoder's token table. They
are read in the layouts found in the wild: A1111's `.pt` (`string_to_param: {'*': tensor}`)
and `.safetensors` (`emb_params`), diffusers' (`{"<token>": tensor}` in `.bin` or
`.safetensors`, e.g. `learned_embeds.bin`), and SDXL's (`clip_l` and `clip_g` tensors, one
per encoder). Pickled files are read with `torch.load(weights_only=True)`: a file holding
anything but tensors and plain containers is refused, never unpickled.

Files are found in `models/embeddings` and the ComfyUI folders (`extra_model_paths.yaml`),
by name with or without extension, as ComfyUI finds them. A loaded embedding is kept with
the run's cache under the file's path, size and mtime (`graph_runtime.memo`), so a re-run
does not read it again.

To encode a prompt, the vectors become extra rows of the encoder's token table for the
duration of one call (`extra_token_vectors`); the cached model is never changed in place.
"""

from __future__ import annotations

import difflib
import logging
import pickle
import posixpath
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from graph_runtime import Folders, memo
from nodes.lazy import lazy_module

torch = lazy_module("torch")

log = logging.getLogger("noodle.embeddings")

EMBEDDING_PREFIX = "embedding:"
# Tried after the name as written, in ComfyUI's order.
EXTENSIONS = (".safetensors", ".pt", ".bin")
# SDXL files hold one tensor per encoder under these keys.
SDXL_KINDS = ("clip_l", "clip_g")
# `embedding:` at the start of the text or after whitespace or an opening bracket; the
# name runs to whitespace or a bracket.
_REFERENCE = re.compile(r"(?:^|(?<=[\s(]))" + re.escape(EMBEDDING_PREFIX) + r"([^\s()]+)")
# A weight written after the name inside brackets: `(embedding:name:1.2)`.
_WEIGHT_SUFFIX = re.compile(r":[-+]?(?:\d+\.?\d*|\.\d+)$")
# Guards the swap of a token table (two prompts with embeddings on one shared model).
_SWAP_LOCK = threading.RLock()


@dataclass(frozen=True, eq=False)
class Embedding:
    """The vectors of one embedding file, float32 on the CPU: `""` holds the one tensor
    `[n, D]` of a single-encoder file, `clip_l` / `clip_g` those of an SDXL file."""

    name: str
    vectors: Mapping[str, torch.Tensor]

    def widths(self) -> list[int]:
        return sorted({int(t.shape[-1]) for t in self.vectors.values()})

    def preferred(self, kind: str | None = None) -> torch.Tensor:
        """The tensor an encoder of `kind` reads regardless of width: its own (SDXL
        files), else the single one, else the first (ComfyUI's choice)."""
        if kind is not None and kind in self.vectors:
            return self.vectors[kind]
        if "" in self.vectors:
            return self.vectors[""]
        return next(iter(self.vectors.values()))

    def for_width(self, width: int, kind: str | None = None) -> torch.Tensor:
        """`[n, width]` for an encoder of hidden size `width`; `kind` ("clip_l",
        "clip_g") picks between an SDXL file's tensors when both fit."""
        fits = [key for key, t in self.vectors.items() if int(t.shape[-1]) == width]
        if not fits:
            raise ValueError(f"embedding {self.name!r} has vectors {_widths(self)} wide; "
                             f"none fits a text encoder {width} wide")
        for key in (kind, ""):
            if key in fits:
                return self.vectors[key]
        return self.vectors[fits[0]]

    def __nbytes__(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.vectors.values())


def _widths(embedding: Embedding) -> str:
    return " or ".join(str(w) for w in embedding.widths())


# ---------------------------------------------------------------------------- references
def embedding_references(text: str) -> list[str]:
    """Names a prompt references with `embedding:name`, in order, each once. A weight
    written inside brackets (`(embedding:name:1.2)`) and trailing commas are not part of
    the name."""
    names: list[str] = []
    for match in _REFERENCE.finditer(text):
        name = _WEIGHT_SUFFIX.sub("", match.group(1).rstrip("\\")).rstrip(",")
        if name and name not in names:
            names.append(name)
    return names


# ---------------------------------------------------------------------------- finding
def _paths() -> ModuleType:
    """The pack's model folders, imported when first needed: importing them runs the
    ComfyUI pack, whose text nodes import this module."""
    from nodes.comfyui import model_paths

    return model_paths


def _candidates(name: str) -> list[str]:
    """The names a reference may mean, as relative paths: as written, then with each
    extension (a path never climbs out of its folder, as in ComfyUI)."""
    clean = posixpath.normpath("/" + name.strip().replace("\\", "/")).lstrip("/")
    return [clean, *(clean + ext for ext in EXTENSIONS)] if clean not in ("", ".") else []


def _match(name: str, listed: list[str]) -> str | None:
    """The listed file a name means: itself, then with an extension, then a file of that
    name in any subfolder (ComfyUI searches them all; the first in sorted order)."""
    candidates = _candidates(name)
    known = set(listed)
    for candidate in candidates:
        if candidate in known:
            return candidate
    bases = {c.rsplit("/", 1)[-1] for c in candidates}
    return next((n for n in listed if n.rsplit("/", 1)[-1] in bases), None)


def unknown_message(name: str, folders: Folders) -> str:
    """Why a name is not found, with the close names (or some known ones) as a hint."""
    known = _paths().embedding_names(folders)
    close = difflib.get_close_matches(name.strip(), known, n=5, cutoff=0.5)
    if close:
        hint = f"close names: {', '.join(close)}"
    elif known:
        more = f" (and {len(known) - 10} more)" if len(known) > 10 else ""
        hint = f"known: {', '.join(known[:10])}{more}"
    else:
        dirs = ", ".join(str(d) for d in _paths().model_dirs("embeddings", folders))
        hint = f"no embeddings in {dirs}"
    return f"unknown embedding {name!r}; {hint}"


def find_embedding(name: str, folders: Folders) -> Path:
    """The file an embedding name means: the name as written, then with .safetensors, .pt
    or .bin, in the embeddings folders, then in their subfolders."""
    found = _match(name, _paths().list_models("embeddings", folders))
    if found is None:
        raise FileNotFoundError(unknown_message(name, folders))
    return Path(_paths().find_model("embeddings", found, folders))


def missing_embeddings(text: str, folders: Folders) -> list[str]:
    """Names the text references that no embeddings folder has (for validation hooks)."""
    missing = []
    for name in embedding_references(text):
        try:
            find_embedding(name, folders)
        except FileNotFoundError:
            missing.append(name)
    return missing


def missing_message(names: list[str], folders: Folders) -> str:
    """One validation message for the missing names."""
    return "; ".join(unknown_message(name, folders) for name in names)


# ---------------------------------------------------------------------------- loading
def _as_rows(value: torch.Tensor, path: Path) -> torch.Tensor:
    """`[n, D]` float32 on the CPU, detached from any training graph."""
    tensor = value.detach().to("cpu", torch.float32)
    if tensor.ndim == 0 or tensor.numel() == 0:
        raise ValueError(f"embedding {path.name}: the tensor holds no vectors "
                         f"(shape {tuple(tensor.shape)})")
    if tensor.ndim == 1:
        tensor = tensor[None]
    return tensor.reshape(-1, tensor.shape[-1]).contiguous()


def _first_tensor(values: Mapping[Any, Any]) -> torch.Tensor | None:
    return next((v for v in values.values() if isinstance(v, torch.Tensor)), None)


def _vectors(data: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file by encoder kind, whatever its layout."""
    if isinstance(data, torch.Tensor):
        return {"": data}
    if not isinstance(data, Mapping):
        raise ValueError(f"embedding {path.name}: expected tensors by name, got "
                         f"{type(data).__name__}")
    if any(k in data for k in SDXL_KINDS):
        return {k: data[k] for k in SDXL_KINDS if isinstance(data.get(k), torch.Tensor)}
    nested = data.get("string_to_param")
    if isinstance(nested, Mapping) and _first_tensor(nested) is not None:
        return {"": _first_tensor(nested)}  # type: ignore[dict-item]
    for key in ("emb_params", "string_to_param.*"):
        if isinstance(data.get(key), torch.Tensor):
            return {"": data[key]}
    first = _first_tensor(data)
    if first is None:
        raise ValueError(f"embedding {path.name}: no tensors in the file "
                         f"(keys: {', '.join(map(str, list(data)[:8]))})")
    return {"": first}  # diffusers: {"<token>": tensor}


def _unpickler_reason(exc: Exception) -> str:
    """The one line of torch's weights-only refusal that says what it met."""
    text = str(exc)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[0] if lines else text.splitlines()[0]


def _read(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "Unsupported global" in reason:
            raise ValueError(
                f"embedding {path.name}: refused, the file holds Python objects other than "
                f"tensors, and only plain tensor data is loaded from pickled files; save it "
                f"as .safetensors ({reason.split(' was not', 1)[0]})") from exc
        raise ValueError(f"embedding {path.name}: cannot be read as plain tensor data "
                         f"({reason})") from exc


def load_embedding(path: Path) -> Embedding:
    """Read an embedding file (uncached); ValueError names the file when its contents are
    not an embedding."""
    path = Path(path)
    try:
        data = _read(path)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise ValueError(f"embedding {path.name}: cannot be read "
                         f"({type(exc).__name__}: {exc})") from exc
    vectors = {key: _as_rows(t, path) for key, t in _vectors(data, path).items()}
    return Embedding(path.stem, vectors)


def get_embedding(name: str, folders: Folders) -> Embedding:
    """Find and load an embedding, kept in the run's cache under the file's path, size and
    mtime so a re-run does not read the file again."""
    path = find_embedding(name, folders)
    stat = path.stat()
    key = f"embedding:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return memo(key, lambda: load_embedding(path))


def embedding_lookup(folders: Folders) -> Callable[[str], Embedding | None]:
    """`name -> Embedding`, None where no folder has it; each name is looked up once."""
    seen: dict[str, Embedding | None] = {}

    def lookup(name: str) -> Embedding | None:
        if name not in seen:
            try:
                seen[name] = get_embedding(name, folders)
            except FileNotFoundError:
                seen[name] = None
        return seen[name]

    return lookup


def embeddings_fingerprint(texts: list[str], folders: Folders) -> str:
    """Path, size and mtime of every embedding the texts reference (missing ones named),
    so replacing a file invalidates cached encodings of prompts that use it."""
    parts = []
    for text in texts:
        for name in embedding_references(text):
            try:
                path = find_embedding(name, folders)
            except FileNotFoundError:
                parts.append(f"{name}:missing")
                continue
            stat = path.stat()
            parts.append(f"{name}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


# ---------------------------------------------------------------------------- encoding
def _token_table(model: torch.nn.Module) -> torch.nn.Embedding:
    getter = getattr(model, "get_input_embeddings", None)
    table = getter() if callable(getter) else None
    if not isinstance(table, torch.nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no token-embedding table to extend")
    return table


@contextmanager
def extra_token_vectors(model: torch.nn.Module, vectors: torch.Tensor) -> Iterator[int]:
    """Encode with `vectors` (`[n, D]`) as extra rows of the model's token table, for the
    duration; yields the id of the first extra row (the table's current row count, as
    new tokens follow the vocabulary). The weight is swapped for an extended copy and the
    original Parameter put back afterwards, even on error: a cached model shared by other
    nodes is never changed in place."""
    table = _token_table(model)
    with _SWAP_LOCK:
        original = table.weight
        rows = int(original.shape[0])
        if vectors.ndim != 2 or vectors.shape[-1] != original.shape[-1]:
            raise ValueError(f"vectors of shape {tuple(vectors.shape)} do not fit a token "
                             f"table {int(original.shape[-1])} wide")
        extra = vectors.detach().to(device=original.device, dtype=original.dtype)
        extended = torch.nn.Parameter(torch.cat([original.detach(), extra]),
                                      requires_grad=False)
        count = table.num_embeddings
        table.weight = extended
        table.num_embeddings = rows + int(extra.shape[0])
        try:
            yield rows
        finally:
            table.weight = original
            table.num_embeddings = count

"""Model folders laid out as ComfyUI users have them, and the folders their
`extra_model_paths.yaml` names.

A ComfyUI install keeps each kind of model in its own folder (`models/checkpoints`,
`models/loras`, ...) and often shares them with other tools through an
`extra_model_paths.yaml`. Reading both, in place, lets a user point Noodle at what they
already have instead of copying gigabytes. Our older flat `models/` folder (a checkpoint or
diffusers folder straight in it) and the bundled tiny model stay listed as checkpoints.

Names are relative paths with forward slashes, found recursively, as ComfyUI lists them, so
a workflow saved there (`SD1.5/model.safetensors`) finds the same file here.
"""

from __future__ import annotations

import difflib
import logging
import os
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from graph_runtime import Folders
from graph_runtime.settings import add_folders_check, document_env, env
from nodes.diffusion.model_files import list_models as list_flat_models
from nodes.loaders import BUNDLED_MODELS

log = logging.getLogger("noodle.models")

ENV_VAR = "NOODLE_EXTRA_MODEL_PATHS"
document_env(ENV_VAR, "an extra_model_paths.yaml whose model folders are used in place")

# ComfyUI's own names for the kinds of model folder, in the order its /models lists them.
FOLDER_KINDS: tuple[str, ...] = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
    "clip_vision", "embeddings", "controlnet", "upscale_models",
)
# Older names ComfyUI still accepts for two of them, in workflows and in the yaml.
ALIASES: dict[str, str] = {"clip": "text_encoders", "unet": "diffusion_models"}
# Folders under models/ a kind reads, where they are more than the kind's own name.
SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "controlnet": ("controlnet", "t2i_adapter"),
}
MODEL_EXTENSIONS = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"})
CONFIG_EXTENSIONS = frozenset({".yaml"})

# Folders under models/ that belong to a kind, so the flat scan for checkpoints skips them.
_KIND_FOLDERS = frozenset(
    {*FOLDER_KINDS, *ALIASES} | {sub for subs in SUBFOLDERS.values() for sub in subs})


class ModelPathsError(ValueError):
    """The extra model paths file is missing or does not say what it should."""


@dataclass(frozen=True)
class ExtraFolder:
    """One folder the yaml adds to a kind; `is_default` folders are searched first."""

    kind: str
    path: Path
    is_default: bool = False


def canonical_kind(kind: str) -> str:
    """ComfyUI's current name for a kind (`clip` is `text_encoders`, `unet` is
    `diffusion_models`)."""
    return ALIASES.get(kind, kind)


# ---------------------------------------------------------------------------- the yaml
def extra_paths_file(folders: Folders) -> Path | None:
    """The extra model paths file a run uses: the folders' own, else the environment's."""
    given: Path | str | None = folders.model_paths_file or env(ENV_VAR)
    return Path(given).expanduser() if given else None


def read_extra_paths(path: Path) -> tuple[ExtraFolder, ...]:
    """Every folder the file adds, in file order; parsed once per version of the file."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ModelPathsError(f"extra model paths file {path}: cannot be read "
                              f"({exc.strerror or exc})") from exc
    return _parse(os.path.abspath(path), mtime)


@lru_cache(maxsize=16)
def _parse(path: str, mtime_ns: int) -> tuple[ExtraFolder, ...]:
    """Read the yaml as ComfyUI does: a section per install, each with an optional
    `base_path` (relative to the yaml's folder) and `is_default`, and per kind one folder or
    several on separate lines, relative to `base_path` or else to the yaml's folder."""
    del mtime_ns  # part of the cache key only
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ModelPathsError(f"extra model paths file {path}: cannot be read "
                              f"({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ModelPathsError(f"extra model paths file {path}: not valid YAML "
                              f"({' '.join(str(exc).split())})") from exc
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ModelPathsError(f"extra model paths file {path}: expected sections of "
                              f"`kind: folder` entries, got {type(data).__name__}")
    here = os.path.dirname(path)
    extras: list[ExtraFolder] = []
    for section, conf in data.items():
        if conf is None:
            continue
        if not isinstance(conf, dict):
            raise ModelPathsError(f"extra model paths file {path}: key {section!r}: expected "
                                  f"`kind: folder` entries, got {type(conf).__name__}")
        extras += _section(path, here, str(section), conf)
    return tuple(extras)


def _section(path: str, here: str, section: str, conf: dict[Any, Any]
             ) -> list[ExtraFolder]:
    base: str | None = None
    if conf.get("base_path") is not None:
        raw = conf["base_path"]
        if not isinstance(raw, str):
            raise ModelPathsError(f"extra model paths file {path}: key {section}.base_path: "
                                  f"expected a folder, got {type(raw).__name__}")
        base = os.path.expandvars(os.path.expanduser(raw))
        if not os.path.isabs(base):
            base = os.path.join(here, base)
    is_default = conf.get("is_default", False)
    if not isinstance(is_default, bool):
        raise ModelPathsError(f"extra model paths file {path}: key {section}.is_default: "
                              f"expected true or false, got {is_default!r}")
    extras: list[ExtraFolder] = []
    for key, value in conf.items():
        if key in ("base_path", "is_default"):
            continue
        for entry in _entries(path, f"{section}.{key}", value):
            # An absolute entry stands on its own; os.path.join drops the base for it.
            full = os.path.join(base if base is not None else here, entry)
            extras.append(ExtraFolder(canonical_kind(str(key)),
                                      Path(os.path.normpath(full)), is_default))
    return extras


def _entries(path: str, key: str, value: Any) -> list[str]:
    """The folders of one kind: a text with one per line (a YAML block), or a list."""
    if isinstance(value, str):
        lines = value.split("\n")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        lines = value
    else:
        raise ModelPathsError(f"extra model paths file {path}: key {key}: expected a folder, "
                              f"or several on separate lines, got {type(value).__name__}")
    return [line.strip() for line in lines if line.strip()]


def check_model_paths(folders: Folders) -> None:
    """Startup check: a missing or malformed file stops the command, naming file and key."""
    path = extra_paths_file(folders)
    if path is not None:
        read_extra_paths(path)


add_folders_check(check_model_paths)


# ---------------------------------------------------------------------------- folders
def _search_dirs(kind: str, folders: Folders) -> list[tuple[Path, bool]]:
    """(folder, flat) pairs in search order. `flat` marks our flat models/ folder and the
    bundled models, read the older way (top level and one folder down, kind folders
    skipped) so a LoRA in models/loras is never offered as a checkpoint."""
    kind = canonical_kind(kind)
    path = extra_paths_file(folders)
    extras = read_extra_paths(path) if path is not None else ()
    if kind not in FOLDER_KINDS and not any(e.kind == kind for e in extras):
        raise ValueError(f"unknown model folder kind {kind!r}; known: "
                         f"{', '.join(FOLDER_KINDS)} (or {', '.join(ALIASES)})")
    dirs = [folders.models / sub for sub in SUBFOLDERS.get(kind, (kind,))]
    for extra in extras:
        if extra.kind != kind:
            continue
        if extra.path in dirs:
            if extra.is_default:
                dirs.remove(extra.path)
                dirs.insert(0, extra.path)
        elif extra.is_default:
            dirs.insert(0, extra.path)
        else:
            dirs.append(extra.path)
    pairs = [(d, False) for d in dirs]
    if kind == "checkpoints":
        pairs += [(folders.models, True), (BUNDLED_MODELS, True)]
    else:  # the shipped LoRAs of the embedded model, wherever the models folder is
        pairs += [(BUNDLED_MODELS / sub, False) for sub in SUBFOLDERS.get(kind, (kind,))
                  if (BUNDLED_MODELS / sub).is_dir()]
    seen: set[str] = set()
    unique = []
    for folder, flat in pairs:
        key = os.path.realpath(folder)
        if key not in seen:
            seen.add(key)
            unique.append((folder, flat))
    return unique


def model_dirs(kind: str, folders: Folders) -> list[Path]:
    """The folders searched for a kind, first match wins: models/<kind> (and ComfyUI's
    other folder names for it), the extra paths (`is_default` ones first), and for
    checkpoints the flat models/ folder and the bundled models (for other kinds, the
    bundled models' folder of that kind)."""
    return [folder for folder, _ in _search_dirs(kind, folders)]


def model_roots(folders: Folders) -> list[Path]:
    """Every folder a model may be read from: the models folder, each kind's folders
    (extra paths included) and the bundled models. With the run's allowed paths, where a
    confined run may read a model (`nodes.files.may_read`)."""
    path = extra_paths_file(folders)
    extras = read_extra_paths(path) if path is not None else ()
    roots = [folders.models, BUNDLED_MODELS]
    for kind in dict.fromkeys([*FOLDER_KINDS, *(e.kind for e in extras)]):
        roots += [d for d in model_dirs(kind, folders) if d not in roots]
    return roots


def _extensions(kind: str) -> frozenset[str]:
    return CONFIG_EXTENSIONS if canonical_kind(kind) == "configs" else MODEL_EXTENSIONS


def _walk(root: Path, extensions: frozenset[str], diffusers: bool) -> list[str]:
    """Model files under a folder, recursively (links followed, each folder once); with
    `diffusers`, a folder holding model_index.json is one name and is not entered."""
    names: list[str] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        rel = here.relative_to(root)
        if diffusers and here != root and (here / "model_index.json").is_file():
            names.append(rel.as_posix())
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        names += [(rel / f).as_posix() for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in extensions]
    return names


def _flat(root: Path) -> list[str]:
    return [n for n in list_flat_models(root) if n.split("/")[0] not in _KIND_FOLDERS]


def list_models(kind: str, folders: Folders) -> list[str]:
    """Every model name of a kind across its folders: sorted, each once. Checkpoints include
    diffusers folders (such as the bundled `noodle-tiny`)."""
    diffusers = canonical_kind(kind) == "checkpoints"
    names: set[str] = set()
    for folder, flat in _search_dirs(kind, folders):
        if not folder.is_dir():
            continue
        names.update(_flat(folder) if flat else _walk(folder, _extensions(kind), diffusers))
    return sorted(names)


def _clean(name: str) -> str:
    """A name as a path inside a folder: Windows separators accepted, and never above the
    folder (`..` cannot climb out, as in ComfyUI)."""
    return posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")


def find_model(kind: str, name: str, folders: Folders) -> Path:
    """The file (or, for checkpoints, diffusers folder) a model name means."""
    clean = _clean(name)
    diffusers = canonical_kind(kind) == "checkpoints"
    searched = _search_dirs(kind, folders)
    if clean and clean != ".":
        for folder, flat in searched:
            if flat and clean.split("/")[0] in _KIND_FOLDERS:
                continue
            candidate = folder / clean
            if candidate.is_file() and candidate.suffix.lower() in _extensions(kind):
                return candidate
            if diffusers and (candidate / "model_index.json").is_file():
                return candidate
    known = list_models(kind, folders)
    base = clean.rsplit("/", 1)[-1]
    close = [n for n in known if n.rsplit("/", 1)[-1] == base]
    close += [n for n in difflib.get_close_matches(clean, known, n=5, cutoff=0.5)
              if n not in close]
    hint = f"; close names: {', '.join(close)}" if close else (
        f"; {len(known)} {kind} model(s) there" if known else f"; no {kind} models there")
    raise FileNotFoundError(f"no {kind} model named {name!r} in "
                            f"{', '.join(str(f) for f, _ in searched)}{hint}")


def embedding_names(folders: Folders) -> list[str]:
    """Embedding names without their extension, as ComfyUI's GET /embeddings lists them."""
    return [posixpath.splitext(n)[0] for n in list_models("embeddings", folders)]

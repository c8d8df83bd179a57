"""Model names: what a models folder offers, and the folder or file a name stands for.

Kept apart from loading (`checkpoints`) so that listing a loader's choices or validating a
workflow reads only the filesystem and imports no model code.
"""

from __future__ import annotations

from pathlib import Path

from .hub import ModelNotFoundError, looks_like_repo_id, snapshot

WEIGHT_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Where names are looked up when no models folder is given (the caller's folders decide).
DEFAULT_MODELS_DIR = Path("models")


def list_models(models_dir: str | Path | None = None) -> list[str]:
    """Names a loader can be given: diffusers folders (with model_index.json) and
    ``.safetensors``/``.ckpt`` files, at the top level or one folder down."""
    root = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
    if not root.is_dir():
        return []
    names: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "model_index.json").is_file():
            names.append(entry.name)
        elif entry.is_file() and entry.suffix in WEIGHT_FILE_SUFFIXES:
            names.append(entry.name)
        elif entry.is_dir() and not (entry / "config.json").exists():
            for child in sorted(entry.iterdir()):
                if child.is_dir() and (child / "model_index.json").is_file():
                    names.append(f"{entry.name}/{child.name}")
                elif child.is_file() and child.suffix in WEIGHT_FILE_SUFFIXES:
                    names.append(f"{entry.name}/{child.name}")
    return names


def resolve_source(source: str | Path, models_dir: str | Path | None = None) -> Path:
    """The local folder or file a source names (see the module docstring for the order)."""
    text = str(source).strip()
    if not text:
        raise ModelNotFoundError("no model source given")
    root = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
    literal = Path(text).expanduser()
    if not literal.is_absolute() and (root / text).exists():
        return root / text
    if literal.exists():
        return literal
    if looks_like_repo_id(text):
        return snapshot(text)
    available = ", ".join(list_models(root)) or "none"
    raise ModelNotFoundError(
        f"model {text!r} not found: not a file or folder, not under {root} "
        f"(available there: {available}), and not an org/name id"
    )

"""Settings a run depends on: its folders, and the environment variables that override them.

Settings travel explicitly: the CLI and the server build one `Folders` and hand it to the
`Executor`, which puts it on every node's `RunContext`. Nothing is exported into the
process environment to reach a node, so two executors in one process (a test suite, a
worker pool) can use different folders.

Environment variables are user-facing overrides only, and this module is the one place
that reads them. Each must be documented in `ENVIRONMENT` (the node library adds its own
with `document_env`), so `noodle --help` can list every variable that changes behaviour.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

ENVIRONMENT: dict[str, str] = {
    "NOODLE_NODES": "node library module(s) to import, comma-separated (default: nodes)",
    "NOODLE_INPUT_DIR": "folder of uploaded and input images (default: ./input)",
    "NOODLE_TEMP_DIR": "folder for previews (default: temp beside the output folder)",
    "NOODLE_MODELS_DIR": "folder of model files and folders (default: ./models)",
    "NOODLE_CACHE_CPU_BYTES": "output cache budget in RAM, e.g. 4G (default: 8G)",
    "NOODLE_CACHE_CUDA_BYTES": "output cache budget on the GPU (default: 60% of it)",
    "NOODLE_CACHE_MPS_BYTES": "output cache budget on Apple GPUs (default: 4G)",
    "NOODLE_AUTH_TOKEN": "access token `noodle serve` requires (needed off loopback)",
}


def document_env(name: str, description: str) -> None:
    """Declare an environment variable a node library reads (through `env`)."""
    ENVIRONMENT.setdefault(name, description)


def env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of a documented environment variable, or None when unset or empty."""
    if name not in ENVIRONMENT:
        raise KeyError(f"{name} is not a documented setting; declare it with document_env")
    value = (os.environ if environ is None else environ).get(name, "")
    return value or None


@dataclass(frozen=True)
class Folders:
    """Where a run reads and writes files.

    `output`: saved results; `input`: uploaded and input images; `models`: model files;
    `user`: saved workflows and user data; `temp`: previews, beside the output folder
    unless set, so a run with its own output folder keeps its previews next to it.
    `model_paths_file`: a file naming more model folders; the engine only carries it, the
    node library reads it (and checks it at startup through `add_folders_check`).
    `allowed_paths`: where nodes may read files besides the input and model folders. None
    (a program calling the engine itself) sets no limit; a tuple confines reading to those
    folders and these paths. The server always confines its runs (`confined`); `noodle run`
    allows the working directory and each `--allow-path`.
    """

    output: Path = Path("output")
    input: Path = Path("input")
    models: Path = Path("models")
    user: Path = Path("user")
    temp_dir: Path | None = None
    model_paths_file: Path | None = None
    allowed_paths: tuple[Path, ...] | None = None

    @property
    def temp(self) -> Path:
        return self.temp_dir if self.temp_dir is not None else self.output.parent / "temp"

    @classmethod
    def from_env(cls, output: Path | str | None = None, input: Path | str | None = None,
                 temp: Path | str | None = None, models: Path | str | None = None,
                 user: Path | str | None = None,
                 model_paths_file: Path | str | None = None,
                 allowed_paths: Sequence[Path | str] | None = None) -> Folders:
        """Given folders first, then the environment overrides, then the defaults."""
        temp = temp or env("NOODLE_TEMP_DIR")
        return cls(output=Path(output or "output"),
                   input=Path(input or env("NOODLE_INPUT_DIR") or "input"),
                   models=Path(models or env("NOODLE_MODELS_DIR") or "models"),
                   user=Path(user or "user"),
                   temp_dir=Path(temp) if temp else None,
                   model_paths_file=Path(model_paths_file) if model_paths_file else None,
                   allowed_paths=(None if allowed_paths is None
                                  else tuple(Path(p) for p in allowed_paths)))

    def with_output(self, output: Path | str) -> Folders:
        return replace(self, output=Path(output))

    def resolved(self) -> Folders:
        """The same folders as absolute paths (a server's working directory may change)."""
        extra = self.model_paths_file
        allowed = self.allowed_paths
        return Folders(self.output.resolve(), self.input.resolve(), self.models.resolve(),
                       self.user.resolve(), self.temp.resolve(),
                       extra.expanduser().resolve() if extra is not None else None,
                       tuple(p.resolve() for p in allowed) if allowed is not None else None)

    def confined(self) -> Folders:
        """The same folders with reading limited to them (and to any allowed paths already
        given): what a server hands its runs, whose workflows come from anyone."""
        return replace(self, allowed_paths=self.allowed_paths or ())


class SettingsError(ValueError):
    """A setting given at startup is unusable (a missing or malformed file); the command
    reports it and exits before any work starts."""


FoldersCheck = Callable[[Folders], None]
_FOLDERS_CHECKS: list[FoldersCheck] = []


def add_folders_check(check: FoldersCheck) -> None:
    """Register a startup check a node library runs on the folders it will be given (e.g.
    parsing a file `model_paths_file` names). It raises ValueError or OSError to refuse."""
    if check not in _FOLDERS_CHECKS:
        _FOLDERS_CHECKS.append(check)


def check_folders(folders: Folders) -> None:
    """Run every registered check, so a bad setting fails at startup and not mid-run."""
    extra = folders.model_paths_file
    if extra is not None and not extra.expanduser().is_file():
        raise SettingsError(f"model paths file {extra}: not found")
    for check in _FOLDERS_CHECKS:
        try:
            check(folders)
        except (ValueError, OSError) as exc:
            raise SettingsError(str(exc)) from exc

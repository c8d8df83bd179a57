"""Where nodes may read and write files, and numbered output files.

Reading: a workflow names files (an image, a model), and a server's workflows come from
anyone who reaches it. A run whose `Folders.allowed_paths` is set (every server run, and
`noodle run`) reads only inside its folders and the paths allowed — `may_read` decides, by
the path as spelled: no `..` part, no NUL, absolute or relative to an allowed place. Links
an administrator placed inside those folders are followed (models often live on another
disk); clients cannot create links. A refused path gives exactly the error a missing file
gives, so errors never tell whether a file exists elsewhere.

Writing: `prefix_00001<suffix>`, `prefix_00002<suffix>`, ... never overwritten. The counter
continues after the highest number present (ComfyUI's pattern), and each file is created
exclusively, so two runs racing for a number cannot clobber each other: the loser moves on
to the next number. The prefix may name subfolders, never a place outside the folder, and
the folder it names is checked after links are followed, so a link inside the output
folder cannot carry a write out of it. Save nodes of every kind write through this class.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnavailableFile(FileNotFoundError):
    """A file a node cannot read: absent, unreadable, or outside where it may read (the
    same error for all three)."""


def spelled_safely(name: str) -> bool:
    """No NUL and no `..` part (either separator), so the spelled path is where it leads."""
    return "\x00" not in name and ".." not in re.split(r"[\\/]", name)


def _inside(path: Path, root: Path) -> bool:
    here, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return here == base or here.is_relative_to(base)


def may_read(path: Path, roots: Iterable[Path] | None) -> bool:
    """Whether a run may read `path`: any path when `roots` is None (no limit), else one
    spelled safely inside one of `roots` (relative paths are taken from the working
    directory)."""
    if roots is None:
        return True
    return spelled_safely(str(path)) and any(_inside(path, root) for root in roots)


def check_prefix(prefix: str) -> Path:
    """A save node's `filename_prefix` as a relative path; ValueError for one that could
    leave its folder (absolute, `..`) or carries control characters."""
    if _CONTROL.search(prefix):
        raise ValueError(f"filename_prefix {prefix!r} contains control characters")
    rel = Path(prefix)
    if rel.is_absolute() or prefix.startswith("\\") or not spelled_safely(prefix):
        raise ValueError(f"filename_prefix {prefix!r} must stay inside the output folder")
    return rel


class NumberedFiles:
    """The numbered files of one prefix in one folder. The prefix may name subfolders of
    the folder, never a place outside it."""

    def __init__(self, folder: Path, prefix: str, suffix: str) -> None:
        rel = check_prefix(prefix)
        self.folder = folder / rel.parent
        self.base = rel.name or "noodle"
        self.suffix = suffix
        self._check_inside(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_inside(folder)  # a link swapped in while the folders were made
        self.next = self._highest() + 1

    def _check_inside(self, root: Path) -> None:
        """Refuse a subfolder that links outside `root` (resolved: links followed)."""
        if not self.folder.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"{self.folder} leads outside {root}; not writing there")

    def _highest(self) -> int:
        pattern = re.compile(rf"^{re.escape(self.base)}_(\d{{5,}}){re.escape(self.suffix)}$")
        numbers = [int(m.group(1)) for p in self.folder.iterdir()
                   if (m := pattern.match(p.name))]
        return max(numbers, default=0)

    def write(self, save: Callable[[BinaryIO], None]) -> Path:
        """Create the next free file exclusively (never through an existing name or link)
        and let `save` fill it."""
        while True:
            path = self.folder / f"{self.base}_{self.next:05d}{self.suffix}"
            self.next += 1
            try:
                with open(path, "xb") as fh:
                    save(fh)
                return path
            except FileExistsError:
                continue

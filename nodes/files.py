"""Numbered output files: `prefix_00001<suffix>`, `prefix_00002<suffix>`, ... never overwritten.

The counter continues after the highest number present (ComfyUI's pattern), and each file
is created exclusively, so two runs racing for a number cannot clobber each other: the
loser moves on to the next number. Save nodes of every kind write through this one class.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class NumberedFiles:
    """The numbered files of one prefix in one folder. The prefix may name subfolders of
    the folder, never a place outside it."""

    def __init__(self, folder: Path, prefix: str, suffix: str) -> None:
        rel = Path(prefix)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"filename_prefix {prefix!r} must stay inside the output folder")
        self.folder = folder / rel.parent
        self.base = rel.name or "noodle"
        self.suffix = suffix
        self.folder.mkdir(parents=True, exist_ok=True)
        self.next = self._highest() + 1

    def _highest(self) -> int:
        pattern = re.compile(rf"^{re.escape(self.base)}_(\d{{5,}}){re.escape(self.suffix)}$")
        numbers = [int(m.group(1)) for p in self.folder.iterdir()
                   if (m := pattern.match(p.name))]
        return max(numbers, default=0)

    def write(self, save: Callable[[BinaryIO], None]) -> Path:
        """Create the next free file exclusively and let `save` fill it."""
        while True:
            path = self.folder / f"{self.base}_{self.next:05d}{self.suffix}"
            self.next += 1
            try:
                with open(path, "xb") as fh:
                    save(fh)
                return path
            except FileExistsError:
                continue

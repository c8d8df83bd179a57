"""Files sent back by workers, written into this machine's output (or temp) folder.

Two workers count their file names independently, so both may send `txt2img_00001_.png`:
a name already taken here gets the next free number (or a `_2` suffix), claimed with an
exclusive create so that concurrent runs never overwrite each other. A file a worker sends
again unchanged (its node was cached there) is not written twice.
"""

from __future__ import annotations

import re
import threading
from hashlib import blake2b
from pathlib import Path
from typing import Any

from graph_runtime.context import file_ref

_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")


def _candidates(target: Path) -> Any:
    """`target`, then the same name with its last number counted up (or a suffix)."""
    yield target
    match = _NUMBERED.match(target.stem)
    if match:
        head, digits, tail = match.groups()
        n = int(digits)
        while True:
            n += 1
            yield target.with_name(f"{head}{n:0{len(digits)}d}{tail}{target.suffix}")
    k = 1
    while True:
        k += 1
        yield target.with_name(f"{target.stem}_{k}{target.suffix}")


def write_free(target: Path, data: bytes) -> Path:
    """Write `data` at `target` or at the first free name after it; returns where."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in _candidates(target):
        try:
            with path.open("xb") as fh:
                fh.write(data)
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


class FilePlacer:
    """Places worker files under `folders` ({"output": ..., "temp": ...}) and rewrites
    the references that name them."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = {kind: Path(p) for kind, p in folders.items()}
        self._lock = threading.Lock()
        self._placed: dict[tuple[str, str], tuple[str, Path]] = {}

    def place(self, worker: str, sent: dict[str, Any]) -> Path:
        """Write one file a worker sent (`path`, `kind`, `relative`, `data`)."""
        data: bytes = sent["data"]
        digest = blake2b(data, digest_size=16).hexdigest()
        key = (worker, sent["path"])
        root = self.folders.get(sent["kind"], self.folders["output"])
        target = (root / sent["relative"]).resolve()
        if not target.is_relative_to(root.resolve()):
            target = root / Path(sent["relative"]).name  # never outside the folder
        with self._lock:
            known = self._placed.get(key)
            if known is not None and known[0] == digest and known[1].is_file():
                return known[1]
            path = write_free(target, data)
            self._placed[key] = (digest, path)
            return path

    def ref(self, path: Path, kind: str) -> dict[str, str]:
        return file_ref(path, self.folders.get(kind, self.folders["output"]), kind)


def rewrite_ui(ui: dict[str, Any], moved: dict[tuple[str, str], dict[str, str]]
               ) -> dict[str, Any]:
    """`ui` with each image reference a worker made replaced by where it is here;
    `moved` maps (kind, worker-relative path) to the new reference."""
    images = ui.get("images")
    if not images:
        return ui
    out = []
    for ref in images:
        rel = "/".join(p for p in (ref.get("subfolder", ""), ref.get("filename", "")) if p)
        out.append(moved.get((ref.get("type", "output"), rel), ref))
    return {**ui, "images": out}

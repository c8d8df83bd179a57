"""`--sweep NODE.INPUT=SPEC`: the values one input takes across a batch.

SPEC is a range `0..63` (both ends included, `0..63:2` with a step), a JSON list
`[1,5,9]`, or `@file.txt` with one value per line (JSON where a line parses, else the
line as text; blank lines skipped). Several sweeps make every combination (the first
varies slowest) or, with `zip`, go side by side and must be equally long.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*(?::\s*(\d+))?\s*$")


class SweepError(ValueError):
    """A sweep that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Sweep:
    """One input (`node.input`) and its values."""

    key: str
    values: tuple[Any, ...]


def _line_value(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return line


def parse_values(spec: str, base: Path | None = None) -> list[Any]:
    """The values a SPEC names (`base`: where a relative `@file` is)."""
    text = spec.strip()
    if text.startswith("@"):
        path = Path(text[1:])
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SweepError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return [_line_value(ln.strip()) for ln in lines if ln.strip()]
    match = _RANGE.match(text)
    if match:
        start, stop, step = int(match[1]), int(match[2]), int(match[3] or 1)
        if step <= 0 or stop < start:
            raise SweepError(f"{spec!r}: a range goes up, by a positive step")
        return list(range(start, stop + 1, step))
    if text.startswith("["):
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise SweepError(f"{spec!r} is not a JSON list: {exc}") from exc
        if isinstance(values, list):
            return values
    raise SweepError(f"{spec!r}: expected a range (0..63), a list ([1,5,9]) or @file")


def parse_sweep(arg: str, base: Path | None = None) -> Sweep:
    """`NODE.INPUT=SPEC` as a `Sweep` (at least one value)."""
    key, sep, spec = arg.partition("=")
    node, dot, name = key.strip().rpartition(".")
    if not sep or not dot or not node or not name:
        raise SweepError(f"{arg!r}: expected NODE.INPUT=SPEC")
    values = parse_values(spec, base)
    if not values:
        raise SweepError(f"{arg!r} names no values")
    return Sweep(f"{node}.{name}", tuple(values))


def combinations(sweeps: list[Sweep], zipped: bool = False) -> list[dict[str, Any]]:
    """Each batch item's overrides, `{"node.input": value}`, in a stable order."""
    if not sweeps:
        return [{}]
    keys = [s.key for s in sweeps]
    if zipped:
        lengths = {len(s.values) for s in sweeps}
        if len(lengths) > 1:
            raise SweepError(f"--zip needs sweeps of one length, got {sorted(lengths)}")
        rows: Any = zip(*(s.values for s in sweeps), strict=True)
    else:
        rows = itertools.product(*(s.values for s in sweeps))
    return [dict(zip(keys, row, strict=True)) for row in rows]


def as_overrides(values: dict[str, Any]) -> list[str]:
    """The `--set` strings `apply_overrides` takes (values as JSON, so types survive)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]

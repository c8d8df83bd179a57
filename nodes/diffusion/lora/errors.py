"""The one error LoRA reading raises for a file it cannot map onto the model."""

from __future__ import annotations

from collections.abc import Iterable

_SHOWN = 20


class LoraFormatError(ValueError):
    """A LoRA file holds keys that match no module of the model, or no known format."""


def unmatched_error(reason: str, keys: Iterable[str]) -> LoraFormatError:
    """An error naming the offending keys (the first 20, then how many more), so a user
    can tell a wrong base model from an unsupported format."""
    ordered = sorted(set(keys))
    shown = ", ".join(ordered[:_SHOWN])
    more = f" (and {len(ordered) - _SHOWN} more)" if len(ordered) > _SHOWN else ""
    return LoraFormatError(f"{reason}: {len(ordered)} key(s): {shown}{more}")

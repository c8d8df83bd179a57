"""Read-only model configuration with diffusers' keys and defaults.

Models are described by the same ``config.json`` dictionaries diffusers writes, so a folder
saved by diffusers builds our modules unchanged. The mapping is frozen because a model's
weights only make sense with the configuration they were built from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class FrozenConfig(Mapping[str, Any]):
    """An immutable mapping that also allows ``config.key`` attribute reads."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("_values")
        if values is None or key not in values:
            raise AttributeError(key)
        return values[key]

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        """Copy and pickle by value (models get deep-copied, e.g. for EMA weights)."""
        return (type(self), (self._values,))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("model configs are read-only; build a new model to change them")

    def __repr__(self) -> str:
        return f"FrozenConfig({self._values!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable copy (for saving or for deriving a new configuration)."""
        return dict(self._values)


def merge_config(
    defaults: Mapping[str, Any], config: Mapping[str, Any] | None, class_name: str
) -> FrozenConfig:
    """Fill diffusers' defaults in, keep unknown keys (lossless) and normalise lists to tuples.

    Lists become tuples so the config is hashable-friendly and compares equal however it was
    loaded (JSON gives lists, Python callers often pass tuples).
    """
    values: dict[str, Any] = dict(defaults)
    for key, value in dict(config or {}).items():
        values[key] = tuple(value) if isinstance(value, list) else value
    values["_class_name"] = class_name
    return FrozenConfig(values)


def per_block(value: Any, count: int, name: str) -> list[Any]:
    """Expand an int-or-sequence setting to one value per block, checking the length."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries but the model has {count} blocks")
        return list(value)
    return [value] * count

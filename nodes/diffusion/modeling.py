"""What every model here shares: a frozen config, dtype/device, and memory options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .attention import Attention
from .blocks import _Stage
from .config import FrozenConfig, merge_config


class ModelBase(nn.Module):
    """A module built from a diffusers-style config dict.

    ``DEFAULTS`` holds diffusers' constructor defaults, so ``.config`` reads like the
    ``config.json`` diffusers would save for the same model.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    config: FrozenConfig

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        object.__setattr__(
            self, "config", merge_config(self.DEFAULTS, config, type(self).__name__)
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_attention_slice(self, slice_size: int | str | None) -> None:
        """Attend over ``slice_size`` (batch x head) rows at a time to cap peak memory.

        ``None`` disables slicing; ``"auto"`` uses half of each layer's heads; ``"max"`` one
        row at a time (least memory, slowest); an int applies to every layer.
        """
        for module in self.modules():
            if not isinstance(module, Attention):
                continue
            if slice_size is None:
                module.slice_size = None
            elif slice_size == "auto":
                module.slice_size = max(1, module.heads // 2)
            elif slice_size == "max":
                module.slice_size = 1
            elif isinstance(slice_size, int) and slice_size > 0:
                module.slice_size = slice_size
            else:
                raise ValueError(f"slice_size must be None, 'auto', 'max' or a positive int, "
                                 f"not {slice_size!r}")

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in backward instead of storing them (training)."""
        for module in self.modules():
            if isinstance(module, _Stage):
                module.gradient_checkpointing = enabled

    def disable_gradient_checkpointing(self) -> None:
        self.enable_gradient_checkpointing(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

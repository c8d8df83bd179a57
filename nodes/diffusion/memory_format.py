"""Channels-last (NHWC) weights for convolutional models.

cuDNN's fastest convolution kernels on tensor-core GPUs read NHWC; with a model's 4-D
weights stored channels-last, PyTorch picks that layout for the activations too (diffusers
recommends it for the UNet). Results are the same up to float rounding. `Module.to(device)`
keeps the layout, so offloading does not undo it.
"""

from __future__ import annotations

import torch


def to_channels_last(*modules: torch.nn.Module | None) -> None:
    """Convert each module's 4-D parameters and buffers to channels-last, in place."""
    for module in modules:
        if module is not None:
            module.to(memory_format=torch.channels_last)


def is_channels_last(module: torch.nn.Module) -> bool:
    """Whether every 4-D weight of `module` is stored channels-last."""
    weights = [p for p in module.parameters() if p.ndim == 4]
    return bool(weights) and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in weights)

"""Upscale model files to a runnable network: through spandrel when it is installed (the
loader ComfyUI uses, which knows ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT and more), else our
own RRDBNet, which covers the ESRGAN family in both of its key layouts.

Files are read without running code: safetensors, or torch pickles through
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nodes.upscalers.layouts import config_of, to_ours
from nodes.upscalers.rrdbnet import RRDBNet

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
EXTENSIONS = (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES)
# SwinIR checkpoints saved from DataParallel; ComfyUI strips the prefix before spandrel.
_SWINIR_PREFIXED = "module.layers.0.residual_group.blocks.0.norm1.weight"


@dataclass(frozen=True)
class LoadedUpscaler:
    """A network mapping images [B, C, H, W] in 0..1 to [B, C, H*scale, W*scale]."""

    module: nn.Module
    scale: int
    architecture: str
    run: Callable[[Tensor], Tensor]


def read_state(path: Path) -> dict[str, object]:
    """The file's top-level mapping (wrappers such as `params_ema` kept for the loaders)."""
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path.name}: not an upscale model file type we read "
                         f"({', '.join(EXTENSIONS)})")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the safe unpickler raises many types; all mean "refused"
        raise ValueError(f"{path.name}: could not be read as plain tensors "
                         f"({type(exc).__name__}: {exc}); convert it to .safetensors") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"{path.name}: does not contain a state dict")
    return dict(data)


def spandrel_available() -> bool:
    return importlib.util.find_spec("spandrel") is not None


def with_spandrel(state: Mapping[str, object]) -> LoadedUpscaler:
    """spandrel's model for the weights; it must map one image to one image."""
    import spandrel

    if _SWINIR_PREFIXED in state:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    descriptor = spandrel.ModelLoader().load_from_state_dict(dict(state)).eval()
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError("the upscale model must map a single image to an image")
    return LoadedUpscaler(descriptor.model, int(descriptor.scale),
                          str(descriptor.architecture.name), descriptor)


def with_rrdbnet(state: Mapping[str, object]) -> LoadedUpscaler:
    """Our RRDBNet with the weights, its shape read from them."""
    weights = to_ours(state)
    net = RRDBNet(config_of(weights))
    net.load_state_dict(weights, strict=True)
    net.eval().requires_grad_(False)
    return LoadedUpscaler(net, net.scale, "ESRGAN", net)


def load_upscaler(state: Mapping[str, object], use_spandrel: bool | None = None
                  ) -> LoadedUpscaler:
    """The weights as a network: spandrel's when installed (or `use_spandrel`), ours
    otherwise."""
    if use_spandrel is None:
        use_spandrel = spandrel_available()
    return with_spandrel(state) if use_spandrel else with_rrdbnet(state)

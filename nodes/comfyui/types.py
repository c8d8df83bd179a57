"""The socket types ComfyUI's nodes pass that our library has no equivalent for.

MODEL and CLIP are thin views of our own modules: MODEL is the UNet with the sampling
conventions of its training schedule (ComfyUI's discrete model sampling) and a mapping of
model options; CLIP is the tokenizer and text encoder with the layer to stop at. Like every
socket value they are never changed in place: a node that patches a model (clip skip
today, LoRA later) returns a new value sharing the same weights, so a cached model seen by
other branches of the graph stays as it was. SAMPLER, SIGMAS, NOISE and GUIDER are the
custom-sampling stages. VAE, LATENT, IMAGE, MASK and CONDITIONING are our own types
(`nodes.types`), so the pack's nodes and ours wire together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from graph_runtime import socket_type
from nodes.lazy import lazy_module
from nodes.types import Conditioning, UNet

if TYPE_CHECKING:
    from nodes.diffusion.ksampling import DiscreteSampling, Sampler

torch = lazy_module("torch")
_ksampling = lazy_module("nodes.diffusion.ksampling")


@socket_type("MODEL", color="#b39ddb")
@dataclass(frozen=True, eq=False)
class Model:
    """A denoising UNet with its sampling conventions (sigma table, prediction type) and
    model options (patches later nodes add). Options are copied on change, never edited."""

    unet: UNet
    sampling: DiscreteSampling
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def latent_channels(self) -> int:
        return int(self.unet.model.config["in_channels"])

    def with_options(self, **changes: Any) -> Model:
        return replace(self, options={**self.options, **changes})


@socket_type("CLIP", color="#ffd500")
@dataclass(frozen=True, eq=False)
class Clip:
    """A CLIP tokenizer and text encoder. `layer` is ComfyUI's `stop_at_clip_layer`
    (-1 the last layer, -2 the one before, ...), or None for the model's default layer.

    SDXL's CLIP is two of them: CLIP-L (`tokenizer`, `text_encoder`) and OpenCLIP-G with
    its pooled projection (`tokenizer_2`, `text_encoder_2`); the SDXL refiner has only the
    second, so its first pair is None.
    """

    tokenizer: Any | None
    text_encoder: torch.nn.Module | None
    layer: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    tokenizer_2: Any | None = None
    text_encoder_2: torch.nn.Module | None = None

    @property
    def sdxl(self) -> bool:
        """Whether this is SDXL's CLIP (base or refiner): encoded the SDXL way."""
        return self.text_encoder_2 is not None

    def with_layer(self, layer: int | None) -> Clip:
        return replace(self, layer=layer)


@socket_type("SAMPLER", color="#ecb4b4")
@dataclass(frozen=True, eq=False)
class SamplerChoice:
    """A sampling algorithm (ComfyUI's sampler names) with its fixed options."""

    sampler: Sampler

    @property
    def name(self) -> str:
        return self.sampler.name


@socket_type("SIGMAS", color="#cdffcd")
@dataclass(frozen=True, eq=False)
class Sigmas:
    """A noise schedule: float32 sigmas on the CPU, descending, usually ending in 0."""

    sigmas: torch.Tensor

    @property
    def steps(self) -> int:
        return max(int(self.sigmas.shape[-1]) - 1, 0)


@socket_type("NOISE", color="#b0b0b0")
@dataclass(frozen=True, eq=False)
class NoiseSource:
    """Where a sampler's starting noise comes from: ComfyUI's seeded CPU noise for the whole
    batch, or none (`enabled` False) to continue from a latent that keeps its own noise."""

    seed: int = 0
    enabled: bool = True

    def generate(self, samples: torch.Tensor, batch_index: Sequence[int] | None = None
                 ) -> torch.Tensor:
        """Noise shaped like `samples`, on the CPU; `batch_index` picks each item's noise
        out of a longer batch (a latent cut from a batch keeps its noise)."""
        if not self.enabled:
            return torch.zeros(samples.shape, dtype=torch.float32)
        return _ksampling.prepare_noise(samples, self.seed, batch_index)


@socket_type("GUIDER", color="#66ffff")
@dataclass(frozen=True, eq=False)
class Guider:
    """What a sampler asks the model at each step: conditioning and how to combine it.
    Without `negative` only the positive prediction is used (ComfyUI's BasicGuider)."""

    model: Model
    positive: Conditioning
    negative: Conditioning | None = None
    cfg: float = 1.0

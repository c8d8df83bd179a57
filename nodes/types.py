"""Socket value classes: what travels along the wires between pipeline nodes.

Each class registers its socket type (name and canvas colour) with `@socket_type`, so the
engine and the canvas learn the diffusion types from here and hold no list of their own.

Values are immutable by convention: the executor caches every output and hands the same
object to any later run, so a node never changes a value it received. Model wrappers hold
the shared `nn.Module` plus per-wire options (attention slicing, VAE tiling); the options
are applied to the module just before each use, so two branches of a graph that want
different settings on one cached model never see each other's choice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from graph_runtime import socket_type
from graph_runtime.cache import measure
from nodes.generators import new_generators, restore_generators
from nodes.lazy import lazy_module

if TYPE_CHECKING:
    from nodes.diffusion.lora.patching import Patch

torch = lazy_module("torch")


@socket_type("TOKENIZER", color="#d08770")
@dataclass(frozen=True, eq=False)
class Tokenizer:
    """A CLIP tokenizer (transformers). Carries no tensors, so the cache counts it as free.

    SDXL base has two (OpenAI CLIP-L's, then OpenCLIP-G's in `tokenizer_2`), carried in one
    value so the nodes that tokenize work unchanged; SDXL's refiner has only the second,
    which is then `tokenizer`.
    """

    tokenizer: Any
    source: str = ""
    tokenizer_2: Any = None

    @property
    def tokenizers(self) -> tuple[Any, ...]:
        return (self.tokenizer,) if self.tokenizer_2 is None else (self.tokenizer,
                                                                    self.tokenizer_2)


@socket_type("TEXT_ENCODER", color="#ebcb8b")
@dataclass(frozen=True, eq=False)
class TextEncoder:
    """A CLIP text model; counted in the cache by its parameter bytes.

    With `sdxl`, prompts are encoded as SDXL's pipelines do: the penultimate hidden states
    of every encoder (`model`, then `model_2`) concatenated, and the pooled embedding from
    the last encoder's projection. `zero_uncond` is SDXL's `force_zeros_for_empty_prompt`:
    the unconditional input is zeros, not the empty prompt's encoding.
    """

    model: torch.nn.Module
    source: str = ""
    model_2: torch.nn.Module | None = None
    sdxl: bool = False
    zero_uncond: bool = False

    @property
    def models(self) -> tuple[torch.nn.Module, ...]:
        return (self.model,) if self.model_2 is None else (self.model, self.model_2)


@socket_type("UNET", color="#b48ead")
@dataclass(frozen=True, eq=False)
class UNet:
    """A denoising UNet (`UNet2DConditionModel`, or `UNet2DModel` for pixel-space DDPM).

    `attention_slice` is applied with `set_attention_slice` each time the UNet runs.
    `compiled` (CompileModel) is a `torch.compile` wrapper of `model`, sharing its weights,
    called in its place; patches, options and offloading act on `model` as usual.
    """

    model: torch.nn.Module
    source: str = ""
    attention_slice: str | int | None = None
    # LoRA patches (LoadLoRA), applied to copies of the affected weights while it runs.
    patches: tuple[Patch, ...] = ()
    compiled: torch.nn.Module | None = None

    @property
    def conditional(self) -> bool:
        """Whether the UNet takes text conditioning (has cross-attention)."""
        from nodes.diffusion.unet import UNet2DConditionModel

        return isinstance(self.model, UNet2DConditionModel)

    def prepared(self) -> torch.nn.Module:
        """The module with this wire's options applied (seen through its LoRA patches)."""
        setter = getattr(self.model, "set_attention_slice", None)
        if setter is not None:
            setter(self.attention_slice)
        if self.compiled is not None:
            from nodes.diffusion.compiled import runner

            return runner(self.model, self.patches, self.compiled)
        from nodes.diffusion.lora.patching import PatchedModule

        return PatchedModule(self.model, self.patches) if self.patches else self.model

    @contextmanager
    def running(self) -> Iterator[torch.nn.Module]:
        """`prepared()`, with the LoRA patches merged once for the whole block (a sampling
        loop) instead of on every call; the shared module is restored afterwards.
        An offloaded UNet (`--vram low`) is on its compute device for the block."""
        from nodes.diffusion.lora.patching import patched
        from nodes.offload import on_compute_device

        with on_compute_device(self.model):
            model = self.prepared()
            with patched(self.model, self.patches):
                yield model

    def __nbytes__(self) -> dict[str, int]:
        """A patched UNet holds only its patches: the base module is its loader's."""
        return measure(self.patches or self.model)

    def with_options(self, **changes: Any) -> UNet:
        return replace(self, **changes)


@socket_type("VAE", color="#ef6f6c")
@dataclass(frozen=True, eq=False)
class VAE:
    """An `AutoencoderKL`; `tiling` / `slicing` are applied before each encode or decode."""

    model: torch.nn.Module
    source: str = ""
    tiling: bool = False
    slicing: bool = False

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell: 2 ** (number of resolution levels - 1)."""
        return 2 ** (len(self.model.config["block_out_channels"]) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.model.config["scaling_factor"])

    def prepared(self) -> torch.nn.Module:
        model = self.model
        model.enable_tiling() if self.tiling else model.disable_tiling()
        model.enable_slicing() if self.slicing else model.disable_slicing()
        return model

    @contextmanager
    def running(self) -> Iterator[torch.nn.Module]:
        """The prepared module, in float32 for the duration when its config says
        `force_upcast` and it is held in float16 (SDXL's VAE overflows in fp16; diffusers'
        SDXL pipelines upcast it the same way around each encode and decode). An
        offloaded VAE (`--vram low`) is on its compute device for the block."""
        from nodes.offload import on_compute_device

        with on_compute_device(self.model):
            model = self.prepared()
            dtype = next(model.parameters()).dtype
            upcast = dtype == torch.float16 and bool(model.config.get("force_upcast", False))
            if not upcast:
                yield model
                return
            model.to(torch.float32)
            try:
                yield model
            finally:
                model.to(dtype)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel latent mean and std, for VAEs whose config has them."""
        mean, std = self.model.config.get("latents_mean"), self.model.config.get("latents_std")
        if mean is None or std is None:
            return None
        shape = (1, len(mean), 1, 1)
        return (torch.tensor(mean, device=like.device, dtype=like.dtype).view(shape),
                torch.tensor(std, device=like.device, dtype=like.dtype).view(shape))

    def to_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE's raw latents to the unit-variance space the UNet works in."""
        stats = self._stats(z)
        if stats is None:
            return z * self.scaling_factor
        return (z - stats[0]) * self.scaling_factor / stats[1]

    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The UNet's latents back to the VAE's raw latents (the inverse of `to_latents`)."""
        stats = self._stats(z)
        if stats is None:
            return z / self.scaling_factor
        return z * stats[1] / self.scaling_factor + stats[0]

    def with_options(self, **changes: Any) -> VAE:
        return replace(self, **changes)


@socket_type("SCHEDULER", color="#5fb3b3")
@dataclass(frozen=True, eq=False)
class SchedulerSpec:
    """A scheduler *description* (class name + config), not a scheduler object.

    Solvers keep state between steps (multistep history, step index), so a cached object
    would carry one run's state into the next. `build()` makes a fresh one for every run.
    """

    class_name: str
    config: dict[str, Any]
    source: str = ""

    def build(self) -> Any:
        from nodes.diffusion.schedulers import scheduler_from_config

        return scheduler_from_config(self.config, self.class_name)


@socket_type("TOKENS", color="#a3be8c")
@dataclass(frozen=True, eq=False)
class Tokens:
    """Token ids of a batch of prompts, plus the empty prompt tokenized the same way.

    The empty prompt rides along so the encoder can produce the unconditional embedding
    that classifier-free guidance falls back to when no negative prompt is wired.
    A long prompt is several `window`-token windows side by side (L = window x count),
    each encoded on its own; ids below 0 are rows of the `embeddings`' vectors (-1 the
    first), which the encoder appends to its token table.
    """

    input_ids: torch.Tensor  # [N, L] int64
    attention_mask: torch.Tensor  # [N, L]
    uncond_ids: torch.Tensor  # [1, L]
    uncond_mask: torch.Tensor  # [1, L]
    prompts: tuple[str, ...] = ()
    # The same prompts through SDXL's second tokenizer.
    second: Tokens | None = None
    # Tokens per encoder window (0: all of L is one window).
    window: int = 0
    # Per-token weights [N, L] (None: all 1) and the syntax they came from (nodes.text).
    weights: torch.Tensor | None = None
    weighting: str = "none"
    # Textual-inversion embeddings (nodes.textual_inversion.Embedding) the prompts use.
    embeddings: tuple[Any, ...] = ()
    # `comfy` weighting: the prompts for the ComfyUI pack's encoder (nodes.prompt_comfy).
    comfy: Any = None


@dataclass(frozen=True, eq=False)
class CondPart:
    """One entry of ComfyUI-style conditioning: embeddings `[B, L, D]` and the options saying
    where and when they apply ("area", "strength", "mask", "start_percent", "end_percent",
    "pooled_output", ...). The options mapping is shared, never changed: copy to edit."""

    embeds: torch.Tensor
    options: Mapping[str, Any] = field(default_factory=dict)

    def with_options(self, **changes: Any) -> CondPart:
        return CondPart(self.embeds, {**self.options, **changes})


# SDXL's micro-conditioning, by ComfyUI's option names: original size, crop, target size,
# the refiner's aesthetic score (and ours: the score for the unconditional side).
MICRO_CONDITIONING = ("width", "height", "crop_w", "crop_h", "target_width", "target_height",
                      "aesthetic_score", "negative_aesthetic_score")
# Options that change nothing about where or when a part applies (SDXL's pooled output and
# micro-conditioning).
PLAIN_OPTIONS = frozenset({"pooled_output", *MICRO_CONDITIONING})


@socket_type("CONDITIONING", color="#f0a35e")
@dataclass(frozen=True, eq=False)
class Conditioning:
    """Text embeddings `[N, L, D]` of N prompts and the empty prompt's embedding `[1, L, D]`.

    SDXL's conditioning also carries pooled embeddings and micro-conditioning (see
    `MICRO_CONDITIONING`) in `options`.

    One value is also what ComfyUI calls a conditioning: a list of entries, each embeddings
    plus options (an area, a strength, a timestep range). The first entry is `embeds` with
    `options`; further entries (ConditioningCombine) are in `more`. A plain value (one entry,
    no such options) is what our own nodes make and what Denoise takes.
    """

    embeds: torch.Tensor
    uncond: torch.Tensor | None = None
    prompts: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    more: tuple[CondPart, ...] = ()
    # SDXL: the pooled embedding of the unconditional input (the prompts' own pooled
    # embeddings `[N, P]` are the "pooled_output" option, as in ComfyUI).
    uncond_pooled: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def parts(self) -> tuple[CondPart, ...]:
        """Every entry, the first one included."""
        return (CondPart(self.embeds, self.options), *self.more)

    @property
    def is_plain(self) -> bool:
        """One entry without area, strength, mask or timestep range."""
        return not self.more and set(self.options) <= PLAIN_OPTIONS

    @classmethod
    def from_parts(cls, parts: Sequence[CondPart], prompts: tuple[str, ...] = ()
                   ) -> Conditioning:
        if not parts:
            raise ValueError("a conditioning needs at least one entry")
        first, *rest = parts
        return cls(first.embeds, prompts=prompts, options=first.options, more=tuple(rest))


def require(value: object, node_type: str, name: str) -> None:
    """A clear error for a component the loaded pipeline does not have (a DDPM repository
    has no text encoder or VAE, so its loader leaves those outputs empty)."""
    if value is None:
        raise ValueError(f"{node_type}: input {name!r} received nothing; the pipeline it "
                         f"is linked from has no {name}")


@socket_type("LATENT", color="#f48fb1")
@dataclass(frozen=True, eq=False)
class Latent:
    """A batch of samples (latents, or pixels for pixel-space models) and their seeds.

    `noise` is True for pure unit-variance noise that still has to be scaled by the
    scheduler's `init_noise_sigma`; False for clean samples (encoded images, finished
    denoising), which img2img noises with the scheduler's `add_noise`.
    `generator_states` are the per-image CPU random streams after the last draw, so the
    next node continues the same streams a single diffusers call would have used.
    """

    samples: torch.Tensor
    seeds: tuple[int, ...] = ()
    generator_states: tuple[torch.Tensor, ...] | None = None
    noise: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.samples.shape[0])

    def generators(self) -> list[torch.Generator]:
        """Fresh generator objects continuing this latent's streams (the cached states are
        never advanced, so re-running a downstream node gives the same result)."""
        if self.generator_states is not None:
            return restore_generators(self.generator_states)
        return new_generators(self.seeds or range(self.batch))

    def repeated(self, times: int) -> Latent:
        """The batch repeated `times` times per image: same noise, same streams."""
        if times == 1:
            return self
        states = None
        if self.generator_states is not None:
            states = tuple(s for s in self.generator_states for _ in range(times))
        return replace(self, samples=self.samples.repeat_interleave(times, dim=0),
                       seeds=tuple(s for s in self.seeds for _ in range(times)),
                       generator_states=states)


@socket_type("IMAGE", color="#64b5f6")
@dataclass(frozen=True, eq=False)
class Image:
    """Images as ComfyUI has them: float32 `[B, H, W, C]` in 0..1, on the CPU."""

    pixels: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.pixels.shape[0])


@socket_type("MASK", color="#4db6ac")
@dataclass(frozen=True, eq=False)
class Mask:
    """Masks `[B, H, W]` in 0..1; 1 marks the area to change (ComfyUI's convention)."""

    mask: torch.Tensor

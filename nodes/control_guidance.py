"""ControlNet guidance: the control a conditioning carries, and the UNet inputs it gives at
each denoising step.

ApplyControlNet puts a `Control` (model, image, strength, step range) on the conditioning's
`CONTROL_OPTION` (a tuple, so several chain: MultiControlNet). Denoise takes the controls
off the positive conditioning (`split_control`) and, at each step, asks a `ControlRun` for
the UNet's extra keyword arguments: the summed residuals of every control active at that
step. The rules are diffusers' StableDiffusionControlNetPipeline's:
- the control image is resized (nearest, as diffusers treats tensors) to the latent size
  times the ControlNet's downsampling, repeated to the batch, and doubled for guidance;
- step i of N is active when neither `i / N < start` nor `(i + 1) / N > end`
  (`control_guidance_start` / `control_guidance_end`); an inactive control adds nothing;
- in guess mode the ControlNet sees only the conditional half and the unconditional half
  gets zero residuals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodes.lazy import lazy_module
from nodes.types import Conditioning

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

CONTROL_OPTION = "control"


@dataclass(frozen=True, eq=False)
class Control:
    """One ControlNet applied to a conditioning. `image` is `[B, H, W, C]` in 0..1."""

    model: torch.nn.Module
    image: torch.Tensor
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    label: str = ""
    # How the image meets the latent size: "diffusers" (nearest, StableDiffusionControlNet
    # Pipeline) or "comfy" (centre crop to the aspect ratio, nearest-exact: the pack's).
    resize: str = "diffusers"


def controls_of(cond: Conditioning | None) -> tuple[Control, ...]:
    """The controls a conditioning carries (none for a plain one)."""
    if cond is None:
        return ()
    return tuple(cond.options.get(CONTROL_OPTION, ()))


def with_control(cond: Conditioning, control: Control) -> Conditioning:
    """A copy of `cond` with one more control (the value received is never changed)."""
    options = {**cond.options, CONTROL_OPTION: (*controls_of(cond), control)}
    return Conditioning(cond.embeds, cond.uncond, cond.prompts, options, cond.more,
                        cond.uncond_pooled)


def without_control(cond: Conditioning | None) -> Conditioning | None:
    """`cond` without its controls, so it is plain prompt encoding again."""
    if cond is None or CONTROL_OPTION not in cond.options:
        return cond
    options = {k: v for k, v in cond.options.items() if k != CONTROL_OPTION}
    return Conditioning(cond.embeds, cond.uncond, cond.prompts, options, cond.more,
                        cond.uncond_pooled)


def split_control(positive: Conditioning | None, negative: Conditioning | None
                  ) -> tuple[Conditioning | None, Conditioning | None, tuple[Control, ...]]:
    """The conditionings without controls, and the positive's controls (they steer both
    halves of the guidance batch, as in diffusers; the negative's copy is the same)."""
    return without_control(positive), without_control(negative), controls_of(positive)


def keep(i: int, n: int, start: float, end: float) -> float:
    """1.0 when step `i` of `n` lies inside [start, end], else 0.0 (diffusers)."""
    return 1.0 - float(i / n < start or (i + 1) / n > end)


def downscale_factor(model: torch.nn.Module) -> int:
    """Pixels of control image per latent cell: the conditioning embedding's strides."""
    return 2 ** (len(model.config["conditioning_embedding_out_channels"]) - 1)


def control_image(control: Control, latent_hw: Sequence[int], batch: int,
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The control image as the ControlNet takes it: `[batch, C, h * f, w * f]`, 0..1."""
    image = control.image
    if image.ndim != 4:
        raise ValueError("ApplyControlNet: the control image must be [B, H, W, C]")
    pixels = image.permute(0, 3, 1, 2).to(torch.float32)
    wanted = int(control.model.config["conditioning_channels"])
    if pixels.shape[1] == 1 and wanted != 1:
        pixels = pixels.expand(-1, wanted, -1, -1)
    elif pixels.shape[1] > wanted:
        pixels = pixels[:, :wanted]
    f = downscale_factor(control.model)
    size = (int(latent_hw[0]) * f, int(latent_hw[1]) * f)
    if tuple(pixels.shape[2:]) != size:
        pixels = F.interpolate(pixels, size=size)
    n = pixels.shape[0]
    if batch % n != 0:
        raise ValueError(f"Denoise: a control image batch of {n} does not divide the batch "
                         f"of {batch} images")
    return pixels.repeat_interleave(batch // n, dim=0).to(device, dtype)


class ControlRun:
    """The controls of one Denoise run, images prepared once; called at each step."""

    def __init__(self, controls: Sequence[Control], latent_hw: Sequence[int], batch: int,
                 use_cfg: bool, n_timesteps: int, dtype: torch.dtype) -> None:
        self.controls = tuple(controls)
        self.use_cfg = use_cfg
        self.n = n_timesteps
        self.dtype = dtype
        self.images = []
        for c in self.controls:
            model = c.model
            image = control_image(c, latent_hw, batch, model.device, model.dtype)
            self.images.append(torch.cat([image] * 2) if use_cfg and not c.guess_mode
                               else image)

    def _one(self, c: Control, image: torch.Tensor, scale: float, model_in: torch.Tensor,
             t: torch.Tensor, context: torch.Tensor,
             added: Mapping[str, torch.Tensor] | None
             ) -> tuple[list[torch.Tensor], torch.Tensor]:
        guess_cfg = c.guess_mode and self.use_cfg
        x, ctx, extra = model_in, context, added
        if guess_cfg:  # the ControlNet sees the conditional half only
            x, ctx = model_in.chunk(2)[1], context.chunk(2)[1]
            extra = None if added is None else {k: v.chunk(2)[1] for k, v in added.items()}
        model = c.model
        kwargs: dict[str, Any] = {}
        if getattr(model, "needs_text_time", False):
            kwargs["added_cond_kwargs"] = extra
        down, mid = model(x.to(model.device, model.dtype), t, ctx.to(model.device, model.dtype),
                          image, conditioning_scale=scale, guess_mode=c.guess_mode, **kwargs)
        out_down = [d.to(model_in.device, self.dtype) for d in down]
        out_mid = mid.to(model_in.device, self.dtype)
        if guess_cfg:
            out_down = [torch.cat([torch.zeros_like(d), d]) for d in out_down]
            out_mid = torch.cat([torch.zeros_like(out_mid), out_mid])
        return out_down, out_mid

    def __call__(self, i: int, model_in: torch.Tensor, t: torch.Tensor,
                 context: torch.Tensor | None,
                 added: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The UNet's extra keyword arguments at step `i` (none when no control is active)."""
        summed: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        for c, image in zip(self.controls, self.images, strict=True):
            scale = c.strength * keep(i, self.n, c.start, c.end)
            if scale == 0.0 or context is None:
                continue
            summed.append(self._one(c, image, scale, model_in, t, context, added))
        return residual_kwargs(summed)


def residual_kwargs(residuals: Sequence[tuple[list[torch.Tensor], torch.Tensor]]
                    ) -> dict[str, Any]:
    """The UNet's keyword arguments for the summed residuals of several ControlNets
    (diffusers' MultiControlNetModel adds them); none when no ControlNet ran."""
    if not residuals:
        return {}
    down, mid = residuals[0]
    for d, m in residuals[1:]:
        down = [a + b for a, b in zip(down, d, strict=True)]
        mid = mid + m
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def control_run(controls: Sequence[Control], x: torch.Tensor, use_cfg: bool,
                n_timesteps: int) -> ControlRun | None:
    """The run's `ControlRun`, or None without controls (Denoise then adds nothing)."""
    if not controls:
        return None
    return ControlRun(controls, x.shape[-2:], int(x.shape[0]), use_cfg, n_timesteps, x.dtype)


def control_kwargs(run: ControlRun | None, i: int, model_in: torch.Tensor, t: torch.Tensor,
                   context: torch.Tensor | None,
                   added: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Denoise's one call per step: extra UNet keyword arguments ({} without control)."""
    return {} if run is None else run(i, model_in, t, context, added)

"""Step previews: a fixed linear map from latent channels to RGB, or the real VAE when
decoding is cheap next to a denoising step.

When the latents came from a VAE the nodes know (RandomLatents, VAEEncodeSampled), the map
is a least-squares fit of that VAE's latents to the colours they encode, made once per model
(`fit_projection`), so previews are right for SD, for the embedded tiny model and for any
channel count. Otherwise 4-channel latents use SD 1.x's published factors (ComfyUI's
"latent2rgb"), pixel-space samples are shown as they are, and any other channel count is
shown in false colour along the sample's own principal directions.

A fitted map only approximates the VAE, so on small models (the embedded one) a preview
can look unlike the saved image. Fitting a projection registers its VAE, and
`step_preview` then chooses by the preview mode (`NOODLE_PREVIEWS`, or
`set_preview_mode`): `latent` always projects, `full` always decodes with that VAE, and
`auto` (the default) decodes as often as a decode costs under a quarter of the denoising
time since the last one, both timed between the previews themselves (a large sample's
decode from a corner's), so large models keep their fast previews.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from PIL import Image as PILImage

from graph_runtime.settings import document_env, env
from nodes.lazy import lazy_module

torch = lazy_module("torch")

SD_LATENT_RGB = ([  # SD 1.x latent channel -> RGB factors
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.6177],
])
MIN_SIDE = 128
# Decoded previews larger than this are shrunk: they travel in every progress message.
MAX_SIDE = 512

PreviewMode = Literal["auto", "latent", "full"]
PREVIEW_MODES: tuple[str, ...] = ("auto", "latent", "full")
ENV_VAR = "NOODLE_PREVIEWS"
document_env(ENV_VAR, "step previews: auto (real VAE decode when it costs under a quarter "
                      "of a step), latent (fast projection) or full (always decode)")
# A full decode may cost at most this share of one denoising step in `auto` mode.
AUTO_BUDGET = 0.25
# Longer than this between two previews: a new run, not a step.
_RUN_GAP_S = 30.0
# `auto` first times a decode of at most this many latent cells (a corner) and scales the
# time by area, so a large model's slow decode is never paid in full just to learn its cost.
PROBE_SIDE = 32


def _principal_rgb(x: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> [3, H, W] along the sample's own principal directions, scaled to 0..1."""
    c, h, w = x.shape
    flat = x.reshape(c, -1).T  # [HW, C]
    flat = flat - flat.mean(0, keepdim=True)
    if c == 1:
        rgb = flat.repeat(1, 3)
    else:
        _, _, v = torch.linalg.svd(flat, full_matrices=False)
        basis = v[: min(3, c)].T
        rgb = flat @ basis
        if rgb.shape[1] < 3:
            rgb = torch.cat([rgb, rgb[:, :1].expand(-1, 3 - rgb.shape[1])], dim=1)
    lo, hi = rgb.min(0).values, rgb.max(0).values
    rgb = (rgb - lo) / (hi - lo).clamp_min(1e-6)
    return rgb.T.reshape(3, h, w)


def latent_to_rgb(sample: torch.Tensor, projection: torch.Tensor | None = None,
                  pixel_space: bool = False) -> torch.Tensor:
    """One sample [C, H, W] -> RGB [3, H, W] in 0..1."""
    x = sample.detach().float().cpu()
    if pixel_space:
        return (x[:3] / 2 + 0.5).clamp(0, 1)
    if projection is not None and projection.shape[0] == x.shape[0] + 1:
        rgb = torch.einsum("chw,cr->rhw", x, projection[:-1]) + projection[-1, :, None, None]
        return (rgb / 2 + 0.5).clamp(0, 1)
    if x.shape[0] == 4:
        rgb = torch.einsum("chw,cr->rhw", x, x.new_tensor(SD_LATENT_RGB))
        return ((rgb + 1) / 2).clamp(0, 1)
    return _principal_rgb(x)


_FITTED: weakref.WeakKeyDictionary[torch.nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()


def _fit_scenes(n: int = 24, side: int = 64) -> torch.Tensor:
    """A 3x3x3 grid of flat colour swatches plus seeded scenes of coloured rectangles on a
    flat background, in -1..1.

    Edges and several colours per image matter: a VAE's latents for a uniform swatch are
    not what it produces next to edges, so a fit on swatch means can be far off on real
    images, while a per-pixel fit on such scenes tracks them closely."""
    g = torch.Generator().manual_seed(0)
    levels = torch.tensor([-1.0, 0.0, 1.0])
    swatches = torch.cartesian_prod(levels, levels, levels)[:, :, None, None]
    scenes = torch.empty(n, 3, side, side)
    for k in range(n):
        scenes[k] = (torch.rand(3, generator=g) * 2 - 1)[:, None, None]
        for _ in range(3):
            colour = torch.rand(3, generator=g) * 2 - 1
            x0, y0 = torch.randint(0, side * 3 // 4, (2,), generator=g).tolist()
            w, h = torch.randint(side // 8, side // 2, (2,), generator=g).tolist()
            scenes[k, :, y0:y0 + h, x0:x0 + w] = colour[:, None, None]
    return torch.cat([swatches.expand(-1, -1, side, side), scenes])


def fit_projection(vae: torch.nn.Module, scaling_factor: float) -> torch.Tensor:
    """Least-squares map `[latent channels, 1] -> RGB in -1..1` for this VAE, fitted per
    latent pixel against the area-downscaled colours of a few seeded scenes pushed through
    its encoder, once per model. Works for any latent channel count and any VAE."""
    cached = _FITTED.get(vae)
    if cached is not None:
        return cached
    p = next(vae.parameters())
    scenes = _fit_scenes()
    with torch.no_grad():
        z = vae.encode(scenes.to(p.device, p.dtype)).mean.float().cpu() * scaling_factor
    target = torch.nn.functional.interpolate(scenes, size=z.shape[-2:], mode="area")
    latents = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    design = torch.cat([latents, torch.ones(len(latents), 1)], dim=1)
    colours = target.permute(0, 2, 3, 1).reshape(-1, 3)
    projection = torch.linalg.lstsq(design, colours).solution  # [C + 1, 3]
    _FITTED[vae] = projection
    _DECODERS[id(projection)] = _Decoder(weakref.ref(vae))
    weakref.finalize(projection, _DECODERS.pop, id(projection), None)
    return projection


# ------------------------------------------------------------------ full decodes
_mode_override: PreviewMode | None = None


def set_preview_mode(mode: str | None) -> None:
    """Choose the preview mode for this process (`noodle serve --previews`); None goes
    back to the environment's (`NOODLE_PREVIEWS`, default `auto`)."""
    global _mode_override
    if mode is not None and mode not in PREVIEW_MODES:
        raise ValueError(f"preview mode {mode!r} is not one of {', '.join(PREVIEW_MODES)}")
    _mode_override = cast(PreviewMode | None, mode)


def preview_mode() -> PreviewMode:
    """The mode in force: the override, else the environment, else `auto`."""
    if _mode_override is not None:
        return _mode_override
    value = (env(ENV_VAR) or "auto").strip().lower()
    if value not in PREVIEW_MODES:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(PREVIEW_MODES)}")
    return cast(PreviewMode, value)


@dataclass
class _Decoder:
    """The VAE behind a fitted projection, and what `auto` has learnt about its cost: the
    seconds one decode takes per latent shape, and the denoising time between previews."""

    vae: weakref.ReferenceType[torch.nn.Module]
    decode_s: dict[tuple[int, ...], float] = field(default_factory=dict)
    stepped_s: float | None = None  # denoising time since the last decode (None: new run)
    last_end: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe_step(self, now: float) -> None:
        """The time since the last preview ended is denoising work; a long pause is a new
        run, whose first preview has no step to weigh a decode against."""
        gap = None if self.last_end is None else now - self.last_end
        if gap is None or gap >= _RUN_GAP_S:
            self.stepped_s = None
        else:
            self.stepped_s = (self.stepped_s or 0.0) + gap

    def worth_decoding(self, shape: tuple[int, ...], final: bool) -> bool:
        """`auto`: the final preview always (one decode a run, like VAEDecode's); others
        when a decode costs under `AUTO_BUDGET` of the steps since the last one (so a
        decode as slow as a step shows every fourth preview), or has not been timed."""
        if final:
            return True
        if self.stepped_s is None:
            return False
        cost = self.decode_s.get(shape)
        return cost is None or cost < AUTO_BUDGET * self.stepped_s


# By the projection's id (tensors compare by value), dropped with the projection.
_DECODERS: dict[int, _Decoder] = {}


def _unscale(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The UNet's latents back to the VAE's raw ones (its scaling, and its latent mean and
    std where its config has them), as VAEDecode does."""
    config = vae.config
    scale = float(config["scaling_factor"])
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is None or std is None:
        return z / scale
    shape = (1, len(mean), 1, 1)
    m = torch.tensor(mean, device=z.device, dtype=z.dtype).view(shape)
    s = torch.tensor(std, device=z.device, dtype=z.dtype).view(shape)
    return z * s / scale + m


def decode_preview(vae: torch.nn.Module, sample: torch.Tensor) -> torch.Tensor | None:
    """The first sample decoded by the VAE, RGB [3, H, W] in 0..1; None where a decode
    would be wrong (a float16 VAE that must run in float32: previews never recast it).
    An offloaded VAE (`--vram low`) is brought over for the decode like any other use, so a
    decode node starting meanwhile on another thread never moves it under the preview."""
    from nodes.offload import on_compute_device

    p = next(vae.parameters())
    if p.dtype == torch.float16 and bool(vae.config.get("force_upcast", False)):
        return None
    with on_compute_device(vae), torch.no_grad():
        p = next(vae.parameters())
        z = _unscale(vae, sample[:1].detach().to(p.device, p.dtype))
        x = vae.decode(z)
    return (x[0].float().cpu() / 2 + 0.5).clamp(0, 1)


def _decoded(projection: torch.Tensor | None, sample: torch.Tensor, final: bool
             ) -> torch.Tensor | None:
    """The real decode when the mode and (for `auto`) the measured costs call for it."""
    mode = preview_mode()
    decoder = _DECODERS.get(id(projection)) if projection is not None else None
    vae = decoder.vae() if decoder is not None else None
    if mode == "latent" or decoder is None or vae is None:
        return None
    shape = tuple(sample.shape[1:])
    with decoder.lock:
        start = time.perf_counter()
        decoder.observe_step(start)
        rgb = None
        probed = mode == "auto" and not final and _probe(decoder, vae, sample, shape, start)
        if not probed and (mode == "full" or decoder.worth_decoding(shape, final)):
            rgb = decode_preview(vae, sample)
            if rgb is not None:
                decoder.decode_s[shape] = time.perf_counter() - start
                decoder.stepped_s = 0.0
        decoder.last_end = time.perf_counter()
    return rgb


def _probe(decoder: _Decoder, vae: torch.nn.Module, sample: torch.Tensor,
           shape: tuple[int, ...], start: float) -> bool:
    """When a large sample's decode cost is still unknown and a step has been timed: time a
    corner's decode and keep its cost scaled to the whole area. True when it probed."""
    h, w = shape[-2], shape[-1]
    if shape in decoder.decode_s or decoder.stepped_s is None or h * w <= PROBE_SIDE ** 2:
        return False
    corner = sample[:1, :, :PROBE_SIDE, :PROBE_SIDE]
    if decode_preview(vae, corner) is None:
        decoder.decode_s[shape] = float("inf")  # never decoded in `auto`
        return True
    area = corner.shape[-2] * corner.shape[-1]
    decoder.decode_s[shape] = (time.perf_counter() - start) * (h * w) / area
    return True


def _to_image(rgb: torch.Tensor) -> PILImage.Image:
    arr = (rgb.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = PILImage.fromarray(arr)
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), PILImage.BILINEAR)
    return img


def step_preview(sample: torch.Tensor, projection: torch.Tensor | None = None,
                  pixel_space: bool = False, final: bool = False) -> PILImage.Image:
    """A PIL image of the first sample of a batch: decoded by the projection's VAE when the
    preview mode calls for it, else projected; small ones upscaled to be visible. `final`:
    the last step's, which `auto` always decodes so a run ends on what it saves."""
    decoded = None if pixel_space else _decoded(projection, sample, final)
    rgb = decoded if decoded is not None else latent_to_rgb(sample[0], projection, pixel_space)
    img = _to_image(rgb)
    side = max(img.size)
    if side < MIN_SIDE:
        factor = -(-MIN_SIDE // side)
        img = img.resize((img.width * factor, img.height * factor), PILImage.NEAREST)
    return img


def deferred_preview(sample: torch.Tensor, projection: torch.Tensor | None = None,
                     pixel_space: bool = False, final: bool = False
                     ) -> Callable[[], PILImage.Image]:
    """`step_preview` of the first sample, to be rendered later (off the sampling thread,
    see `RunContext.progress`): the sample is copied now, on its device and without
    waiting for it, so the loop may go on changing its own tensors."""
    copy = sample[:1].detach().clone()
    return lambda: step_preview(copy, projection, pixel_space, final=final)

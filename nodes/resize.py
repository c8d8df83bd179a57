"""Resizing `[B, C, H, W]` tensors with ComfyUI's methods, for latents and images alike
(our own upscale nodes and the ComfyUI pack's share them).

"center" crop first cuts the input to the target aspect ratio. Besides torch's modes,
"lanczos" resamples 8-bit images with Pillow (images only: it rounds to 0..255) and
"bislerp" interpolates bilinearly but blends neighbouring cells spherically: the direction
of each cell's channel vector is slerped and its length interpolated linearly, which keeps
latents from losing contrast as plain averaging does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image as PILImage

from nodes.lazy import lazy_module

if TYPE_CHECKING:
    from torch import Tensor

np = lazy_module("numpy")
torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

TORCH_MODES = ("nearest-exact", "bilinear", "area", "bicubic")
LATENT_METHODS = [*TORCH_MODES, "bislerp"]
IMAGE_METHODS = [*TORCH_MODES, "lanczos"]
CROPS = ["disabled", "center"]


def center_crop(x: Tensor, width: int, height: int) -> Tensor:
    """The middle of x with the aspect ratio of width x height."""
    old_h, old_w = x.shape[-2], x.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = dy = 0
    if old_aspect > new_aspect:
        dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x[..., dy: old_h - dy, dx: old_w - dx]


def _slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Rows of a and b ([N, C]) blended by t ([N, 1]): slerped direction, lerped length."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua = torch.where(na == 0, torch.zeros_like(a), a / na)
    ub = torch.where(nb == 0, torch.zeros_like(b), b / nb)
    dot = (ua * ub).sum(-1, keepdim=True)
    omega = torch.acos(dot.clamp(-1, 1))
    sin = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / sin) * ua + (torch.sin(t * omega) / sin) * ub
    out = out * (na * (1 - t) + nb * t)
    same = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    out = torch.where(same, a, out)
    return torch.where(opposite, a * (1 - t) + b * t, out)


def _bislerp_axis(x: Tensor, size: int, axis: int) -> Tensor:
    """Resample one spatial axis (2 or 3) of x to `size` cells."""
    old = x.shape[axis]
    pos = (torch.arange(size, dtype=torch.float32) + 0.5) * (old / size) - 0.5
    pos = pos.clamp(0, old - 1)
    low = pos.floor().long()
    high = (low + 1).clamp(max=old - 1)
    frac = pos - low
    moved = x.movedim(axis, -1)  # [..., old]
    a, b = moved[..., low], moved[..., high]  # [n, c, other, size]
    shape = a.shape
    flat_a = a.movedim(1, -1).reshape(-1, shape[1])
    flat_b = b.movedim(1, -1).reshape(-1, shape[1])
    t = frac.to(x.device).expand(shape[0], shape[2], size).reshape(-1, 1)
    out = _slerp(flat_a, flat_b, t)
    out = out.reshape(shape[0], shape[2], size, shape[1]).movedim(-1, 1)
    return out.movedim(-1, axis)


def bislerp(x: Tensor, width: int, height: int) -> Tensor:
    """Resize width first, then height, blending cells spherically (in float32)."""
    dtype = x.dtype
    x = x.float()
    x = _bislerp_axis(x, width, 3)
    return _bislerp_axis(x, height, 2).to(dtype)


def lanczos(x: Tensor, width: int, height: int) -> Tensor:
    """Pillow's Lanczos on images in 0..1 ([B, C, H, W])."""
    out = []
    for img in x:
        arr = np.clip(255.0 * img.movedim(0, -1).float().cpu().numpy(), 0, 255).astype(np.uint8)
        picture = PILImage.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        resized = np.asarray(picture.resize((width, height), PILImage.Resampling.LANCZOS),
                             dtype=np.float32) / 255.0
        if resized.ndim == 2:
            resized = resized[..., None]
        out.append(torch.from_numpy(resized).movedim(-1, 0))
    return torch.stack(out).to(x.device, x.dtype)


def upscale(x: Tensor, width: int, height: int, method: str, crop: str = "disabled"
            ) -> Tensor:
    """x resized to width x height by `method`, center-cropped first if asked."""
    if crop == "center":
        x = center_crop(x, width, height)
    if method == "bislerp":
        return bislerp(x, width, height)
    if method == "lanczos":
        return lanczos(x, width, height)
    if method not in TORCH_MODES:
        raise ValueError(f"unknown upscale method {method!r}")
    return F.interpolate(x, size=(height, width), mode=method)

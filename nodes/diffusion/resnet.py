"""Residual block and the 2x down/up sampling layers shared by every UNet and the VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def act_(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an activation, in place when autograd is not tracking ``x`` (inference).

    Saves one full-size allocation per call; with gradients it is the ordinary op, so
    training is unaffected.
    """
    if not x.requires_grad and isinstance(module, nn.SiLU):
        return F.silu(x, inplace=True)
    return module(x)


def add_(out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``out + other``, written into ``out`` when no gradient flows (``out`` must be fresh)."""
    if out.requires_grad or other.requires_grad:
        return out + other
    return out.add_(other)


class Conv2d(nn.Conv2d):
    """A 3x3 convolution that runs small feature maps as one matrix product on the CPU.

    At the UNet's lowest resolutions (4x4, 8x8 latents) the weights dwarf the activations,
    and oneDNN's per-call weight reordering dominates; unfolding the input and multiplying
    by the weight matrix (a view, no copy) is markedly faster there and gives the same
    result up to float rounding. Elsewhere, on accelerators and under autograd, this is
    the ordinary convolution. Parameter names are nn.Conv2d's.
    """

    SMALL_MAP = 64  # pixels per image at or below which the matrix-product path is used

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (
            h * w <= self.SMALL_MAP
            and x.device.type == "cpu"
            and x.ndim == 4
            and not (x.requires_grad or self.weight.requires_grad)
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
        ):
            cols = F.unfold(x, 3, padding=1)  # (B, C*9, H*W)
            out = torch.matmul(self.weight.reshape(self.out_channels, -1), cols)
            if self.bias is not None:
                out.add_(self.bias[:, None])
            return out.view(x.shape[0], self.out_channels, h, w)
        return super().forward(x)


def activation(name: str) -> nn.Module:
    """The activation module named in a diffusers config (``act_fn``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        known = sorted(_ACTIVATIONS)
        raise ValueError(f"unsupported activation {name!r}; known: {known}") from None


class ResnetBlock2D(nn.Module):
    """GroupNorm-act-conv twice, with the time embedding added in between.

    ``time_embedding_norm="scale_shift"`` applies the embedding as FiLM after the second
    norm instead of adding it, as some DDPM checkpoints do. ``temb_channels=None`` (the VAE)
    drops the time projection entirely.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        dropout: float = 0.0,
        act_fn: str = "silu",
        output_scale_factor: float = 1.0,
        time_embedding_norm: str = "default",
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"unsupported resnet_time_scale_shift {time_embedding_norm!r}")
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_channels is not None:
            proj_out = out_channels * 2 if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj: nn.Linear | None = nn.Linear(temb_channels, proj_out)
        else:
            self.time_emb_proj = None
        self.norm2 = nn.GroupNorm(groups_out or groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = activation(act_fn)
        self.conv_shortcut: nn.Conv2d | None = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(act_(self.nonlinearity, self.norm1(x)))
        scale_shift = None
        if self.time_emb_proj is not None and temb is not None:
            t = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
            if self.time_embedding_norm == "default":
                h = add_(h, t)
            else:
                scale_shift = t.chunk(2, dim=1)
        h = self.norm2(h)
        if scale_shift is not None:
            h = h * (1 + scale_shift[0]) + scale_shift[1]
        h = self.conv2(self.dropout(act_(self.nonlinearity, h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = add_(h, x)  # h is fresh from conv2, so it may take the sum in place
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Strided 3x3 convolution; ``padding=0`` pads right/bottom only, as the LDM VAE does."""

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x (or to an explicit size) followed by a 3x3 convolution.

    For large maps at inference the two steps run in bands of rows, so the 4x-larger
    upsampled tensor never exists whole: the VAE decoder's last upsampling otherwise holds
    the biggest activation of the whole decode. Each band carries a one-row halo, so the
    result is the same convolution.
    """

    BAND_MIN_PIXELS = 128 * 128  # input maps at least this big are processed in bands
    BAND_ROWS = 16  # input rows per band

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(
        self, x: torch.Tensor, output_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if x.shape[0] >= 64:
            x = x.contiguous()
        if (
            output_size is None
            and x.shape[-2] * x.shape[-1] >= self.BAND_MIN_PIXELS
            and not (x.requires_grad or self.conv.weight.requires_grad)
        ):
            return self._banded(x)
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x)

    def _banded(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        weight, bias = self.conv.weight, self.conv.bias
        out = torch.empty((b, weight.shape[0], 2 * h, 2 * w), dtype=x.dtype, device=x.device)
        for r0 in range(0, h, self.BAND_ROWS):
            r1 = min(h, r0 + self.BAND_ROWS)
            lo, hi = max(0, r0 - 1), min(h, r1 + 1)
            up = F.interpolate(x[:, :, lo:hi], scale_factor=2.0, mode="nearest")
            # Output rows [2*r0, 2*r1) need upsampled rows [2*r0 - 1, 2*r1 + 1).
            start, end = 2 * r0 - 1 - 2 * lo, 2 * r1 + 1 - 2 * lo
            band = up[:, :, max(start, 0) : min(end, up.shape[2])]
            if start < 0 or end > up.shape[2]:
                band = F.pad(band, (0, 0, int(start < 0), int(end > up.shape[2])))
            out[:, :, 2 * r0 : 2 * r1] = F.conv2d(band, weight, bias, padding=(0, 1))
        return out

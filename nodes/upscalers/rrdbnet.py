"""RRDBNet, the network of ESRGAN and Real-ESRGAN, in plain torch.

A first convolution, a trunk of residual-in-residual dense blocks (each three dense blocks
of five convolutions, every residual scaled by 0.2), a trunk convolution added back to the
features, then one nearest-neighbour x2 upsampling and convolution per factor of two, a
high-resolution convolution and the output convolution. Real-ESRGAN's x2 and x1 models feed
the same 4x network a pixel-unshuffled input (12 or 48 channels), which is how they reach
a smaller overall scale with the same weights layout.

Module names are the BasicSR ("new") layout's, except that the upsampling convolutions
`conv_up1`, `conv_up2`, ... are the list `conv_up.0`, `conv_up.1`, ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

RESIDUAL_SCALE = 0.2


@dataclass(frozen=True)
class RRDBConfig:
    """What a checkpoint's tensor shapes decide: channels, widths, depth and scale."""

    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    growth: int = 32
    blocks: int = 23
    upsamples: int = 2  # x2 stages after the trunk
    unshuffle: int = 1  # pixel-unshuffle factor of the input (Real-ESRGAN x2: 2, x1: 4)

    @property
    def scale(self) -> int:
        """The overall magnification: 2^upsamples divided by the unshuffle factor."""
        return (2 ** self.upsamples) // self.unshuffle


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class DenseBlock(nn.Module):
    """Five convolutions, each seeing the input and every earlier output."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for i in range(4):
            setattr(self, f"conv{i + 1}", _conv(features + i * growth, growth))
        self.conv5 = _conv(features + 4 * growth, features)

    def forward(self, x: Tensor) -> Tensor:
        parts = [x]
        for i in range(4):
            conv = getattr(self, f"conv{i + 1}")
            parts.append(_lrelu(conv(torch.cat(parts, 1))))
        return self.conv5(torch.cat(parts, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three dense blocks inside one more scaled residual."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = DenseBlock(features, growth)
        self.rdb2 = DenseBlock(features, growth)
        self.rdb3 = DenseBlock(features, growth)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """Images [B, 3, H, W] in 0..1 to [B, 3, H*scale, W*scale]."""

    def __init__(self, config: RRDBConfig) -> None:
        super().__init__()
        c = config
        self.config = config
        self.conv_first = _conv(c.in_channels * c.unshuffle ** 2, c.features)
        self.body = nn.Sequential(*(RRDB(c.features, c.growth) for _ in range(c.blocks)))
        self.conv_body = _conv(c.features, c.features)
        self.conv_up = nn.ModuleList(_conv(c.features, c.features) for _ in range(c.upsamples))
        self.conv_hr = _conv(c.features, c.features)
        self.conv_last = _conv(c.features, c.out_channels)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        k = self.config.unshuffle
        if k > 1:  # unshuffling needs sides divisible by k: reflect-pad, crop afterwards
            x = F.pad(x, (0, -w % k, 0, -h % k), mode="reflect")
            x = F.pixel_unshuffle(x, k)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.conv_up:
            feat = _lrelu(conv(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        out = self.conv_last(_lrelu(self.conv_hr(feat)))
        return out[..., : h * self.scale, : w * self.scale]

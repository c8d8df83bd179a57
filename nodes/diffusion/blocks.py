"""The UNet and VAE stages: down, mid and up blocks.

One class per stage covers diffusers' block family, selected by ``attention``:
``None`` (DownBlock2D / UpBlock2D / *EncoderBlock2D / *DecoderBlock2D), ``"cross"``
(CrossAttn*Block2D, text conditioning) or ``"spatial"`` (Attn*Block2D, self-attention over
pixels). Attribute names (``resnets``, ``attentions``, ``downsamplers``, ``upsamplers``)
match diffusers', so state-dict keys do too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention, Transformer2DModel
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D


@dataclass(frozen=True)
class BlockOptions:
    """Settings shared by every block of one model."""

    temb_channels: int | None
    groups: int
    eps: float
    act_fn: str = "silu"
    dropout: float = 0.0
    time_scale_shift: str = "default"
    output_scale_factor: float = 1.0
    cross_attention_dim: int | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    mid_attn_groups: int | None = None


ATTENTION_KIND: dict[str, str | None] = {
    "DownBlock2D": None,
    "CrossAttnDownBlock2D": "cross",
    "AttnDownBlock2D": "spatial",
    "DownEncoderBlock2D": None,
    "UpBlock2D": None,
    "CrossAttnUpBlock2D": "cross",
    "AttnUpBlock2D": "spatial",
    "UpDecoderBlock2D": None,
    "UNetMidBlock2D": "spatial",
    "UNetMidBlock2DCrossAttn": "cross",
}


def attention_kind(block_type: str) -> str | None:
    """Which attention a diffusers block type carries; unknown block types are an error."""
    if block_type not in ATTENTION_KIND:
        raise ValueError(f"unsupported block type {block_type!r}; known: {sorted(ATTENTION_KIND)}")
    return ATTENTION_KIND[block_type]


def _attention(
    kind: str | None,
    channels: int,
    heads: int,
    layers: int,
    opts: BlockOptions,
    mid: bool = False,
) -> nn.Module | None:
    """Cross: ``heads`` heads splitting the channels. Spatial: ``heads`` is the head size.

    The spatial mid-block attention drops its group norm under ``scale_shift`` unless
    ``attn_norm_num_groups`` asks for one, as diffusers' UNetMidBlock2D does.
    """
    groups: int | None = opts.groups
    if mid and kind == "spatial":
        default_groups = opts.groups if opts.time_scale_shift == "default" else None
        groups = opts.mid_attn_groups or default_groups
    if kind == "cross":
        return Transformer2DModel(
            heads,
            channels // heads,
            channels,
            num_layers=layers,
            cross_attention_dim=opts.cross_attention_dim,
            norm_num_groups=opts.groups,
            use_linear_projection=opts.use_linear_projection,
            upcast_attention=opts.upcast_attention,
            dropout=opts.dropout,
        )
    if kind == "spatial":
        return Attention(
            channels,
            heads=channels // heads,
            dim_head=heads,
            bias=True,
            norm_num_groups=groups,
            eps=opts.eps,
            residual_connection=True,
            rescale_output_factor=opts.output_scale_factor,
        )
    return None


def _resnet(in_ch: int, out_ch: int, opts: BlockOptions) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_ch,
        out_ch,
        temb_channels=opts.temb_channels,
        groups=opts.groups,
        eps=opts.eps,
        dropout=opts.dropout,
        act_fn=opts.act_fn,
        output_scale_factor=opts.output_scale_factor,
        time_embedding_norm=opts.time_scale_shift,
    )


class _Stage(nn.Module):
    """Runs a (resnet, attention) pair, optionally under activation checkpointing."""

    gradient_checkpointing = False

    def _run(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _pair(
        self,
        resnet: nn.Module,
        attn: nn.Module | None,
        h: torch.Tensor,
        temb: torch.Tensor | None,
        context: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self._run(resnet, h, temb)
        if attn is None:
            return h
        if isinstance(attn, Transformer2DModel):
            return self._run(attn, h, context)
        return self._run(attn, h)


class DownBlock(_Stage):
    """``layers`` resnets (each optionally followed by attention), then a strided conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layers: int,
        opts: BlockOptions,
        attention: str | None = None,
        heads: int = 8,
        transformer_layers: int = 1,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            _resnet(in_channels if i == 0 else out_channels, out_channels, opts)
            for i in range(layers)
        )
        if attention is not None:
            self.attentions = nn.ModuleList(
                _attention(attention, out_channels, heads, transformer_layers, opts)
                for _ in range(layers)
            )
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, out_channels, padding=downsample_padding)]
            )

    def forward(
        self,
        h: torch.Tensor,
        temb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        attns = getattr(self, "attentions", [None] * len(self.resnets))
        states: tuple[torch.Tensor, ...] = ()
        for resnet, attn in zip(self.resnets, attns, strict=True):
            h = self._pair(resnet, attn, h, temb, context)
            states += (h,)
        if hasattr(self, "downsamplers"):
            h = self.downsamplers[0](h)
            states += (h,)
        return h, states


class UpBlock(_Stage):
    """Resnets over the concatenation with the matching skip connection, then 2x upsample.

    ``prev_channels=None`` is the VAE decoder's variant, which has no skip connections.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_channels: int | None,
        layers: int,
        opts: BlockOptions,
        attention: str | None = None,
        heads: int = 8,
        transformer_layers: int = 1,
        add_upsample: bool = True,
    ) -> None:
        super().__init__()
        self.skips = prev_channels is not None
        resnets = []
        for i in range(layers):
            if self.skips:
                skip = in_channels if i == layers - 1 else out_channels
                first = prev_channels if i == 0 else out_channels
                resnets.append(_resnet(first + skip, out_channels, opts))
            else:
                resnets.append(_resnet(in_channels if i == 0 else out_channels, out_channels, opts))
        self.resnets = nn.ModuleList(resnets)
        if attention is not None:
            self.attentions = nn.ModuleList(
                _attention(attention, out_channels, heads, transformer_layers, opts)
                for _ in range(layers)
            )
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)])

    def forward(
        self,
        h: torch.Tensor,
        skips: tuple[torch.Tensor, ...] = (),
        temb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        attns = getattr(self, "attentions", [None] * len(self.resnets))
        remaining = list(skips)
        for resnet, attn in zip(self.resnets, attns, strict=True):
            if self.skips:
                h = torch.cat([h, remaining.pop()], dim=1)
            h = self._pair(resnet, attn, h, temb, context)
        if hasattr(self, "upsamplers"):
            h = self.upsamplers[0](h, upsample_size)
        return h


class MidBlock(_Stage):
    """resnet, then (attention, resnet) ``layers`` times, at the lowest resolution."""

    def __init__(
        self,
        channels: int,
        opts: BlockOptions,
        attention: str | None,
        heads: int = 8,
        layers: int = 1,
        transformer_layers: int = 1,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(_resnet(channels, channels, opts) for _ in range(layers + 1))
        self.has_attention = attention is not None
        if attention is not None:
            self.attentions = nn.ModuleList(
                _attention(attention, channels, heads, transformer_layers, opts, mid=True)
                for _ in range(layers)
            )

    def forward(
        self,
        h: torch.Tensor,
        temb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self._run(self.resnets[0], h, temb)
        attns = self.attentions if self.has_attention else [None] * (len(self.resnets) - 1)
        for attn, resnet in zip(attns, self.resnets[1:], strict=True):
            if attn is not None:
                h = self._run(attn, h, context) if isinstance(attn, Transformer2DModel) else (
                    self._run(attn, h))
            h = self._run(resnet, h, temb)
        return h

"""ControlNetModel: a trainable copy of the UNet's encoder that steers it with an image.

The control image (edges, depth, pose) goes through a small strided conv stack
(``controlnet_cond_embedding``) to the latent resolution and is added to the encoder's
input; the encoder (the UNet's own down and mid blocks) then runs as usual, and each of its
skip connections, plus the mid block's output, leaves through a 1x1 conv initialised to
zero (``controlnet_down_blocks``, ``controlnet_mid_block``). The UNet adds these residuals
to its own skips (``down_block_additional_residuals``), so an untrained ControlNet changes
nothing. Parameter names equal diffusers', so a diffusers folder's weights load as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import BlockOptions, DownBlock, MidBlock, attention_kind
from .config import per_block
from .embeddings import TimestepEmbedding, broadcast_timesteps, timestep_embedding
from .modeling import ModelBase
from .unet import UNet2DConditionModel

CONTROLNET_DEFAULTS: dict[str, Any] = {
    "in_channels": 4,
    "conditioning_channels": 3,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "projection_class_embeddings_input_dim": None,
    "controlnet_conditioning_channel_order": "rgb",
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "global_pool_conditions": False,
    "addition_embed_type_num_heads": 64,
}

# UNet settings a ControlNet copies when it is made from a UNet (diffusers' ``from_unet``).
_FROM_UNET_KEYS = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
    "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
    "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
    "transformer_layers_per_block", "attention_head_dim", "num_attention_heads",
    "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
    "upcast_attention", "resnet_time_scale_shift", "projection_class_embeddings_input_dim",
)


def _check_supported(cfg: Mapping[str, Any]) -> None:
    for key in ("encoder_hid_dim", "encoder_hid_dim_type", "class_embed_type",
                "num_class_embeds"):
        if cfg[key] is not None:
            raise ValueError(f"ControlNetModel: {key}={cfg[key]!r} is not supported")
    if cfg["addition_embed_type"] not in (None, "text_time"):
        raise ValueError("ControlNetModel: addition_embed_type="
                         f"{cfg['addition_embed_type']!r} is not supported")
    if cfg["controlnet_conditioning_channel_order"] not in ("rgb", "bgr"):
        raise ValueError("ControlNetModel: controlnet_conditioning_channel_order must be "
                         "'rgb' or 'bgr'")
    if any(per_block(cfg["only_cross_attention"], len(cfg["down_block_types"]),
                     "only_cross_attention")):
        raise ValueError("ControlNetModel: only_cross_attention is not supported")


class ConditioningEmbedding(nn.Module):
    """The control image down to the latent grid: a conv, then (conv, strided conv) per
    channel step, SiLU after each, and a zero-initialised conv out to the UNet's width."""

    def __init__(self, out_channels: int, in_channels: int,
                 channels: Sequence[int]) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for ch_in, ch_out in zip(channels[:-1], channels[1:], strict=True):
            blocks.append(nn.Conv2d(ch_in, ch_in, 3, padding=1))
            blocks.append(nn.Conv2d(ch_in, ch_out, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(cond))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNetModel(ModelBase):
    """Down residuals and a mid residual for the UNet, from a control image.

    Built from a diffusers ``config.json`` dict (ControlNetModel's keys and defaults).
    """

    DEFAULTS = CONTROLNET_DEFAULTS

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        _check_supported(cfg)
        types = list(cfg["down_block_types"])
        channels = list(cfg["block_out_channels"])
        n = len(types)
        heads = per_block(cfg["num_attention_heads"] or cfg["attention_head_dim"], n,
                          "attention_head_dim")
        layers = per_block(cfg["layers_per_block"], n, "layers_per_block")
        tlayers = per_block(cfg["transformer_layers_per_block"], n,
                            "transformer_layers_per_block")
        time_dim = channels[0] * 4
        self.conv_in = nn.Conv2d(cfg["in_channels"], channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim, cfg["act_fn"])
        self.add_embedding: TimestepEmbedding | None = None
        if cfg["addition_embed_type"] == "text_time":
            self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"],
                                                   time_dim)
        self.controlnet_cond_embedding = ConditioningEmbedding(
            channels[0], cfg["conditioning_channels"], cfg["conditioning_embedding_out_channels"])
        opts = BlockOptions(
            temb_channels=time_dim, groups=cfg["norm_num_groups"], eps=cfg["norm_eps"],
            act_fn=cfg["act_fn"], time_scale_shift=cfg["resnet_time_scale_shift"],
            cross_attention_dim=cfg["cross_attention_dim"],
            use_linear_projection=cfg["use_linear_projection"],
            upcast_attention=cfg["upcast_attention"],
        )
        self.down_blocks = nn.ModuleList()
        zero_convs = [_zero_conv(channels[0])]
        out_ch = channels[0]
        for i, block_type in enumerate(types):
            in_ch, out_ch = out_ch, channels[i]
            last = i == n - 1
            self.down_blocks.append(DownBlock(
                in_ch, out_ch, layers[i], opts, attention_kind(block_type), heads[i],
                tlayers[i], add_downsample=not last,
                downsample_padding=cfg["downsample_padding"]))
            zero_convs += [_zero_conv(out_ch) for _ in range(layers[i] + (0 if last else 1))]
        self.controlnet_down_blocks = nn.ModuleList(zero_convs)
        self.mid_block = self._mid_block(channels[-1], heads[-1], tlayers[-1], opts)
        self.controlnet_mid_block = _zero_conv(channels[-1])

    def _mid_block(self, channels: int, heads: int, tlayers: int,
                   opts: BlockOptions) -> MidBlock:
        mid_type = self.config["mid_block_type"]
        kinds = {"UNetMidBlock2DCrossAttn": "cross", "UNetMidBlock2D": None}
        if mid_type not in kinds:
            raise ValueError(f"ControlNetModel: unsupported mid_block_type {mid_type!r}")
        mid_opts = BlockOptions(**{**opts.__dict__,
                                   "output_scale_factor": self.config["mid_block_scale_factor"]})
        return MidBlock(channels, mid_opts, kinds[mid_type], heads, transformer_layers=tlayers)

    @property
    def needs_text_time(self) -> bool:
        """Whether ``forward`` needs ``added_cond_kwargs`` (an SDXL ControlNet)."""
        return self.add_embedding is not None

    def _embedding(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                   added: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        cfg = self.config
        t = broadcast_timesteps(timestep, sample.shape[0], sample.device)
        t_emb = timestep_embedding(t, cfg["block_out_channels"][0], cfg["flip_sin_to_cos"],
                                   cfg["freq_shift"])
        emb = self.time_embedding(t_emb.to(dtype=sample.dtype))
        if self.add_embedding is not None:
            # The same pooled-text + micro-conditioning embedding as the UNet's.
            emb = emb + UNet2DConditionModel._text_time_embedding(
                self, added, emb.dtype)  # type: ignore[arg-type]
        return emb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        added_cond_kwargs: Mapping[str, torch.Tensor] | None = None,
        guess_mode: bool = False,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The residuals for each UNet skip connection and for its mid block.

        ``controlnet_cond`` is the control image ``[B, C, 8H, 8W]`` in 0..1. In guess mode
        the residuals grow from 0.1x at the first skip to 1x at the mid block (log-spaced),
        so the control dominates less where detail is decided.
        """
        if self.config["controlnet_conditioning_channel_order"] == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        emb = self._embedding(sample, timestep, added_cond_kwargs)
        h = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            h, states = block(h, emb, encoder_hidden_states)
            skips += states
        h = self.mid_block(h, emb, encoder_hidden_states)
        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips, strict=True)]
        mid = self.controlnet_mid_block(h)
        if guess_mode and not self.config["global_pool_conditions"]:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device)
            scales = scales * conditioning_scale
            down = [d * s for d, s in zip(down, scales, strict=False)]
            mid = mid * scales[-1]
        else:
            down = [d * conditioning_scale for d in down]
            mid = mid * conditioning_scale
        if self.config["global_pool_conditions"]:
            down = [d.mean(dim=(2, 3), keepdim=True) for d in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        return tuple(down), mid


def controlnet_config_from_unet(unet_config: Mapping[str, Any],
                                **overrides: Any) -> dict[str, Any]:
    """A ControlNet config matching a UNet's encoder (diffusers' ``from_unet``)."""
    config = {k: unet_config[k] for k in _FROM_UNET_KEYS if k in unet_config}
    config.update(overrides)
    return config


def controlnet_from_unet(unet: UNet2DConditionModel, **overrides: Any) -> ControlNetModel:
    """A new ControlNet whose encoder starts as a copy of ``unet``'s (the conditioning
    embedding and zero convs start fresh), the usual starting point for training one."""
    model = ControlNetModel(controlnet_config_from_unet(unet.config, **overrides))
    shared = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.")
    state = {k: v for k, v in unet.state_dict().items() if k.startswith(shared)}
    missing = model.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"the UNet does not match the ControlNet config: "
                         f"{missing.unexpected_keys[:3]}")
    return model.to(unet.dtype)

"""UNet2DModel: the unconditional pixel-space denoiser of DDPM (e.g. ``google/ddpm-cat-256``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .blocks import BlockOptions, DownBlock, MidBlock, UpBlock, attention_kind
from .embeddings import TimestepEmbedding, broadcast_timesteps, timestep_embedding
from .modeling import ModelBase
from .resnet import activation

UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}


class UNet2DModel(ModelBase):
    """Predicts the noise in an image at a timestep; no text conditioning."""

    DEFAULTS = UNET2D_DEFAULTS

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        for key, expected in (("time_embedding_type", "positional"), ("downsample_type", "conv"),
                              ("upsample_type", "conv"), ("class_embed_type", None),
                              ("num_class_embeds", None)):
            if cfg[key] != expected:
                raise ValueError(f"UNet2DModel: {key}={cfg[key]!r} is not supported")
        channels = list(cfg["block_out_channels"])
        down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
        n = len(channels)
        if len(down_types) != n or len(up_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels "
                             "must have the same length")
        self.in_channels = int(cfg["in_channels"])
        time_dim = cfg["time_embedding_dim"] or channels[0] * 4
        head_dim = cfg["attention_head_dim"]
        lpb = int(cfg["layers_per_block"])

        self.conv_in = nn.Conv2d(self.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim, cfg["act_fn"])
        opts = BlockOptions(
            temb_channels=time_dim, groups=cfg["norm_num_groups"], eps=cfg["norm_eps"],
            act_fn=cfg["act_fn"], dropout=cfg["dropout"],
            time_scale_shift=cfg["resnet_time_scale_shift"],
        )

        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, block_type in enumerate(down_types):
            in_ch, out_ch = out_ch, channels[i]
            self.down_blocks.append(DownBlock(
                in_ch, out_ch, lpb, opts, attention_kind(block_type), head_dim or out_ch,
                add_downsample=i < n - 1, downsample_padding=cfg["downsample_padding"],
            ))

        self.mid_block: MidBlock | None = None
        if cfg["mid_block_type"] is not None:
            if cfg["mid_block_type"] != "UNetMidBlock2D":
                raise ValueError(f"unsupported mid_block_type {cfg['mid_block_type']!r}")
            mid_opts = BlockOptions(**{
                **opts.__dict__, "output_scale_factor": cfg["mid_block_scale_factor"],
                "mid_attn_groups": cfg["attn_norm_num_groups"],
            })
            self.mid_block = MidBlock(channels[-1], mid_opts,
                                      "spatial" if cfg["add_attention"] else None,
                                      head_dim or channels[-1])

        self.up_blocks = nn.ModuleList()
        rev = channels[::-1]
        out_ch = rev[0]
        for i, block_type in enumerate(up_types):
            prev, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(
                in_ch, out_ch, prev, lpb + 1, opts, attention_kind(block_type),
                head_dim or out_ch, add_upsample=i < n - 1,
            ))

        groups_out = cfg["norm_num_groups"] or min(channels[0] // 4, 32)
        self.conv_norm_out = nn.GroupNorm(groups_out, channels[0], eps=cfg["norm_eps"])
        self.conv_act = activation(cfg["act_fn"])
        self.conv_out = nn.Conv2d(channels[0], cfg["out_channels"], 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Return the predicted noise for ``sample`` (B, C, H, W) at ``timestep``."""
        if self.config["center_input_sample"]:
            sample = 2 * sample - 1.0
        t = broadcast_timesteps(timestep, sample.shape[0], sample.device)
        t_emb = timestep_embedding(t, self.config["block_out_channels"][0],
                                   self.config["flip_sin_to_cos"], self.config["freq_shift"])
        emb = self.time_embedding(t_emb.to(dtype=self.dtype))

        h = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            h, states = block(h, emb)
            skips += states
        if self.mid_block is not None:
            h = self.mid_block(h, emb)
        for block in self.up_blocks:
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            h = block(h, block_skips, emb)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))

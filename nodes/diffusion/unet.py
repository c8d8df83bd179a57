"""UNet2DConditionModel: the text-conditioned latent denoiser of Stable Diffusion 1.x, 2.x
and XL.

SDXL adds one thing to the architecture of 1.x/2.x (besides depth, which the config sets):
``addition_embed_type="text_time"``, an extra embedding of the pooled text embedding and the
micro-conditioning numbers (sizes, crop, aesthetic score) added to the timestep embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .blocks import BlockOptions, DownBlock, MidBlock, UpBlock, attention_kind
from .config import per_block
from .embeddings import TimestepEmbedding, broadcast_timesteps, timestep_embedding
from .modeling import ModelBase
from .resnet import activation

UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "addition_embed_type_num_heads": 64,
}

# Settings whose non-default values select architectures this module does not build
# (class conditioning, LCM guidance embedding, ...).
_UNSUPPORTED = (
    "encoder_hid_dim", "encoder_hid_dim_type", "class_embed_type",
    "num_class_embeds", "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act",
    "cross_attention_norm", "reverse_transformer_layers_per_block",
)


def _check_supported(cfg: Mapping[str, Any]) -> None:
    for key in _UNSUPPORTED:
        if cfg[key] is not None:
            raise ValueError(f"UNet2DConditionModel: {key}={cfg[key]!r} is not supported")
    checks = {
        "dual_cross_attention": False, "resnet_skip_time_act": False,
        "time_embedding_type": "positional", "attention_type": "default",
        "class_embeddings_concat": False,
    }
    for key, expected in checks.items():
        if cfg[key] != expected:
            raise ValueError(f"UNet2DConditionModel: {key}={cfg[key]!r} is not supported")
    if cfg["addition_embed_type"] not in (None, "text_time"):
        raise ValueError("UNet2DConditionModel: addition_embed_type="
                         f"{cfg['addition_embed_type']!r} is not supported")
    if cfg["addition_embed_type"] == "text_time" and not (
            cfg["addition_time_embed_dim"] and cfg["projection_class_embeddings_input_dim"]):
        raise ValueError("UNet2DConditionModel: addition_embed_type='text_time' needs "
                         "addition_time_embed_dim and projection_class_embeddings_input_dim")
    if any(per_block(cfg["only_cross_attention"], len(cfg["down_block_types"]),
                     "only_cross_attention")):
        raise ValueError("UNet2DConditionModel: only_cross_attention is not supported")


def _check_residuals(down: Sequence[torch.Tensor] | None, mid: torch.Tensor | None) -> None:
    """ControlNet residuals come as a pair; down residuals alone are a T2I-Adapter's, which
    enter the blocks differently and are not supported."""
    if (down is None) != (mid is None):
        raise ValueError("UNet2DConditionModel: pass down_block_additional_residuals and "
                         "mid_block_additional_residual together (a ControlNet's output)")


class UNet2DConditionModel(ModelBase):
    """Predicts the noise (or v) in ``sample`` at ``timestep`` given text embeddings.

    Built from a diffusers ``config.json`` dict; parameter names equal diffusers', so a
    diffusers state dict loads with ``load_state_dict`` as is.
    """

    DEFAULTS = UNET_DEFAULTS

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        _check_supported(cfg)
        down_types = list(cfg["down_block_types"])
        channels = list(cfg["block_out_channels"])
        n = len(down_types)
        if len(cfg["up_block_types"]) != n or len(channels) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels "
                             "must have the same length")
        # diffusers' historical naming: attention_head_dim holds the number of heads.
        heads = per_block(cfg["num_attention_heads"] or cfg["attention_head_dim"], n,
                          "attention_head_dim")
        layers = per_block(cfg["layers_per_block"], n, "layers_per_block")
        tlayers = per_block(cfg["transformer_layers_per_block"], n,
                            "transformer_layers_per_block")
        cross_dim = cfg["cross_attention_dim"]
        if isinstance(cross_dim, (list, tuple)):
            raise ValueError("a per-block cross_attention_dim is not supported")
        self.in_channels = int(cfg["in_channels"])

        time_dim = cfg["time_embedding_dim"] or channels[0] * 4
        k_in = cfg["conv_in_kernel"]
        self.conv_in = nn.Conv2d(self.in_channels, channels[0], k_in, padding=(k_in - 1) // 2)
        self.time_embedding = TimestepEmbedding(channels[0], time_dim, cfg["act_fn"])
        self.add_embedding: TimestepEmbedding | None = None
        if cfg["addition_embed_type"] == "text_time":
            self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"],
                                                   time_dim)
        opts = BlockOptions(
            temb_channels=time_dim, groups=cfg["norm_num_groups"], eps=cfg["norm_eps"],
            act_fn=cfg["act_fn"], dropout=cfg["dropout"],
            time_scale_shift=cfg["resnet_time_scale_shift"],
            output_scale_factor=cfg["resnet_out_scale_factor"], cross_attention_dim=cross_dim,
            use_linear_projection=cfg["use_linear_projection"],
            upcast_attention=cfg["upcast_attention"],
        )
        self.down_blocks = self._down_blocks(down_types, channels, layers, heads, tlayers, opts)
        self.mid_block = self._mid_block(channels[-1], heads[-1], tlayers[-1], opts)
        self.up_blocks = self._up_blocks(channels, layers, heads, tlayers, opts)
        self._output_layers(channels[0])

    def _down_blocks(self, types: list[str], channels: list[int], layers: list[int],
                     heads: list[int], tlayers: list[int], opts: BlockOptions
                     ) -> nn.ModuleList:
        """Encoder half: each block downsamples but the last."""
        blocks, n, out_ch = nn.ModuleList(), len(types), channels[0]
        for i, block_type in enumerate(types):
            in_ch, out_ch = out_ch, channels[i]
            blocks.append(DownBlock(
                in_ch, out_ch, layers[i], opts, attention_kind(block_type), heads[i], tlayers[i],
                add_downsample=i < n - 1, downsample_padding=self.config["downsample_padding"],
            ))
        return blocks

    def _mid_block(self, channels: int, heads: int, tlayers: int, opts: BlockOptions
                   ) -> MidBlock | None:
        mid_type = self.config["mid_block_type"]
        if mid_type is None:
            return None
        if mid_type != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"unsupported mid_block_type {mid_type!r}")
        mid_opts = BlockOptions(**{**opts.__dict__,
                                   "output_scale_factor": self.config["mid_block_scale_factor"]})
        return MidBlock(channels, mid_opts, "cross", heads, transformer_layers=tlayers)

    def _up_blocks(self, channels: list[int], layers: list[int], heads: list[int],
                   tlayers: list[int], opts: BlockOptions) -> nn.ModuleList:
        """Decoder half, mirroring the encoder: one more layer per block (for the skip from
        the downsampler), each block upsamples but the last."""
        rev_ch, rev_heads = channels[::-1], heads[::-1]
        rev_layers, rev_tlayers = layers[::-1], tlayers[::-1]
        blocks, n = nn.ModuleList(), len(channels)
        self.num_upsamplers = 0
        out_ch = rev_ch[0]
        for i, block_type in enumerate(self.config["up_block_types"]):
            prev, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            add_up = i < n - 1
            self.num_upsamplers += int(add_up)
            blocks.append(UpBlock(
                in_ch, out_ch, prev, rev_layers[i] + 1, opts, attention_kind(block_type),
                rev_heads[i], rev_tlayers[i], add_upsample=add_up,
            ))
        return blocks

    def _output_layers(self, channels: int) -> None:
        cfg = self.config
        self.conv_norm_out: nn.GroupNorm | None = None
        self.conv_act: nn.Module | None = None
        if cfg["norm_num_groups"] is not None:
            self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], channels,
                                              eps=cfg["norm_eps"])
            self.conv_act = activation(cfg["act_fn"])
        k_out = cfg["conv_out_kernel"]
        self.conv_out = nn.Conv2d(channels, cfg["out_channels"], k_out,
                                  padding=(k_out - 1) // 2)

    @property
    def needs_text_time(self) -> bool:
        """Whether ``forward`` needs ``added_cond_kwargs`` (pooled text + time ids: SDXL)."""
        return self.add_embedding is not None

    def _text_time_embedding(self, added: Mapping[str, torch.Tensor] | None,
                             dtype: torch.dtype) -> torch.Tensor:
        """SDXL's extra embedding: the pooled text embedding next to each micro-conditioning
        number embedded sinusoidally, through an MLP (diffusers' ``add_embedding``)."""
        if added is None or "text_embeds" not in added or "time_ids" not in added:
            raise ValueError("this UNet (SDXL) needs added_cond_kwargs with 'text_embeds' "
                             "(pooled text embeddings) and 'time_ids' (micro-conditioning)")
        text_embeds, time_ids = added["text_embeds"], added["time_ids"]
        cfg = self.config
        time_embeds = timestep_embedding(time_ids.flatten(), cfg["addition_time_embed_dim"],
                                         cfg["flip_sin_to_cos"], cfg["freq_shift"])
        time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
        assert self.add_embedding is not None
        return self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: Mapping[str, torch.Tensor] | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the model output (same shape as ``sample``). ``added_cond_kwargs``
        (``text_embeds``, ``time_ids``) is required by SDXL UNets and ignored otherwise.

        The two residual inputs are a ControlNet's output: one tensor per skip connection,
        added to it, and one added to the mid block's output (diffusers' semantics)."""
        _check_residuals(down_block_additional_residuals, mid_block_additional_residual)
        factor = 2**self.num_upsamplers
        odd_size = any(s % factor != 0 for s in sample.shape[-2:])
        if self.config["center_input_sample"]:
            sample = 2 * sample - 1.0
        t = broadcast_timesteps(timestep, sample.shape[0], sample.device)
        t_emb = timestep_embedding(t, self.config["block_out_channels"][0],
                                   self.config["flip_sin_to_cos"], self.config["freq_shift"])
        emb = self.time_embedding(t_emb.to(dtype=sample.dtype))
        if self.add_embedding is not None:
            emb = emb + self._text_time_embedding(added_cond_kwargs, emb.dtype)

        h = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            h, states = block(h, emb, encoder_hidden_states)
            skips += states
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"{len(down_block_additional_residuals)} down residuals for "
                                 f"{len(skips)} skip connections")
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals,
                                                strict=True))
        if self.mid_block is not None:
            h = self.mid_block(h, emb, encoder_hidden_states)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual
        for i, block in enumerate(self.up_blocks):
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            size = skips[-1].shape[2:] if odd_size and i < len(self.up_blocks) - 1 else None
            h = block(h, block_skips, emb, encoder_hidden_states, upsample_size=size)
        if self.conv_norm_out is not None and self.conv_act is not None:
            h = self.conv_act(self.conv_norm_out(h))
        return self.conv_out(h)

"""AutoencoderKL: the Stable Diffusion VAE between pixels and 8x-smaller latents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .blocks import BlockOptions, DownBlock, MidBlock, UpBlock, attention_kind
from .modeling import ModelBase
from .resnet import activation
from .tiling import tiled

VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}


class DiagonalGaussian:
    """The encoder's latent distribution: per-element mean and log-variance."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(
        self, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        """mean + std * noise; a list of generators draws one per batch element.

        Noise is drawn on the generator's device (a CPU generator gives the same latents on
        every machine) and moved to the mean's device, as diffusers does.
        """
        shape, device, dtype = self.mean.shape, self.mean.device, self.mean.dtype
        if isinstance(generator, Sequence):
            noise = torch.cat([
                torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
                for g in generator
            ]).to(device)
        else:
            noise_device = generator.device if generator is not None else device
            noise = torch.randn(shape, generator=generator, device=noise_device, dtype=dtype)
            noise = noise.to(device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to the standard normal, per sample (for training)."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


def _vae_opts(cfg: Mapping[str, Any]) -> BlockOptions:
    return BlockOptions(temb_channels=None, groups=cfg["norm_num_groups"], eps=1e-6,
                        act_fn=cfg["act_fn"])


class Encoder(nn.Module):
    """Pixels -> latent moments (mean and log-variance stacked on channels)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        channels = list(cfg["block_out_channels"])
        opts = _vae_opts(cfg)
        self.conv_in = nn.Conv2d(cfg["in_channels"], channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, block_type in enumerate(cfg["down_block_types"]):
            in_ch, out_ch = out_ch, channels[i]
            self.down_blocks.append(DownBlock(
                in_ch, out_ch, cfg["layers_per_block"], opts, attention_kind(block_type),
                out_ch, add_downsample=i < len(channels) - 1, downsample_padding=0,
            ))
        self.mid_block = MidBlock(channels[-1], opts,
                                  "spatial" if cfg["mid_block_add_attention"] else None,
                                  channels[-1])
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], channels[-1], eps=1e-6)
        self.conv_act = activation(cfg["act_fn"])
        self.conv_out = nn.Conv2d(channels[-1], 2 * cfg["latent_channels"], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h)
        h = self.mid_block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """Latents -> pixels."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        channels = list(cfg["block_out_channels"])
        opts = _vae_opts(cfg)
        self.conv_in = nn.Conv2d(cfg["latent_channels"], channels[-1], 3, padding=1)
        self.mid_block = MidBlock(channels[-1], opts,
                                  "spatial" if cfg["mid_block_add_attention"] else None,
                                  channels[-1])
        self.up_blocks = nn.ModuleList()
        rev = channels[::-1]
        out_ch = rev[0]
        for i, block_type in enumerate(cfg["up_block_types"]):
            in_ch, out_ch = out_ch, rev[i]
            self.up_blocks.append(UpBlock(
                in_ch, out_ch, None, cfg["layers_per_block"] + 1, opts,
                attention_kind(block_type), out_ch, add_upsample=i < len(channels) - 1,
            ))
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], channels[0], eps=1e-6)
        self.conv_act = activation(cfg["act_fn"])
        self.conv_out = nn.Conv2d(channels[0], cfg["out_channels"], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class AutoencoderKL(ModelBase):
    """KL-regularised autoencoder; ``config["scaling_factor"]`` scales latents to unit variance.

    Slicing encodes/decodes one image of a batch at a time; tiling splits large images into
    overlapping tiles. Both keep results equal to diffusers' with the same options.
    """

    DEFAULTS = VAE_DEFAULTS

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        latent = cfg["latent_channels"]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if cfg["use_quant_conv"] else None
        self.post_quant_conv = (
            nn.Conv2d(latent, latent, 1) if cfg["use_post_quant_conv"] else None
        )
        self.use_slicing = False
        self.use_tiling = False
        size = cfg["sample_size"]
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / 2 ** (len(cfg["block_out_channels"]) - 1))
        self.tile_overlap_factor = 0.25

    def enable_slicing(self) -> None:
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self) -> None:
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_conv is None:
            return self.encoder(x)
        return self.quant_conv(self.encoder(x))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        size = self.tile_sample_min_size
        if self.use_tiling and (x.shape[-1] > size or x.shape[-2] > size):
            return tiled(x, self._encode_moments, size, self.tile_latent_min_size,
                         self.tile_overlap_factor)
        return self._encode_moments(x)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        size = self.tile_latent_min_size
        if self.use_tiling and (z.shape[-1] > size or z.shape[-2] > size):
            return tiled(z, self._decode_tile, size, self.tile_sample_min_size,
                         self.tile_overlap_factor)
        return self._decode_tile(z)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images in [-1, 1], (B, C, H, W) -> the latent distribution (unscaled)."""
        x = x.to(self.dtype)
        if self.use_slicing and x.shape[0] > 1:
            return DiagonalGaussian(torch.cat([self._encode(s) for s in x.split(1)]))
        return DiagonalGaussian(self._encode(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> images in about [-1, 1], in the VAE's dtype."""
        z = z.to(self.dtype)
        if self.use_slicing and z.shape[0] > 1:
            return torch.cat([self._decode(s) for s in z.split(1)])
        return self._decode(z)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reconstruct ``sample`` (for training): encode, take the mean or a sample, decode."""
        posterior = self.encode(sample)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z)

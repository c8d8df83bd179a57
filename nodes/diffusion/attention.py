"""Multi-head attention and the spatial transformer used by the cross-attention UNet blocks.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (flash /
memory-efficient kernels where the device has them). *Attention slicing* trades speed for
memory by processing ``slice_size`` (batch x head) rows at a time, so larger batches fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import add_

_HALF = (torch.float16, torch.bfloat16)


def scaled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    slice_size: int | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """(B, N, heads*d) queries against (B, M, heads*d) keys/values -> (B, N, heads*d).

    ``upcast`` computes half-precision attention in float32: SD2.x checkpoints overflow in
    fp16 otherwise (their configs set ``upcast_attention``).
    """
    batch, n_q, inner = q.shape
    d = inner // heads
    dtype = q.dtype
    q = q.reshape(batch, n_q, heads, d).transpose(1, 2)
    k = k.reshape(batch, -1, heads, d).transpose(1, 2)
    v = v.reshape(batch, -1, heads, d).transpose(1, 2)
    if upcast and dtype in _HALF:
        q, k, v = q.float(), k.float(), v.float()
    if slice_size is None or slice_size >= batch * heads:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        qf = q.reshape(batch * heads, n_q, d)
        kf = k.reshape(batch * heads, -1, d)
        vf = v.reshape(batch * heads, -1, d)
        parts = [
            F.scaled_dot_product_attention(
                qf[i : i + slice_size], kf[i : i + slice_size], vf[i : i + slice_size]
            )
            for i in range(0, batch * heads, slice_size)
        ]
        out = torch.cat(parts, dim=0).reshape(batch, heads, n_q, d)
    return out.transpose(1, 2).reshape(batch, n_q, inner).to(dtype)


class Attention(nn.Module):
    """Self- or cross-attention with diffusers' parameter names (``to_q/to_k/to_v/to_out.0``).

    With ``norm_num_groups`` it is the older spatial attention block (UNet2DModel, VAE):
    it takes (B, C, H, W), group-normalises, attends over pixels and adds the input back.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int = 8,
        dim_head: int = 64,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        upcast_attention: bool = False,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        residual_connection: bool = False,
        rescale_output_factor: float = 1.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.upcast_attention = upcast_attention
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        self.slice_size: int | None = None
        self.group_norm: nn.GroupNorm | None = (
            nn.GroupNorm(norm_num_groups, query_dim, eps=eps, affine=True)
            if norm_num_groups is not None
            else None
        )
        context_dim = cross_attention_dim or query_dim
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=True), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        residual = x
        spatial = x.ndim == 4
        if spatial:
            b, c, h, w = x.shape
            if self.group_norm is not None:
                x = self.group_norm(x)
            x = x.reshape(b, c, h * w).transpose(1, 2)
        elif self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        context = x if context is None else context
        out = scaled_attention(
            self.to_q(x),
            self.to_k(context),
            self.to_v(context),
            self.heads,
            self.slice_size,
            self.upcast_attention,
        )
        out = self.to_out[1](self.to_out[0](out))
        if spatial:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if self.residual_connection:
            out = add_(out, residual)
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, half of it gating the other half.

    The two halves are computed as two matmuls on the weight's row blocks (views, no copy)
    so both come out contiguous; the gate is applied in place when no gradient flows.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.proj.weight, self.proj.bias
        n = w.shape[0] // 2
        hidden = F.linear(x, w[:n], b[:n])
        gate = F.gelu(F.linear(x, w[n:], b[n:]))
        if hidden.requires_grad:
            return hidden * gate
        return hidden.mul_(gate)


class FeedForward(nn.Module):
    """GEGLU MLP; ``net.0 / net.1 / net.2`` keeps diffusers' key layout."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text, then the feed-forward."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None,
        dropout: float = 0.0,
        upcast_attention: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, None, dropout=dropout,
                               upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, dropout=dropout,
                               upcast_attention=upcast_attention)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = add_(self.attn1(self.norm1(x)), x)
        x = add_(self.attn2(self.norm2(x), context), x)
        return add_(self.ff(self.norm3(x)), x)


class Transformer2DModel(nn.Module):
    """GroupNorm, project in, transformer blocks over the H*W tokens, project out, residual.

    ``use_linear_projection`` (SD2.x) projects with linear layers after flattening instead of
    1x1 convolutions before it; the two are numerically different layouts of the same idea.
    """

    def __init__(
        self,
        heads: int,
        dim_head: int,
        in_channels: int,
        num_layers: int = 1,
        cross_attention_dim: int | None = None,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner)
            self.proj_out: nn.Module = nn.Linear(inner, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, dropout,
                                  upcast_attention)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = x
        # Tokens (B, H*W, C). The 1x1-convolution projections of the non-linear layout are
        # the same maths as a matmul on the flattened tokens, which is cheaper than a conv.
        x = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = F.linear(x, self._matrix(self.proj_in), self.proj_in.bias)
        for block in self.transformer_blocks:
            x = block(x, context)
        x = F.linear(x, self._matrix(self.proj_out), self.proj_out.bias)
        layout = (torch.channels_last if residual.is_contiguous(memory_format=torch.channels_last)
                  and not residual.is_contiguous() else torch.contiguous_format)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=layout)
        return add_(x, residual)

    @staticmethod
    def _matrix(layer: nn.Module) -> torch.Tensor:
        weight = layer.weight
        return weight.reshape(weight.shape[0], weight.shape[1]) if weight.ndim == 4 else weight

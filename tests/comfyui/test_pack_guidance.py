"""The pack's guidance on a toy network: each conditioning option changes the estimate
where and when it should, and nowhere else. (Equality with ComfyUI's own code is
`test_pack_guidance_oracle`.)"""

from __future__ import annotations

import torch

from nodes.comfyui.conditioning import (
    conditioning_combine,
    conditioning_set_area,
    conditioning_set_timestep_range,
    conditioning_zero_out,
)
from nodes.comfyui.guidance.denoiser import GuidedDenoiser
from nodes.comfyui.types import Guider, Model
from nodes.diffusion.ksampling import DiscreteSampling
from nodes.types import Conditioning, UNet

SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
CHANNELS, DIM = 4, 8


class ToyNet(torch.nn.Module):
    """A small deterministic stand-in for a UNet: mixes every cell with the mean of the
    context and a global term, so crops, batches and contexts all matter."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mix = torch.nn.Parameter(torch.randn(DIM, CHANNELS, generator=g) * 0.3)
        self.calls: list[tuple[int, ...]] = []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor
                ) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        ctx = encoder_hidden_states.mean(dim=1) @ self.mix  # [B, C]
        glob = x.mean(dim=(2, 3), keepdim=True)
        return torch.tanh(x * 0.7 + ctx[:, :, None, None] + glob * 0.3) * (
            1 + t[:, None, None, None] / 1000)


def cond(seed: int) -> Conditioning:
    return Conditioning(torch.randn(1, 77, DIM, generator=torch.Generator().manual_seed(seed)))


def estimate(positive: Conditioning, negative: Conditioning, cfg: float = 6.0,
             sigma: float = 3.0, net: ToyNet | None = None) -> torch.Tensor:
    net = net or ToyNet()
    model = Model(UNet(net), DiscreteSampling.from_config(SD15))
    x = torch.randn(1, CHANNELS, 16, 16, generator=torch.Generator().manual_seed(7)) * 3
    denoiser = GuidedDenoiser(Guider(model, positive, negative, cfg), x.shape, x.device)
    with torch.no_grad():
        return denoiser(x, torch.full((1,), sigma))


def changed_cells(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().amax(dim=(0, 1)) > 1e-6


def test_an_area_changes_only_its_own_cells() -> None:
    base = estimate(cond(1), cond(2))
    # 64 x 32 pixels at (32, 16): latent cells rows 2..5, columns 4..11.
    area = conditioning_set_area(cond(3), 64, 32, 32, 16, 1.0)
    with_area = estimate(conditioning_combine(cond(1), area), cond(2))
    changed = changed_cells(base, with_area)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:6, 4:12] = True
    assert torch.equal(changed, expected)


def test_a_timestep_range_applies_only_inside_it() -> None:
    late = conditioning_set_timestep_range(cond(3), 0.5, 1.0)
    both = conditioning_combine(cond(1), late)
    base = estimate(cond(1), cond(2), sigma=10.0)
    torch.testing.assert_close(estimate(both, cond(2), sigma=10.0), base, atol=0, rtol=0)
    assert changed_cells(estimate(cond(1), cond(2), sigma=0.5),
                         estimate(both, cond(2), sigma=0.5)).all()


def test_combined_entries_average_their_predictions() -> None:
    a = estimate(cond(1), cond(2), cfg=1.0)
    b = estimate(cond(3), cond(2), cfg=1.0)
    both = estimate(conditioning_combine(cond(1), cond(3)), cond(2), cfg=1.0)
    torch.testing.assert_close(both, (a + b) / 2, atol=1e-5, rtol=1e-5)


def test_guidance_is_one_batched_call_and_none_at_cfg_one() -> None:
    net = ToyNet()
    estimate(cond(1), cond(2), cfg=6.0, net=net)
    assert net.calls == [(2, CHANNELS, 16, 16)]
    net.calls.clear()
    at_one = estimate(cond(1), cond(2), cfg=1.0, net=net)
    assert net.calls == [(1, CHANNELS, 16, 16)]
    torch.testing.assert_close(at_one, estimate(cond(1), conditioning_zero_out(cond(2)),
                                                cfg=1.0))


def test_cfg_moves_away_from_the_negative() -> None:
    cond_only = estimate(cond(1), cond(2), cfg=1.0)
    uncond = estimate(cond(2), cond(2), cfg=1.0)
    guided = estimate(cond(1), cond(2), cfg=4.0)
    torch.testing.assert_close(guided, uncond + (cond_only - uncond) * 4.0, atol=1e-5,
                               rtol=1e-5)

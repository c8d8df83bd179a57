"""The pack's guidance (conditioning entries, areas, strengths, masks, timestep ranges, CFG)
against ComfyUI's own code run in-process: ComfyUI prepares the same entries its samplers
would (areas resolved, ranges turned into sigmas, opposite areas paired) and combines them
with its `sampling_function`, around the same toy network; both give the same estimate."""

from __future__ import annotations

import types
import uuid
from typing import Any

import pytest
import torch

from nodes.comfyui.guidance.denoiser import GuidedDenoiser
from nodes.comfyui.types import Guider, Model
from nodes.diffusion.ksampling import DiscreteSampling
from nodes.types import Conditioning, CondPart, UNet
from tests.comfyui.test_pack_guidance import CHANNELS, DIM, ToyNet
from tests.support.comfy_oracle import comfy_model_sampling, import_comfy, oracle_available

pytestmark = pytest.mark.skipif(not oracle_available(), reason="ComfyUI oracle not found")

SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.fixture(scope="module")
def comfy() -> dict[str, Any]:
    return import_comfy()


def embeds(seed: int, length: int = 77) -> torch.Tensor:
    return torch.randn(1, length, DIM, generator=torch.Generator().manual_seed(seed))


def comfy_entry(part: CondPart) -> dict[str, Any]:
    """A conditioning entry as ComfyUI's samplers hold it."""
    import comfy.conds

    entry = {k: v for k, v in part.options.items() if k != "pooled_output"}
    entry["model_conds"] = {"c_crossattn": comfy.conds.CONDCrossAttn(part.embeds)}
    entry["uuid"] = uuid.uuid4()
    return entry


def comfy_estimate(comfy: dict[str, Any], net: ToyNet, positive: Conditioning,
                   negative: Conditioning, cfg: float, x: torch.Tensor,
                   sigma: torch.Tensor) -> torch.Tensor:
    samplers = comfy["samplers"]
    ms = comfy_model_sampling(comfy)

    def apply_model(x_in: torch.Tensor, t: torch.Tensor, c_crossattn: torch.Tensor,
                    **_: Any) -> torch.Tensor:
        out = net(ms.calculate_input(t, x_in), ms.timestep(t).float(), c_crossattn)
        return ms.calculate_denoised(t, out, x_in)

    patcher = types.SimpleNamespace(prepare_state=lambda t: None,
                                    apply_hooks=lambda hooks=None: {})
    model = types.SimpleNamespace(apply_model=apply_model, model_sampling=ms,
                                  current_patcher=patcher,
                                  memory_required=lambda *a, **k: 0)
    conds = {"positive": [comfy_entry(p) for p in positive.parts],
             "negative": [comfy_entry(p) for p in negative.parts]}
    for k in conds:
        samplers.resolve_areas_and_cond_masks_multidim(conds[k], x.shape[2:], x.device)
        samplers.calculate_start_end_timesteps(model, conds[k])
    for k in conds:
        for c in conds[k]:
            for kk in conds:
                if k != kk:
                    samplers.create_cond_with_same_area_if_none(conds[kk], c)
    with torch.no_grad():
        return samplers.sampling_function(model, x, sigma, conds["negative"],
                                          conds["positive"], cfg, model_options={})


def our_estimate(net: ToyNet, positive: Conditioning, negative: Conditioning, cfg: float,
                 x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    model = Model(UNet(net), DiscreteSampling.from_config(SD15))
    denoiser = GuidedDenoiser(Guider(model, positive, negative, cfg), x.shape, x.device)
    with torch.no_grad():
        return denoiser(x, sigma)


def plain(seed: int, length: int = 77, **options: Any) -> CondPart:
    return CondPart(embeds(seed, length), options)


CASES = {
    "plain": ([plain(1)], [plain(2)]),
    "combined": ([plain(1), plain(3, strength=0.4)], [plain(2)]),
    "long_and_short": ([plain(1, 154), plain(3)], [plain(2)]),
    "area": ([plain(1), plain(3, area=(4, 6, 2, 3), strength=1.5)], [plain(2)]),
    "area_at_edge": ([plain(1), plain(3, area=(8, 20, 4, 0))], [plain(2)]),
    "area_in_negative": ([plain(1)], [plain(2), plain(4, area=(5, 5, 1, 1))]),
    "area_percentage": ([plain(1), plain(3, area=("percentage", 0.5, 0.25, 0.25, 0.5))],
                        [plain(2)]),
    "late_range": ([plain(1), plain(3, start_percent=0.4, end_percent=1.0)], [plain(2)]),
    "early_range": ([plain(1, start_percent=0.0, end_percent=0.3), plain(3)], [plain(2)]),
    "mask": ([plain(1), plain(3, mask=torch.linspace(0, 1, 24 * 16).reshape(1, 16, 24),
                             mask_strength=0.8, set_area_to_bounds=False)], [plain(2)]),
    "mask_bounds": ([plain(1), plain(3, mask=(torch.arange(40 * 24) % 7 == 0).float()
                                       .reshape(1, 40, 24)[:, 10:30],
                                       set_area_to_bounds=True)], [plain(2)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("cfg", [1.0, 6.5])
@pytest.mark.parametrize("sigma_value", [14.6, 3.0, 0.3])
def test_guided_estimate_matches_comfyui(comfy: dict[str, Any], name: str, cfg: float,
                                         sigma_value: float) -> None:
    positive_parts, negative_parts = CASES[name]
    positive = Conditioning.from_parts(positive_parts)
    negative = Conditioning.from_parts(negative_parts)
    net = ToyNet()
    x = torch.randn(2, CHANNELS, 10, 12, generator=torch.Generator().manual_seed(7)) * 3
    sigma = torch.full((2,), sigma_value)
    theirs = comfy_estimate(comfy, net, positive, negative, cfg, x, sigma)
    ours = our_estimate(net, positive, negative, cfg, x, sigma)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

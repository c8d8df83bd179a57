"""Fixtures: tiny random diffusers pipelines saved to folders, and a shared executor.

The pipelines are built by diffusers itself (the oracle) with fixed seeds, in the style of
diffusers' own fast tests, and saved with `save_pretrained`; our nodes load the same
folders. Sizes are chosen so a full denoising run takes milliseconds on one CPU thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")

import nodes  # noqa: E402,F401  (registers the node library)
from graph_runtime.cache import OutputCache  # noqa: E402
from graph_runtime.executor import Executor, RunResult  # noqa: E402
from graph_runtime.registry import REGISTRY  # noqa: E402
from graph_runtime.workflow import Workflow, apply_overrides, load_workflow  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
CLIP_VOCAB = REPO / "nodes" / "diffusion" / "tokenizers" / "clip"
IMAGE_SIZE = 32  # pixels; the VAE halves it once, so latents are 16x16


def _text_encoder() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77,
        projection_dim=32,
    )
    return CLIPTextModel(config).eval()


def _sd_components() -> dict[str, Any]:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=IMAGE_SIZE // 2,
        in_channels=4, out_channels=4, norm_num_groups=8, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4, layers_per_block=1, sample_size=IMAGE_SIZE,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
        steps_offset=1,
    )
    return {"unet": unet.eval(), "vae": vae.eval(), "scheduler": scheduler,
            "text_encoder": _text_encoder(),
            "tokenizer": CLIPTokenizer.from_pretrained(str(CLIP_VOCAB))}


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stable Diffusion pipeline folder (diffusers layout) with tiny random weights."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    pipe = StableDiffusionPipeline(**_sd_components(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_ddpm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unconditional pixel-space DDPM pipeline folder (UNet2DModel + DDPMScheduler)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    folder = tmp_path_factory.mktemp("models") / "tiny-ddpm"
    DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler(num_train_timesteps=1000)
                 ).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def executor() -> Executor:
    """One executor (and cache) for the session, as a server process would keep."""
    return Executor(REGISTRY, OutputCache())


@pytest.fixture(scope="session", autouse=True)
def _quiet_diffusers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()


def shipped(name: str, overrides: list[str] | None = None) -> Workflow:
    """A workflow from workflows/, with `--set`-style overrides applied."""
    wf = load_workflow(WORKFLOWS / name)
    errors = apply_overrides(wf, overrides or [])
    assert errors == []
    return wf


def run(executor: Executor, wf: Workflow | dict[str, Any], out: Path) -> RunResult:
    result = executor.run(wf, output_dir=out)
    assert result.ok, result.error and result.error.get("traceback")
    return result


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())

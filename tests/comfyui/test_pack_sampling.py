"""KSampler, KSamplerAdvanced and the custom-sampling nodes on the embedded tiny model:
seeds, split runs, the custom stages against KSampler, denoise, noise masks, batch indices,
guidance, and the default ComfyUI workflow run by the executor. (Parity of the images with
ComfyUI's is tested against the oracle elsewhere.)"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image as PILImage

from graph_runtime import REGISTRY
from graph_runtime.executor import Executor
from nodes.comfyui import custom_sampling as cs
from nodes.comfyui import latent as latent_nodes
from nodes.comfyui.conditioning import clip_text_encode
from nodes.comfyui.importer import api_prompt
from nodes.comfyui.loaders import Checkpoint, checkpoint_loader_simple
from nodes.comfyui.sampling import ksampler_advanced, ksampler_node
from nodes.comfyui.vae import vae_decode, vae_encode
from nodes.types import Conditioning, Latent, Mask
from tests.support.workflows import link, run, wf

SIZE = 64  # pixels: 8 x 8 latents at ComfyUI's 8 pixels per cell
STEPS = 4


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    return checkpoint_loader_simple("noodle-tiny")


@pytest.fixture(scope="module")
def prompts(ckpt: Checkpoint) -> tuple[Conditioning, Conditioning]:
    return (clip_text_encode("a red circle", clip=ckpt.CLIP),
            clip_text_encode("a blue square", clip=ckpt.CLIP))


def empty(batch: int = 1) -> Latent:
    return latent_nodes.empty_latent_image(SIZE, SIZE, batch)


def ksample(ckpt: Checkpoint, prompts: Any, latent: Latent | None = None, *,
            seed: int = 3, sampler: str = "euler", scheduler: str = "normal",
            cfg: float = 5.0, denoise: float = 1.0, negative: Conditioning | None = None,
            steps: int = STEPS) -> torch.Tensor:
    out = ksampler_node(ckpt.MODEL, seed, steps, cfg, sampler, scheduler,
                        positive=prompts[0], negative=negative or prompts[1],
                        latent_image=latent or empty(), denoise=denoise)
    return out.samples


def test_checkpoint_loader_gives_model_clip_and_vae(ckpt: Checkpoint) -> None:
    assert ckpt.MODEL.latent_channels == 4
    assert ckpt.MODEL.sampling.prediction_type == "epsilon"
    assert len(ckpt.MODEL.sampling.sigmas) == 1000
    assert ckpt.CLIP.layer is None and ckpt.VAE.scaling_factor > 0


def test_ksampler_is_seeded(ckpt: Checkpoint, prompts: Any) -> None:
    a, again, other = (ksample(ckpt, prompts, seed=s) for s in (3, 3, 4))
    assert tuple(a.shape) == (1, 4, 8, 8)
    torch.testing.assert_close(a, again, atol=0, rtol=0)
    assert not torch.allclose(a, other)


def test_advanced_halves_equal_one_ksampler(ckpt: Checkpoint, prompts: Any) -> None:
    sampler = "euler"
    whole = ksample(ckpt, prompts, sampler=sampler)
    common = dict(noise_seed=3, steps=STEPS, cfg=5.0, sampler_name=sampler,
                  scheduler="normal", positive=prompts[0], negative=prompts[1])
    first = ksampler_advanced(ckpt.MODEL, "enable", latent_image=empty(), start_at_step=0,
                              end_at_step=2, return_with_leftover_noise="enable", **common)
    second = ksampler_advanced(ckpt.MODEL, "disable", latent_image=first, start_at_step=2,
                               end_at_step=10000, return_with_leftover_noise="disable",
                               **common)
    torch.testing.assert_close(second.samples, whole, atol=1e-5, rtol=1e-5)
    finished = ksampler_advanced(ckpt.MODEL, "enable", latent_image=empty(),
                                 start_at_step=0, end_at_step=2,
                                 return_with_leftover_noise="disable", **common)
    # Without leftover noise the half run is denoised to the end: far less spread.
    assert float(finished.samples.std()) < float(first.samples.std())
    past_the_end = ksampler_advanced(ckpt.MODEL, "enable", latent_image=first,
                                     start_at_step=STEPS, **common)
    assert torch.equal(past_the_end.samples, first.samples)  # nothing left to run


@pytest.mark.parametrize(("sampler", "scheduler"), [("euler_ancestral", "normal"),
                                                    ("dpmpp_2m", "karras")])
def test_custom_sampling_equals_ksampler(ckpt: Checkpoint, prompts: Any, sampler: str,
                                         scheduler: str) -> None:
    expected = ksample(ckpt, prompts, sampler=sampler, scheduler=scheduler, seed=11)
    guider = cs.cfg_guider(ckpt.MODEL, prompts[0], prompts[1], 5.0)
    sigmas = cs.basic_scheduler(ckpt.MODEL, scheduler, STEPS, 1.0)
    chosen = cs.ksampler_select(sampler)
    advanced = cs.sampler_custom_advanced(cs.random_noise(11), guider, chosen, sigmas, empty())
    torch.testing.assert_close(advanced.output.samples, expected, atol=1e-5, rtol=1e-5)
    custom = cs.sampler_custom(ckpt.MODEL, True, 11, 5.0, positive=prompts[0],
                               negative=prompts[1], sampler=chosen, sigmas=sigmas,
                               latent_image=empty())
    torch.testing.assert_close(custom.output.samples, expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(custom.denoised_output.samples, torch.zeros(1))


def test_split_sigmas_and_disabled_noise_continue_a_run(ckpt: Checkpoint,
                                                        prompts: Any) -> None:
    expected = ksample(ckpt, prompts)
    guider = cs.cfg_guider(ckpt.MODEL, prompts[0], prompts[1], 5.0)
    sigmas = cs.basic_scheduler(ckpt.MODEL, "normal", STEPS, 1.0)
    high, low = cs.split_sigmas(sigmas, 2)
    assert high.steps == 2 and low.steps == 2 and float(high.sigmas[-1]) == float(low.sigmas[0])
    chosen = cs.ksampler_select("euler")
    first = cs.sampler_custom_advanced(cs.random_noise(3), guider, chosen, high, empty())
    second = cs.sampler_custom_advanced(cs.disable_noise(), guider, chosen, low, first.output)
    torch.testing.assert_close(second.output.samples, expected, atol=1e-5, rtol=1e-5)
    # Euler's last step lands on its own clean estimate.
    torch.testing.assert_close(second.denoised_output.samples, second.output.samples,
                               atol=1e-4, rtol=1e-4)


def test_scheduler_nodes(ckpt: Checkpoint) -> None:
    sigmas = cs.karras_scheduler(5, 14.6, 0.03, 7.0).sigmas
    assert len(sigmas) == 6 and float(sigmas[0]) == pytest.approx(14.6)
    assert float(sigmas[-1]) == 0 and bool((sigmas[:-1].diff() < 0).all())
    assert len(cs.exponential_scheduler(5, 14.6, 0.03).sigmas) == 6
    assert cs.basic_scheduler(ckpt.MODEL, "normal", 4, 0.0).steps == 0
    assert len(cs.basic_scheduler(ckpt.MODEL, "normal", 4, 0.5).sigmas) == 5
    ms = ckpt.MODEL.sampling
    turbo = cs.sd_turbo_scheduler(ckpt.MODEL, 1, 1.0).sigmas
    torch.testing.assert_close(turbo, torch.stack([ms.sigmas[999], torch.tensor(0.0)]))
    half = cs.sd_turbo_scheduler(ckpt.MODEL, 2, 0.5).sigmas
    torch.testing.assert_close(half, torch.stack([ms.sigmas[499], ms.sigmas[399],
                                                  torch.tensor(0.0)]))


def test_denoise_keeps_the_input_image(ckpt: Checkpoint, prompts: Any) -> None:
    source = vae_encode(vae_decode(Latent(ksample(ckpt, prompts)), ckpt.VAE), ckpt.VAE)
    light = ksample(ckpt, prompts, source, denoise=0.3, seed=5)
    full = ksample(ckpt, prompts, source, denoise=1.0, seed=5)
    assert light.shape == source.samples.shape
    assert float((light - source.samples).abs().mean()) < float(
        (full - source.samples).abs().mean())
    guider = cs.cfg_guider(ckpt.MODEL, prompts[0], prompts[1], 5.0)
    sigmas = cs.basic_scheduler(ckpt.MODEL, "normal", STEPS, 0.3)
    custom = cs.sampler_custom_advanced(cs.random_noise(5), guider, cs.ksampler_select("euler"),
                                        sigmas, source)
    torch.testing.assert_close(custom.output.samples, light, atol=1e-5, rtol=1e-5)


def test_noise_mask_keeps_the_unmasked_cells(ckpt: Checkpoint, prompts: Any) -> None:
    source = Latent(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)))
    mask = torch.ones(1, 8, 8)
    mask[:, :, :4] = 0
    masked = latent_nodes.set_latent_noise_mask(source, Mask(mask))
    out = ksample(ckpt, prompts, masked)
    torch.testing.assert_close(out[..., :4], source.samples[..., :4], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out[..., 4:], source.samples[..., 4:], atol=1e-2)


def test_a_latent_cut_from_a_batch_keeps_its_noise(ckpt: Checkpoint, prompts: Any) -> None:
    batch = ksample(ckpt, prompts, empty(3), sampler="euler_ancestral")
    alone = ksample(ckpt, prompts, latent_nodes.latent_from_batch(empty(3), 1, 1),
                    sampler="euler_ancestral")
    assert not torch.allclose(batch[0], batch[1])
    # Item 1's starting noise is the batch's; ancestral steps draw per batch, so only a
    # deterministic sampler reproduces the item exactly.
    det_batch = ksample(ckpt, prompts, empty(3))
    det_alone = ksample(ckpt, prompts, latent_nodes.latent_from_batch(empty(3), 1, 1))
    torch.testing.assert_close(det_alone[0], det_batch[1], atol=1e-4, rtol=1e-4)
    assert alone.shape == (1, 4, 8, 8)


def test_guidance_scale_one_ignores_the_negative(ckpt: Checkpoint, prompts: Any) -> None:
    other = clip_text_encode("something else entirely", clip=ckpt.CLIP)
    a = ksample(ckpt, prompts, cfg=1.0)
    b = ksample(ckpt, prompts, cfg=1.0, negative=other)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(ksample(ckpt, prompts, cfg=5.0),
                              ksample(ckpt, prompts, cfg=5.0, negative=other))


def default_workflow(prefix: str = "ComfyUI", batch: int = 1, **top: Any) -> Any:
    """ComfyUI's default graph (its node ids) on the embedded model."""
    return wf({
        "4": ("CheckpointLoaderSimple", {"ckpt_name": "noodle-tiny"}),
        "5": ("EmptyLatentImage", {"width": SIZE, "height": SIZE, "batch_size": batch}),
        "6": ("CLIPTextEncode", {"text": "a red circle", "clip": link("4", "CLIP")}),
        "7": ("CLIPTextEncode", {"text": "text, watermark", "clip": link("4", "CLIP")}),
        "3": ("KSampler", {"model": link("4", "MODEL"), "seed": 156680208700286,
                           "steps": STEPS, "cfg": 8.0, "sampler_name": "euler",
                           "scheduler": "normal", "positive": link("6", "CONDITIONING"),
                           "negative": link("7", "CONDITIONING"),
                           "latent_image": link("5", "LATENT"), "denoise": 1.0}),
        "8": ("VAEDecode", {"samples": link("3", "LATENT"), "vae": link("4", "VAE")}),
        "9": ("SaveImage", {"images": link("8", "IMAGE"), "filename_prefix": prefix}),
    }, **top)


def test_default_workflow_runs_and_saves(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    ex = Executor(REGISTRY)
    result = run(ex, default_workflow("shots/ComfyUI", 2), tmp_path)
    names = sorted(p.name for p in (tmp_path / "shots").iterdir())
    assert names == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    assert result.ui["9"]["images"][0] == {"filename": "ComfyUI_00001_.png",
                                           "subfolder": "shots", "type": "output"}
    with PILImage.open(tmp_path / "shots" / names[0]) as png:
        assert png.size == (32, 32)  # the tiny VAE upsamples 4x
        saved = json.loads(png.text["workflow"])
        assert "prompt" not in png.text
    assert saved["nodes"]["3"]["type"] == "KSampler"
    again = ex.run(default_workflow("shots/ComfyUI", 2), on_event=events.append,
                   output_dir=tmp_path)
    assert again.ok and "3" not in again.executed  # nothing changed: all cached
    other = default_workflow("shots/ComfyUI", 2)
    other.nodes["3"]["inputs"]["seed"] = 1
    run(ex, other, tmp_path)
    assert sorted(p.name for p in (tmp_path / "shots").iterdir())[2:] == [
        "ComfyUI_00003_.png", "ComfyUI_00004_.png"]  # the counter continues


def test_comfyui_runs_save_comfyuis_chunks(tmp_path: Path) -> None:
    ui = {"nodes": [], "links": [], "version": 0.4}
    graph = default_workflow()
    prompt = api_prompt(graph.nodes, REGISTRY)  # the record of this very graph
    graph.extra["comfyui"] = {"prompt": prompt, "extra_pnginfo": {"workflow": ui}}
    result = run(Executor(REGISTRY), graph, tmp_path)
    with PILImage.open(result.files[0]) as png:
        assert json.loads(png.text["prompt"]) == prompt
        assert json.loads(png.text["workflow"]) == ui


def test_progress_and_interrupt(tmp_path: Path) -> None:
    ex = Executor(REGISTRY)
    events: list[dict[str, Any]] = []
    assert ex.run(default_workflow(), on_event=events.append, output_dir=tmp_path).ok
    progress = [(e["node"], e["step"], e["total"]) for e in events if e["type"] == "progress"]
    assert progress == [("3", i, STEPS) for i in range(1, STEPS + 1)]
    stop = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "progress" and event["step"] == 2:
            stop.set()

    graph = default_workflow()
    graph.nodes["3"]["inputs"]["seed"] = 5
    interrupted = ex.run(graph, on_event=on_event, interrupt=stop, output_dir=tmp_path)
    assert interrupted.interrupted and "3" not in interrupted.executed

"""CompileModel: a UNet run through torch.compile gives what the eager UNet gives, in a
whole txt2img run, with LoRA patches and attention slicing; the compiled wrapper is made
once per model and settings, and a second run compiles nothing.

Code generation (inductor) is checked once, on a one-level UNet; the other checks trace
with aot_eager, which captures the same graph and guards without generating kernels."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from nodes.comfyui.types import Model
from nodes.compile import compile_model, torch_compile_model
from nodes.diffusion.lora.deltas import DiffDelta
from nodes.diffusion.lora.patching import Patch
from nodes.loaders import Pipeline
from nodes.types import UNet
from tests.gpu_paths.conftest import txt2img


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (all backends)."""
    return int(counters["stats"]["unique_graphs"])


def test_inductor_compiled_txt2img_matches_eager(tiny_pipe: Pipeline, mini_unet: UNet) -> None:
    eager_latents, eager_image = txt2img(tiny_pipe, mini_unet, steps=2)
    before = graphs_compiled()
    compiled = compile_model(mini_unet, backend="inductor")
    latents, image = txt2img(tiny_pipe, compiled, steps=2)
    assert graphs_compiled() > before  # the compiled code ran, not the eager module
    assert torch.allclose(latents.samples, eager_latents.samples, atol=1e-4, rtol=0)
    assert (image.pixels - eager_image.pixels).abs().max() <= 1 / 255


def test_the_node_reuses_its_wrapper_and_a_second_run_compiles_nothing(
        tiny_pipe: Pipeline, mini_unet: UNet) -> None:
    first = compile_model(mini_unet, backend="aot_eager")
    assert first.compiled is not None and first.model is mini_unet.model
    # The wrapper shares the module's weights: no copy.
    assert {id(p) for p in first.compiled.parameters()} == {
        id(p) for p in mini_unet.model.parameters()}
    latents, _ = txt2img(tiny_pipe, first, steps=2)
    after_first = graphs_compiled()

    again = compile_model(mini_unet, backend="aot_eager")
    assert again.compiled is first.compiled
    latents_again, _ = txt2img(tiny_pipe, again, steps=2)
    assert graphs_compiled() == after_first
    assert torch.equal(latents_again.samples, latents.samples)
    # Other settings are another wrapper.
    assert compile_model(mini_unet, backend="aot_eager", dynamic=True).compiled is not (
        first.compiled)
    # ComfyUI's TorchCompileModel shares the same wrappers.
    comfy = torch_compile_model(Model(mini_unet, sampling=None), backend="inductor")
    assert comfy.unet.compiled is compile_model(mini_unet).compiled


def _patch(unet: UNet) -> Patch:
    """A full-difference patch on a convolution and on a cross-attention projection."""
    g = torch.Generator().manual_seed(1)
    params = dict(unet.model.named_parameters())
    names = ["conv_in.weight", next(n for n in params if n.endswith("attn2.to_k.weight"))]
    deltas = {n: DiffDelta(torch.randn(params[n].shape, generator=g) * 0.1) for n in names}
    return Patch(deltas, 1.0, "test")


def test_lora_patches_and_slicing_reach_the_compiled_unet(tiny_pipe: Pipeline,
                                                           mini_unet: UNet) -> None:
    patch = _patch(mini_unet)
    compiled = compile_model(mini_unet, backend="aot_eager")
    plain, _ = txt2img(tiny_pipe, mini_unet, steps=2)

    lora_eager, _ = txt2img(tiny_pipe, mini_unet.with_options(patches=(patch,)), steps=2)
    before = graphs_compiled()
    lora_compiled, _ = txt2img(tiny_pipe, compiled.with_options(patches=(patch,)), steps=2)
    assert graphs_compiled() == before  # merged weights are inputs: no recompile
    assert (lora_eager.samples - plain.samples).abs().max() > 1e-2  # the patch matters
    assert torch.allclose(lora_compiled.samples, lora_eager.samples, atol=1e-4, rtol=0)

    sliced_eager, _ = txt2img(tiny_pipe, mini_unet.with_options(attention_slice=8), steps=2)
    sliced_compiled, _ = txt2img(tiny_pipe, compiled.with_options(attention_slice=8), steps=2)
    assert torch.allclose(sliced_compiled.samples, sliced_eager.samples, atol=1e-4, rtol=0)

    # The shared weights were restored: the compiled UNet alone is the plain one again.
    after, _ = txt2img(tiny_pipe, compiled, steps=2)
    assert torch.allclose(after.samples, plain.samples, atol=1e-4, rtol=0)


def test_cuda_graph_modes_start_a_step_per_call_and_copy_outputs(
        mini_unet: UNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """reduce-overhead replays CUDA graphs into reused buffers, while schedulers keep earlier
    outputs; each UNet call marks a new step and returns a copy. (On the CPU the marks and
    results can be checked: the eager backend ignores the mode.)"""
    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    runner = compile_model(mini_unet, mode="reduce-overhead", backend="eager").prepared()
    with torch.no_grad():
        eager = mini_unet.model(x, torch.tensor(500), encoder_hidden_states=context)
        first = runner(x, torch.tensor(500), encoder_hidden_states=context)
        second = runner(x, torch.tensor(400), encoder_hidden_states=context)
    assert len(marks) == 2  # one per call
    assert torch.allclose(first, eager, atol=1e-4, rtol=0)
    assert not torch.allclose(second, first)  # the first output was not overwritten

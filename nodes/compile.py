"""CompileModel: run a UNet through `torch.compile` (PyTorch 2's graph compiler).

The compiled UNet shares the original's weights; the compiled wrapper is made once per
(model, mode, backend, dynamic) and kept with the model (`nodes.diffusion.compiled`), so
re-running the node, or another workflow compiling the same cached model, compiles
nothing again. The first sampling step pays the compilation (tens of seconds for a real
UNet); torch recompiles only when input shapes or dtypes change (a new image size or
batch), unless `dynamic` asks for shape-generic code up front.

LoRA patches (LoadLoRA, before or after this node) and attention slicing act on the shared
model while it runs, and the compiled code reads the model's current weights, so both
apply as they do without compiling. `TorchCompileModel` is ComfyUI's node of that name,
on a MODEL, with its two backends.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from graph_runtime import Bool, Choice, node
from nodes.comfyui.types import Model
from nodes.types import UNet, require

MODES = ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
BACKENDS = ["inductor", "eager", "aot_eager"]


@node("CompileModel", category="loaders", output="unet", display_name="Compile Model")
def compile_model(
    unet: UNet,
    mode: Annotated[str, Choice(MODES, tooltip=(
        "torch.compile's mode: reduce-overhead adds CUDA graphs, max-autotune also tries "
        "kernel variants (much longer compilation)"))] = "default",
    backend: Annotated[str, Choice(BACKENDS, tooltip=(
        "inductor generates kernels (needs a C++ compiler on the CPU, Triton on a GPU); "
        "eager and aot_eager only trace, to check a model compiles"))] = "inductor",
    dynamic: Annotated[bool, Bool(tooltip=(
        "compile shape-generic code at once instead of recompiling for a new image size"))]
    = False,
) -> UNet:
    """The UNet, run through torch.compile from its next use on (the first step compiles)."""
    require(unet, "CompileModel", "unet")
    from nodes.diffusion.compiled import compiled_module

    wrapper = compiled_module(unet.model, mode, backend, dynamic)
    return unet.with_options(compiled=wrapper)


@node("TorchCompileModel", category="ComfyUI/_for_testing", output="MODEL",
      display_name="TorchCompileModel")
def torch_compile_model(
    model: Model,
    backend: Annotated[str, Choice(["inductor", "cudagraphs"], tooltip=(
        "cudagraphs needs a CUDA device"))] = "inductor",
) -> Model:
    """The model with its UNet run through torch.compile (as CompileModel does)."""
    return replace(model, unet=compile_model(model.unet, backend=backend))

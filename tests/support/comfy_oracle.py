"""ComfyUI's source as a black-box test oracle: where it is, and how to import it in-process.

The oracle is a ComfyUI checkout (GPL-3.0) that tests *run*, never copy. Its path comes from
``NOODLE_COMFYUI_ORACLE`` (CI sets it), else ``<repo>/../shared/oracles/ComfyUI``; tests skip
when it is absent. Importing it in-process needs three things: its folder first on sys.path,
its argument parser told to read ``--cpu`` (it parses ``sys.argv`` at import), and a stub
``torchvision`` (imported by modules we do not use, and not installable against our torch).

Only ``comfy.*`` modules are imported in-process: ComfyUI's top-level ``nodes.py`` would
collide with our ``nodes`` package, so whole workflows run in a subprocess
(``comfy_workflow_runner.py``, through ``run_comfy_prompts``); ``NoodleRunner`` runs the same
API prompts through our importer and executor for the comparison.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support.paths import REPO

ENV_VAR = "NOODLE_COMFYUI_ORACLE"


def oracle_path() -> Path:
    """Where the ComfyUI checkout is expected (it may not exist)."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).resolve()
    return (REPO.parent / "shared" / "oracles" / "ComfyUI").resolve()


def oracle_available() -> bool:
    return (oracle_path() / "comfy" / "samplers.py").is_file()


def _stub_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 -- any failure means: use the stub
        stub = types.ModuleType("torchvision")
        # A spec, so packages probing for torchvision (transformers) see it as absent.
        stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        transforms = types.ModuleType("torchvision.transforms")
        stub.transforms = transforms  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.transforms"] = transforms


def import_comfy() -> dict[str, ModuleType]:
    """ComfyUI's sampling modules, imported in-process on the CPU.

    Returns ``samplers``, ``k_sampling`` (comfy.k_diffusion.sampling), ``model_sampling``,
    ``model_base``, ``sample`` and ``uni_pc``.
    """
    # Ours first: once the oracle's folder leads sys.path, a first `import nodes` would find
    # ComfyUI's nodes.py instead of our package.
    import nodes  # noqa: F401

    root = str(oracle_path())
    if root not in sys.path:
        sys.path.insert(0, root)
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], "--cpu"]
    try:
        _stub_torchvision()
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.k_diffusion.sampling
        import comfy.model_base
        import comfy.model_sampling
        import comfy.sample
        import comfy.samplers
        from comfy.extra_samplers import uni_pc
    finally:
        sys.argv = saved_argv
    return {
        "samplers": comfy.samplers,
        "k_sampling": comfy.k_diffusion.sampling,
        "model_sampling": comfy.model_sampling,
        "model_base": comfy.model_base,
        "sample": comfy.sample,
        "uni_pc": uni_pc,
    }


def comfy_model_sampling(comfy: dict[str, ModuleType], prediction: str = "epsilon") -> Any:
    """ComfyUI's SD1.x sampling object (ModelSamplingDiscrete with EPS or V_PREDICTION)."""
    ms_module = comfy["model_sampling"]
    kinds = {"epsilon": ms_module.EPS, "v_prediction": ms_module.V_PREDICTION}
    cls = type("OracleSampling", (ms_module.ModelSamplingDiscrete, kinds[prediction]), {})
    return cls()


class ComfySamplerHarness:
    """Runs ComfyUI's own sampler wrapper (``KSAMPLER.sample``: noise scaling, the sampler
    function, inverse scaling) around a plain denoising function ``fn(x, sigma) -> x_0``.

    The objects ComfyUI's samplers reach into are stood in for: the guider
    (``model.inner_model``, callable, with ``model_patcher``) and the model
    (``model.inner_model.inner_model`` with ``model_sampling``).
    """

    def __init__(self, comfy: dict[str, ModuleType], model_sampling: Any, fn: Any) -> None:
        self.comfy = comfy
        self.model_sampling = model_sampling
        self.fn = fn

    def patcher(self) -> Any:
        """ComfyUI's model patcher, as far as schedules use it: it hands out the sampling."""
        ms = self.model_sampling
        return types.SimpleNamespace(get_model_object=lambda name: ms)

    def guider(self) -> Any:
        """ComfyUI's guider, as its samplers see it: callable, with the model inside."""
        ms, fn, patcher = self.model_sampling, self.fn, self.patcher()

        class Guider:
            inner_model = types.SimpleNamespace(model_sampling=ms)
            model_patcher = patcher

            def __call__(self, x: Any, sigma: Any, **_: Any) -> Any:
                return fn(x, sigma)

        return Guider()

    def sample(
        self, sampler_name: str, noise: Any, latent: Any, sigmas: Any, seed: int
    ) -> Any:
        sampler = self.comfy["samplers"].sampler_object(sampler_name)
        extra_args = {"model_options": {}, "seed": seed}
        return sampler.sample(
            self.guider(), sigmas.clone(), extra_args, None, noise, latent, None, True
        )

    def ksampler_sigmas(
        self, sampler_name: str, scheduler: str, steps: int, denoise: float = 1.0
    ) -> Any:
        """The sigmas ComfyUI's KSampler computes for these settings."""
        ksampler = self.comfy["samplers"].KSampler(
            self.patcher(), steps, "cpu", sampler=sampler_name, scheduler=scheduler, denoise=denoise
        )
        return ksampler.sigmas


# --------------------------------------------------------------------------- whole workflows

RUNNER = Path(__file__).with_name("comfy_workflow_runner.py")
POSITIVE = "a photograph of a red fox in the snow, golden hour"
NEGATIVE = "blurry, watermark"


def default_prompt(
    ckpt_name: str,
    sampler: str,
    scheduler: str,
    *,
    steps: int = 4,
    cfg: float = 8.0,
    seed: int = 42,
    size: int = 128,
    denoise: float = 1.0,
) -> dict[str, Any]:
    """ComfyUI's default text-to-image workflow in API format (the shape of its own
    ``script_examples/basic_api_example.py`` prompt); node "8" decodes the image."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": scheduler, "denoise": denoise, "model": ["4", 0],
            "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }  # fmt: skip


def run_comfy_prompts(
    prompts: Mapping[str, Mapping[str, Any]],
    checkpoints: Path,
    work: Path,
    node: str = "8",
    timeout: float = 900,
    loras: Path | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run each named API prompt with ComfyUI's own nodes in a subprocess (see
    ``comfy_workflow_runner.py``) and return the IMAGE arrays of ``node`` by name, and the
    seconds each took (plus the start-up under "startup")."""
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    job = {
        "oracle": str(oracle_path()),
        "checkpoints": str(checkpoints),
        "loras": str(loras) if loras is not None else None,
        "out": str(work / "out"),
        "runs": [{"name": n, "prompt": p, "node": node} for n, p in prompts.items()],
    }
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(job_file)],
        cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"ComfyUI runner failed ({done.returncode}):\n{done.stderr[-4000:]}")
    timings = json.loads((work / "out" / "timings.json").read_text())
    timings["startup"] = time.perf_counter() - started - sum(timings.values())
    images = {name: np.load(work / "out" / f"{name}.npy") for name in prompts}
    return images, timings


PACK_NODES = ("CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
              "VAEDecode")


def pack_registered() -> bool:
    """Whether our ComfyUI node pack provides the default workflow's nodes."""
    import nodes  # noqa: F401  (registers the node library)
    from graph_runtime.registry import REGISTRY

    return all(name in REGISTRY for name in PACK_NODES)


class NoodleRunner:
    """Runs API prompts through our importer and executor, on one model folder, keeping the
    executor's cache between prompts (the checkpoint loads once, as on ComfyUI's side)."""

    def __init__(self, models: Path, work: Path) -> None:
        import nodes  # noqa: F401  (registers the node library and its importers)
        from graph_runtime import Folders
        from graph_runtime.cache import OutputCache
        from graph_runtime.executor import Executor
        from graph_runtime.registry import REGISTRY

        work.mkdir(parents=True, exist_ok=True)
        folders = Folders(output=work / "output", input=work / "input", models=models,
                          user=work / "user")
        self.registry = REGISTRY
        self.executor = Executor(REGISTRY, OutputCache(), folders)

    def image(self, prompt: Mapping[str, Any], node: str = "8") -> Any:
        """The IMAGE of ``node`` as a [B, H, W, C] float array in 0..1."""
        from graph_runtime.workflow import import_workflow

        workflow, _ = import_workflow(dict(prompt), self.registry)
        result = self.executor.run(workflow, targets=[node])
        if not result.ok:
            raise RuntimeError(f"our run failed: {result.error}")
        (value,) = result.outputs[node].values()
        return value.pixels.float().cpu().numpy()

"""Step previews: `full` decodes with the latents' own VAE, so the last preview of a run on
the embedded model looks like the saved image; `latent` keeps the fitted projection; `auto`
decodes only while a decode costs under a quarter of the time between steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from graph_runtime.context import PreviewPolicy
from graph_runtime.executor import Executor
from nodes import previews
from nodes.previews import AUTO_BUDGET, fit_projection, set_preview_mode, step_preview
from tests.support.paths import MODELS
from tests.support.workflows import shipped

pytestmark = pytest.mark.skipif(not (MODELS / "noodle-tiny").exists(),
                                reason="the embedded model is not here")


@pytest.fixture
def mode() -> Iterator[Any]:
    yield set_preview_mode
    set_preview_mode(None)


def _last_preview_and_image(executor: Executor, out: Path, seed: int, steps: int = 8
                            ) -> tuple[np.ndarray, np.ndarray, list[PILImage.Image]]:
    """Runs the shipped txt2img (a seed of its own: nothing comes from the cache)."""
    events: list[dict[str, Any]] = []
    wf = shipped("txt2img.json", [f"5.steps={steps}", f"4.seed={seed}"])
    result = executor.run(wf, output_dir=out, on_event=lambda e: events.append(dict(e)),
                          previews=PreviewPolicy(1))
    assert result.ok, result.error
    progress = [e for e in events if e.get("type") == "progress"]
    assert len(progress) == steps
    shown = [e["preview"] for e in progress if e.get("preview")]
    # The last step's preview is made at once, so the run ends on it.
    assert progress[-1]["preview"] is not None and shown[-1] is progress[-1]["preview"]
    saved = np.asarray(PILImage.open(next(out.rglob("*.png"))).convert("RGB"), np.float32)
    last = shown[-1].convert("RGB").resize(saved.shape[1::-1], PILImage.BILINEAR)
    return np.asarray(last, np.float32), saved, shown


def test_full_previews_end_on_the_saved_image(executor: Executor, tmp_path: Path,
                                               mode: Any) -> None:
    mode("full")
    last, saved, shown = _last_preview_and_image(executor, tmp_path / "full", 11)
    assert np.abs(last - saved).mean() < 10, np.abs(last - saved).mean()
    mode("latent")
    last, saved, shown = _last_preview_and_image(executor, tmp_path / "latent", 12)
    # The projection only approximates the tiny VAE: clearly worse than the decode.
    assert np.abs(last - saved).mean() > 10, np.abs(last - saved).mean()
    assert min(shown[0].size) >= previews.MIN_SIDE


class _SlowVae(torch.nn.Module):
    """A stand-in VAE whose decode takes `cost` seconds (a fake clock advances)."""

    def __init__(self, clock: list[float], cost: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 1)
        self.config = {"scaling_factor": 1.0}
        self.clock, self.cost, self.calls = clock, cost, 0
        self.areas: list[int] = []

    def encode(self, x: torch.Tensor) -> Any:
        mean = torch.nn.functional.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4]
        return type("Dist", (), {"mean": mean})()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`cost` seconds per 8x8 latent cells."""
        self.calls += 1
        self.areas.append(z.shape[2] * z.shape[3])
        self.clock[0] += self.cost * z.shape[2] * z.shape[3] / 64
        return torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8)


@pytest.mark.parametrize(("cost", "decodes"), [(0.1, 4), (0.4, 2), (0.9, 1)])
def test_auto_weighs_decode_against_step(monkeypatch: pytest.MonkeyPatch, mode: Any,
                                         cost: float, decodes: int) -> None:
    """Five previews of steps 1 s apart. The first has no step to weigh against; then a
    0.1 s decode (under the 25 % budget) runs at every preview, a 0.4 s one at every
    second (0.4 < 25 % of 2 s), a 0.9 s one only when first tried. The final preview of a
    run is always decoded."""
    clock = [100.0]
    monkeypatch.setattr(previews.time, "perf_counter", lambda: clock[0])
    vae = _SlowVae(clock, cost)
    projection = fit_projection(vae, 1.0)
    mode("auto")
    sample = torch.zeros(1, 4, 8, 8)
    for _ in range(5):
        step_preview(sample, projection)
        clock[0] += 1.0  # one denoising step
    assert AUTO_BUDGET == 0.25
    assert vae.calls == decodes
    step_preview(sample, projection, final=True)
    assert vae.calls == decodes + 1
    clock[0] += 60.0  # a new run: its first preview is projected again
    step_preview(sample, projection)
    assert vae.calls == decodes + 1
    mode("latent")
    step_preview(sample, projection, final=True)
    assert vae.calls == decodes + 1


@pytest.mark.parametrize(("cost", "areas"), [(0.4 / 64, [1024, 4096, 4096]), (4.0 / 64, [1024])])
def test_auto_probes_a_large_decode_on_a_corner(monkeypatch: pytest.MonkeyPatch, mode: Any,
                                               cost: float, areas: list[int]) -> None:
    """A 64x64 latent: its cost is learnt from a 32x32 corner (scaled by 4), so a decode
    that would take 4 s is never run whole; one of 0.4 s runs every second step."""
    clock = [100.0]
    monkeypatch.setattr(previews.time, "perf_counter", lambda: clock[0])
    vae = _SlowVae(clock, cost)
    projection = fit_projection(vae, 1.0)
    vae.areas.clear()
    mode("auto")
    for _ in range(5):
        step_preview(torch.zeros(1, 4, 64, 64), projection)
        clock[0] += 1.0
    assert vae.areas == areas


def test_auto_final_preview_of_the_embedded_model(executor: Executor, mode: Any) -> None:
    """The last preview in `auto` is the real decode: within 1/255 of VAEDecode's image."""
    mode("auto")
    result = executor.run(shipped("txt2img.json", ["5.steps=2", "4.seed=14"]),
                          targets=["6"])
    vae, latents = result.outputs["1"]["vae"], result.outputs["5"]["latents"]
    projection = latents.extra["rgb_projection"]
    shown = step_preview(latents.samples, projection, final=True).convert("RGB")
    decoded = result.outputs["6"]["IMAGE"].pixels[0].numpy() * 255
    shown = shown.resize(decoded.shape[1::-1], PILImage.NEAREST)  # undoes the 2x upscale
    assert np.abs(np.asarray(shown, np.float32) - decoded).mean() < 1
    assert previews._DECODERS[id(projection)].vae() is vae.model


def test_mode_setting_is_checked(monkeypatch: pytest.MonkeyPatch, mode: Any) -> None:
    with pytest.raises(ValueError, match="preview mode"):
        mode("fast")
    monkeypatch.setenv("NOODLE_PREVIEWS", "full")
    assert previews.preview_mode() == "full"
    mode("latent")
    assert previews.preview_mode() == "latent"

"""Textual-inversion embeddings in our text nodes' prompts (`embedding:name`): a whole
txt2img run with an A1111-format and a diffusers-format embedding equals diffusers'
pipeline after `load_textual_inversion`; SDXL files feed each encoder its own vectors; the
tokens carry the vectors, so encoding needs no folders and leaves the model unchanged;
`comfy` mode equals the ComfyUI pack; unknown names fail validation on the text input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from graph_runtime.cache import OutputCache
from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from graph_runtime.settings import Folders
from nodes import loaders, text
from nodes.comfyui import clip_text
from nodes.comfyui.types import Clip
from nodes.textual_inversion import load_embedding
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel, TinySDXL, reference_pipeline
from tests.support.workflows import run, shipped

PROMPT = "a photo of embedding:tiny-cat next to embedding:tiny-dog, on a table"
THEIR_PROMPT = "a photo of <tiny-cat> next to <tiny-dog>, on a table"
SEED, STEPS, GUIDANCE = 11, 4, 6.0


def _vectors(rows: int, width: int, seed: int) -> torch.Tensor:
    """Vectors about as large as token embeddings (a few times CLIP's init scale), so the
    image visibly depends on them."""
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with an A1111 `.pt` (two vectors), a diffusers `learned_embeds`
    file (one vector) and an SDXL `.safetensors` (clip_l and clip_g, two vectors each)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ti") / "models"
    folder = root / "embeddings"
    folder.mkdir(parents=True)
    torch.save({"string_to_param": {"*": _vectors(2, 32, 1)}, "name": "tiny-cat"},
               folder / "tiny-cat.pt")
    torch.save({"<dog>": _vectors(1, 32, 2)[0]}, folder / "tiny-dog.bin")
    save_file({"clip_l": _vectors(2, 64, 3), "clip_g": _vectors(2, 64, 4)},
              str(folder / "tiny-xl.safetensors"))
    return root


@pytest.fixture
def ti_executor(models: Path, tmp_path: Path) -> Executor:
    return Executor(REGISTRY, OutputCache(), Folders(models=models, output=tmp_path / "out"))


@pytest.fixture
def in_models(models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Plain node calls (outside an executor) read this models folder."""
    monkeypatch.setenv("NOODLE_MODELS_DIR", str(models))
    return models


def _diffusers_with_embeddings(folder: Path, models: Path) -> Any:
    pipe = reference_pipeline("StableDiffusionPipeline", folder)
    pipe.load_textual_inversion(str(models / "embeddings" / "tiny-cat.pt"), token="<tiny-cat>")
    pipe.load_textual_inversion(str(models / "embeddings" / "tiny-dog.bin"),
                                token="<tiny-dog>")
    return pipe


def _ours(executor: Executor, source: Path, prompt: str, out: Path) -> np.ndarray:
    wf = shipped("txt2img_stages.json", [
        f"1.source={source}", "2.type=EulerDiscreteScheduler", f"3.text={prompt}",
        f"7.seed={SEED}", f"7.width={IMAGE_SIZE}", f"7.height={IMAGE_SIZE}",
        f"8.steps={STEPS}", f"8.guidance_scale={GUIDANCE}"])
    return run(executor, wf, out).outputs["9"]["IMAGE"].pixels.numpy()


def test_txt2img_equals_diffusers_with_textual_inversion(
        tiny_sd: TinyModel, models: Path, ti_executor: Executor, tmp_path: Path) -> None:
    import diffusers

    ours = _ours(ti_executor, tiny_sd.folder, PROMPT, tmp_path)
    pipe = _diffusers_with_embeddings(tiny_sd.folder, models)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    theirs = pipe(prompt=THEIR_PROMPT, negative_prompt="", height=IMAGE_SIZE,
                  width=IMAGE_SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                  generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    diff = float(np.abs(ours - theirs).max())
    print(f"\ntextual inversion txt2img max diff {diff * 255:.2e}/255")
    assert diff <= 1 / 255
    # Not vacuous: without the embeddings the image differs.
    without = _ours(ti_executor, tiny_sd.folder, "a photo of next to, on a table", tmp_path)
    assert float(np.abs(without - theirs).max()) > 0.01


def test_sdxl_files_give_each_encoder_its_vectors(tiny_sdxl: TinySDXL, in_models: Path
                                                  ) -> None:
    parts = loaders.load_pipeline(str(tiny_sdxl.base.folder), dtype="fp32", device="cpu")
    cond = text.text_to_conditioning(parts.tokenizer, parts.text_encoder,
                                     "a embedding:tiny-xl circle")
    pipe = reference_pipeline("StableDiffusionXLPipeline", tiny_sdxl.base.folder)
    vectors = load_embedding(in_models / "embeddings" / "tiny-xl.safetensors").vectors
    pipe.load_textual_inversion(vectors["clip_l"], token="<xl>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(vectors["clip_g"], token="<xl>",
                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    theirs, _, pooled, _ = pipe.encode_prompt("a <xl> circle", device="cpu")
    torch.testing.assert_close(cond.embeds, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.options["pooled_output"], pooled, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def parts(tiny_sd: TinyModel) -> Any:
    return loaders.load_pipeline(str(tiny_sd.folder), dtype="fp32", device="cpu")


def test_tokens_carry_the_vectors_and_the_model_is_unchanged(parts: Any, in_models: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    tokens = text.tokenize(parts.tokenizer, "embedding:tiny-cat (embedding:tiny-dog:1.5)",
                           weighting="a1111")
    assert [e.name for e in tokens.embeddings] == ["tiny-cat", "tiny-dog"]
    assert tokens.input_ids[0, 1:4].tolist() == [-1, -2, -3]
    assert tokens.weights is not None and tokens.weights[0, 1:4].tolist() == [1.0, 1.0, 1.5]
    table = parts.text_encoder.model.get_input_embeddings()
    weight, rows = table.weight, table.num_embeddings
    monkeypatch.setenv("NOODLE_MODELS_DIR", str(in_models / "nowhere"))  # no folders needed
    cond = text.encode_text(parts.text_encoder, tokens)
    assert table.weight is weight and table.num_embeddings == rows == weight.shape[0]
    plain = text.encode_text(parts.text_encoder, text.tokenize(parts.tokenizer, "x y"))
    assert not torch.allclose(cond.embeds, plain.embeds)


def test_comfy_mode_equals_the_pack_with_embeddings(parts: Any, in_models: Path) -> None:
    prompt = "a (embedding:tiny-cat:1.2) circle, embedding:tiny-dog"
    ours = text.text_to_conditioning(parts.tokenizer, parts.text_encoder, prompt,
                                     weighting="comfy")
    found = {name: load_embedding(in_models / "embeddings" / file)
             for name, file in (("tiny-cat", "tiny-cat.pt"), ("tiny-dog", "tiny-dog.bin"))}
    clip = Clip(parts.tokenizer.tokenizer, parts.text_encoder.model)
    theirs, _ = clip_text.encode(clip, prompt, found.get)
    torch.testing.assert_close(ours.embeds, theirs, atol=0, rtol=0)
    assert not torch.allclose(ours.embeds, clip_text.encode(clip, "a circle,")[0])


@pytest.mark.parametrize("weighting", ["none", "comfy", "a1111"])
def test_unknown_embedding_fails_validation(models: Path, weighting: str) -> None:
    wf = shipped("txt2img_stages.json", ["3.text=a embedding:tiny-cta circle",
                                         f"3.weighting={weighting}"])
    errors = validate(wf, REGISTRY, folders=Folders(models=models))
    found = [e for e in errors if e["node"] == "3"]
    assert [(e["input"], e["code"]) for e in found] == [("text", "invalid_combination")]
    assert "unknown embedding 'tiny-cta'" in found[0]["message"]
    assert "tiny-cat" in found[0]["message"]  # the close name is suggested
    wf = shipped("txt2img_stages.json", ["3.text=a embedding:tiny-cat circle",
                                         f"3.weighting={weighting}"])
    assert not [e for e in validate(wf, REGISTRY, folders=Folders(models=models))
                if e["node"] == "3"]


def test_unknown_embedding_from_a_link_fails_at_run_time(parts: Any, in_models: Path) -> None:
    with pytest.raises(ValueError, match=r"Tokenize: input 'text': unknown embedding 'nope'"):
        text.tokenize(parts.tokenizer, "a embedding:nope")


def test_replacing_an_embedding_file_encodes_again(tiny_sd: TinyModel,
                                                   tmp_path: Path) -> None:
    """The file's size and mtime are part of Tokenize's signature: a re-run with the same
    prompt reuses the cache until the file changes."""
    folder = tmp_path / "models"
    (folder / "embeddings").mkdir(parents=True)
    path = folder / "embeddings" / "swap.pt"
    torch.save({"string_to_param": {"*": _vectors(1, 32, 5)}}, path)
    executor = Executor(REGISTRY, OutputCache(), Folders(models=folder, output=tmp_path))
    wf = shipped("txt2img_stages.json", [f"1.source={tiny_sd.folder}",
                                         "3.text=a embedding:swap circle"])
    first = executor.run(wf, targets=["4"])
    again = executor.run(wf, targets=["4"])
    assert "3" in first.executed and "3" in again.cached
    torch.save({"string_to_param": {"*": _vectors(2, 32, 6)}}, path)
    changed = executor.run(wf, targets=["4"])
    assert "3" in changed.executed
    old = first.outputs["4"]["conditioning"].embeds
    new = changed.outputs["4"]["conditioning"].embeds
    assert not torch.allclose(old, new)

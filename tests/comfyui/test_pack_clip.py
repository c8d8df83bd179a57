"""CLIPTextEncode and CLIPSetLastLayer: ComfyUI's prompt syntax, 77-token windows, weights
and clip skip. Tokens and embeddings are compared with ComfyUI's own tokenizer and CLIP
model (run in-process on the embedded model's weights) where the oracle is present."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from nodes.comfyui import clip_text
from nodes.comfyui.conditioning import clip_set_last_layer, clip_text_encode
from nodes.comfyui.prompt_syntax import weighted_segments
from nodes.comfyui.types import Clip
from nodes.diffusion.clip import load_text_encoder, load_tokenizer
from tests.support.comfy_oracle import import_comfy, oracle_available
from tests.support.paths import REPO

TINY = REPO / "models" / "noodle-tiny"
PROMPTS = [
    "",
    "a red circle",
    "(a red:1.3) circle, ((blue)) \\(escaped\\) square",
    "word " * 100,
    "a supercalifragilisticexpialidociousnessthing " * 12 + "end",
    "embedding:missing, a cat (nested (deep:0.5) x)",
    "x) y (z",
    "(a:b) c",
    "line one\nembedding:absent two",
]
needs_oracle = pytest.mark.skipif(not oracle_available(), reason="ComfyUI oracle not found")


@pytest.fixture(scope="module")
def clip() -> Clip:
    return Clip(load_tokenizer(TINY / "tokenizer"), load_text_encoder(TINY / "text_encoder"))


@pytest.fixture(scope="module")
def sd1_clip() -> Any:
    import_comfy()
    import comfy.sd1_clip

    return comfy.sd1_clip


def test_weights_follow_comfyuis_rules() -> None:
    assert weighted_segments("a (b) ((c)) (d:0.5) (e (f:2)) \\(g\\)") == [
        ("a ", 1.0), ("b", 1.1), (" ", 1.0), ("c", pytest.approx(1.21)), (" ", 1.0),
        ("d", 0.5), (" ", 1.0), ("e ", pytest.approx(1.1)), ("f", 2.0), (" (g)", 1.0)]


def test_long_prompts_fill_several_windows(clip: Clip) -> None:
    windows = clip_text.tokenize(clip.tokenizer, "word " * 100)
    assert [len(w.ids) for w in windows] == [77, 77]
    start, end = clip.tokenizer.bos_token_id, clip.tokenizer.eos_token_id
    assert all(w.ids[0] == start for w in windows)
    assert windows[0].ids[-1] == end and windows[1].ids[1 + 100 - 75] == end
    cond = clip_text_encode("word " * 100, clip=clip)
    assert tuple(cond.embeds.shape) == (1, 154, 32)
    assert tuple(cond.options["pooled_output"].shape) == (1, 32)


def test_weights_change_only_the_weighted_tokens(clip: Clip) -> None:
    plain = clip_text_encode("a red circle", clip=clip).embeds
    weighted = clip_text_encode("a (red:1.5) circle", clip=clip).embeds
    changed = (plain - weighted).abs().amax(dim=-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [2]


def test_clip_skip_uses_an_earlier_layer_and_leaves_the_input_alone(clip: Clip) -> None:
    skipped = clip_set_last_layer(clip, -2)
    assert clip.layer is None and skipped.layer == -2
    last = clip_text_encode("a red circle", clip=clip).embeds
    assert not torch.allclose(clip_text_encode("a red circle", clip=skipped).embeds, last)
    # -1 is the last layer; skipping more layers than the model has is the last layer too.
    for layer in (-1, -24):
        again = clip_text_encode("a red circle", clip=clip_set_last_layer(clip, layer)).embeds
        torch.testing.assert_close(again, last)


@needs_oracle
@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokens_match_comfyui(clip: Clip, sd1_clip: Any, prompt: str) -> None:
    theirs = sd1_clip.SDTokenizer(embedding_directory=[]).tokenize_with_weights(prompt)
    ours = clip_text.tokenize(clip.tokenizer, prompt)
    assert [list(zip(w.ids, w.weights, strict=True)) for w in ours] == [
        [(int(t), float(w)) for t, w in window] for window in theirs]


@needs_oracle
@pytest.mark.parametrize("layer", [None, -2])
def test_embeddings_match_comfyui(clip: Clip, sd1_clip: Any, layer: int | None) -> None:
    config = json.loads((TINY / "text_encoder" / "config.json").read_text())
    model = sd1_clip.SDClipModel(textmodel_json_config=config, dtype=torch.float32,
                                 return_projected_pooled=False)
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v
             for k, v in clip.text_encoder.state_dict().items()}
    model.transformer.load_state_dict(state, strict=False)
    if layer is not None:
        model.set_clip_options({"layer": layer})
    tokenizer = sd1_clip.SDTokenizer(embedding_directory=None)
    for prompt in ("a red circle", "(a red:1.3) circle, ((blue))", "word " * 100):
        theirs, their_pooled = model.encode_token_weights(tokenizer.tokenize_with_weights(prompt))
        cond = clip_text_encode(prompt, clip=clip.with_layer(layer))
        torch.testing.assert_close(cond.embeds, theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cond.options["pooled_output"], their_pooled, atol=1e-5,
                                   rtol=1e-5)

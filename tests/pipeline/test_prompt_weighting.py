"""Prompt weighting and long prompts on our own text nodes: the parsers (ComfyUI's and
A1111's syntax), `comfy` mode against the ComfyUI pack and ComfyUI itself, `a1111` mode
against its maths written out here, 77-token windows for long prompts, batches padded
with empty windows, and guidance pairing prompts of different lengths."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch

from nodes import latents as latent_nodes
from nodes import loaders, sampling, text
from nodes.comfyui.conditioning import clip_set_last_layer, clip_text_encode
from nodes.comfyui.types import Clip
from nodes.diffusion.clip import load_text_encoder, load_tokenizer
from nodes.guidance import guidance_context
from nodes.prompt_chunks import references
from nodes.prompt_weighting import parse_prompt
from nodes.types import Conditioning, TextEncoder, Tokenizer
from tests.support.comfy_oracle import import_comfy, oracle_available
from tests.support.model_configs import IMAGE_SIZE
from tests.support.paths import REPO
from tests.support.tiny_models import TinyModel, TinySDXL, reference_pipeline

D = 1 / 1.1
# (mode, prompt, [(text, weight)] with "BREAK" for a chunk break)
PARSES: list[tuple[str, str, list[tuple[str, float]]]] = [
    ("a1111", "normal text", [("normal text", 1.0)]),
    ("a1111", "an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("a1111", "(unbalanced", [("unbalanced", 1.1)]),
    ("a1111", r"\(literal\]", [("(literal]", 1.0)]),
    ("a1111", "(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a1111", "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
        ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("a1111", "[x] [[y]]", [("x", D), (" ", 1.0), ("y", D * D)]),
    ("a1111", "(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
    ("a1111", "x) y] z", [("x) y] z", 1.0)]),
    ("a1111", ":1.2) q", [(":1.2) q", 1.0)]),
    ("a1111", r"a \\ b \[c\]", [("a \\ b [c]", 1.0)]),
    ("a1111", "one BREAK two", [("one", 1.0), ("BREAK", 0.0), ("two", 1.0)]),
    ("a1111", "oneBREAK two break", [("oneBREAK two break", 1.0)]),
    ("a1111", "(a: 0.5 ) b", [("a", 0.5), (" b", 1.0)]),
    ("a1111", "(embedding:cat:1.2), dog", [("embedding:cat", 1.2), (", dog", 1.0)]),
    ("a1111", "[embedding:cat] x", [("embedding:cat", D), (" x", 1.0)]),
    ("comfy", "a (b) ((c)) (d:0.5)", [("a ", 1.0), ("b", 1.1), (" ", 1.0), ("c", 1.21),
                                     (" ", 1.0), ("d", 0.5)]),
    ("comfy", "(e (f:2))", [("e ", 1.1), ("f", 2.0)]),
    ("comfy", r"\(g\) (h)", [("(g) ", 1.0), ("h", 1.1)]),
    ("comfy", "x) y (z", [("x) y (z", 1.0)]),
    ("comfy", "(a:b) c", [("a:b", 1.1), (" c", 1.0)]),
    ("comfy", "((x:1.5)) [y]", [("x", 1.5), (" [y]", 1.0)]),
    ("comfy", "(embedding:cat:1.2), dog", [("embedding:cat", 1.2), (", dog", 1.0)]),
    ("comfy", "a BREAK b", [("a BREAK b", 1.0)]),
    ("none", "a (b:1.5) [c] BREAK d", [("a (b:1.5) [c] BREAK d", 1.0)]),
]


@pytest.mark.parametrize(("mode", "prompt", "expected"), PARSES,
                         ids=[f"{m}:{p}" for m, p, _ in PARSES])
def test_parser_table(mode: str, prompt: str, expected: list[tuple[str, float]]) -> None:
    got = [("BREAK", 0.0) if s.brk else (s.text, s.weight) for s in parse_prompt(prompt, mode)]
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


needs_oracle = pytest.mark.skipif(not oracle_available(), reason="ComfyUI oracle not found")


@needs_oracle
def test_comfy_table_is_comfyuis_reading() -> None:
    import_comfy()
    import comfy.sd1_clip as sd1_clip

    for mode, prompt, expected in PARSES:
        if mode == "comfy":
            theirs = sd1_clip.token_weights(sd1_clip.escape_important(prompt), 1.0)
            assert [sd1_clip.unescape_important(t) for t, _ in theirs] == [
                t for t, _ in expected], prompt
            assert [w for _, w in theirs] == pytest.approx([w for _, w in expected]), prompt


@pytest.mark.parametrize(("prompt", "names"), [
    ("embedding:cat", ["cat"]),
    ("a embedding:cat, embedding:dog,, x", ["cat", "dog"]),
    ("(embedding:cat:1.2)", ["cat"]),
    ("myembedding:cat a,embedding:dog", []),
    ("embedding:sub/cat.pt\nembedding:", ["sub/cat.pt"]),
])
def test_embedding_references_in_text(prompt: str, names: list[str]) -> None:
    assert [n for n, _, _ in references(prompt)] == names


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def parts(tiny_sd: TinyModel) -> Any:
    return loaders.load_pipeline(str(tiny_sd.folder), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl: TinySDXL) -> Any:
    return loaders.load_pipeline(str(tiny_sdxl.base.folder), dtype="fp32", device="cpu")


def encode(parts: Any, prompt: str, **options: Any) -> Conditioning:
    return text.text_to_conditioning(parts.tokenizer, parts.text_encoder, prompt, **options)


def pack_clip(parts: Any) -> Clip:
    tok, enc = parts.tokenizer, parts.text_encoder
    return Clip(tok.tokenizer, enc.model, tokenizer_2=tok.tokenizer_2,
                text_encoder_2=enc.model_2)


LONG = "a red circle on a blue square, " * 12  # 96 words, more than one window
WEIGHTED = ["a red circle", "a (red:1.3) circle, ((blue)) \\(escaped\\) square",
            "(word " * 30 + ")" + " tail" * 60, LONG, ""]


# ---------------------------------------------------------------------------- none mode
def test_none_mode_keeps_brackets_as_text(parts: Any) -> None:
    prompt = "a (red:1.5) [circle] BREAK"
    tokens = text.tokenize(parts.tokenizer, prompt)
    expected = parts.tokenizer.tokenizer(prompt, padding="max_length", max_length=77,
                                         truncation=True, return_tensors="pt")
    assert torch.equal(tokens.input_ids, expected.input_ids)
    assert torch.equal(tokens.attention_mask, expected.attention_mask)
    assert tokens.weights is None


def test_short_prompts_equal_diffusers_exactly(tiny_sd: TinyModel, parts: Any) -> None:
    pipe = reference_pipeline("StableDiffusionPipeline", tiny_sd.folder)
    prompts = ["a red circle", "a blue square on a yellow background"]
    cond = encode(parts, "\n".join(prompts), batch=True)
    theirs, their_uncond = pipe.encode_prompt(prompts, "cpu", 1, True)
    assert tuple(cond.embeds.shape) == (2, 77, 32)
    assert torch.equal(cond.embeds, theirs)
    assert torch.equal(cond.uncond, their_uncond[:1])


# ---------------------------------------------------------------------------- long prompts
def _window_states(parts: Any, ids: list[int]) -> torch.Tensor:
    """One window encoded by the transformers model directly: start, ids, end, padding."""
    tok = parts.tokenizer.tokenizer
    row = [tok.bos_token_id, *ids, tok.eos_token_id]
    row += [tok.pad_token_id] * (77 - len(row))
    with torch.no_grad():
        return parts.text_encoder.model(torch.tensor([row]))[0][0]


def test_long_prompt_is_chunked_not_truncated(parts: Any) -> None:
    prompt = " ".join(["red"] * 150)
    cond = encode(parts, prompt)
    assert tuple(cond.embeds.shape) == (1, 154, 32)
    assert tuple(cond.uncond.shape) == (1, 154, 32)
    ids = parts.tokenizer.tokenizer(prompt, add_special_tokens=False).input_ids
    assert len(ids) == 150
    torch.testing.assert_close(cond.embeds[0, :77], _window_states(parts, ids[:75]))
    torch.testing.assert_close(cond.embeds[0, 77:], _window_states(parts, ids[75:]))
    empty = _window_states(parts, [])
    torch.testing.assert_close(cond.uncond[0], torch.cat([empty, empty]))


def test_truncate_equals_diffusers(tiny_sd: TinyModel, parts: Any) -> None:
    pipe = reference_pipeline("StableDiffusionPipeline", tiny_sd.folder)
    prompt = " ".join(["red"] * 150)
    cond = encode(parts, prompt, long_prompts="truncate")
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert tuple(cond.embeds.shape) == (1, 77, 32)
    assert torch.equal(cond.embeds, theirs)


def test_batch_pads_with_empty_windows(parts: Any) -> None:
    cond = encode(parts, f"a red circle\n{LONG}", batch=True)
    alone = encode(parts, "a red circle")
    assert tuple(cond.embeds.shape) == (2, 154, 32)
    torch.testing.assert_close(cond.embeds[0, :77], alone.embeds[0])
    torch.testing.assert_close(cond.embeds[0, 77:], _window_states(parts, []))
    torch.testing.assert_close(cond.embeds[1], encode(parts, LONG).embeds[0])


def test_sdxl_long_prompt_pooled_from_first_window(tiny_sdxl: TinySDXL, sdxl: Any) -> None:
    pipe = reference_pipeline("StableDiffusionXLPipeline", tiny_sdxl.base.folder)
    cond = encode(sdxl, LONG)
    assert tuple(cond.embeds.shape) == (1, 154, 128)
    assert tuple(cond.uncond.shape) == (1, 154, 128) and not cond.uncond.any()
    cut = encode(sdxl, LONG, long_prompts="truncate")
    theirs, _, pooled, _ = pipe.encode_prompt(LONG, device="cpu")
    torch.testing.assert_close(cut.embeds, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.embeds[:, :77], theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.options["pooled_output"], pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cond.embeds[:, 77:], theirs)


def test_guidance_repeats_to_a_common_length() -> None:
    pos = Conditioning(torch.randn(1, 154, 8))
    neg = Conditioning(torch.randn(1, 77, 8))
    ctx = guidance_context(pos, neg, 1, True, torch.device("cpu"), torch.float32)
    assert tuple(ctx.shape) == (2, 154, 8)
    assert torch.equal(ctx[0], neg.embeds[0].repeat(2, 1)) and torch.equal(ctx[1], pos.embeds[0])
    three = Conditioning(torch.randn(1, 231, 8))
    ctx = guidance_context(three, pos, 1, True, torch.device("cpu"), torch.float32)
    assert tuple(ctx.shape) == (2, 462, 8)
    assert torch.equal(ctx[1], three.embeds[0].repeat(2, 1))
    with pytest.raises(ValueError, match="same text encoder"):
        guidance_context(pos, Conditioning(torch.randn(1, 77, 4)), 1, True,
                         torch.device("cpu"), torch.float32)


def test_denoise_takes_a_long_prompt_and_a_short_negative(parts: Any) -> None:
    positive = encode(parts, LONG)
    negative = encode(parts, "blurry")
    latents = latent_nodes.random_latents(parts.unet, parts.vae, IMAGE_SIZE, IMAGE_SIZE, 1, 0)
    out = sampling.denoise(parts.unet, parts.scheduler, positive, latents=latents,
                           negative=negative, steps=1, guidance_scale=5.0)
    assert out.samples.shape == latents.samples.shape
    assert bool(torch.isfinite(out.samples).all())


# ---------------------------------------------------------------------------- comfy mode
@pytest.mark.parametrize("prompt", WEIGHTED)
def test_comfy_mode_equals_the_packs_clip_text_encode(parts: Any, prompt: str) -> None:
    ours = encode(parts, prompt, weighting="comfy")
    theirs = clip_text_encode(prompt, clip=pack_clip(parts))
    torch.testing.assert_close(ours.embeds, theirs.embeds, atol=0, rtol=0)
    skipped = encode(parts, prompt, weighting="comfy", clip_skip=1)
    theirs = clip_text_encode(prompt, clip=clip_set_last_layer(pack_clip(parts), -2))
    torch.testing.assert_close(skipped.embeds, theirs.embeds, atol=0, rtol=0)


def test_comfy_mode_sdxl_and_batches(sdxl: Any) -> None:
    prompts = ["a (red:1.4) circle", LONG]
    cond = encode(sdxl, "\n".join(prompts), batch=True, weighting="comfy")
    clip = pack_clip(sdxl)
    first, second = (clip_text_encode(p, clip=clip) for p in prompts)
    assert tuple(cond.embeds.shape) == (2, 154, 128)
    torch.testing.assert_close(cond.embeds[1:], second.embeds, atol=0, rtol=0)
    torch.testing.assert_close(cond.embeds[:1, :77], first.embeds, atol=0, rtol=0)
    empty = clip_text_encode("", clip=clip).embeds
    torch.testing.assert_close(cond.embeds[:1, 77:], empty, atol=0, rtol=0)
    pooled = torch.cat([first.options["pooled_output"], second.options["pooled_output"]])
    torch.testing.assert_close(cond.options["pooled_output"], pooled, atol=0, rtol=0)


def test_refiner_reads_its_one_encoder(tiny_sdxl: TinySDXL) -> None:
    """The SDXL refiner's only tokenizer and encoder are OpenCLIP-G's: `comfy` mode is the
    pack's refiner CLIP, and long prompts are windows in every mode."""
    refiner = loaders.load_pipeline(str(tiny_sdxl.refiner.folder), dtype="fp32",
                                    device="cpu")
    clip = Clip(None, None, tokenizer_2=refiner.tokenizer.tokenizer,
                text_encoder_2=refiner.text_encoder.model)
    for prompt in ("a (red:1.3) circle", LONG):
        ours = encode(refiner, prompt, weighting="comfy")
        theirs = clip_text_encode(prompt, clip=clip)
        torch.testing.assert_close(ours.embeds, theirs.embeds, atol=0, rtol=0)
        torch.testing.assert_close(ours.options["pooled_output"],
                                   theirs.options["pooled_output"], atol=0, rtol=0)
    for weighting in ("none", "a1111"):
        cond = encode(refiner, LONG, weighting=weighting)
        assert tuple(cond.embeds.shape) == (1, 154, 64)
        assert tuple(cond.uncond.shape) == (1, 154, 64)


TINY = REPO / "models" / "noodle-tiny"


@needs_oracle
@pytest.mark.parametrize("clip_skip", [0, 1])
def test_comfy_mode_equals_comfyui(clip_skip: int) -> None:
    """Our TextToConditioning in `comfy` mode against ComfyUI's own SD 1.x CLIP (tokenizer
    and encode_token_weights, its CLIPTextEncode) on the embedded model's weights."""
    import_comfy()
    import comfy.sd1_clip as sd1_clip

    tokenizer = Tokenizer(load_tokenizer(TINY / "tokenizer"))
    encoder = TextEncoder(load_text_encoder(TINY / "text_encoder"))
    config = json.loads((TINY / "text_encoder" / "config.json").read_text())
    model = sd1_clip.SDClipModel(textmodel_json_config=config, dtype=torch.float32,
                                 return_projected_pooled=False)
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v
             for k, v in encoder.model.state_dict().items()}
    model.transformer.load_state_dict(state, strict=False)
    if clip_skip:
        model.set_clip_options({"layer": -(clip_skip + 1)})
    their_tokenizer = sd1_clip.SDTokenizer(embedding_directory=None)
    for prompt in WEIGHTED[:4]:
        theirs, _ = model.encode_token_weights(their_tokenizer.tokenize_with_weights(prompt))
        ours = text.text_to_conditioning(tokenizer, encoder, prompt, weighting="comfy",
                                         clip_skip=clip_skip)
        torch.testing.assert_close(ours.embeds, theirs, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- a1111 mode
def _a1111(states: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's emphasis written out: scale each token, then restore the window's mean."""
    w = torch.tensor(weights)[:, None]
    scaled = states * w
    return scaled * (states.mean() / scaled.mean())


@pytest.fixture(scope="module")
def biased(parts: Any) -> Any:
    """The tiny SD with a bias in its final layer norm, as trained CLIPs have: without one
    every token state has mean 0 and a window's mean is rounding noise, which A1111's
    mean restoration would divide by."""
    model = copy.deepcopy(parts.text_encoder.model)
    with torch.no_grad():
        getattr(model, "text_model", model).final_layer_norm.bias.copy_(
            torch.randn(32, generator=torch.Generator().manual_seed(0)))
    return parts._replace(text_encoder=TextEncoder(model))


def _ids(parts: Any, words: str) -> list[int]:
    return parts.tokenizer.tokenizer(words, add_special_tokens=False).input_ids


def test_a1111_weights_and_mean_restoration(biased: Any) -> None:
    parts = biased
    cond = encode(parts, "a (red:1.5) circle [big] ((dog))", weighting="a1111")
    ids = _ids(parts, "a red circle big dog")
    assert len(ids) == 5
    weights = [1.0, 1.0, 1.5, 1.0, D, 1.21, 1.0] + [1.0] * 70
    expected = _a1111(_window_states(parts, ids), weights)
    torch.testing.assert_close(cond.embeds[0], expected, atol=1e-6, rtol=1e-5)
    plain = encode(parts, "a red circle big dog")
    assert not torch.allclose(cond.embeds, plain.embeds)
    torch.testing.assert_close(cond.embeds.mean(), plain.embeds.mean())


def test_a1111_break_starts_a_window(biased: Any) -> None:
    parts = biased
    cond = encode(parts, "a (red:2) BREAK [circle]", weighting="a1111")
    assert tuple(cond.embeds.shape) == (1, 154, 32)
    first = _a1111(_window_states(parts, _ids(parts, "a red")), [1, 1, 2] + [1] * 74)
    second = _a1111(_window_states(parts, _ids(parts, "circle")), [1, D] + [1] * 75)
    torch.testing.assert_close(cond.embeds[0, :77], first, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cond.embeds[0, 77:], second, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("prompt", "windows"), [
    ("a BREAK b", 2), ("a BREAK", 1), ("BREAK a", 2), ("BREAK", 1), ("a BREAK BREAK b", 3),
    (" ".join(["red"] * 75), 1), (" ".join(["red"] * 76), 2)])
def test_a1111_window_count(parts: Any, prompt: str, windows: int) -> None:
    tokens = text.tokenize(parts.tokenizer, prompt, weighting="a1111")
    assert tuple(tokens.input_ids.shape) == (1, 77 * windows)


def test_a1111_unweighted_is_plain(parts: Any) -> None:
    prompt = "a red circle"
    torch.testing.assert_close(encode(parts, prompt, weighting="a1111").embeds,
                               encode(parts, prompt).embeds, atol=0, rtol=0)


def test_a1111_sdxl_restores_each_encoders_mean(sdxl: Any) -> None:
    cond = encode(sdxl, "a (red:1.5) circle", weighting="a1111")
    plain = encode(sdxl, "a red circle")
    weights = [1.0, 1.0, 1.5] + [1.0] * 74
    for half in (slice(0, 64), slice(64, 128)):
        expected = _a1111(plain.embeds[0, :, half], weights)
        torch.testing.assert_close(cond.embeds[0, :, half], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cond.options["pooled_output"], plain.options["pooled_output"])

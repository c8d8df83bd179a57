"""SDXL through the ComfyUI pack: CheckpointLoaderSimple's two-encoder CLIP, CLIPTextEncode
and the SDXL text nodes against ComfyUI's own SDXL CLIP classes (run in-process on the tiny
weights), the pooled embedding and micro-conditioning the UNet gets against ComfyUI's
`encode_model_conds` + `encode_adm`, and KSampler and ComfyUI's SDXL templates on the tiny
SDXL base and refiner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from graph_runtime import REGISTRY, Folders
from nodes.comfyui.conditioning import clip_set_last_layer, clip_text_encode, conditioning_combine
from nodes.comfyui.conditioning_sdxl import clip_text_encode_sdxl, clip_text_encode_sdxl_refiner
from nodes.comfyui.guidance.denoiser import GuidedDenoiser
from nodes.comfyui.importer.widgets import widget_values
from nodes.comfyui.latent import empty_latent_image
from nodes.comfyui.loaders import Checkpoint, checkpoint_loader_simple
from nodes.comfyui.sampling import ksampler_node
from nodes.comfyui.types import Guider, Model
from nodes.diffusion.embeddings import timestep_embedding
from nodes.types import Conditioning
from tests.support.comfy_oracle import import_comfy, oracle_available
from tests.support.tiny_models import TinySDXL

needs_oracle = pytest.mark.skipif(not oracle_available(), reason="ComfyUI oracle not found")
PROMPTS = [
    "a red circle",
    "(a red:1.3) circle, ((blue)) square",
    "word " * 100,
    "a supercalifragilisticexpialidociousnessthing " * 12,
]
SIZE = 64  # pixels: 8 x 8 latent cells at ComfyUI's 8 pixels per cell


@pytest.fixture(scope="module")
def models(tiny_sdxl: TinySDXL) -> Iterator[Path]:
    """The folder holding the tiny SDXL base ("tiny-sdxl") and refiner, as the models
    folder of plain node calls."""
    root = tiny_sdxl.base.folder.parent
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NOODLE_MODELS_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def base(models: Path) -> Checkpoint:
    return checkpoint_loader_simple("tiny-sdxl")


@pytest.fixture(scope="module")
def refiner(models: Path) -> Checkpoint:
    return checkpoint_loader_simple("tiny-sdxl-refiner")


# ----------------------------------------------------------------------------- loading


def test_checkpoint_loader_gives_sdxl_clips(base: Checkpoint, refiner: Checkpoint) -> None:
    clip = base.CLIP
    assert clip.sdxl and clip.text_encoder is not None and clip.tokenizer_2 is not None
    assert clip.tokenizer_2.pad_token_id == 0
    assert refiner.CLIP.sdxl and refiner.CLIP.text_encoder is None
    assert refiner.CLIP.tokenizer is None and refiner.CLIP.text_encoder_2 is not None
    skipped = clip_set_last_layer(clip, -3)
    assert skipped.layer == -3 and clip.layer is None
    assert skipped.text_encoder_2 is clip.text_encoder_2 and skipped.tokenizer is clip.tokenizer
    cond = clip_text_encode("a red circle", clip=clip)
    assert tuple(cond.embeds.shape) == (1, 77, 128)  # 64 (L) + 64 (G) features
    assert tuple(cond.options["pooled_output"].shape) == (1, 48)  # G's projection
    assert tuple(clip_text_encode("a", clip=refiner.CLIP).embeds.shape) == (1, 77, 64)


def test_the_sdxl_text_nodes_have_comfyuis_inputs() -> None:
    def inputs(name: str) -> list[tuple[Any, ...]]:
        schema = REGISTRY[name].schema(Folders())
        assert schema["category"] == "ComfyUI/advanced/conditioning"
        assert schema["display_name"] == name
        return [(i["name"], i["type"], i.get("default"), i.get("min"), i.get("max"))
                for i in schema["inputs"]]

    size = ("INT", 1024, 0, 16384)
    assert inputs("CLIPTextEncodeSDXL") == [
        ("clip", "CLIP", None, None, None), ("width", *size), ("height", *size),
        ("crop_w", "INT", 0, 0, 16384), ("crop_h", "INT", 0, 0, 16384),
        ("target_width", *size), ("target_height", *size),
        ("text_g", "STRING", "", None, None), ("text_l", "STRING", "", None, None)]
    assert inputs("CLIPTextEncodeSDXLRefiner") == [
        ("ascore", "FLOAT", 6.0, 0.0, 1000.0), ("width", *size), ("height", *size),
        ("text", "STRING", "", None, None), ("clip", "CLIP", None, None, None)]


def test_ui_format_widget_values_of_the_sdxl_text_nodes() -> None:
    # ComfyUI saves widgets in input order, the CLIP socket left out.
    saved = [832, 1216, 0, 8, 4096, 4096, "a castle", "stone"]
    values = widget_values(REGISTRY["CLIPTextEncodeSDXL"], saved).values
    assert values == dict(zip(["width", "height", "crop_w", "crop_h", "target_width",
                               "target_height", "text_g", "text_l"], saved, strict=True))
    values = widget_values(REGISTRY["CLIPTextEncodeSDXLRefiner"], [2.5, 2048, 2048, "ugly"])
    assert values.values == {"ascore": 2.5, "width": 2048, "height": 2048, "text": "ugly"}


# ------------------------------------------------------------------ CLIP against ComfyUI


@pytest.fixture(scope="module")
def comfy() -> dict[str, ModuleType]:
    mods = import_comfy()
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.sd1_clip
    import comfy.sdxl_clip

    return {**mods, "sd1_clip": comfy.sd1_clip, "sdxl_clip": comfy.sdxl_clip,
            "openaimodel": openaimodel}


def _clip_g(comfy: dict[str, ModuleType], encoder: Any) -> Any:
    """ComfyUI's SDXL OpenCLIP-G reader on the tiny G's weights. ComfyUI's CLIP assumes a
    square projection (as bigG has); the tiny one is not, so it gets one of the real
    shape, applied the same way."""
    config = encoder.config.to_dict()
    model = comfy["sdxl_clip"].SDXLClipG(dtype=torch.float32,
                                         model_options={"clip_g_model_config": config})
    model.transformer.text_projection = torch.nn.Linear(
        config["hidden_size"], config["projection_dim"], bias=False)
    model.transformer.load_state_dict(encoder.state_dict(), strict=True)
    return model


def _clip_l(comfy: dict[str, ModuleType], encoder: Any) -> Any:
    """ComfyUI's SDXL CLIP-L reader (penultimate layer, no final norm) on the tiny L. Its
    constructor refuses a two-layer model for the penultimate layer, so the layer is set
    the way CLIPSetLastLayer sets it, and made its default."""
    config = encoder.config.to_dict()
    model = comfy["sd1_clip"].SDClipModel(layer="hidden", layer_idx=-1, dtype=torch.float32,
                                          textmodel_json_config=config,
                                          layer_norm_hidden_state=False)
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v
             for k, v in encoder.state_dict().items()}
    model.transformer.load_state_dict(state, strict=False)
    model.set_clip_options({"layer": -2})
    model.options_default = (model.layer, model.layer_idx, model.return_projected_pooled)
    return model


@pytest.fixture(scope="module")
def comfy_base_clip(comfy: dict[str, ModuleType], tiny_sdxl: TinySDXL) -> Any:
    sdxl = comfy["sdxl_clip"]
    model = sdxl.SDXLClipModel.__new__(sdxl.SDXLClipModel)
    torch.nn.Module.__init__(model)
    model.clip_l = _clip_l(comfy, tiny_sdxl.base.pipe.text_encoder)
    model.clip_g = _clip_g(comfy, tiny_sdxl.base.pipe.text_encoder_2)
    return model


@pytest.fixture(scope="module")
def comfy_refiner_clip(comfy: dict[str, ModuleType], tiny_sdxl: TinySDXL) -> Any:
    config = tiny_sdxl.refiner.pipe.text_encoder_2.config.to_dict()
    model = comfy["sdxl_clip"].SDXLRefinerClipModel(
        dtype=torch.float32, model_options={"clip_g_model_config": config})
    model.clip_g = _clip_g(comfy, tiny_sdxl.refiner.pipe.text_encoder_2)
    return model


def _theirs(model: Any, tokens: Any, layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    model.reset_clip_options()
    if layer is not None:
        model.set_clip_options({"layer": layer})
    return model.encode_token_weights(tokens)


def _assert_same(cond: Conditioning, theirs: tuple[torch.Tensor, torch.Tensor]) -> None:
    embeds, pooled = theirs
    assert cond.embeds.shape == embeds.shape
    torch.testing.assert_close(cond.embeds, embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.options["pooled_output"], pooled, atol=1e-5, rtol=1e-5)


@needs_oracle
@pytest.mark.parametrize("layer", [None, -1, -2, -3])
def test_sdxl_clip_text_encode_matches_comfyui(base: Checkpoint, comfy: dict[str, ModuleType],
                                               comfy_base_clip: Any, layer: int | None) -> None:
    # -3 skips more layers than the tiny L has (its last layer, normalized) but not G's.
    tokenizer = comfy["sdxl_clip"].SDXLTokenizer(embedding_directory=None)
    clip = base.CLIP if layer is None else clip_set_last_layer(base.CLIP, layer)
    for prompt in PROMPTS:
        cond = clip_text_encode(prompt, clip=clip)
        _assert_same(cond, _theirs(comfy_base_clip, tokenizer.tokenize_with_weights(prompt),
                                   layer))


@needs_oracle
@pytest.mark.parametrize("layer", [None, -1])
def test_refiner_clip_text_encode_matches_comfyui(refiner: Checkpoint,
                                                  comfy: dict[str, ModuleType],
                                                  comfy_refiner_clip: Any,
                                                  layer: int | None) -> None:
    tokenizer = comfy["sdxl_clip"].SDXLTokenizer(embedding_directory=None)
    clip = refiner.CLIP if layer is None else clip_set_last_layer(refiner.CLIP, layer)
    for prompt in PROMPTS[:3]:
        cond = clip_text_encode(prompt, clip=clip)
        _assert_same(cond, _theirs(comfy_refiner_clip,
                                   tokenizer.tokenize_with_weights(prompt), layer))


def _comfy_sdxl_tokens(comfy: dict[str, ModuleType], text_g: str, text_l: str) -> Any:
    """ComfyUI's CLIPTextEncodeSDXL tokens (its node's padding of the shorter side)."""
    tokenizer = comfy["sdxl_clip"].SDXLTokenizer(embedding_directory=None)
    tokens = tokenizer.tokenize_with_weights(text_g)
    tokens["l"] = tokenizer.tokenize_with_weights(text_l)["l"]
    empty = tokenizer.tokenize_with_weights("")
    while len(tokens["l"]) < len(tokens["g"]):
        tokens["l"] += empty["l"]
    while len(tokens["l"]) > len(tokens["g"]):
        tokens["g"] += empty["g"]
    return tokens


@needs_oracle
@pytest.mark.parametrize(("text_g", "text_l"), [
    ("a red circle", "a (blue:1.2) square"), ("word " * 100, "tiny"), ("tiny", "word " * 170)])
def test_clip_text_encode_sdxl_matches_comfyui(base: Checkpoint, refiner: Checkpoint,
                                               comfy: dict[str, ModuleType],
                                               comfy_base_clip: Any, comfy_refiner_clip: Any,
                                               text_g: str, text_l: str) -> None:
    tokens = _comfy_sdxl_tokens(comfy, text_g, text_l)
    cond = clip_text_encode_sdxl(base.CLIP, 640, 480, 8, 16, 1024, 768, text_g, text_l)
    _assert_same(cond, _theirs(comfy_base_clip, tokens, None))
    assert {k: v for k, v in cond.options.items() if k != "pooled_output"} == {
        "width": 640, "height": 480, "crop_w": 8, "crop_h": 16, "target_width": 1024,
        "target_height": 768}
    on_refiner = clip_text_encode_sdxl(refiner.CLIP, text_g=text_g, text_l=text_l)
    _assert_same(on_refiner, _theirs(comfy_refiner_clip, tokens, None))


def test_clip_text_encode_sdxl_refuses_an_sd1_clip() -> None:
    sd1 = checkpoint_loader_simple("noodle-tiny").CLIP
    with pytest.raises(ValueError, match="not an SDXL CLIP"):
        clip_text_encode_sdxl(sd1, text_g="a", text_l="b")


# ---------------------------------------------------- pooled + micro-conditioning (adm)


def _our_call(model: Model, positive: Conditioning, negative: Conditioning,
              cells: tuple[int, int]) -> dict[str, Any]:
    """The keyword arguments of the one batched UNet call of a guided estimate."""
    net = model.unet.model
    calls: list[dict[str, Any]] = []
    handle = net.register_forward_pre_hook(lambda _m, _a, kw: calls.append(kw),
                                           with_kwargs=True)
    try:
        x = torch.randn(1, 4, *cells, generator=torch.Generator().manual_seed(0))
        denoiser = GuidedDenoiser(Guider(model, positive, negative, 5.0), x.shape, x.device)
        with torch.no_grad():
            denoiser(x, torch.full((1,), 2.0))
    finally:
        handle.remove()
    assert len(calls) == 1
    return calls[0]


def _our_adm(net: Any, added: dict[str, torch.Tensor]) -> torch.Tensor:
    """Our added inputs laid out as ComfyUI's `y`: pooled, then each number embedded."""
    cfg = net.config
    ids = added["time_ids"]
    embedded = timestep_embedding(ids.flatten(), cfg["addition_time_embed_dim"],
                                  cfg["flip_sin_to_cos"], cfg["freq_shift"])
    return torch.cat([added["text_embeds"], embedded.reshape(ids.shape[0], -1)], dim=1)


def _comfy_adm(comfy: dict[str, ModuleType], net: Any, refiner: bool,
               options: dict[str, Any], prompt_type: str, cells: tuple[int, int]
               ) -> torch.Tensor:
    """ComfyUI's `y` for one entry: its samplers' defaults (`encode_model_conds`) and the
    SDXL model's `encode_adm`, with an embedder as wide as the tiny UNet's."""
    model_base = comfy["model_base"]
    owner = SimpleNamespace(
        embedder=comfy["openaimodel"].Timestep(net.config["addition_time_embed_dim"]),
        noise_augmentor=None)
    kind = model_base.SDXLRefiner if refiner else model_base.SDXL

    def extra_conds(**kwargs: Any) -> dict[str, torch.Tensor]:
        return {"y": kind.encode_adm(owner, **kwargs)}

    conds = [{**options, "model_conds": {}}]
    noise = torch.zeros(1, 4, *cells)
    out = comfy["samplers"].encode_model_conds(extra_conds, conds, noise, "cpu", prompt_type)
    return out[0]["model_conds"]["y"]


def _check_adm(comfy: dict[str, ModuleType], model: Model, refiner: bool,
               positive: Conditioning, negative: Conditioning, cells: tuple[int, int]) -> None:
    """Each row of the batched call carries its own entry's adm, in the contexts' order."""
    call = _our_call(model, positive, negative, cells)
    net = model.unet.model
    ours = _our_adm(net, call["added_cond_kwargs"])
    contexts = call["encoder_hidden_states"]
    entries = [(p, "positive") for p in positive.parts]
    entries += [(p, "negative") for p in negative.parts]
    assert contexts.shape[0] == len(entries)
    for part, side in entries:
        rows = [r for r in range(contexts.shape[0]) if torch.equal(contexts[r], part.embeds[0])]
        assert len(rows) == 1
        theirs = _comfy_adm(comfy, net, refiner, dict(part.options), side, cells)
        torch.testing.assert_close(ours[rows[0]: rows[0] + 1], theirs, atol=1e-6, rtol=1e-6)


@needs_oracle
def test_base_adm_matches_comfyui(base: Checkpoint, comfy: dict[str, ModuleType]) -> None:
    clip = base.CLIP
    positive = conditioning_combine(
        clip_text_encode("a red circle", clip=clip),
        clip_text_encode_sdxl(clip, 640, 480, 8, 16, 1024, 768, "a blue square", "a cube"))
    negative = conditioning_combine(
        clip_text_encode("blurry", clip=clip),
        clip_text_encode_sdxl(clip, 200, 300, 0, 0, 400, 500, "ugly", "ugly"))
    _check_adm(comfy, base.MODEL, False, positive, negative, (8, 12))


@needs_oracle
def test_refiner_adm_matches_comfyui(refiner: Checkpoint, comfy: dict[str, ModuleType]
                                     ) -> None:
    clip = refiner.CLIP
    positive = conditioning_combine(
        clip_text_encode("a red circle", clip=clip),
        clip_text_encode_sdxl_refiner(7.5, 640, 480, "a blue square", clip=clip))
    negative = conditioning_combine(
        clip_text_encode("blurry", clip=clip),
        clip_text_encode_sdxl_refiner(1.0, 200, 300, "ugly", clip=clip))
    _check_adm(comfy, refiner.MODEL, True, positive, negative, (10, 6))


def test_an_sdxl_model_needs_pooled_embeddings(base: Checkpoint) -> None:
    positive = clip_text_encode("a red circle", clip=base.CLIP)
    without_pooled = Conditioning(torch.zeros(1, 77, 128))
    with pytest.raises(ValueError, match="input 'negative'.*pooled_output"):
        GuidedDenoiser(Guider(base.MODEL, positive, without_pooled, 5.0), (1, 4, 8, 8),
                       torch.device("cpu"))
    sd1_pooled = Conditioning(torch.zeros(1, 77, 128), options={
        "pooled_output": torch.zeros(1, 32)})
    with pytest.raises(ValueError, match="input 'positive'.*32 wide"):
        GuidedDenoiser(Guider(base.MODEL, sd1_pooled, positive, 5.0), (1, 4, 8, 8),
                       torch.device("cpu"))


# --------------------------------------------------------------------------- sampling


def _sample(ckpt: Checkpoint, positive: Conditioning, negative: Conditioning) -> torch.Tensor:
    out = ksampler_node(ckpt.MODEL, 3, 2, 5.0, "euler", "normal", positive=positive,
                        negative=negative, latent_image=empty_latent_image(SIZE, SIZE, 1))
    return out.samples


def test_ksampler_on_sdxl_base_follows_the_micro_conditioning(base: Checkpoint) -> None:
    clip, text = base.CLIP, "a red circle"
    negative = clip_text_encode("blurry", clip=clip)
    plain = _sample(base, clip_text_encode(text, clip=clip), negative)
    assert plain.std() > 0
    explicit = clip_text_encode_sdxl(clip, SIZE, SIZE, 0, 0, SIZE, SIZE, text, text)
    torch.testing.assert_close(_sample(base, explicit, negative), plain, atol=0, rtol=0)
    wider = clip_text_encode_sdxl(clip, 2 * SIZE, SIZE, 0, 0, SIZE, SIZE, text, text)
    assert not torch.allclose(_sample(base, wider, negative), plain)


def test_ksampler_on_sdxl_refiner_follows_the_aesthetic_score(refiner: Checkpoint) -> None:
    clip = refiner.CLIP
    plain = _sample(refiner, clip_text_encode("a red circle", clip=clip),
                    clip_text_encode("blurry", clip=clip))
    assert plain.std() > 0
    negative = clip_text_encode_sdxl_refiner(2.5, SIZE, SIZE, "blurry", clip=clip)
    explicit = _sample(refiner, clip_text_encode_sdxl_refiner(6.0, SIZE, SIZE, "a red circle",
                                                              clip=clip), negative)
    torch.testing.assert_close(explicit, plain, atol=0, rtol=0)
    other = _sample(refiner, clip_text_encode_sdxl_refiner(9.0, SIZE, SIZE, "a red circle",
                                                           clip=clip), negative)
    assert not torch.allclose(other, plain)


@pytest.mark.parametrize("template", ["sdxl_simple_example", "sdxl_refiner_prompt_example"])
def test_comfyuis_sdxl_templates_run(models: Path, tmp_path: Path, template: str) -> None:
    pytest.importorskip("comfyui_workflow_templates")
    from graph_runtime.cache import OutputCache
    from graph_runtime.executor import Executor
    from graph_runtime.workflow import import_workflow
    from tools.comfy_templates import shrink, templates_dir

    data = json.loads((templates_dir() / f"{template}.json").read_text())
    workflow, _ = import_workflow(data, REGISTRY)
    graph = json.loads(json.dumps(workflow.to_dict()))
    names = {nid: n["inputs"]["ckpt_name"] for nid, n in graph["nodes"].items()
             if n["type"] == "CheckpointLoaderSimple"}
    assert sorted(names.values()) == ["sd_xl_base_1.0.safetensors",
                                      "sd_xl_refiner_1.0.safetensors"]
    shrink(graph, "unused.png")
    for nid, name in names.items():
        graph["nodes"][nid]["inputs"]["ckpt_name"] = (
            "tiny-sdxl-refiner" if "refiner" in name else "tiny-sdxl")
    decode = next(nid for nid, n in graph["nodes"].items() if n["type"] == "VAEDecode")
    for node in graph["nodes"].values():
        if node["type"] == "EmptyLatentImage":
            node["inputs"].update(width=SIZE, height=SIZE)
    folders = Folders(output=tmp_path / "output", input=tmp_path / "input", models=models,
                      user=tmp_path / "user")
    result = Executor(REGISTRY, OutputCache(), folders=folders).run(graph, targets=[decode])
    assert result.ok, result.error
    pixels = result.outputs[decode]["IMAGE"].pixels
    assert pixels.shape[0] == 1 and float(pixels.std()) > 0

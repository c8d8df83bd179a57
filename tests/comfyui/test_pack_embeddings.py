"""`embedding:name` in the pack's text nodes: the vectors take the tokens' places (an
embedding made of a word's token vectors encodes as that word), the conditioning matches
ComfyUI's own tokenizer and CLIP with an embedding folder (SD1 and SDXL, weighted,
multi-vector, across windows, of the wrong width), and an unknown name is a validation
error naming the node and the input."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from graph_runtime import REGISTRY, Folders
from graph_runtime.context import RunContext, activate, deactivate
from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.graph import validate
from graph_runtime.workflow import load_workflow
from nodes.comfyui import clip_text
from nodes.comfyui.conditioning import clip_text_encode
from nodes.comfyui.conditioning_sdxl import clip_text_encode_sdxl
from nodes.comfyui.prompt_syntax import UnknownEmbeddings
from nodes.comfyui.types import Clip
from nodes.diffusion.clip import load_text_encoder, load_tokenizer
from nodes.types import Conditioning
from tests.support.comfy_oracle import import_comfy, oracle_available
from tests.support.paths import REPO
from tests.support.tiny_models import TinySDXL

TINY = REPO / "models" / "noodle-tiny"
needs_oracle = pytest.mark.skipif(not oracle_available(), reason="ComfyUI oracle not found")


@pytest.fixture(scope="module")
def clip() -> Clip:
    return Clip(load_tokenizer(TINY / "tokenizer"), load_text_encoder(TINY / "text_encoder"))


def token_rows(clip: Clip, words: str, encoder: Any = None) -> torch.Tensor:
    """The token-table rows of the words' tokens: an embedding that *is* those words."""
    model = encoder if encoder is not None else clip.text_encoder
    ids = clip.tokenizer(words, add_special_tokens=False).input_ids
    return model.get_input_embeddings().weight.detach()[ids].clone()


def save_pt(path: Path, vectors: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                "name": path.stem, "step": 10}, path)


def save_st(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def noise(n: int, width: int, seed: int) -> torch.Tensor:
    return 0.05 * torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


@contextmanager
def running_with(folders: Folders) -> Iterator[None]:
    """Call nodes as the executor would, with these folders."""
    token = activate(RunContext("1", "CLIPTextEncode", folders))
    try:
        yield
    finally:
        deactivate(token)


def same(a: Conditioning, b: Conditioning) -> None:
    torch.testing.assert_close(a.embeds, b.embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.options["pooled_output"], b.options["pooled_output"],
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- effect
@pytest.fixture(scope="module")
def word_folders(clip: Clip, tmp_path_factory: pytest.TempPathFactory) -> Folders:
    """Embeddings made of the tiny model's own token vectors."""
    root = tmp_path_factory.mktemp("word-embeddings")
    emb = root / "models" / "embeddings"
    save_pt(emb / "rc.pt", token_rows(clip, "red circle"))
    save_st(emb / "kitty.safetensors", {"<kitty>": token_rows(clip, "cat")[0]})
    eight = "one two three four five six seven eight"
    save_st(emb / "sub" / "eight.safetensors", {"emb_params": token_rows(clip, eight)})
    return Folders(models=root / "models", output=root / "out")


@pytest.mark.parametrize(("with_embedding", "in_words"), [
    ("a embedding:rc", "a red circle"),
    ("a (embedding:rc:1.3) on grass", "a (red circle:1.3) on grass"),
    ("((embedding:kitty)) x", "((cat)) x"),
    ("embedding:kitty, sleeping", "cat, sleeping"),
    ("word " * 72 + "embedding:eight", "word " * 72 + "one two three four five six seven eight"),
])
def test_an_embedding_encodes_as_the_tokens_it_holds(clip: Clip, word_folders: Folders,
                                                     with_embedding: str,
                                                     in_words: str) -> None:
    weight = clip.text_encoder.get_input_embeddings().weight
    saved = weight.detach().clone()
    with running_with(word_folders):
        ours = clip_text_encode(with_embedding, clip=clip)
    same(ours, clip_text_encode(in_words, clip=clip))
    without = with_embedding.replace("embedding:", "")
    other = clip_text_encode(without, clip=clip).embeds
    assert (ours.embeds[:, :77] - other[:, :77]).abs().max() > 1e-3  # the vectors matter
    assert clip.text_encoder.get_input_embeddings().weight is weight
    torch.testing.assert_close(weight.detach(), saved, rtol=0, atol=0)


def test_vectors_of_the_wrong_width_leave_the_window_as_in_comfyui(clip: Clip,
                                                                    tmp_path: Path) -> None:
    save_pt(tmp_path / "models" / "embeddings" / "wide.pt", noise(2, 48, 0))
    windows = clip_text.tokenize(clip.tokenizer, "a embedding:wide (cat:1.2)", None,
                                 clip_text.EmbeddingSource(_lookup(tmp_path), 32, "clip_l"))
    start, end = clip.tokenizer.bos_token_id, clip.tokenizer.eos_token_id
    a, cat = clip.tokenizer("a cat", add_special_tokens=False).input_ids
    # Two places reserved, then dropped: later tokens move up, the weights stay put.
    assert windows[0].ids[:5] == (start, a, cat, end, end) and windows[0].vectors == ()
    assert windows[0].weights[:5] == (1.0, 1.0, 1.0, 1.0, 1.2)


def _lookup(root: Path) -> Any:
    from nodes.textual_inversion import embedding_lookup

    return embedding_lookup(Folders(models=root / "models"))


def test_pooled_output_with_an_old_end_token_config(clip: Clip, word_folders: Folders) -> None:
    # Configs written before transformers knew CLIP's end token say 2 and pool at the
    # largest id, which an extra row would be; the pack pools at the end token itself.
    legacy = copy.deepcopy(clip.text_encoder)
    legacy.config.eos_token_id = 2
    getattr(legacy, "text_model", legacy).eos_token_id = 2
    with running_with(word_folders):
        ours = clip_text_encode("a embedding:rc", clip=Clip(clip.tokenizer, legacy))
    same(ours, clip_text_encode("a red circle", clip=clip))


# ---------------------------------------------------------------------------- unknown names
def _workflow(text: Any) -> dict[str, Any]:
    return {"format": "noodle.workflow", "version": 1, "nodes": {
        "4": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "noodle-tiny"}},
        "6": {"type": "CLIPTextEncode", "inputs": {
            "text": text, "clip": {"from": "4", "output": "CLIP"}}}}}


def test_an_unknown_embedding_is_a_validation_error(word_folders: Folders) -> None:
    wf = load_workflow(_workflow("a photo, embedding:kity (embedding:rc:1.1)"))
    errors = validate(wf, REGISTRY, ["6"], word_folders)
    assert [(e["node"], e["input"], e["code"]) for e in errors] == [
        ("6", "text", "invalid_combination")]
    assert "unknown embedding 'kity'; close names: kitty" in errors[0]["message"]
    with pytest.raises(WorkflowInvalid) as caught:
        Executor(REGISTRY, folders=word_folders).run(wf, targets=["6"])
    assert caught.value.errors == errors
    assert validate(load_workflow(_workflow("embedding:kitty, embedding:sub/eight")),
                    REGISTRY, ["6"], word_folders) == []
    sdxl = REGISTRY["CLIPTextEncodeSDXL"].check_inputs
    assert sdxl is not None and set(sdxl({"text_g": "embedding:rc", "text_l": "embedding:x"},
                                         word_folders)) == {"text_l"}


def test_an_unknown_embedding_in_linked_text_stops_the_node(clip: Clip,
                                                           word_folders: Folders) -> None:
    with running_with(word_folders), pytest.raises(UnknownEmbeddings,
                                                   match="unknown embedding 'nope'; known: "
                                                         "kitty, rc, sub/eight"):
        clip_text_encode("a embedding:nope", clip=clip)


def test_runs_read_each_embedding_file_once_and_again_when_it_changes(
        word_folders: Folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.textual_inversion as ti

    folders = Folders(models=word_folders.models, output=tmp_path)
    reads: list[Path] = []
    real = ti.load_embedding
    monkeypatch.setattr(ti, "load_embedding", lambda p: reads.append(p) or real(p))
    executor = Executor(REGISTRY, folders=folders)
    first = executor.run(_workflow("a embedding:kitty"), targets=["6"])
    executor.run(_workflow("the embedding:kitty"), targets=["6"])
    assert len(reads) == 1
    again = executor.run(_workflow("a embedding:kitty"), targets=["6"])
    assert set(again.cached) == {"4", "6"}
    path = folders.models / "embeddings" / "kitty.safetensors"
    original = path.read_bytes()
    try:
        save_st(path, {"<kitty>": noise(1, 32, 3)[0]})
        changed = executor.run(_workflow("a embedding:kitty"), targets=["6"])
    finally:
        path.write_bytes(original)
    assert "6" in changed.executed and len(reads) == 2
    assert not torch.allclose(changed.outputs["6"]["CONDITIONING"].embeds,
                              first.outputs["6"]["CONDITIONING"].embeds)


# ---------------------------------------------------------------------------- ComfyUI
@pytest.fixture(scope="module")
def oracle_folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    """Random embeddings for the tiny SD1 model (32 wide) and the tiny SDXL (64 wide)."""
    root = tmp_path_factory.mktemp("oracle-embeddings")
    emb = root / "models" / "embeddings"
    save_pt(emb / "three.pt", noise(3, 32, 1))
    save_st(emb / "one.safetensors", {"<one>": noise(1, 32, 2)})
    save_st(emb / "ten.safetensors", {"emb_params": noise(10, 32, 3)})
    save_pt(emb / "wide.pt", noise(2, 48, 4))
    save_st(emb / "xl.safetensors", {"clip_l": noise(2, 64, 5), "clip_g": noise(2, 64, 6)})
    save_pt(emb / "xl_one.pt", noise(3, 64, 7))
    return Folders(models=root / "models", output=root / "out")


SD1_PROMPTS = [
    "a embedding:three cat",
    "a (embedding:one:1.3) cat, (embedding:three) (dog:0.8)",
    "embedding:one, embedding:wide a red (circle:1.2)",
    "word " * 70 + "embedding:ten after",
    "(embedding:ten:0.7) " + "word " * 80,
]


@pytest.fixture(scope="module")
def sd1_clip() -> ModuleType:
    import_comfy()
    import comfy.sd1_clip

    return comfy.sd1_clip


@needs_oracle
def test_sd1_conditioning_matches_comfyui(clip: Clip, sd1_clip: ModuleType,
                                          oracle_folders: Folders) -> None:
    config = json.loads((TINY / "text_encoder" / "config.json").read_text())
    model = sd1_clip.SDClipModel(textmodel_json_config=config, dtype=torch.float32,
                                 return_projected_pooled=False)
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v
             for k, v in clip.text_encoder.state_dict().items()}
    model.transformer.load_state_dict(state, strict=False)
    tokenizer = sd1_clip.SDTokenizer(
        embedding_directory=[str(oracle_folders.models / "embeddings")])
    for prompt in SD1_PROMPTS:
        tokens = tokenizer.tokenize_with_weights(prompt)
        assert any(torch.is_tensor(t) for window in tokens for t, _ in window)  # loaded
        embeds, pooled = model.encode_token_weights(tokens)
        with running_with(oracle_folders):
            ours = clip_text_encode(prompt, clip=clip)
        assert ours.embeds.shape == embeds.shape, prompt
        torch.testing.assert_close(ours.embeds, embeds, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.options["pooled_output"], pooled, rtol=1e-5,
                                   atol=1e-5)


@pytest.fixture(scope="module")
def sdxl_oracle(tiny_sdxl: TinySDXL) -> tuple[Clip, Any, ModuleType]:
    """Our SDXL CLIP and ComfyUI's on the tiny SDXL base's encoders."""
    from tests.comfyui.test_pack_sdxl import _clip_g, _clip_l

    mods = import_comfy()
    import comfy.sdxl_clip

    pipe = tiny_sdxl.base.pipe
    theirs = comfy.sdxl_clip.SDXLClipModel.__new__(comfy.sdxl_clip.SDXLClipModel)
    torch.nn.Module.__init__(theirs)
    comfy_mods = {**mods, "sd1_clip": comfy.sdxl_clip.sd1_clip, "sdxl_clip": comfy.sdxl_clip}
    theirs.clip_l = _clip_l(comfy_mods, pipe.text_encoder)
    theirs.clip_g = _clip_g(comfy_mods, pipe.text_encoder_2)
    ours = Clip(pipe.tokenizer, pipe.text_encoder, tokenizer_2=pipe.tokenizer_2,
                text_encoder_2=pipe.text_encoder_2)
    return ours, theirs, comfy.sdxl_clip


@needs_oracle
@pytest.mark.parametrize(("text_g", "text_l"), [
    ("a embedding:xl cat", None),
    ("(embedding:xl_one:1.2) cat, embedding:three", None),
    ("a embedding:xl cat", "(embedding:xl:0.8) and embedding:xl_one"),
    ("word " * 100 + "embedding:xl_one", "embedding:xl"),
])
def test_sdxl_conditioning_matches_comfyui(sdxl_oracle: tuple[Clip, Any, ModuleType],
                                           oracle_folders: Folders, text_g: str,
                                           text_l: str | None) -> None:
    ours_clip, theirs_clip, sdxl = sdxl_oracle
    tokenizer = sdxl.SDXLTokenizer(
        embedding_directory=[str(oracle_folders.models / "embeddings")])
    tokens = tokenizer.tokenize_with_weights(text_g)
    with running_with(oracle_folders):
        if text_l is None:
            ours = clip_text_encode(text_g, clip=ours_clip)
        else:
            ours = clip_text_encode_sdxl(ours_clip, text_g=text_g, text_l=text_l)
            tokens["l"] = tokenizer.tokenize_with_weights(text_l)["l"]
            empty = tokenizer.tokenize_with_weights("")
            while len(tokens["l"]) < len(tokens["g"]):
                tokens["l"] += empty["l"]
            while len(tokens["g"]) < len(tokens["l"]):
                tokens["g"] += empty["g"]
    assert any(torch.is_tensor(t) for window in tokens["g"] for t, _ in window)
    theirs_clip.clip_l.reset_clip_options()
    theirs_clip.clip_g.reset_clip_options()
    embeds, pooled = theirs_clip.encode_token_weights(tokens)
    assert ours.embeds.shape == embeds.shape
    torch.testing.assert_close(ours.embeds, embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.options["pooled_output"], pooled, rtol=1e-5, atol=1e-5)

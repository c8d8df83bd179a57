"""Textual inversion: embedding files in every layout, finding them by name, the
`extra_token_vectors` encoding, and parity with diffusers' `load_textual_inversion` on the
tiny SD pipeline."""

from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from graph_runtime import Folders
from graph_runtime.context import RunContext, activate, deactivate
from nodes.textual_inversion import (
    Embedding,
    embedding_lookup,
    embedding_references,
    embeddings_fingerprint,
    extra_token_vectors,
    find_embedding,
    get_embedding,
    load_embedding,
    missing_embeddings,
)
from tests.support.tiny_models import TinyModel

UNPICKLED: list[str] = []


class Payload:
    """A non-tensor object in a pickle: loading it would run `__setstate__`."""

    def __setstate__(self, state: Any) -> None:
        UNPICKLED.append("ran")


def _vectors(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def save_a1111(path: Path, vectors: torch.Tensor) -> Path:
    """A1111's .pt layout: the vectors under `string_to_param['*']`, with its metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                "name": path.stem, "step": 1500, "sd_checkpoint": "abc123",
                "sd_checkpoint_name": "v1-5"}, path)
    return path


def save_diffusers(path: Path, token: str, vectors: torch.Tensor) -> Path:
    """diffusers' layout: `{token: tensor}` (learned_embeds.bin or .safetensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({token: vectors.contiguous()}, str(path))
    else:
        torch.save({token: vectors}, path)
    return path


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    return Folders(models=tmp_path / "models", output=tmp_path / "out")


def emb_dir(folders: Folders) -> Path:
    return folders.models / "embeddings"


# ---------------------------------------------------------------------------- layouts
def test_a1111_pt_single_and_multi_vector(folders: Folders) -> None:
    one, three = _vectors(1, 8), _vectors(3, 8, seed=1)
    single = load_embedding(save_a1111(emb_dir(folders) / "one.pt", one))
    multi = load_embedding(save_a1111(emb_dir(folders) / "three.pt", three))
    assert single.name == "one" and set(single.vectors) == {""}
    torch.testing.assert_close(single.for_width(8), one, rtol=0, atol=0)
    assert tuple(multi.for_width(8).shape) == (3, 8)
    torch.testing.assert_close(multi.for_width(8), three, rtol=0, atol=0)
    assert multi.__nbytes__() == 3 * 8 * 4


def test_a1111_safetensors_diffusers_bin_and_safetensors(folders: Folders) -> None:
    v = _vectors(2, 8).half()
    a1111 = emb_dir(folders) / "a.safetensors"
    a1111.parent.mkdir(parents=True)
    save_file({"emb_params": v}, str(a1111))
    bin_file = save_diffusers(emb_dir(folders) / "toy" / "learned_embeds.bin", "<cat-toy>",
                              _vectors(1, 8, seed=2)[0])
    st_file = save_diffusers(emb_dir(folders) / "d.safetensors", "<d>", _vectors(1, 8, 3))
    loaded = load_embedding(a1111).for_width(8)
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    torch.testing.assert_close(loaded, v.float(), rtol=0, atol=0)
    # A 1-D token vector is one row.
    torch.testing.assert_close(load_embedding(bin_file).for_width(8), _vectors(1, 8, seed=2))
    torch.testing.assert_close(load_embedding(st_file).for_width(8), _vectors(1, 8, 3))


def test_sdxl_layout_picks_the_encoder_by_width_then_kind(folders: Folders) -> None:
    path = emb_dir(folders) / "xl.safetensors"
    path.parent.mkdir(parents=True)
    clip_l, clip_g = _vectors(2, 8), _vectors(2, 12, seed=1)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    emb = load_embedding(path)
    assert set(emb.vectors) == {"clip_l", "clip_g"} and emb.widths() == [8, 12]
    torch.testing.assert_close(emb.for_width(8), clip_l)
    torch.testing.assert_close(emb.for_width(12, "clip_l"), clip_g)  # width first
    with pytest.raises(ValueError, match=r"'xl'.*8 or 12 wide.*16 wide"):
        emb.for_width(16)
    # Both as wide (toy SDXL encoders): the kind decides.
    same = Embedding("same", {"clip_l": clip_l, "clip_g": clip_l + 1})
    torch.testing.assert_close(same.for_width(8, "clip_g"), clip_l + 1)
    torch.testing.assert_close(same.for_width(8, "clip_l"), clip_l)


def test_a_pickle_with_other_objects_is_refused_without_running_it(folders: Folders) -> None:
    path = emb_dir(folders) / "evil.pt"
    path.parent.mkdir(parents=True)
    torch.save({"string_to_param": {"*": _vectors(1, 8)}, "extra": Payload()}, path)
    UNPICKLED.clear()
    with pytest.raises(ValueError, match=r"evil\.pt: refused.*other than tensors.*Payload"):
        load_embedding(path)
    assert UNPICKLED == []


def test_files_that_are_not_embeddings_say_so(folders: Folders) -> None:
    broken = emb_dir(folders) / "broken.safetensors"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"broken\.safetensors: cannot be read"):
        load_embedding(broken)
    garbage = emb_dir(folders) / "garbage.pt"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"garbage\.pt: cannot be read as plain tensor data"):
        load_embedding(garbage)
    empty = emb_dir(folders) / "empty.pt"
    torch.save({"name": "x", "step": 3}, empty)
    with pytest.raises(ValueError, match=r"empty\.pt: no tensors"):
        load_embedding(empty)


# ---------------------------------------------------------------------------- names
def test_references_in_a_prompt() -> None:
    text = ("embedding:first a (embedding:cat:1.2), ((embedding:dog)) x\nembedding:sub/z, "
            "myembedding:not_one again embedding:cat")
    assert embedding_references(text) == ["first", "cat", "dog", "sub/z"]
    assert embedding_references("no references: embedding") == []


def test_find_by_name_with_or_without_extension_and_in_subfolders(tmp_path: Path,
                                                                  folders: Folders) -> None:
    pt = save_a1111(emb_dir(folders) / "style.pt", _vectors(1, 8))
    nested = save_diffusers(emb_dir(folders) / "toys" / "cat-toy.bin", "<c>", _vectors(1, 8))
    assert find_embedding("style", folders) == pt
    assert find_embedding("style.pt", folders) == pt
    assert find_embedding("toys/cat-toy", folders) == nested
    assert find_embedding("cat-toy", folders) == nested  # ComfyUI searches subfolders too
    with pytest.raises(FileNotFoundError, match=r"unknown embedding 'styel'; close names: "
                                                r"style"):
        find_embedding("styel", folders)
    # A ComfyUI install's folder named in extra_model_paths.yaml.
    other = save_a1111(tmp_path / "comfy" / "models" / "embeddings" / "theirs.pt",
                       _vectors(1, 8))
    yaml = tmp_path / "extra_model_paths.yaml"
    yaml.write_text(textwrap.dedent(f"""\
        comfyui:
          base_path: {tmp_path / 'comfy'}
          embeddings: models/embeddings
        """))
    with_comfy = Folders(models=folders.models, model_paths_file=yaml)
    assert find_embedding("theirs", with_comfy) == other
    assert missing_embeddings("embedding:theirs (embedding:style:0.8) embedding:nope",
                              with_comfy) == ["nope"]
    assert missing_embeddings("embedding:theirs", folders) == ["theirs"]


def test_loaded_embeddings_are_kept_per_file_version(folders: Folders,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.textual_inversion as ti

    path = save_a1111(emb_dir(folders) / "kept.pt", _vectors(1, 8))
    reads: list[Path] = []
    real = ti.load_embedding
    monkeypatch.setattr(ti, "load_embedding", lambda p: reads.append(p) or real(p))
    store: dict[str, Any] = {}

    def memo_store(key: str, compute: Any) -> Any:
        if key not in store:
            store[key] = compute()
        return store[key]

    ctx = RunContext("1", "T", folders, memo_store=memo_store)
    token = activate(ctx)
    try:
        first = get_embedding("kept", folders)
        assert get_embedding("kept.pt", folders) is first and len(reads) == 1
        save_a1111(path, _vectors(2, 8, seed=5))
        os.utime(path, ns=(1, 1))  # a new version of the file: read again
        second = get_embedding("kept", folders)
    finally:
        deactivate(token)
    assert len(reads) == 2 and tuple(second.for_width(8).shape) == (2, 8)
    lookup = embedding_lookup(folders)
    assert lookup("nope") is None and lookup("kept") is not None
    before = embeddings_fingerprint(["embedding:kept x"], folders)
    os.utime(path, ns=(2, 2))
    assert embeddings_fingerprint(["embedding:kept x"], folders) != before
    assert "nope:missing" in embeddings_fingerprint(["embedding:nope"], folders)


# ---------------------------------------------------------------------------- encoding
def test_extra_rows_are_added_for_the_duration_only() -> None:
    model = torch.nn.Module()
    table = torch.nn.Embedding(5, 4)
    model.get_input_embeddings = lambda: table  # type: ignore[method-assign]
    original, saved = table.weight, table.weight.detach().clone()
    extra = _vectors(2, 4)
    with extra_token_vectors(model, extra) as first:
        assert first == 5 and table.weight is not original
        torch.testing.assert_close(table(torch.tensor([1, 5, 6])),
                                   torch.cat([saved[1:2], extra]))
    assert table.weight is original and table.num_embeddings == 5
    with pytest.raises(RuntimeError, match="boom"), extra_token_vectors(model, extra):
        raise RuntimeError("boom")
    assert table.weight is original
    torch.testing.assert_close(table.weight.detach(), saved, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not fit"), extra_token_vectors(model, _vectors(1, 3)):
        pass


def _diffusers_embeds(tiny_sd: TinyModel, path: Path, token: str, prompt: str
                      ) -> torch.Tensor:
    """The prompt encoded by diffusers after `load_textual_inversion` (on copies, so the
    shared tiny pipeline stays as it was)."""
    pipe = tiny_sd.pipe
    tokenizer, text_encoder = copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder)
    pipe.load_textual_inversion(str(path), token=token, tokenizer=tokenizer,
                                text_encoder=text_encoder)
    prompt = pipe.maybe_convert_prompt(prompt, tokenizer)  # multi-vector tokens spelled out
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def _our_embeds(components: Any, vectors: torch.Tensor) -> torch.Tensor:
    """"a photo of " from our tokenizer, then the embedding's extra ids."""
    tok, model = components.tokenizer, components.text_encoder
    words = tok("a photo of ", add_special_tokens=False).input_ids
    with extra_token_vectors(model, vectors) as first:
        ids = [tok.bos_token_id, *words, *range(first, first + vectors.shape[0]),
               tok.eos_token_id]
        ids += [tok.pad_token_id] * (77 - len(ids))
        with torch.no_grad():
            return model(torch.tensor([ids]))[0]


@pytest.mark.parametrize("layout", ["a1111", "a1111-multi", "diffusers"])
def test_parity_with_diffusers_load_textual_inversion(tiny_sd: TinyModel, tmp_path: Path,
                                                      layout: str) -> None:
    from nodes.diffusion.checkpoints import load_components

    width = tiny_sd.pipe.text_encoder.config.hidden_size
    if layout == "diffusers":
        path = save_diffusers(tmp_path / "learned_embeds.bin", "<cat-toy>",
                              _vectors(1, width, seed=7)[0])
    else:
        path = save_a1111(tmp_path / "toy.pt", _vectors(2 if "multi" in layout else 1,
                                                        width, seed=8))
    theirs = _diffusers_embeds(tiny_sd, path, "<cat-toy>", "a photo of <cat-toy>")
    components = load_components(tiny_sd.folder, dtype="float32", device="cpu")
    model = components.text_encoder
    weight = model.get_input_embeddings().weight
    saved = weight.detach().clone()
    ours = _our_embeds(components, load_embedding(path).for_width(width))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    plain = _our_embeds(components, torch.zeros(1, width))
    assert (plain - ours).abs().max() > 1e-3  # the vectors matter
    assert model.get_input_embeddings().weight is weight
    torch.testing.assert_close(weight.detach(), saved, rtol=0, atol=0)

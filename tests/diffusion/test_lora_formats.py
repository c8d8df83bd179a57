"""LoRA files -> per-parameter deltas: parity with diffusers + peft, and the key layouts.

The reference for kohya (diffusers and LDM module names) and PEFT files is diffusers'
``load_lora_weights`` + ``fuse_lora(lora_scale=s)``: every fused weight must equal our
base weight + s * delta. Two layers diffusers itself maps wrongly are left out of those
files and checked instead by the LDM names agreeing with the diffusers names:

- an LDM ``output_blocks_N_1_conv`` (the upsampler of an up block without attention, SD 1.x
  only) is taken for an attention by diffusers' SGM block remapping;
- a diffusers-named ``add_embedding.linear_N`` (SDXL) loses its index in diffusers' kohya
  conversion. kohya writes SDXL files with LDM names, where ``label_emb_0_N`` does map.

diffusers' SD 1.x pipeline maps LDM names only when told the UNet config
(``unet_config=``); the SDXL pipeline passes it itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nodes.diffusion.checkpoints import load_components
from nodes.diffusion.lora import (
    LoraDelta,
    LoraFormatError,
    SumDelta,
    lora_nbytes,
    parse_lora,
    read_lora,
)
from tests.support.lora_files import (
    component_map,
    diffusers_mismapped,
    kohya_state,
    peft_state,
    save_lora,
    write_kohya_lora,
    write_peft_lora,
)
from tests.support.tiny_models import TinyModel, TinySDXL

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd1(tiny_sd1: TinyModel) -> Any:
    return load_components(tiny_sd1.folder, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl: TinySDXL) -> Any:
    return load_components(tiny_sdxl.base.folder, dtype="float32", device="cpu")


def _fused_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A peft-wrapped module's weights under their plain names (``x.base_layer.weight`` ->
    ``x.weight``), adapter tensors left out."""
    return {name.replace(".base_layer", ""): p.detach()
            for name, p in module.named_parameters() if "lora_" not in name}


def _assert_fused_equal(ours: Any, reference: Any, deltas: dict, scale: float) -> None:
    """Each reference weight == our base + scale * delta; every patched one moved."""
    for component, module in component_map(ours).items():
        if module is None:
            continue
        fused = _fused_params(getattr(reference, component))
        patched = deltas.get(component, {})
        assert patched, component
        for name, base in module.named_parameters():
            ref = fused[name] if name in fused else fused[f"text_model.{name}"]
            expected = base.detach().clone()
            if name in patched:
                expected += scale * patched[name].weight(base.shape, torch.float32, CPU)
                assert (ref - base).abs().max() > 1e-3, f"{component}.{name} not patched"
            err = (ref - expected).abs().max().item()
            assert err < 1e-5, f"{component}.{name}: max abs diff {err}"


def _diffusers_parity(kind: str, folder: Path, ours: Any, path: Path,
                      pass_unet_config: bool = False) -> None:
    import diffusers

    deltas = parse_lora(read_lora(path), component_map(ours))
    for scale in (0.5, 1.0):
        # A fresh pipeline per scale: after unfuse_lora, peft keeps the previous fuse's
        # scale, so a second fuse_lora(lora_scale=...) would not be an independent reference.
        pipe = getattr(diffusers, kind).from_pretrained(folder)
        options = {"unet_config": pipe.unet.config} if pass_unet_config else {}
        pipe.load_lora_weights(str(path), **options)
        pipe.fuse_lora(lora_scale=scale)
        _assert_fused_equal(ours, pipe, deltas, scale)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["kohya", "kohya_ldm", "peft"])
def test_sd1_matches_diffusers(layout: str, sd1: Any, tiny_sd1: TinyModel,
                               tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    if layout == "peft":
        write_peft_lora(path, sd1, rank=4, seed=1)
    else:
        ldm = layout == "kohya_ldm"
        assert diffusers_mismapped(sd1, ldm) == (("up_blocks.0.upsamplers.0.conv",) if ldm
                                                 else ())
        write_kohya_lora(path, sd1, rank=4, alpha=2.0, seed=1, ldm_keys=ldm,
                         skip=diffusers_mismapped(sd1, ldm))
    _diffusers_parity("StableDiffusionPipeline", tiny_sd1.folder, sd1, path,
                      pass_unet_config=layout == "kohya_ldm")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["kohya", "kohya_ldm", "peft"])
def test_sdxl_matches_diffusers(layout: str, sdxl: Any, tiny_sdxl: TinySDXL,
                                tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    if layout == "peft":
        write_peft_lora(path, sdxl, rank=3, seed=2)
    else:
        ldm = layout == "kohya_ldm"
        assert diffusers_mismapped(sdxl, ldm) == (() if ldm else ("add_embedding.linear_1",
                                                                  "add_embedding.linear_2"))
        write_kohya_lora(path, sdxl, rank=3, alpha=1.5, seed=2, ldm_keys=ldm,
                         skip=diffusers_mismapped(sdxl, ldm))
    _diffusers_parity("StableDiffusionXLPipeline", tiny_sdxl.base.folder, sdxl, path)


def _same_deltas(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for component in a:
        assert a[component].keys() == b[component].keys(), component
        for name, delta in a[component].items():
            shape = torch.Size(delta.shape)
            assert torch.equal(delta.weight(shape, torch.float32, CPU),
                               b[component][name].weight(shape, torch.float32, CPU)), name


@pytest.mark.parametrize("model", ["sd1", "sdxl"])
def test_ldm_names_land_where_diffusers_names_do(model: str, request: pytest.FixtureRequest
                                                 ) -> None:
    """The same random LoRA written with LDM and with diffusers UNet names parses to the
    same deltas, for every Linear / Conv2d of the UNet (incl. the layers diffusers maps
    wrongly, see the module docstring)."""
    parts = component_map(request.getfixturevalue(model))
    ldm = parse_lora(kohya_state(parts, seed=3, ldm_keys=True), parts)
    plain = parse_lora(kohya_state(parts, seed=3), parts)
    _same_deltas(ldm, plain)
    unet = parts["unet"]
    assert unet is not None
    layers = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                   torch.nn.Conv2d))}
    assert {n.removesuffix(".weight") for n in ldm["unet"]} == layers


SDXL_LDM_NAMES = {
    "input_blocks_0_0": "conv_in",
    "out_2": "conv_out",
    "time_embed_0": "time_embedding.linear_1",
    "time_embed_2": "time_embedding.linear_2",
    "label_emb_0_0": "add_embedding.linear_1",
    "label_emb_0_2": "add_embedding.linear_2",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_2_0_emb_layers_1": "down_blocks.0.resnets.1.time_emb_proj",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks_4_1_transformer_blocks_0_attn1_to_k":
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
    "input_blocks_5_1_transformer_blocks_1_ff_net_0_proj":
        "down_blocks.1.attentions.1.transformer_blocks.1.ff.net.0.proj",
    "middle_block_0_out_layers_3": "mid_block.resnets.0.conv2",
    "middle_block_1_proj_in": "mid_block.attentions.0.proj_in",
    "middle_block_1_transformer_blocks_0_attn2_to_out_0":
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "middle_block_2_emb_layers_1": "mid_block.resnets.1.time_emb_proj",
    "output_blocks_0_1_proj_out": "up_blocks.0.attentions.0.proj_out",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_5_0_skip_connection": "up_blocks.1.resnets.2.conv_shortcut",
}


def _one_layer(module: torch.nn.Module, name: str, key: str, rank: int = 2
               ) -> dict[str, torch.Tensor]:
    """A one-layer kohya LoRA shaped for ``module``'s layer ``name``."""
    weight = module.get_parameter(f"{name}.weight")
    tail = (1, 1) if weight.ndim == 4 else ()
    return {f"{key}.lora_down.weight": torch.randn(rank, *weight.shape[1:]),
            f"{key}.lora_up.weight": torch.randn(weight.shape[0], rank, *tail)}


@pytest.mark.parametrize("ldm, expected", sorted(SDXL_LDM_NAMES.items()))
def test_sdxl_ldm_name(ldm: str, expected: str, sdxl: Any) -> None:
    state = _one_layer(sdxl.unet, expected, f"lora_unet_{ldm}")
    assert list(parse_lora(state, {"unet": sdxl.unet})["unet"]) == [f"{expected}.weight"]


def test_sd1_ldm_upsampler_without_attention(sd1: Any) -> None:
    """SD 1.x's first up block has no attention: its upsampler sits at slot 1."""
    name = "up_blocks.0.upsamplers.0.conv"
    state = _one_layer(sd1.unet, name, "lora_unet_output_blocks_2_1_conv")
    assert list(parse_lora(state, {"unet": sd1.unet})["unet"]) == [f"{name}.weight"]


def _respell(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {k.replace(old, new): v for k, v in state.items()}


def test_diffusers_spellings_agree(sd1: Any) -> None:
    """``lora.down/up``, ``lora_linear_layer``, bare UNet paths and ``.alpha`` keys mean
    what ``lora_A/lora_B`` mean."""
    parts = component_map(sd1)
    state = peft_state(parts, seed=4)
    reference = parse_lora(state, parts)
    old = _respell(_respell(state, ".lora_A.weight", ".lora.down.weight"),
                   ".lora_B.weight", ".lora.up.weight")
    _same_deltas(parse_lora(old, parts), reference)
    linear = _respell(_respell(state, ".lora_A.", ".lora_linear_layer.down."),
                      ".lora_B.", ".lora_linear_layer.up.")
    _same_deltas(parse_lora(linear, parts), reference)
    bare = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    _same_deltas(parse_lora(bare, parts), {"unet": reference["unet"]})
    rank = 4
    halved = dict(state, **{"unet.conv_in.alpha": torch.tensor(rank / 2)})
    d = parse_lora(halved, parts)["unet"]["conv_in.weight"]
    shape = sd1.unet.conv_in.weight.shape
    assert torch.allclose(d.weight(shape, torch.float32, CPU),
                          0.5 * reference["unet"]["conv_in.weight"].weight(shape, torch.float32,
                                                                           CPU))


def test_attention_processor_format(sd1: Any) -> None:
    """diffusers' first LoRA format: ``attn1.processor.to_q_lora.down.weight`` (UNet) and
    ``self_attn.to_q_lora.down.weight`` (text encoder)."""
    unet_path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    text_path = "text_model.encoder.layers.1.self_attn"
    parts = component_map(sd1)
    state: dict[str, torch.Tensor] = {}
    expected: dict[str, dict[str, str]] = {"unet": {}, "text_encoder": {}}
    for proc, unet_name, text_name in (("to_q_lora", "to_q", "q_proj"),
                                       ("to_out_lora", "to_out.0", "out_proj")):
        for component, path, name in (("unet", unet_path, unet_name),
                                      ("text_encoder", text_path, text_name)):
            module = parts[component]
            assert module is not None
            target = f"{path}.{name}".removeprefix("text_model.")
            one = _one_layer(module, target, "k")
            prefix = f"{component}.{path}" + (".processor" if component == "unet" else "")
            state[f"{prefix}.{proc}.down.weight"] = one["k.lora_down.weight"]
            state[f"{prefix}.{proc}.up.weight"] = one["k.lora_up.weight"]
            expected[component][f"{target}.weight"] = f"{prefix}.{proc}.down.weight"
    deltas = parse_lora(state, parts)
    for component, names in expected.items():
        assert set(deltas[component]) == set(names)
        for name, key in names.items():
            delta = deltas[component][name]
            assert isinstance(delta, LoraDelta) and delta.down is state[key]


def test_text_model_prefix_optional(sd1: Any, sdxl: Any) -> None:
    """Files name text-encoder layers with or without ``text_model.``; transformers' classes
    nest them or not. Every combination lands on ``get_parameter``'s name."""
    flat, nested = sd1.text_encoder, sdxl.text_encoder_2
    assert not hasattr(flat, "text_model") and hasattr(nested, "text_model")
    for component, module, prefix in (("text_encoder", flat, "lora_te_"),
                                      ("text_encoder_2", nested, "lora_te2_")):
        inner = "encoder.layers.0.mlp.fc1"
        actual = inner if module is flat else f"text_model.{inner}"
        for spelled in (inner, f"text_model.{inner}"):
            kohya = _one_layer(module, actual, prefix + spelled.replace(".", "_"))
            got = parse_lora(kohya, {component: module})[component]
            assert list(got) == [f"{actual}.weight"]
            module.get_parameter(next(iter(got)))
            peft = {f"{component}.{spelled}.lora_{ab}.weight": v
                    for ab, v in zip("AB", kohya.values(), strict=True)}
            assert list(parse_lora(peft, {component: module})[component]) == [f"{actual}.weight"]


def test_absent_components_are_skipped(sdxl: Any) -> None:
    parts = component_map(sdxl)
    state = kohya_state(parts, seed=5, ldm_keys=True)
    full = parse_lora(state, parts)
    unet_only = parse_lora(state, {"unet": sdxl.unet})
    assert unet_only.keys() == {"unet"} and unet_only["unet"].keys() == full["unet"].keys()
    refiner_like = parse_lora(state, {"unet": None, "text_encoder": None,
                                      "text_encoder_2": sdxl.text_encoder_2})
    assert refiner_like.keys() == {"text_encoder_2"}
    assert refiner_like["text_encoder_2"].keys() == full["text_encoder_2"].keys()
    peft = peft_state(parts, seed=5)
    assert parse_lora(peft, {"text_encoder": sdxl.text_encoder}).keys() == {"text_encoder"}


def test_unmatched_keys_raise_with_their_names(sd1: Any) -> None:
    parts = component_map(sd1)
    state = kohya_state(parts, seed=6)
    bad = dict(state)
    bad["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = torch.zeros(2, 4)
    bad["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = torch.zeros(4, 2)
    bad["unet.up_blocks.9.resnets.0.conv1.lora_A.weight"] = torch.zeros(2, 4)
    with pytest.raises(LoraFormatError) as info:
        parse_lora(bad, parts)
    message = str(info.value)
    assert "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight" in message
    assert "unet.up_blocks.9.resnets.0.conv1.lora_A.weight" in message
    assert "3 key(s)" in message
    # Keys of an absent component are skipped, unmatched or not.
    text_bad = dict(state, **{"lora_te_text_model_nothing_here.lora_down.weight":
                              torch.zeros(1)})
    assert parse_lora(text_bad, {"unet": sd1.unet}).keys() == {"unet"}
    with pytest.raises(LoraFormatError, match="lora_te_text_model_nothing_here"):
        parse_lora(text_bad, parts)


def test_unknown_layout_raises_listing_twenty(sd1: Any) -> None:
    state = {f"model.weird_{i:02d}.weight": torch.zeros(1) for i in range(25)}
    state["lora_unet_conv_in.dora_scale"] = torch.zeros(1)
    with pytest.raises(LoraFormatError) as info:
        parse_lora(state, component_map(sd1))
    message = str(info.value)
    assert "26 key(s)" in message and "(and 6 more)" in message
    assert "lora_unet_conv_in.dora_scale" in message and "model.weird_00.weight" in message


def test_shape_mismatch_names_key_and_shapes(sd1: Any) -> None:
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {f"{key}.lora_down.weight": torch.zeros(2, 77),
             f"{key}.lora_up.weight": torch.zeros(32, 2)}
    with pytest.raises(LoraFormatError) as info:
        parse_lora(state, {"unet": sd1.unet})
    message = str(info.value)
    assert key in message and "(32, 77)" in message and "(32, 64)" in message


def test_incomplete_layer_raises(sd1: Any) -> None:
    key = "lora_unet_conv_in"
    with pytest.raises(LoraFormatError, match="missing down"):
        parse_lora({f"{key}.lora_up.weight": torch.zeros(32, 2, 1, 1),
                    f"{key}.alpha": torch.tensor(1.0)}, {"unet": sd1.unet})


def test_two_entries_on_one_parameter_add(sd1: Any) -> None:
    """A LoRA and a stored difference for one layer patch it with their sum."""
    name = "conv_in"
    lora = _one_layer(sd1.unet, name, f"lora_unet_{name}")
    diff = torch.randn(sd1.unet.conv_in.weight.shape)
    both = dict(lora, **{f"lora_unet_{name}.diff": diff})
    shape = sd1.unet.conv_in.weight.shape
    delta = parse_lora(both, {"unet": sd1.unet})["unet"]["conv_in.weight"]
    assert isinstance(delta, SumDelta)
    alone = parse_lora(lora, {"unet": sd1.unet})["unet"]["conv_in.weight"]
    assert torch.allclose(delta.weight(shape, torch.float32, CPU),
                          alone.weight(shape, torch.float32, CPU) + diff, atol=1e-6)
    # The same module spelled two ways (kohya + PEFT) also adds, and counts both.
    peft = {f"unet.{name}.lora_{ab}.weight": v
            for ab, v in zip("AB", lora.values(), strict=True)}
    twice = parse_lora(dict(lora, **peft), {"unet": sd1.unet})["unet"]["conv_in.weight"]
    assert torch.allclose(twice.weight(shape, torch.float32, CPU),
                          2 * alone.weight(shape, torch.float32, CPU), atol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".ckpt", ".bin"])
def test_read_lora_file_types(suffix: str, sd1: Any, tmp_path: Path) -> None:
    state = kohya_state(component_map(sd1), seed=7, text=False)
    path = save_lora(state, tmp_path / f"lora{suffix}")
    read = read_lora(path)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], v) for k, v in state.items())


def test_read_lora_unwraps_state_dict_and_rejects_non_tensors(tmp_path: Path) -> None:
    inner = {"lora_unet_conv_in.lora_down.weight": torch.ones(2, 4, 3, 3)}
    torch.save({"state_dict": inner}, tmp_path / "wrapped.ckpt")
    assert read_lora(tmp_path / "wrapped.ckpt").keys() == inner.keys()
    torch.save(dict(inner, epoch=3), tmp_path / "odd.pt")
    with pytest.raises(LoraFormatError, match="epoch"):
        read_lora(tmp_path / "odd.pt")
    (tmp_path / "lora.txt").write_text("x")
    with pytest.raises(LoraFormatError):
        read_lora(tmp_path / "lora.txt")


def test_lora_nbytes_counts_held_tensors(sd1: Any) -> None:
    parts = component_map(sd1)
    state = kohya_state(parts, seed=8)
    deltas = parse_lora(state, parts)
    expected = sum(v.numel() * v.element_size() for k, v in state.items()
                   if not k.endswith(".alpha"))
    assert lora_nbytes(deltas) == expected
    half = {k: v.half() for k, v in state.items()}
    assert lora_nbytes(parse_lora(half, parts)) == expected // 2

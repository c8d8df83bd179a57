"""Single-file SDXL (base, refiner) and SD 2.x checkpoints.

The tiny models are written out in the original layouts by tests.support.sgm_export (SGM
for SDXL, LDM + OpenCLIP-H for SD 2.x). diffusers' ``from_single_file``, given the saved
folder as its config and nothing from the network, is the reference: our loader, which
infers every config from the file, must produce the same weights and the same outputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.diffusion.checkpoints import Components, load_components, load_scheduler_config
from nodes.diffusion.model_family import LABEL_EMB_KEY, detect_family
from nodes.diffusion.storage import WeightsError, read_weights
from tests.support.ldm_export import export_single_file
from tests.support.model_configs import SD2_VAE, SDXL_POOLED, SDXL_TIME_DIM
from tests.support.sgm_export import export_sd2_file, export_sdxl_file
from tests.support.tiny_models import TinyModel, TinySDXL, rel_err

TOL = 1e-5
KINDS = ("sdxl", "sdxl_refiner", "sd2")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def folders(tiny_sdxl: TinySDXL, tiny_sd2: TinyModel,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    """The tiny SDXL base and refiner, re-saved with a VAE of 32 norm groups: group counts
    are invisible in weights, and every real VAE (SDXL's included) uses 32, which is what
    a single file is read with. The tiny SD2 already follows that convention."""
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**SD2_VAE, scaling_factor=0.13025, force_upcast=True).eval()
    root = tmp_path_factory.mktemp("sdxl-groups32")
    out = {"sd2": tiny_sd2}
    for kind, model in (("sdxl", tiny_sdxl.base), ("sdxl_refiner", tiny_sdxl.refiner)):
        pipe = type(model.pipe).from_pretrained(str(model.folder), vae=vae)
        pipe.save_pretrained(str(root / kind), safe_serialization=True)
        out[kind] = TinyModel(root / kind, pipe)
    return out


@pytest.fixture(scope="module")
def files(folders: dict[str, TinyModel], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sgm")
    return {
        "sdxl": export_sdxl_file(folders["sdxl"].pipe, root / "tiny-sdxl.safetensors"),
        "sdxl_refiner": export_sdxl_file(folders["sdxl_refiner"].pipe,
                                         root / "tiny-sdxl-refiner.safetensors"),
        "sd2": export_sd2_file(folders["sd2"].pipe, root / "tiny-sd2.safetensors"),
    }


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


def _diffusers_from_file(kind: str, path: Path, folder: Path) -> Any:
    """diffusers' single-file pipeline, configured from the saved folder (no download)."""
    import diffusers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModelWithProjection

    options: dict[str, Any] = {"config": str(folder), "local_files_only": True}
    if kind == "sd2":
        return diffusers.StableDiffusionPipeline.from_single_file(str(path), **options)
    if kind == "sdxl_refiner":
        return diffusers.StableDiffusionXLImg2ImgPipeline.from_single_file(str(path), **options)
    # diffusers tells CLIP-L from OpenCLIP-G by width, which the tiny encoders share (64):
    # its second encoder is read from the file without the first one's keys.
    only_g = {k: v for k, v in load_file(str(path)).items()
              if not k.startswith("conditioner.embedders.0.")}
    text_encoder_2 = create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection, only_g, subfolder="text_encoder_2", **options)
    return diffusers.StableDiffusionXLPipeline.from_single_file(
        str(path), text_encoder_2=text_encoder_2, **options)


@pytest.fixture(scope="module")
def loaded(files: dict[str, Path], folders: dict[str, TinyModel], offline: None
           ) -> dict[str, tuple[Components, Any]]:
    """(ours, diffusers') per kind, both read from the single file."""
    return {kind: (load_components(str(files[kind]), dtype="fp32", device="cpu"),
                   _diffusers_from_file(kind, files[kind], folders[kind].folder))
            for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_weights_equal_diffusers_single_file(kind: str, loaded: dict[str, Any],
                                             folders: dict[str, TinyModel]) -> None:
    """Every component holds diffusers' tensors under diffusers' names, and the original
    model's (so the file really was read, not left at some initialisation)."""
    ours, ref = loaded[kind]
    original = folders[kind].pipe
    for name in COMPONENTS:
        mine, theirs = getattr(ours, name), getattr(ref, name, None)
        assert (mine is None) == (theirs is None), name
        if mine is None:
            continue
        got, want = mine.state_dict(), theirs.state_dict()
        assert sorted(got) == sorted(want), name
        first = getattr(original, name).state_dict()
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{name}: {key}"
            assert torch.equal(got[key], first[key]), f"{name}: {key} (original)"


def _text_inputs() -> torch.Tensor:
    ids = torch.randint(0, 49406, (2, 77), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = 49406
    ids[0, 9] = ids[1, 30] = 49407
    return ids


def _assert_text_encoders(ours: Components, ref: Any) -> None:
    ids = _text_inputs()
    for name in ("text_encoder", "text_encoder_2"):
        mine, theirs = getattr(ours, name), getattr(ref, name, None)
        if mine is None:
            continue
        a = mine(ids, output_hidden_states=True)
        b = theirs(ids, output_hidden_states=True)
        assert rel_err(a.last_hidden_state, b.last_hidden_state) < TOL, name
        assert rel_err(a.hidden_states[-2], b.hidden_states[-2]) < TOL, name
        if name == "text_encoder_2":
            assert rel_err(a.text_embeds, b.text_embeds) < TOL


def _unet_inputs(ours: Components) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    ctx = torch.randn(2, 7, ours.unet.config["cross_attention_dim"], generator=gen)
    extra: dict[str, Any] = {}
    if ours.unet.needs_text_time:
        # Base: sizes and crop (6 numbers); refiner: sizes, crop and aesthetic score (5).
        n_ids = 6 if ours.text_encoder is not None else 5
        time_ids = torch.tensor([[32.0, 32, 0, 0, 32, 32], [24, 40, 2, 4, 6, 2.5]])
        extra = {"added_cond_kwargs": {
            "text_embeds": torch.randn(2, SDXL_POOLED, generator=gen),
            "time_ids": time_ids[:, :n_ids]}}
    return x, ctx, extra


@pytest.mark.parametrize("kind", KINDS)
def test_inferred_configs_give_diffusers_outputs(kind: str, loaded: dict[str, Any]) -> None:
    ours, ref = loaded[kind]
    x, ctx, extra = _unet_inputs(ours)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert rel_err(ours.unet(x, 7, ctx, **extra), ref.unet(x, 7, ctx, **extra).sample) < TOL
        assert rel_err(ours.vae.decode(z), ref.vae.decode(z).sample) < TOL
        _assert_text_encoders(ours, ref)
    assert ours.vae.config["scaling_factor"] == ref.vae.config.scaling_factor
    assert ours.vae.config["force_upcast"] is True


def test_sdxl_components_and_settings(loaded: dict[str, Any]) -> None:
    base, ref = loaded["sdxl"]
    assert base.kind == "sd" and base.flags == {"force_zeros_for_empty_prompt": True}
    assert base.unet.config["addition_time_embed_dim"] == SDXL_TIME_DIM
    assert base.unet.config["transformer_layers_per_block"] == 2  # the only attention level
    assert base.vae.config["scaling_factor"] == 0.13025
    cfg = base.scheduler_config
    assert cfg["_class_name"] == "EulerDiscreteScheduler"
    assert (cfg["prediction_type"], cfg["timestep_spacing"], cfg["steps_offset"]) == (
        "epsilon", "leading", 1)
    for ours_tok, ref_tok in ((base.tokenizer, ref.tokenizer),
                              (base.tokenizer_2, ref.tokenizer_2)):
        assert ours_tok.pad_token == ref_tok.pad_token
        assert (ours_tok("a cat", padding="max_length").input_ids
                == ref_tok("a cat", padding="max_length").input_ids)
    assert base.tokenizer_2.pad_token == "!" and base.tokenizer.pad_token != "!"
    refiner, _ = loaded["sdxl_refiner"]
    assert refiner.tokenizer is None and refiner.text_encoder is None
    assert refiner.tokenizer_2 is not None and refiner.tokenizer_2.pad_token == "!"
    assert refiner.flags == {"force_zeros_for_empty_prompt": False,
                             "requires_aesthetics_score": True}
    assert refiner.unet.config["addition_time_embed_dim"] == SDXL_TIME_DIM


def test_sd2_text_encoder_drops_the_unused_last_layer(loaded: dict[str, Any],
                                                      files: dict[str, Path]) -> None:
    ours, ref = loaded["sd2"]
    in_file = {int(k.split(".")[4]) for k in read_weights(files["sd2"])
               if k.startswith("cond_stage_model.model.transformer.resblocks.")}
    assert ours.text_encoder.config.num_hidden_layers == len(in_file) - 1
    assert ours.text_encoder.config.num_hidden_layers == ref.text_encoder.config.num_hidden_layers
    assert ours.tokenizer.pad_token == ref.tokenizer.pad_token == "!"
    assert ours.unet.config["upcast_attention"] is True
    assert ours.flags == {} and ours.text_encoder_2 is None
    assert ours.scheduler_config["_class_name"] == "DDIMScheduler"
    assert ours.scheduler_config["prediction_type"] == ref.scheduler.config.prediction_type


def test_family_detection(files: dict[str, Path], tiny_sd1: TinyModel, tmp_path: Path) -> None:
    sd1 = export_single_file(tiny_sd1.pipe, tmp_path / "sd1.safetensors")
    assert detect_family(read_weights(sd1)) == "sd1"
    for kind in KINDS:
        assert detect_family(read_weights(files[kind])) == kind
    meta = torch.device("meta")
    # A UNet alone: SDXL's label_emb width at real scale, else the context width.
    assert detect_family({LABEL_EMB_KEY: torch.empty(1280, 2816, device=meta)}) == "sdxl"
    assert detect_family({LABEL_EMB_KEY: torch.empty(1536, 2560, device=meta)}) == (
        "sdxl_refiner")
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert detect_family({key: torch.empty(320, 1024, device=meta)}) == "sd2"
    assert detect_family({key: torch.empty(320, 768, device=meta)}) == "sd1"
    with pytest.raises(WeightsError, match="base from refiner"):
        detect_family({LABEL_EMB_KEY: torch.empty(64, 96, device=meta)})


@pytest.mark.parametrize(("down", "depths", "inferred"), [
    (("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), (1, 2, 3), (1, 2, 3)),
    (("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"), 3, 3),
])
def test_transformer_depth_per_level(down: tuple[str, ...], depths: Any, inferred: Any) -> None:
    """SDXL base's uneven depths (1, 2, 10 at full size) and the refiner's even ones (4, with
    attention-free outer levels), read off an SGM-layout UNet."""
    import diffusers

    from nodes.diffusion.ldm_convert import infer_unet_config
    from tests.support.ldm_export import unet_to_ldm

    up = tuple(t.replace("Down", "Up") for t in reversed(down))
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(
            block_out_channels=(64,) * len(down), down_block_types=down, up_block_types=up,
            transformer_layers_per_block=depths, cross_attention_dim=32, layers_per_block=1)
    state = {k.removeprefix("model.diffusion_model."): v
             for k, v in unet_to_ldm(unet.state_dict(), dict(unet.config)).items()}
    assert infer_unet_config(state)["transformer_layers_per_block"] == inferred


_SDXL_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
# The UNet configs of stable-diffusion-xl-base-1.0, -refiner-1.0 and stable-diffusion-2-1.
REAL_UNETS: dict[str, dict[str, Any]] = {
    "sdxl": dict(block_out_channels=(320, 640, 1280), down_block_types=_SDXL_DOWN,
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                 cross_attention_dim=2048, addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
    "sdxl_refiner": dict(block_out_channels=(384, 768, 1536, 1536),
                         down_block_types=(*_SDXL_DOWN, "DownBlock2D"),
                         transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24),
                         cross_attention_dim=1280, addition_time_embed_dim=256,
                         projection_class_embeddings_input_dim=2560),
    "sd2": dict(block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                transformer_layers_per_block=1, attention_head_dim=(5, 10, 20, 20),
                cross_attention_dim=1024, upcast_attention=True),
}


@pytest.mark.parametrize("kind", KINDS)
def test_real_scale_unet_configs(kind: str) -> None:
    """At full size (shapes only, on the meta device) the inferred UNet config is the
    reference repository's: heads, depths, widths and SDXL's 256-wide time embeddings."""
    import diffusers

    from nodes.diffusion.ldm_convert import infer_unet_config
    from nodes.diffusion.model_family import apply_unet_conventions
    from tests.support.ldm_export import unet_to_ldm

    real = REAL_UNETS[kind]
    up = tuple(t.replace("Down", "Up") for t in reversed(real["down_block_types"]))
    extra = ({"addition_embed_type": "text_time"} if kind != "sd2" else {})
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**real, **extra, up_block_types=up,
                                              use_linear_projection=True)
    state = {k.removeprefix("model.diffusion_model."): v
             for k, v in unet_to_ldm(unet.state_dict(), dict(unet.config)).items()}
    inferred = apply_unet_conventions(infer_unet_config(state), kind,
                                      1280 if kind != "sd2" else None)
    for key, value in {**real, "up_block_types": up, "use_linear_projection": True}.items():
        assert inferred[key] == value, key


def _openclip_shapes(width: int, layers: int, projection: int) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower's tensor shapes (OpenCLIP's MLP is 4x wide)."""
    meta = torch.device("meta")
    state = {"token_embedding.weight": torch.empty(49408, width, device=meta),
             "positional_embedding": torch.empty(77, width, device=meta),
             "text_projection": torch.empty(width, projection, device=meta)}
    for i in range(layers):
        state[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = torch.empty(4 * width, width,
                                                                          device=meta)
    return state


def test_real_scale_openclip_configs() -> None:
    """SD 2.x's ViT-H (24 blocks, read as 23) and SDXL's ViT-bigG (32 blocks, projected to
    1280), as stable-diffusion-2-1's and stable-diffusion-xl-base-1.0's configs have them."""
    from nodes.diffusion.openclip_convert import openclip_text_config

    h = openclip_text_config(_openclip_shapes(1024, 24, 1024), drop_last_layer=True)
    assert (h.num_hidden_layers, h.num_attention_heads, h.intermediate_size, h.hidden_act) == (
        23, 16, 4096, "gelu")
    g = openclip_text_config(_openclip_shapes(1280, 32, 1280), drop_last_layer=False)
    assert (g.num_hidden_layers, g.num_attention_heads, g.intermediate_size,
            g.projection_dim) == (32, 20, 5120, 1280)


def _beside(source: Path, folder: Path, yaml_text: str | None) -> Path:
    """`source` copied into `folder`, with `yaml_text` as its same-stem YAML."""
    folder.mkdir()
    path = folder / source.name
    shutil.copyfile(source, path)
    if yaml_text is not None:
        path.with_suffix(".yaml").write_text(yaml_text)
    return path


V_YAML = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n" \
         "    parameterization: \"v\"\n    linear_start: 0.00085\n"
EPS_YAML = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n" \
           "    linear_start: 0.00085\n"


def test_yaml_beside_the_file_sets_v_prediction(files: dict[str, Path], tmp_path: Path) -> None:
    sdxl_v = _beside(files["sdxl"], tmp_path / "v", V_YAML)
    assert load_scheduler_config(str(sdxl_v))["prediction_type"] == "v_prediction"
    sd2_eps = _beside(files["sd2"], tmp_path / "eps", EPS_YAML)
    assert load_scheduler_config(str(sd2_eps))["prediction_type"] == "epsilon"
    assert load_scheduler_config(str(files["sd2"]))["prediction_type"] == "v_prediction"
    assert load_scheduler_config(str(files["sdxl"]))["prediction_type"] == "epsilon"
    sgm_v = _beside(files["sdxl_refiner"], tmp_path / "sgm", (
        "model:\n  params:\n    denoiser_config:\n      params:\n        scaling_config:\n"
        "          target: sgm.modules.diffusionmodules.denoiser_scaling.VScaling\n"))
    assert load_scheduler_config(str(sgm_v))["prediction_type"] == "v_prediction"
    bad = _beside(files["sd2"], tmp_path / "bad", V_YAML.replace('"v"', '"x0"'))
    with pytest.raises(WeightsError, match=r"tiny-sd2\.yaml.*'x0'"):
        load_scheduler_config(str(bad))


def test_prediction_type_option_overrides(files: dict[str, Path], tiny_sd2: TinyModel,
                                          tmp_path: Path) -> None:
    sdxl_v = _beside(files["sdxl"], tmp_path / "v", V_YAML)
    comps = load_components(str(sdxl_v), dtype="fp32", device="cpu",
                            prediction_type="epsilon")
    assert comps.scheduler_config["prediction_type"] == "epsilon"
    assert load_scheduler_config(str(files["sd2"]), prediction_type="epsilon")[
        "prediction_type"] == "epsilon"
    folder = load_components(str(tiny_sd2.folder), dtype="fp32", device="cpu",
                             prediction_type="epsilon")
    assert folder.scheduler_config["prediction_type"] == "epsilon"
    assert load_scheduler_config(str(tiny_sd2.folder))["prediction_type"] == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        load_components(str(files["sd2"]), device="cpu", prediction_type="sample")


def test_unrecognised_layout_names_the_file(files: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(str(files["sdxl_refiner"]))
    # A refiner whose micro-conditioning embedding does not fit five equal embeddings.
    state[LABEL_EMB_KEY] = torch.zeros(state[LABEL_EMB_KEY].shape[0], SDXL_POOLED + 41)
    path = tmp_path / "odd-refiner.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"odd-refiner\.safetensors: .*label_emb"):
        load_components(str(path), device="cpu")
    other = tmp_path / "not-sd.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(other))
    with pytest.raises(WeightsError, match=r"not-sd\.safetensors: not a Stable Diffusion"):
        load_components(str(other), device="cpu")
    with pytest.raises(WeightsError, match=r"not-sd\.safetensors"):
        load_scheduler_config(str(other))


def test_a_yaml_beside_a_single_file_is_part_of_its_fingerprint(tmp_path: Path) -> None:
    """Adding or editing the .yaml that says v-prediction must invalidate a cached load."""
    from nodes.loaders import files_fingerprint

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    bare = files_fingerprint(ckpt)
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    with_yaml = files_fingerprint(ckpt)
    assert with_yaml != bare and "model.yaml" in with_yaml
    (tmp_path / "model.yaml").write_text("model:\n  params: {}\n")
    assert files_fingerprint(ckpt) != with_yaml

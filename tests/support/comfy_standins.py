"""ComfyUI-shaped stand-in nodes and hand-written UI documents for the import tests.

The stand-ins have the shapes of ComfyUI's nodes (class names, input names and order, which
inputs are widgets, seeds, the upload flag, output names), registered in a private
registry, so the import tests pin the converter's rules and not the node pack's code. The
documents are what ComfyUI's front end saves; `EXPECTED_TXT2IMG` is written out by hand,
the inputs its front end would send for `txt2img()`.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from graph_runtime import Choice, Float, Int, Registry, Seed, SocketType, Text, node
from graph_runtime.workflow import import_workflow
from nodes.comfyui import importer  # noqa: F401  (importing registers the importers)


# ---------------------------------------------------------------- stand-in nodes
class Model:
    __socket__ = "MODEL"


class Clip:
    __socket__ = "CLIP"


class Vae:
    __socket__ = "VAE"


class Conditioning:
    __socket__ = "CONDITIONING"


class Latent:
    __socket__ = "LATENT"


class Image:
    __socket__ = "IMAGE"


class Mask:
    __socket__ = "MASK"


class Checkpoint(NamedTuple):
    MODEL: Model
    CLIP: Clip
    VAE: Vae


class Loaded(NamedTuple):
    IMAGE: Image
    MASK: Mask


class Patched(NamedTuple):
    MODEL: Model
    CLIP: Clip


SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
SCHEDULERS = ["normal", "karras", "simple"]


def checkpoint_loader(ckpt_name: Annotated[str, Choice(["tiny.safetensors"])]
                      = "tiny.safetensors") -> Checkpoint:
    raise NotImplementedError


def clip_text_encode(text: Annotated[str, Text(multiline=True)] = "", *,
                     clip: Clip) -> Conditioning:
    raise NotImplementedError


def empty_latent(width: Annotated[int, Int(min=16, max=16384)] = 512,
                 height: Annotated[int, Int(min=16, max=16384)] = 512,
                 batch_size: Annotated[int, Int(min=1, max=4096)] = 1) -> Latent:
    raise NotImplementedError


def ksampler(model: Model, seed: Annotated[int, Seed()] = 0,
             steps: Annotated[int, Int(min=1, max=10000)] = 20,
             cfg: Annotated[float, Float(min=0.0, max=100.0)] = 8.0,
             sampler_name: Annotated[str, Choice(SAMPLERS)] = "euler",
             scheduler: Annotated[str, Choice(SCHEDULERS)] = "normal", *,
             positive: Conditioning, negative: Conditioning, latent_image: Latent,
             denoise: Annotated[float, Float(min=0.0, max=1.0)] = 1.0) -> Latent:
    raise NotImplementedError


def ksampler_advanced(model: Model,
                      add_noise: Annotated[str, Choice(["enable", "disable"])] = "enable",
                      noise_seed: Annotated[int, Seed()] = 0,
                      steps: Annotated[int, Int(min=1, max=10000)] = 20,
                      cfg: Annotated[float, Float(min=0.0, max=100.0)] = 8.0,
                      sampler_name: Annotated[str, Choice(SAMPLERS)] = "euler",
                      scheduler: Annotated[str, Choice(SCHEDULERS)] = "normal", *,
                      positive: Conditioning, negative: Conditioning, latent_image: Latent,
                      start_at_step: Annotated[int, Int(min=0, max=10000)] = 0,
                      end_at_step: Annotated[int, Int(min=0, max=10000)] = 10000,
                      return_with_leftover_noise: Annotated[str, Choice(["disable", "enable"])]
                      = "disable") -> Latent:
    raise NotImplementedError


def vae_decode(samples: Latent, vae: Vae) -> Image:
    raise NotImplementedError


def save_image(images: Image, filename_prefix: Annotated[str, Text()] = "ComfyUI") -> None:
    raise NotImplementedError


def load_image(image: Annotated[str, Choice(["example.png"], allow_other=True,
                                            upload="image")] = "example.png") -> Loaded:
    raise NotImplementedError


def lora_loader(model: Model, clip: Clip,
                lora_name: Annotated[str, Choice(["style.safetensors"])] = "style.safetensors",
                strength_model: Annotated[float, Float(min=-100.0, max=100.0)] = 1.0,
                strength_clip: Annotated[float, Float(min=-100.0, max=100.0)] = 1.0
                ) -> Patched:
    raise NotImplementedError


STANDINS = {
    "CheckpointLoaderSimple": (checkpoint_loader, {}),
    "CLIPTextEncode": (clip_text_encode, {"output": "CONDITIONING"}),
    "EmptyLatentImage": (empty_latent, {"output": "LATENT"}),
    "KSampler": (ksampler, {"output": "LATENT"}),
    "KSamplerAdvanced": (ksampler_advanced, {"output": "LATENT"}),
    "VAEDecode": (vae_decode, {"output": "IMAGE"}),
    "SaveImage": (save_image, {"output_node": True, "display_name": "Save Image"}),
    "LoadImage": (load_image, {}),
    "LoraLoader": (lora_loader, {}),
}


def standin_registry() -> Registry:
    """A registry holding the stand-ins under ComfyUI's class names."""
    reg = Registry()
    for name in ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK"):
        reg.add_socket_type(SocketType(name))
    for name, (func, options) in STANDINS.items():
        node(name, registry=reg, **options)(func)
    return reg


REG = standin_registry()


# ---------------------------------------------------------------- UI documents
def ui_node(nid: int, kind: str, inputs: tuple[tuple[str, str, int | None], ...] = (),
            outputs: tuple[tuple[str, str], ...] = (), widgets: Any = None,
            **extra: Any) -> dict[str, Any]:
    """A node as ComfyUI's front end saves it; `inputs` are (name, type, link id)."""
    out: dict[str, Any] = {
        "id": nid, "type": kind, "pos": [nid * 100, 50], "size": [300, 120], "flags": {},
        "order": nid, "mode": 0,
        "inputs": [{"name": n, "type": t, "link": lk} for n, t, lk in inputs],
        "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
        "properties": {}}
    if widgets is not None:
        out["widgets_values"] = widgets
    out.update(extra)
    return out


def converted(name: str, kind: str, link_id: int | None) -> dict[str, Any]:
    """A widget turned into an input socket."""
    return {"name": name, "type": kind, "widget": {"name": name}, "link": link_id}


def txt2img() -> dict[str, Any]:
    """The default ComfyUI graph, small: ids and links as in ComfyUI's own default."""
    nodes = [
        ui_node(4, "CheckpointLoaderSimple",
                outputs=(("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")),
                widgets=["tiny.safetensors"]),
        ui_node(6, "CLIPTextEncode", (("clip", "CLIP", 3),), (("CONDITIONING", "CONDITIONING"),),
                ["a glass bottle"]),
        ui_node(7, "CLIPTextEncode", (("clip", "CLIP", 5),), (("CONDITIONING", "CONDITIONING"),),
                ["blurry"]),
        ui_node(5, "EmptyLatentImage", outputs=(("LATENT", "LATENT"),), widgets=[64, 96, 1]),
        ui_node(3, "KSampler", (("model", "MODEL", 1), ("positive", "CONDITIONING", 4),
                                ("negative", "CONDITIONING", 6), ("latent_image", "LATENT", 2)),
                (("LATENT", "LATENT"),), [42, "randomize", 4, 7.5, "euler", "karras", 1]),
        ui_node(8, "VAEDecode", (("samples", "LATENT", 7), ("vae", "VAE", 8)),
                (("IMAGE", "IMAGE"),)),
        ui_node(9, "SaveImage", (("images", "IMAGE", 9),), widgets=["out"]),
    ]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
             [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"],
             [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"],
             [9, 8, 0, 9, 0, "IMAGE"]]
    return {"last_node_id": 9, "last_link_id": 9, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def link(src: str, output: str) -> dict[str, str]:
    return {"from": src, "output": output}


EXPECTED_TXT2IMG = {
    "3": {"seed": 42, "steps": 4, "cfg": 7.5, "sampler_name": "euler", "scheduler": "karras",
          "denoise": 1, "model": link("4", "MODEL"), "positive": link("6", "CONDITIONING"),
          "negative": link("7", "CONDITIONING"), "latent_image": link("5", "LATENT")},
    "4": {"ckpt_name": "tiny.safetensors"},
    "5": {"width": 64, "height": 96, "batch_size": 1},
    "6": {"text": "a glass bottle", "clip": link("4", "CLIP")},
    "7": {"text": "blurry", "clip": link("4", "CLIP")},
    "8": {"samples": link("3", "LATENT"), "vae": link("4", "VAE")},
    "9": {"filename_prefix": "out", "images": link("8", "IMAGE")},
}


def imported(doc: dict[str, Any]) -> dict[str, Any]:
    wf, kind = import_workflow(doc, REG)
    assert kind == "comfyui-ui"
    return wf.to_dict()


def inputs_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {nid: nd["inputs"] for nid, nd in result["nodes"].items()}


def find(doc: dict[str, Any], nid: int) -> dict[str, Any]:
    return next(n for n in doc["nodes"] if n["id"] == nid)



# ---------------------------------------------------------------- subgraphs
ENCODE = "5f0c1f4e-0000-4000-8000-000000000001"
WRAP = "5f0c1f4e-0000-4000-8000-000000000002"


def encode_subgraph() -> dict[str, Any]:
    """A subgraph holding one CLIPTextEncode, its clip from the subgraph's input."""
    return {
        "id": ENCODE, "version": 1, "name": "Encode",
        "inputNode": {"id": -10, "bounding": [0, 0, 100, 60]},
        "outputNode": {"id": -20, "bounding": [600, 0, 100, 60]},
        "inputs": [{"id": "i1", "name": "clip", "type": "CLIP", "linkIds": [101]}],
        "outputs": [{"id": "o1", "name": "CONDITIONING", "type": "CONDITIONING",
                     "linkIds": [102]}],
        "widgets": [],
        "nodes": [ui_node(1, "CLIPTextEncode", (("clip", "CLIP", 101),),
                          (("CONDITIONING", "CONDITIONING"),), ["inside"], pos=[200, 100])],
        "groups": [{"title": "Inner", "bounding": [190, 90, 320, 140], "flags": {}}],
        "links": [{"id": 101, "origin_id": -10, "origin_slot": 0, "target_id": 1,
                   "target_slot": 0, "type": "CLIP"},
                  {"id": 102, "origin_id": 1, "origin_slot": 0, "target_id": -20,
                   "target_slot": 0, "type": "CONDITIONING"}]}


def wrap_subgraph() -> dict[str, Any]:
    """A subgraph whose only node is an instance of the Encode subgraph."""
    return {
        "id": WRAP, "version": 1, "name": "Wrap",
        "inputs": [{"name": "clip", "type": "CLIP", "linkIds": [201]}],
        "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [202]}],
        "nodes": [ui_node(2, ENCODE, (("clip", "CLIP", 201),),
                          (("CONDITIONING", "CONDITIONING"),), pos=[0, 0])],
        "links": [{"id": 201, "origin_id": -10, "origin_slot": 0, "target_id": 2,
                   "target_slot": 0, "type": "CLIP"},
                  {"id": 202, "origin_id": 2, "origin_slot": 0, "target_id": -20,
                   "target_slot": 0, "type": "CONDITIONING"}]}


def with_subgraph(kind: str) -> dict[str, Any]:
    doc = txt2img()
    find(doc, 6).update(type=kind, widgets_values=[], pos=[1000, 500])
    doc["definitions"] = {"subgraphs": [encode_subgraph(), wrap_subgraph()]}
    return doc


"""Workflows saved before the ComfyUI node pack joined the library keep loading.

Five of our node types took ComfyUI's shape or gave their name to ComfyUI's node:
- VAEDecode: inputs (vae, latents) became (samples, vae), output "images" became "IMAGE";
- LoadImage: input "path" became "image", outputs "images"/"mask" became "IMAGE"/"MASK";
- our VAEEncode (a seeded sample of the latent distribution) is now VAEEncodeSampled;
  VAEEncode is ComfyUI's (the distribution's mean, inputs pixels and vae);
- our RandomNoise (pixel-space noise for DDPM) is now RandomPixelNoise; RandomNoise is
  ComfyUI's noise source for custom sampling;
- our ImageBatch (up to eight batches of one size) is now JoinImages; ImageBatch is
  ComfyUI's (two batches, the second resized to the first).
Every v1 document the engine reads passes through `upgrade` (registered below), which
rewrites such nodes and the links from them. Documents that need nothing come back as
they are; others come back as a new dict.
"""

from __future__ import annotations

from typing import Any

from graph_runtime.workflow import is_link, register_upgrade

# Node type -> {old input name: new name}.
RENAMED_INPUTS = {"VAEDecode": {"latents": "samples"}, "LoadImage": {"path": "image"}}
# Node type -> {old output name: new name}.
RENAMED_OUTPUTS = {"VAEDecode": {"images": "IMAGE"},
                   "LoadImage": {"images": "IMAGE", "mask": "MASK"}}
# Old type -> (inputs only the old node had, new type).
RENAMED_TYPES = {
    "VAEEncode": ({"images", "seed"}, "VAEEncodeSampled"),
    "RandomNoise": ({"unet", "width", "height", "batch_size", "seed"}, "RandomPixelNoise"),
    "ImageBatch": ({f"images{i}" for i in range(1, 9)}, "JoinImages"),
}


def _node(nd: Any) -> Any:
    """One node brought up to date (the same object when nothing changes)."""
    if not isinstance(nd, dict):
        return nd
    kind, inputs = nd.get("type"), nd.get("inputs")
    if not isinstance(inputs, dict):
        return nd
    old_type = RENAMED_TYPES.get(kind)
    if old_type is not None and old_type[0] & set(inputs):
        return {**nd, "type": old_type[1]}
    renames = {old: new for old, new in RENAMED_INPUTS.get(kind, {}).items()
               if old in inputs and new not in inputs}
    if not renames:
        return nd
    return {**nd, "inputs": {renames.get(k, k): v for k, v in inputs.items()}}


def _links(nd: Any, types: dict[str, Any]) -> Any:
    """The node with links naming an old output of their source renamed."""
    if not isinstance(nd, dict) or not isinstance(nd.get("inputs"), dict):
        return nd
    changed = {}
    for name, value in nd["inputs"].items():
        if is_link(value):
            outputs = RENAMED_OUTPUTS.get(types.get(value["from"]), {})
            if value.get("output") in outputs:
                changed[name] = {**value, "output": outputs[value["output"]]}
    if not changed:
        return nd
    return {**nd, "inputs": {**nd["inputs"], **changed}}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A v1 document with the renamed node types, inputs and outputs of older files
    brought up to date."""
    nodes = data.get("nodes")
    if not isinstance(nodes, dict):
        return data
    new_nodes = {nid: _node(nd) for nid, nd in nodes.items()}
    types = {nid: nd.get("type") for nid, nd in new_nodes.items() if isinstance(nd, dict)}
    new_nodes = {nid: _links(nd, types) for nid, nd in new_nodes.items()}
    if all(new_nodes[nid] is nodes[nid] for nid in nodes):
        return data
    return {**data, "nodes": new_nodes}


register_upgrade(upgrade)

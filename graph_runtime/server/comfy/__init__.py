"""ComfyUI's client protocol, served over our engine: its HTTP routes, queue and history
shapes, websocket messages and node schemas, so scripts written for ComfyUI's API run
against `noodle serve` unchanged.

It is a protocol, not a node library: it knows nothing of what nodes compute. The nodes
it lists and runs are whichever the registry holds in the "ComfyUI" category, and model
folders and embeddings come from providers the node library registers
(`Registry.provide`).
"""

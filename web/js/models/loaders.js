// Which node loads a model of each kind, and adding it. Our own loaders serve Noodle
// workflows; a document made of the ComfyUI pack's nodes gets the pack's loader instead, so a
// dropped model wires into what is already there. A kind whose loader the server does not
// register is shown but cannot be dropped. Embeddings are no node: their `embedding:name`
// goes into the prompt they are dropped on (or the selected one), or to the clipboard.

import { toast } from "../dialogs.js";

// kind -> [ours, ComfyUI's], each [node type, input name].
const LOADERS = {
  checkpoints: [["LoadPipeline", "source"], ["CheckpointLoaderSimple", "ckpt_name"]],
  vae: [["LoadVAE", "source"], ["VAELoader", "vae_name"]],
  loras: [["LoadLoRA", "name"], ["LoraLoader", "lora_name"]],
  controlnet: [["LoadControlNet", "source"], ["ControlNetLoader", "control_net_name"]],
  upscale_models: [["LoadUpscaleModel", "name"], ["UpscaleModelLoader", "model_name"]],
};

// Whether most of the document's nodes come from the ComfyUI pack ("ComfyUI/..." categories).
export function isComfyDocument(editor) {
  const nodes = editor.graph._nodes;
  const comfy = nodes.filter((n) => String(editor.schemas[n.type]?.category ?? "").startsWith("ComfyUI")).length;
  return nodes.length > 0 && comfy * 2 > nodes.length;
}

// The [type, input, value] a model is loaded with, or null when no loader is registered.
export function loaderFor(editor, model) {
  const choices = LOADERS[model.kind];
  if (!choices) return null;
  const registered = choices.filter(([type]) => editor.schemas[type]);
  if (!registered.length) return null;
  const [ours, comfy] = choices;
  const preferComfy = isComfyDocument(editor) && editor.schemas[comfy[0]];
  const [type, input] = preferComfy ? comfy : registered[0];
  // Our LoadVAE finds a VAE file by its place under the models folder; the rest by name.
  const value = type === ours[0] ? model.source ?? model.name : model.name;
  return [type, input, value];
}

export function embeddingText(model) {
  return `embedding:${model.name.replace(/\.(safetensors|pt|bin|pth|ckpt)$/i, "")}`;
}

// Adds the loader of `model` at `pos` (graph coordinates) with the model chosen, selected.
export function addLoader(editor, model, pos = null) {
  const found = loaderFor(editor, model);
  if (!found) {
    toast(`No loader node for ${model.kind} is available`, "error");
    return null;
  }
  const [type, input, value] = found;
  const id = editor.addNode(type, pos);
  editor.setWidget(id, input, value);
  return id;
}

// The prompt field `embedding:name` goes into: the multi-line text widget of the node at
// `pos` (graph coordinates; where it was dropped), else of the one selected node.
function promptWidget(editor, pos) {
  const textOf = (n) => n?.widgets?.find((w) => w.noodleInput?.multiline && !w.disabled);
  const under = pos ? editor.graph.getNodeOnPos(pos[0], pos[1]) : null;
  if (textOf(under)) return [under, textOf(under)];
  const selected = editor.selectedIds().map((id) => editor.node(id));
  return selected.length === 1 && textOf(selected[0]) ? [selected[0], textOf(selected[0])] : [null, null];
}

// Adds `embedding:name` to the end of a prompt (see `promptWidget`), or copies it.
// Returns where it went: the prompt node's id, or "clipboard".
export async function insertEmbedding(editor, model, pos = null) {
  const text = embeddingText(model);
  const [node, widget] = promptWidget(editor, pos);
  if (node) {
    const before = String(widget.value ?? "");
    editor.setWidget(String(node.id), widget.name, `${before}${before && !/\s$/.test(before) ? " " : ""}${text}`);
    toast(`Added ${text} to the prompt`, "ok");
    return String(node.id);
  }
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    // no clipboard permission: the toast still shows the text to type
  }
  toast(`Copied “${text}”: paste it into a prompt, or drop it on one`, "ok");
  return "clipboard";
}

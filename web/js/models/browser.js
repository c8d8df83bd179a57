// The models browser: every checkpoint, VAE, LoRA, embedding, ControlNet and upscale model
// the server finds (GET /api/model-library), by kind, with size and family. Dragging one onto
// the canvas (or clicking it) adds its loader with it chosen (see loaders.js); Refresh lists
// the folders again and, when new files appeared, gives every choice widget the new lists.

import { api } from "../api.js";
import { toast } from "../dialogs.js";
import { el } from "../dom.js";
import { refreshChoices } from "../graph/choices.js";
import { addLoader, embeddingText, insertEmbedding, loaderFor } from "./loaders.js";

export const MODEL_MIME = "application/x-noodle-model";
const KIND_TITLES = {
  checkpoints: "Checkpoints", vae: "VAEs", loras: "LoRAs", embeddings: "Embeddings",
  controlnet: "ControlNets", upscale_models: "Upscale models",
};
const FAMILY_NAMES = { sd1: "SD 1.x", sd2: "SD 2.x", sdxl: "SDXL", sdxl_refiner: "SDXL refiner" };

export function formatSize(bytes) {
  if (bytes == null) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export class ModelsBrowser {
  // `root`: the panel element; `editor`: where loaders go.
  constructor(root, editor) {
    this.root = root;
    this.editor = editor;
    this.models = [];
    this.filter = el("input", { type: "search", placeholder: "Filter models…", class: "palette-filter", "aria-label": "Filter models" });
    this.refreshButton = el("button", { class: "small", id: "models-refresh", title: "List the model folders again", onclick: () => this.refresh() }, "Refresh");
    this.list = el("div", { class: "models-list" });
    root.replaceChildren(el("div", { class: "sidebar-head" }, el("h2", {}, "Models"), this.refreshButton,
      el("button", { class: "small", title: "Hide (M)", "aria-label": "Hide the models", onclick: () => this.toggle(false) }, "×")),
    this.filter, this.list);
    this.filter.addEventListener("input", () => this.applyFilter());
  }

  get shown() {
    return !this.root.hidden;
  }

  // Shows or hides the panel (the first showing lists the models). `onToggle` resizes.
  async toggle(show = !this.shown) {
    this.root.hidden = !show;
    document.getElementById("models-button")?.setAttribute("aria-pressed", String(show));
    this.onToggle?.();
    if (show && !this.loaded) await this.refresh();
  }

  // Lists the models again; when the list changed, fetches the node schemas for new choices.
  async refresh() {
    this.refreshButton.disabled = true;
    try {
      const before = JSON.stringify(this.models.map((m) => [m.kind, m.name]));
      this.models = (await api.modelLibrary()).models;
      this.loaded = true;
      this.render();
      if (before !== JSON.stringify(this.models.map((m) => [m.kind, m.name]))) {
        refreshChoices(this.editor, await api.nodes());
      }
    } catch (err) {
      toast(`Cannot list the models: ${err.message}`, "error");
    } finally {
      this.refreshButton.disabled = false;
    }
  }

  render() {
    const kinds = Object.keys(KIND_TITLES);
    this.list.replaceChildren(...kinds.map((kind) => {
      const models = this.models.filter((m) => m.kind === kind);
      const usable = (m) => kind === "embeddings" || loaderFor(this.editor, m) !== null;
      return el("details", { class: "palette-category models-kind", open: models.length ? "" : null, dataset: { kind } },
        el("summary", {}, `${KIND_TITLES[kind]} `, el("span", { class: "muted" }, `(${models.length})`)),
        ...(models.length ? models.map((m) => this.item(m, usable(m)))
          : [el("div", { class: "muted models-empty" }, "none found")]));
    }));
    this.applyFilter();
  }

  item(m, usable) {
    const meta = [FAMILY_NAMES[m.family] ?? m.family, formatSize(m.size)].filter(Boolean).join(" · ");
    const what = m.kind === "embeddings" ? `Drop on a prompt to add ${embeddingText(m)}` : usable ? "Drag onto the canvas, or click, to add its loader" : "No loader node for this kind";
    return el("button", {
      class: "palette-item model-item", draggable: usable ? "true" : null, disabled: usable ? null : true,
      title: `${m.name}\n${what}`, dataset: { kind: m.kind, name: m.name, search: `${m.name} ${m.family ?? ""}`.toLowerCase() },
      onclick: () => this.use(m, null),
      ondragstart: (ev) => { ev.dataTransfer.setData(MODEL_MIME, JSON.stringify(m)); ev.dataTransfer.effectAllowed = "copy"; },
    }, el("span", { class: "label" }, m.name), el("span", { class: "muted model-meta" }, meta));
  }

  applyFilter() {
    const q = this.filter.value.trim().toLowerCase();
    for (const b of this.list.querySelectorAll(".model-item")) b.hidden = Boolean(q) && !b.dataset.search.includes(q);
  }

  // Adds the loader of model `m` (an embedding: into a prompt) at `pos`, graph coordinates.
  use(m, pos) {
    if (m.kind === "embeddings") return insertEmbedding(this.editor, m, pos);
    return addLoader(this.editor, m, pos);
  }

  // The drop handler's part: true when the drag carried a model.
  drop(dataTransfer, pos) {
    const text = dataTransfer.getData(MODEL_MIME);
    if (!text) return false;
    this.use(JSON.parse(text), pos);
    return true;
  }
}

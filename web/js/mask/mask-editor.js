// The mask editor: "edit mask…" on every node with an image upload (LoadImage) opens the
// node's image over the page; the user paints the region to repaint, or erases, with a brush
// of adjustable size, and saves. The mask is stored as ComfyUI's mask editor stores it: a new
// image in the input folder whose transparent pixels are the mask, and the node's widget
// switches to it (an edit of the workflow like any other, so Ctrl+Z switches back).
// While it is open every key is the editor's: Escape cancels, Ctrl+Z undoes a stroke,
// [ and ] change the brush size, E and B pick the eraser and the brush.

import { api } from "../api.js";
import { toast } from "../dialogs.js";
import { el } from "../dom.js";
import { uploadExtras } from "../graph/node-types.js";
import { loadPixels, MaskCanvas } from "./mask-canvas.js";

const MAX_BRUSH = 256;

// `/api/view` URLs of an input-folder image: as stored, and its colours only.
function inputUrls(name) {
  const cut = name.lastIndexOf("/");
  const ref = { filename: name.slice(cut + 1), subfolder: cut >= 0 ? name.slice(0, cut) : "", type: "input" };
  const url = api.viewUrl(ref);
  return { original: url, colours: `${url}&channel=rgb` };
}

function maskedName(name) {
  const base = name.slice(name.lastIndexOf("/") + 1).replace(/\.[^.]*$/, "");
  return `${base.replace(/_masked$/, "")}_masked.png`;
}

export class MaskEditor {
  // `upload(nodeId, input, file)` stores the file and points the node's input at it.
  constructor(upload) {
    this.upload = upload;
    this.target = null;
    this.mask = null;
    this.picture = el("canvas", { class: "mask-picture" });
    this.layer = el("canvas", { class: "mask-layer", "aria-label": "Mask (paint here)" });
    this.sizeInput = el("input", { type: "range", min: "1", max: String(MAX_BRUSH), value: "8",
                                   class: "mask-size", "aria-label": "Brush size",
                                   oninput: () => this.setSize(Number(this.sizeInput.value)) });
    this.sizeLabel = el("span", { class: "mask-size-label muted" });
    this.paintButton = el("button", { class: "mask-paint", title: "Paint the region to repaint (B)", onclick: () => this.setMode("paint") }, "Brush");
    this.eraseButton = el("button", { class: "mask-erase", title: "Erase (E)", onclick: () => this.setMode("erase") }, "Eraser");
    this.undoButton = el("button", { class: "mask-undo", title: "Undo the last stroke (Ctrl+Z)", onclick: () => this.undoStroke() }, "Undo");
    this.saveButton = el("button", { class: "primary mask-save", title: "Save the mask into a new image", onclick: () => this.save() }, "Save");
    this.caption = el("span", { class: "mask-caption" });
    this.root = el("div", { id: "mask-editor", class: "mask-editor", role: "dialog", "aria-label": "Mask editor", tabindex: "-1", hidden: true },
      el("div", { class: "mask-bar" }, this.caption, this.paintButton, this.eraseButton,
        el("label", { class: "mask-size-wrap" }, "Size ", this.sizeInput, this.sizeLabel),
        this.undoButton,
        el("button", { class: "mask-clear", title: "Remove the whole mask", onclick: () => this.clear() }, "Clear"),
        el("button", { class: "mask-cancel", title: "Close without saving (Escape)", onclick: () => this.close() }, "Cancel"),
        this.saveButton),
      el("div", { class: "mask-stage" }, el("div", { class: "mask-frame" }, this.picture, this.layer)));
    this.layer.addEventListener("pointerdown", (e) => this.onDown(e));
    this.layer.addEventListener("pointermove", (e) => this.mask?.move(this.mask.toImage(e)));
    for (const type of ["pointerup", "pointercancel"]) this.layer.addEventListener(type, () => this.onUp());
    window.addEventListener("keydown", (e) => this.onKey(e), true);
    document.body.append(this.root);
  }

  get isOpen() {
    return !this.root.hidden;
  }

  // Opens the image named by the node's `input` widget (a file of the input folder).
  async open(node, input) {
    const name = node.widgets?.find((w) => w.name === input)?.value;
    if (!name) {
      toast("Choose or upload an image first", "error");
      return;
    }
    const urls = inputUrls(String(name));
    let original, colours;
    try {
      [original, colours] = await Promise.all([loadPixels(urls.original), loadPixels(urls.colours)]);
    } catch (err) {
      toast(`The mask editor opens images of the input folder; upload ${name} first (${err.message})`, "error");
      return;
    }
    this.target = { nodeId: String(node.id), input, name: String(name), colours };
    this.picture.width = colours.width;
    this.picture.height = colours.height;
    this.picture.getContext("2d").putImageData(colours, 0, 0);
    this.mask = new MaskCanvas(this.layer, colours.width, colours.height);
    this.mask.loadFromAlpha(original);
    this.setSize(this.mask.size);
    this.setMode("paint");
    this.caption.textContent = String(name);
    this.returnFocus = document.activeElement;
    this.root.hidden = false;
    this.fit();
    this.root.focus();
    this.root.dataset.ready = "true";
  }

  // The picture as large as the stage allows, keeping its shape (small images enlarged).
  fit() {
    const stage = this.root.querySelector(".mask-stage").getBoundingClientRect();
    const { width, height } = this.picture;
    const scale = Math.max(0.05, Math.min((stage.width - 32) / width, (stage.height - 32) / height));
    const frame = this.root.querySelector(".mask-frame");
    frame.style.width = `${Math.round(width * scale)}px`;
    frame.style.height = `${Math.round(height * scale)}px`;
  }

  close() {
    if (!this.isOpen) return;
    this.root.hidden = true;
    delete this.root.dataset.ready;
    this.mask = null;
    this.target = null;
    this.returnFocus?.focus?.();
  }

  setSize(size) {
    const value = Math.max(1, Math.min(MAX_BRUSH, Math.round(size)));
    if (this.mask) this.mask.size = value;
    this.sizeInput.value = String(value);
    this.sizeLabel.textContent = `${value} px`;
  }

  setMode(mode) {
    if (this.mask) this.mask.mode = mode;
    this.paintButton.setAttribute("aria-pressed", String(mode === "paint"));
    this.eraseButton.setAttribute("aria-pressed", String(mode === "erase"));
  }

  onDown(e) {
    if (!this.mask || e.button !== 0) return;
    e.preventDefault();
    this.layer.setPointerCapture(e.pointerId);
    this.mask.begin(this.mask.toImage(e));
  }

  onUp() {
    this.mask?.end();
  }

  undoStroke() {
    this.mask?.undo();
  }

  clear() {
    this.mask?.clear();
  }

  async save() {
    if (!this.mask || !this.target) return;
    const { nodeId, input, name, colours } = this.target;
    this.saveButton.disabled = true;
    try {
      const blob = await this.mask.toPng(colours);
      const file = new File([blob], maskedName(name), { type: "image/png" });
      this.close();
      await this.upload(nodeId, input, file);
    } catch (err) {
      toast(`Could not save the mask: ${err.message}`, "error");
    } finally {
      this.saveButton.disabled = false;
    }
  }

  // Registered before the canvas's keys, so while it is open every key is the editor's.
  onKey(e) {
    if (!this.isOpen) return;
    e.stopImmediatePropagation();
    const ctrl = e.ctrlKey || e.metaKey;
    if (e.key === "Escape") this.close();
    else if (ctrl && e.key.toLowerCase() === "z") this.undoStroke();
    else if (e.key === "[") this.setSize((this.mask?.size ?? 8) * 0.8);
    else if (e.key === "]") this.setSize((this.mask?.size ?? 8) * 1.25 + 1);
    else if (e.key.toLowerCase() === "e" && !ctrl) this.setMode("erase");
    else if (e.key.toLowerCase() === "b" && !ctrl) this.setMode("paint");
    else return;
    e.preventDefault();
  }
}

// Adds "edit mask…" beside every image upload button; returns the editor.
export function installMaskEditor(upload) {
  const editor = new MaskEditor(upload);
  uploadExtras.image = [...(uploadExtras.image ?? []), { label: "edit mask…", run: (node, input) => editor.open(node, input) }];
  return editor;
}

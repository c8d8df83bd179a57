// The image viewer: one image large over the page, stepping through a list with the arrow
// keys (or the buttons at its sides), a download link, Escape or a click beside it to close.
// The list is asked for again on each opening, so it follows the history as it grows.

import { el } from "./dom.js";

export class ImageViewer {
  constructor() {
    this.images = [];
    this.index = 0;
    this.img = el("img", { class: "viewer-image", alt: "" });
    this.caption = el("span", { class: "viewer-caption" });
    this.counter = el("span", { class: "viewer-counter muted" });
    this.download = el("a", { class: "button viewer-download", download: "", title: "Save the image" }, "Download");
    const close = el("button", { class: "viewer-close", title: "Close (Escape)", "aria-label": "Close", onclick: () => this.close() }, "×");
    const prev = el("button", { class: "viewer-prev", title: "Previous (←)", "aria-label": "Previous image", onclick: () => this.step(-1) }, "‹");
    const next = el("button", { class: "viewer-next", title: "Next (→)", "aria-label": "Next image", onclick: () => this.step(1) }, "›");
    this.root = el("div", { id: "viewer", class: "viewer", role: "dialog", "aria-label": "Image viewer", tabindex: "-1", hidden: true },
      el("div", { class: "viewer-bar" }, this.counter, this.caption, this.download, close),
      el("div", { class: "viewer-stage" }, prev, this.img, next));
    this.root.addEventListener("pointerdown", (e) => {
      if (e.target === this.root || e.target.classList.contains("viewer-stage")) this.close();
    });
    window.addEventListener("keydown", (e) => this.onKey(e), true);
    document.body.append(this.root);
  }

  get isOpen() {
    return !this.root.hidden;
  }

  // `images`: [{url, filename, caption}]; opens on the one at `index`.
  open(images, index = 0) {
    if (!images.length) return;
    this.images = images;
    this.returnFocus = document.activeElement;
    this.root.hidden = false;
    this.show(index);
    this.root.focus();
  }

  close() {
    if (!this.isOpen) return;
    this.root.hidden = true;
    this.img.removeAttribute("src");
    this.returnFocus?.focus?.();
  }

  step(delta) {
    this.show(Math.min(this.images.length - 1, Math.max(0, this.index + delta)));
  }

  show(index) {
    this.index = index;
    const image = this.images[index];
    this.img.src = image.url;
    this.img.alt = image.filename;
    this.caption.textContent = image.caption ?? image.filename;
    this.counter.textContent = `${index + 1} / ${this.images.length}`;
    this.download.href = image.url;
    this.download.download = image.filename;
    this.root.dataset.index = String(index);
  }

  // Registered before the canvas's keys, so while it is open every key is the viewer's.
  onKey(e) {
    if (!this.isOpen) return;
    e.stopImmediatePropagation();
    const moves = { ArrowLeft: -1, ArrowUp: -1, ArrowRight: 1, ArrowDown: 1 };
    if (e.key === "Escape") this.close();
    else if (e.key in moves) this.step(moves[e.key]);
    else if (e.key === "Home") this.show(0);
    else if (e.key === "End") this.show(this.images.length - 1);
    else return;
    e.preventDefault();
  }
}

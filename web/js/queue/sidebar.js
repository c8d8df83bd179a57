// The queue and history sidebar: the live queue above, the finished prompts below, and the
// image viewer their thumbnails open. Shown or hidden by the toolbar button or the Q key;
// whether it is open is remembered across reloads.

import { ImageViewer } from "../viewer.js";
import { HistoryList } from "./history-list.js";
import { LiveQueue } from "./live.js";

const OPEN_KEY = "noodle.sidebar.open";
const $ = (sel) => document.querySelector(sel);

export class Sidebar {
  // `onLoad(entry)`: restore a finished prompt's workflow; `onToggle()`: the canvas area changed size.
  constructor({ clientId, onLoad, onToggle = () => {} }) {
    this.root = $("#sidebar");
    this.button = $("#sidebar-button");
    this.onToggle = onToggle;
    this.viewer = new ImageViewer();
    this.history = new HistoryList($("#history-list"), $("#history-more"), {
      onLoad, onOpenImage: (key) => this.openImage(key),
    });
    this.live = new LiveQueue($("#queue-list"), $("#clear-pending"), {
      clientId, onLeft: () => this.history.refreshNewest(),
    });
    this.button.addEventListener("click", () => this.toggle());
    $("#sidebar-close").addEventListener("click", () => this.toggle(false));
    this.live.render();
    this.live.refresh();
    if (localStorage.getItem(OPEN_KEY) === "1") this.toggle(true);
  }

  get isOpen() {
    return !this.root.hidden;
  }

  toggle(open = !this.isOpen) {
    this.root.hidden = !open;
    this.button.setAttribute("aria-pressed", String(open));
    localStorage.setItem(OPEN_KEY, open ? "1" : "0");
    if (open) this.history.start();
    this.onToggle();
  }

  // A websocket event; `finished` means a new history entry is stored.
  onEvent(type, data) {
    this.live.onEvent(type, data);
    if (type === "finished") this.history.refreshNewest();
  }

  // The socket is (back) up: what happened while it was down is read again.
  reconnected() {
    this.live.refresh();
    this.history.refreshNewest();
  }

  openImage(key) {
    const images = this.history.images();
    this.viewer.open(images, Math.max(0, images.findIndex((img) => img.key === key)));
  }
}

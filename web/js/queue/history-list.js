// Finished prompts, newest first, read from the server's persistent history a page at a time
// (so they survive a reload and a server restart): status, duration, thumbnails of the images
// each wrote, its error, and "Load workflow" to bring back the graph that ran.
//
// The server pages oldest first (offset 0 is the oldest entry) and says how many entries
// there are, so the newest page is asked for without an offset and older pages from the
// offset of the oldest entry shown. Entries are keyed by prompt id: a page that overlaps
// what is shown (the history grew meanwhile) adds nothing twice.

import { api } from "../api.js";
import { el } from "../dom.js";

const PAGE = 20;
const IMAGE_FILE = /\.(png|jpe?g|webp|gif|bmp)$/i;
const STATUS = { success: "Done", error: "Failed", interrupted: "Stopped", invalid: "Invalid" };

// The images an entry's nodes showed, in node order: [{url, filename}].
export function entryImages(entry) {
  const refs = Object.values(entry.outputs ?? {}).flatMap((ui) => ui?.images ?? []);
  return refs.filter((r) => IMAGE_FILE.test(r.filename ?? "")).map((r) => ({ url: api.viewUrl(r), filename: r.filename }));
}

function duration(seconds) {
  if (!(seconds > 0)) return "";
  if (seconds < 1) return `${Math.max(1, Math.round(seconds * 1000))} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function when(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const today = d.toDateString() === new Date().toDateString();
  return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
}

// What went wrong, in one line: the run's error, or the first validation error.
function errorText(entry) {
  const e = entry.error;
  if (e) return `${e.node_type ? `${e.node_type}: ` : ""}${e.exception_type ? `${e.exception_type}: ` : ""}${e.message ?? ""}`;
  const first = entry.errors?.[0];
  return first ? `${first.node != null ? `#${first.node} ` : ""}${first.message}` : "";
}

export class HistoryList {
  // `list`: the <ul> to fill; `more`: the "load more" button. `onLoad(entry)` restores an
  // entry's workflow; `onOpenImage(key)` opens the viewer on the image keyed `id:index`.
  constructor(list, more, { onLoad, onOpenImage }) {
    this.list = list;
    this.more = more;
    this.onLoad = onLoad;
    this.onOpenImage = onOpenImage;
    this.entries = []; // newest first
    this.items = new Map(); // prompt id -> its <li>
    this.oldest = null; // offset of the oldest entry shown; 0: nothing older
    this.ready = null;
    this.newestTimer = null;
    more.addEventListener("click", () => this.loadMore());
  }

  // The first page, read once (when the panel first opens).
  start() {
    this.ready ??= this.loadNewest(true);
    return this.ready;
  }

  // Adds the entries finished since the last read (a burst of calls reads once).
  refreshNewest() {
    if (!this.ready) return;
    clearTimeout(this.newestTimer);
    this.newestTimer = setTimeout(() => this.ready.then(() => this.loadNewest(false)), 50);
  }

  async loadNewest(first) {
    let page;
    try {
      page = await api.history({ limit: PAGE });
    } catch (err) {
      if (first) this.ready = null; // asked again on the next opening
      return;
    }
    if (first || this.oldest === null) this.oldest = Math.max(page.total - page.entries.length, 0);
    const fresh = page.entries.filter((e) => !this.items.has(e.prompt_id)).reverse();
    this.entries = [...fresh, ...this.entries];
    this.render();
  }

  async loadMore() {
    if (!this.oldest) return;
    const offset = Math.max(this.oldest - PAGE, 0);
    this.more.disabled = true;
    try {
      const page = await api.history({ limit: this.oldest - offset, offset });
      const older = page.entries.filter((e) => !this.items.has(e.prompt_id)).reverse();
      this.entries = [...this.entries, ...older];
      this.oldest = offset;
    } catch (err) {
      // kept as it is; the button stays to try again
    }
    this.more.disabled = false;
    this.render();
  }

  // Every image of the history as shown, newest entry first: what the viewer steps through.
  images() {
    return this.entries.flatMap((entry) => entryImages(entry).map((img, i) => ({
      ...img, key: `${entry.prompt_id}:${i}`, caption: `${entry.workflow?.name || "untitled"} · ${img.filename}`,
    })));
  }

  render() {
    for (const entry of this.entries) if (!this.items.has(entry.prompt_id)) this.items.set(entry.prompt_id, this.item(entry));
    const shown = this.entries.map((e) => this.items.get(e.prompt_id));
    if (!shown.length) shown.push(el("li", { class: "queue-empty muted" }, "No finished runs yet."));
    this.list.replaceChildren(...shown);
    this.more.hidden = !this.oldest;
  }

  item(entry) {
    const id = entry.prompt_id;
    const status = entry.status ?? "unknown";
    const facts = [`#${entry.number}`, duration(entry.seconds), when(entry.finished_at)].filter(Boolean).join(" · ");
    const thumbs = entryImages(entry).map((img, i) => el("button", {
      class: "history-thumb", title: img.filename, dataset: { key: `${id}:${i}` },
      onclick: () => this.onOpenImage(`${id}:${i}`),
    }, el("img", { src: img.url, alt: img.filename, loading: "lazy",
                   onerror: (e) => e.target.parentElement.classList.add("missing") })));
    const error = errorText(entry);
    return el("li", { class: `history-entry ${status}`, dataset: { prompt: id, status } },
      el("div", { class: "queue-row" },
        el("span", { class: "history-status", title: status }, STATUS[status] ?? status),
        el("span", { class: "queue-name" }, entry.workflow?.name || entry.name || "untitled"),
        el("span", { class: "muted" }, facts)),
      error ? el("div", { class: "history-error", title: error }, error) : null,
      el("div", { class: "history-foot" },
        el("div", { class: "history-thumbs" }, ...thumbs),
        el("button", { class: "small history-load", title: "Open the graph that made this in the canvas", onclick: () => this.onLoad(entry) },
          "Load workflow")));
  }
}

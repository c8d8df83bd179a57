// The open workflow as a document: its name and where it came from (user / shipped / file),
// opened, saved, renamed, deleted, downloaded, dropped. Several stay open in tabs (tabs.js),
// which keeps them in localStorage across reloads.
// A dropped or opened file that is not a v1 workflow (a PNG, another tool's JSON) is sent to
// the server as it is, which converts it with the same importers as `noodle import`.

import { api } from "./api.js";
import { askName, toast } from "./dialogs.js";
import { FORMAT } from "./graph/convert.js";
import { Tabs } from "./tabs.js";

const DEFAULT_WORKFLOW = { name: "txt2img", source: "shipped" };
const $ = (sel) => document.querySelector(sel);

export class Documents {
  // `onLoaded(missingTypes)` runs after every load (to reset messages, report unknown nodes).
  constructor(editor, onLoaded) {
    this.editor = editor;
    this.onLoaded = onLoaded;
    this.current = { name: "", source: null };
    this.tabs = new Tabs(this, $("#tabs"));
  }

  // The tabs of the last visit, else the default workflow in one tab.
  async restore() {
    if (this.tabs.restore()) return;
    this.tabs.open();
    await this.openWorkflow(DEFAULT_WORKFLOW, { quiet: true });
  }

  loadDoc(doc, { name = doc.name ?? "", source = null, fit = true } = {}) {
    const missing = this.editor.load(doc);
    this.editor.history.reset();
    this.current = { name, source };
    this.showName();
    if (fit && (!doc.ui?.viewport || !this.editor.allVisible())) this.editor.fitView();
    this.onLoaded(missing);
    this.persist();
  }

  // A finished run's workflow (from the history) in place of the graph: the document keeps
  // its name and place, is marked unsaved, and one undo brings back the graph it replaced.
  loadRun(doc) {
    const history = this.editor.history;
    history.checkpoint(true);
    const replaced = history.current;
    const undo = [...history.undoStack, replaced];
    try {
      this.loadDoc(doc, { name: this.current.name, source: this.current.source });
    } catch (err) {
      toast(`Cannot load this workflow: ${err.message}`, "error");
      return;
    }
    history.undoStack = undo.slice(-100);
    history.markDirty();
    toast(`Loaded the workflow of this run${doc.name ? ` (${doc.name})` : ""}`, "ok");
  }

  async openWorkflow(w, { quiet = false } = {}) {
    try {
      const doc = await api.loadWorkflow(w.name, w.source);
      this.loadDoc(doc, { name: w.name, source: w.source });
    } catch (err) {
      if (!quiet) toast(`Could not open ${w.name}: ${err.message}`, "error");
    }
  }

  showName() {
    const label = this.current.name || "untitled";
    const dirty = this.editor.history.dirty;
    const el = $("#workflow-name");
    el.textContent = label + (this.current.source === "shipped" ? " (example)" : "");
    el.classList.toggle("dirty", dirty); // the marker is drawn by CSS, the name stays plain text
    el.dataset.dirty = String(dirty);
    document.title = `${dirty ? "• " : ""}${label} · Noodle`;
    this.tabs.render();
  }

  // After an edit, undo or save: show the unsaved marker and keep the stored copy current.
  historyChanged() {
    this.showName();
    this.persistSoon();
  }

  persistSoon() {
    clearTimeout(this.persistTimer);
    this.persistTimer = setTimeout(() => this.persist(), 300);
  }

  persist() {
    this.tabs.persist();
  }

  async save(asNew = false) {
    let name = this.current.source === "user" && !asNew ? this.current.name : null;
    name ??= await askName("Save workflow as", this.current.name || "my-workflow");
    if (!name) return;
    const doc = this.editor.serialize();
    doc.name = name;
    try {
      const res = await api.saveWorkflow(name, doc);
      this.editor.name = name;
      this.current = { name: res.name, source: "user" };
      this.editor.history.markClean();
      this.showName();
      toast(`Saved “${res.name}”`, "ok");
    } catch (err) {
      toast(`Save failed: ${err.message}`, "error");
    }
  }

  async rename(w = this.current) {
    if (w.source !== "user") return this.save(true);
    const name = await askName("Rename workflow", w.name);
    if (!name || name === w.name) return;
    try {
      const doc = w === this.current ? this.editor.serialize() : await api.loadWorkflow(w.name, "user");
      doc.name = name;
      await api.saveWorkflow(name, doc);
      await api.deleteWorkflow(w.name);
      if (w.name === this.current.name && this.current.source === "user") {
        this.editor.name = name;
        this.current = { name, source: "user" };
        this.editor.history.markClean();
        this.showName();
      }
      toast(`Renamed to “${name}”`, "ok");
    } catch (err) {
      toast(`Rename failed: ${err.message}`, "error");
    }
  }

  async remove(w) {
    try {
      await api.deleteWorkflow(w.name);
      toast(`Deleted “${w.name}”`, "ok");
      if (w.name === this.current.name && this.current.source === "user") this.current.source = null;
    } catch (err) {
      toast(`Delete failed: ${err.message}`, "error");
    }
  }

  download() {
    const doc = this.editor.serialize();
    const blob = new Blob([JSON.stringify(doc, null, 2) + "\n"], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${this.current.name || "workflow"}.json`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  async loadFile(file) {
    try {
      let doc = null;
      let format = "noodle";
      if (!(file.type === "image/png" || /\.png$/i.test(file.name))) {
        const parsed = JSON.parse(await file.text());
        if (parsed?.format === FORMAT) doc = parsed;
      }
      if (!doc) ({ workflow: doc, format } = await api.importWorkflow(file));
      this.loadDoc(doc, { name: doc.name || file.name.replace(/\.(json|png)$/i, ""), source: null });
      toast(`Loaded ${file.name}${format === "noodle" || format === "png" ? "" : ` (${format})`}`, "ok");
    } catch (err) {
      toast(`Cannot load ${file.name}: ${err.message}`, "error");
    }
  }

  // An empty workflow in a new tab.
  newDocument() {
    this.tabs.open();
  }
}

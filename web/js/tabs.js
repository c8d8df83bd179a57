// Several workflows open at once, one tab each. The canvas shows one at a time: switching
// keeps the shown workflow's document, name, unsaved state, viewport and undo history in
// its tab and loads the other's. Every tab (with the last steps of its undo history) is kept
// in localStorage, so a reload brings them all back.

import { el } from "./dom.js";
import { FORMAT } from "./graph/convert.js";

const TABS_KEY = "noodle.tabs.v1";
const LEGACY_KEY = "noodle.workflow.v1"; // the single stored workflow of earlier versions
// Undo steps kept per tab across a reload (each is a whole workflow).
const KEEP_UNDO = 30;

function emptyDoc() {
  return { format: FORMAT, version: 1, name: "", nodes: {} };
}

function newId() {
  return crypto.randomUUID().slice(0, 8);
}

export class Tabs {
  // `docs`: the Documents (name, source, loading); `root`: the tab strip element.
  constructor(docs, root) {
    this.docs = docs;
    this.editor = docs.editor;
    this.root = root;
    this.list = [];
    this.activeId = null;
    this.lastSaved = "";
    this.frozen = new Map(); // tab id -> its JSON while it is not shown (it cannot change)
  }

  get active() {
    return this.list.find((t) => t.id === this.activeId) ?? null;
  }

  // The shown workflow into its tab.
  capture() {
    const tab = this.active;
    if (!tab) return;
    const h = this.editor.history;
    Object.assign(tab, {
      doc: this.editor.serialize(), name: this.docs.current.name, source: this.docs.current.source,
      dirty: h.dirty, undo: h.undoStack.slice(-KEEP_UNDO), redo: h.redoStack.slice(-KEEP_UNDO),
    });
  }

  // Loads `tab` into the canvas with its own history.
  show(tab) {
    this.activeId = tab.id;
    this.frozen.clear();
    const missing = this.editor.load(tab.doc);
    const h = this.editor.history;
    h.reset();
    h.undoStack = [...(tab.undo ?? [])];
    h.redoStack = [...(tab.redo ?? [])];
    if (tab.dirty) h.clean = null;
    this.docs.current = { name: tab.name ?? "", source: tab.source ?? null };
    if (!tab.doc.ui?.viewport) this.editor.fitView();
    this.docs.onLoaded(missing);
    h.onState();
    this.render();
  }

  switchTo(id) {
    const tab = this.list.find((t) => t.id === id);
    if (!tab || id === this.activeId) return;
    this.editor.history.checkpoint(true);
    this.capture();
    this.show(tab);
    this.persist();
  }

  // A new tab, shown: `doc` (an empty workflow by default) under `name`.
  open(doc = emptyDoc(), { name = "", source = null } = {}) {
    this.editor.history.checkpoint(true);
    this.capture();
    const tab = { id: newId(), doc, name, source, dirty: false, undo: [], redo: [] };
    const at = this.list.indexOf(this.active);
    this.list.splice(at < 0 ? this.list.length : at + 1, 0, tab);
    this.show(tab);
    this.persist();
    return tab.id;
  }

  // Closes a tab (its unsaved changes only after asking); the last one is emptied instead.
  close(id) {
    const tab = this.list.find((t) => t.id === id);
    if (!tab) return;
    if (id === this.activeId) this.capture();
    if (tab.dirty && !window.confirm(`Close “${tab.name || "untitled"}” without saving it?`)) return;
    if (this.list.length === 1) {
      Object.assign(tab, { doc: emptyDoc(), name: "", source: null, dirty: false, undo: [], redo: [] });
      this.show(tab);
    } else {
      const at = this.list.indexOf(tab);
      this.list.splice(at, 1);
      if (id === this.activeId) this.show(this.list[Math.min(at, this.list.length - 1)]);
    }
    this.persist();
  }

  // Keeps every tab in localStorage; when it is full, the shown tab's undo history alone.
  persist() {
    this.capture();
    const state = { active: this.activeId, tabs: this.list };
    const tabText = (t) => {
      if (t.id === this.activeId) return JSON.stringify(t);
      if (!this.frozen.has(t.id)) this.frozen.set(t.id, JSON.stringify(t));
      return this.frozen.get(t.id);
    };
    let text = `{"active":${JSON.stringify(this.activeId)},"tabs":[${this.list.map(tabText).join(",")}]}`;
    if (text === this.lastSaved) return;
    try {
      localStorage.setItem(TABS_KEY, text);
    } catch (err) {
      text = JSON.stringify({ ...state, tabs: this.list.map((t) => (t.id === this.activeId ? t : { ...t, undo: [], redo: [] })) });
      try {
        localStorage.setItem(TABS_KEY, text);
      } catch (again) {
        return; // storage disabled or full: the tabs live on until the page closes
      }
    }
    this.lastSaved = text;
    this.render();
  }

  // The stored tabs (or the single workflow stored by earlier versions), shown; false if none.
  restore() {
    let state = null;
    try {
      state = JSON.parse(localStorage.getItem(TABS_KEY) ?? "null");
      if (!state) {
        const legacy = JSON.parse(localStorage.getItem(LEGACY_KEY) ?? "null");
        if (legacy?.doc) state = { tabs: [{ id: newId(), doc: legacy.doc, name: legacy.name, source: legacy.source, dirty: Boolean(legacy.dirty) }] };
      }
    } catch (err) {
      state = null;
    }
    const tabs = (state?.tabs ?? []).filter((t) => t?.doc?.format === FORMAT && typeof t.id === "string");
    if (!tabs.length) return false;
    this.list = tabs;
    const active = tabs.find((t) => t.id === state.active) ?? tabs[0];
    try {
      this.show(active);
    } catch (err) { // a stored workflow this canvas cannot load: start over
      localStorage.removeItem(TABS_KEY);
      this.list = [];
      return false;
    }
    localStorage.removeItem(LEGACY_KEY);
    return true;
  }

  render() {
    if (!this.root) return;
    this.root.replaceChildren(...this.list.map((t) => {
      const shown = t.id === this.activeId;
      const dirty = shown ? this.editor.history.dirty : t.dirty;
      const label = (shown ? this.docs.current.name : t.name) || "untitled";
      return el("div", { class: `tab${shown ? " active" : ""}${dirty ? " dirty" : ""}`, role: "tab", "aria-selected": String(shown), dataset: { tabId: t.id }, title: label },
        el("button", { class: "tab-label", onclick: () => this.switchTo(t.id) }, label),
        el("button", { class: "tab-close", title: "Close this tab", "aria-label": `Close ${label}`, onclick: () => this.close(t.id) }, "×"));
    }), el("button", { class: "tab-new", id: "tab-new", title: "New tab", "aria-label": "New tab", onclick: () => this.open() }, "+"));
  }
}

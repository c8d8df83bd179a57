// The thin wrapper over litegraph: everything else in web/js talks to this class only, so the
// graph library could be swapped without touching the app. Node ids are strings here.

import { LGraph, LGraphCanvas, LiteGraph } from "../../lib/litegraph.es.js";
import { loadInto, serialize } from "./convert.js";
import { makeFragment, mergeFragment } from "./fragment.js";
import { History, isEditable } from "./history.js";
import { contentBottom, registerSchemas, SEED_CONTROLS } from "./node-types.js";
import { setTypeColours, typeColours } from "./theme.js";

const MAX_SEED = 2 ** 32;
// Below this zoom node text becomes unreadable; bigger graphs are shown from the top left.
const MIN_FIT_SCALE = 0.55;

function configureLiteGraph() {
  LiteGraph.release_link_on_empty_shows_menu = true;
  LiteGraph.search_hide_on_mouse_leave = false;
  LiteGraph.NODE_DEFAULT_BGCOLOR = "#20262e";
  LiteGraph.NODE_DEFAULT_COLOR = "#2c3440";
  LiteGraph.NODE_TITLE_COLOR = "#c9d1d9";
  LiteGraph.NODE_TEXT_COLOR = "#c9d1d9";
  LiteGraph.NODE_DEFAULT_BOXCOLOR = "#6b7280";
  LiteGraph.WIDGET_BGCOLOR = "#151a20";
  LiteGraph.WIDGET_OUTLINE_COLOR = "#3a4452";
  LiteGraph.WIDGET_TEXT_COLOR = "#e5e9f0";
  LiteGraph.WIDGET_SECONDARY_TEXT_COLOR = "#8b95a3";
  LiteGraph.LINK_COLOR = "#9aa4b2";
}

// What drawing a node does first: place its slots and widgets, growing it to fit them.
function layOut(node) {
  if (node.collapsed || !node._setConcreteSlots || !node.arrange) return;
  node._setConcreteSlots();
  node.arrange();
}

export class Editor {
  // `onChange()` after every edit; `onHistory()` when undo/redo or the unsaved state may change.
  constructor(canvasEl, { onChange = () => {}, onHistory = () => {} } = {}) {
    configureLiteGraph();
    this.onChange = () => {
      this.history.schedule();
      onChange();
    };
    this.socketTypes = {}; // /api/types, once registerTypes has run
    // litegraph asks this for every link, whether dragged or made by code.
    LiteGraph.isValidConnection = (out, inp) => this.canLink(out, inp);
    this.graph = new LGraph();
    this.canvas = new LGraphCanvas(canvasEl, this.graph);
    this.canvas.clear_background_color = "#12161b";
    this.canvas.render_canvas_border = false;
    this.canvas.show_info = false;
    this.canvas.low_quality_zoom_threshold = 0.5;
    this.types = new Set();
    this.schemas = {};
    this.imageCache = new Map();
    this.graph.start?.();
    this.trackEdits(onHistory);
  }

  // Snapshot history: litegraph's change hooks and the end of any pointer or key gesture ask for
  // a checkpoint, which waits while a pointer is held (a drag is one step) or a field has focus.
  trackEdits(onHistory) {
    this.pointerDown = false;
    this.history = new History({
      capture: () => this.snapshot(),
      restore: (text) => this.replace(JSON.parse(text)),
      busy: () => this.pointerDown || isEditable(document.activeElement),
      onState: onHistory,
    });
    const schedule = () => this.history.schedule();
    this.graph.onAfterChange = schedule;
    this.graph.onNodeAdded = schedule;
    this.graph.onNodeRemoved = schedule;
    window.addEventListener("pointerdown", () => { this.pointerDown = true; }, true);
    for (const type of ["pointerup", "pointercancel"]) {
      window.addEventListener(type, () => { this.pointerDown = false; schedule(); }, true);
    }
    for (const type of ["keyup", "click", "focusout", "change"]) window.addEventListener(type, schedule, true);
  }

  // The workflow as undo compares it: without the viewport (panning is no edit) and the name.
  snapshot() {
    const doc = this.serialize();
    delete doc.name;
    delete doc.ui.viewport;
    return JSON.stringify(doc);
  }

  // Loads `doc` in place of the graph, keeping the view, the name and shown outputs.
  replace(doc) {
    const offset = [...this.canvas.ds.offset];
    const scale = this.canvas.ds.scale;
    const before = new Map(this.graph._nodes.map((n) => [String(n.id), n]));
    const missing = this.load({ ...doc, name: this.name });
    this.canvas.ds.offset = offset;
    this.canvas.ds.scale = scale;
    for (const n of this.graph._nodes) {
      const old = before.get(String(n.id));
      if (old?.type !== n.type || !old.noodle || !n.noodle) continue;
      n.noodle.images = old.noodle.images;
      n.noodle.texts = old.noodle.texts;
    }
    this.canvas.setDirty(true, true);
    return missing;
  }

  selectedIds() {
    return this.graph._nodes.filter((n) => n.is_selected || this.canvas.selected_nodes?.[n.id]).map((n) => String(n.id));
  }

  // The selected nodes as a v1 fragment, or null when nothing is selected.
  copySelection() {
    const ids = this.selectedIds();
    return ids.length ? makeFragment(this.serialize(), ids) : null;
  }

  // Adds a fragment's nodes under new ids, their top left at `at` (graph coordinates; the
  // mouse by default), and selects them. `keepInputs` keeps links from nodes outside it.
  paste(fragment, { at = null, keepInputs = false } = {}) {
    this.history.checkpoint(true);
    const pos = at ?? [...(this.canvas.graph_mouse ?? [0, 0])];
    const { doc, ids } = mergeFragment(this.serialize(), fragment, { at: pos, keepInputs });
    this.replace(doc);
    this.canvas.selectItems(ids.map((id) => this.node(id)).filter(Boolean));
    this.onChange();
    return ids;
  }

  // `schemas` and `types` as /api/nodes and /api/types serve them. An input whose schema names
  // an `upload` kind gets a button that calls `onUpload(nodeId, inputName, kind)`.
  registerTypes(schemas, types, { onUpload = null } = {}) {
    this.setSocketTypes(types);
    this.schemas = schemas;
    const upload = onUpload && ((node, input, kind) => onUpload(String(node.id), input, kind));
    for (const t of registerSchemas(schemas, (node, name) => this.widgetChanged(node, name), upload)) this.types.add(t);
  }

  // Socket colours and link rules come from the server, so a node library can add types.
  setSocketTypes(types) {
    this.socketTypes = types;
    setTypeColours(types);
    const colours = typeColours();
    Object.assign(LGraphCanvas.link_type_colors, colours);
    this.canvas.default_connection_color_byType = colours;
    this.canvas.default_connection_color_byTypeOff = { ...colours };
    this.canvas.setDirty(true, true);
  }

  // Whether an output of type `out` may feed an input of type `inp`: the input type's served
  // `accepts` list decides, as on the server; "*" or an untyped slot links to anything.
  canLink(out, inp) {
    if (!out || !inp || out === "*" || inp === "*") return true;
    const accepts = Object.hasOwn(this.socketTypes, inp) ? this.socketTypes[inp].accepts : null;
    return out === inp || Boolean(accepts?.includes(out));
  }

  // Sets a widget's value (adding it to a choice's options when it is new).
  setWidget(id, name, value) {
    const w = this.node(id)?.widgets?.find((x) => x.name === name);
    if (!w) return false;
    if (w.type === "combo" && !w.options.values.includes(value)) w.options.values = [...w.options.values, value];
    w.value = value;
    this.canvas.setDirty(true, true);
    this.onChange();
    return true;
  }

  widgetChanged(node, name) {
    if (name) node.noodle.errors = node.noodle.errors.filter((e) => e.input !== name);
    this.onChange();
  }

  resize() {
    this.canvas.resize();
    this.canvas.setDirty(true, true);
  }

  node(id) {
    return this.graph.getNodeById(/^[1-9]\d*$/.test(String(id)) ? Number(id) : id) ?? this.graph.getNodeById(String(id));
  }

  // Adds a node of `type`; at `pos` in graph coordinates, or in the middle of the view.
  addNode(type, pos = null) {
    const node = LiteGraph.createNode(type);
    if (!node) throw new Error(`unknown node type ${type}`);
    if (pos) node.pos = [pos[0], pos[1]];
    else {
      const [x, y, w, h] = this.canvas.visible_area;
      const jitter = (this.graph._nodes.length % 6) * 24;
      node.pos = [x + w / 2 - node.size[0] / 2 + jitter, y + h / 3 + jitter];
    }
    this.graph.add(node);
    layOut(node);
    this.canvas.selectNode(node);
    this.onChange();
    return String(node.id);
  }

  // Links output `outName` of node `fromId` into input `inName` of `toId`; false if refused.
  connect(fromId, outName, toId, inName) {
    const a = this.node(fromId);
    const b = this.node(toId);
    const out = a?.findOutputSlot(outName) ?? -1;
    let slot = b?.findInputSlot(inName) ?? -1;
    if (slot < 0 && b?.widgetToInput) slot = b.widgetToInput(inName);
    if (out < 0 || slot < 0) return false;
    const link = a.connect(out, b, slot);
    this.onChange();
    return Boolean(link);
  }

  graphToScreen(x, y) {
    const rect = this.canvas.canvas.getBoundingClientRect();
    const [cx, cy] = this.canvas.ds.convertOffsetToCanvas([x, y]);
    return [rect.left + cx, rect.top + cy];
  }

  screenToGraph(x, y) {
    const rect = this.canvas.canvas.getBoundingClientRect();
    return this.canvas.ds.convertCanvasToOffset([x - rect.left, y - rect.top]);
  }

  // Screen position of a slot's dot (for tests and drag-and-drop hints).
  slotPosition(id, name, isInput) {
    const n = this.node(id);
    const idx = isInput ? n.findInputSlot(name) : n.findOutputSlot(name);
    if (idx < 0) return null;
    const p = n.getConnectionPos(isInput, idx);
    return this.graphToScreen(p[0], p[1]);
  }

  // Screen position of a widget: its middle, or its "less"/"more" arrow.
  widgetPosition(id, name, where = "middle") {
    const n = this.node(id);
    const w = n?.widgets?.find((x) => x.name === name);
    if (!w || w.y == null) return null;
    const x = where === "more" ? n.size[0] - 28 : where === "less" ? 28 : n.size[0] / 2;
    return this.graphToScreen(n.pos[0] + x, n.pos[1] + w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2);
  }

  // Screen position of the left end of a node's error badge (drawn above its title).
  badgePosition(id) {
    const n = this.node(id);
    return this.graphToScreen(n.pos[0] + 4, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT - 19);
  }

  load(doc) {
    const missing = loadInto(this.graph, this.canvas, doc);
    // Lay widgets out now rather than at the first frame, which may grow a node: a load is
    // then already what the canvas shows, and that growth is no edit to undo.
    for (const n of this.graph._nodes) layOut(n);
    this.canvas.setDirty(true, true);
    return missing;
  }

  serialize() {
    return serialize(this.graph, this.canvas);
  }

  get name() {
    return this.graph.noodleDoc?.name ?? "";
  }

  set name(value) {
    this.graph.noodleDoc ??= { name: "", description: "", extra: {}, ui: {} };
    this.graph.noodleDoc.name = value;
  }

  clear() {
    this.load({ format: "noodle.workflow", version: 1, name: "", nodes: {} });
  }

  bounds() {
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of this.graph._nodes) {
      x0 = Math.min(x0, n.pos[0]);
      y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
      x1 = Math.max(x1, n.pos[0] + n.size[0]);
      y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    return [x0, y0, x1, y1];
  }

  viewSize() {
    const el = this.canvas.canvas;
    return [el.width / (window.devicePixelRatio || 1), el.height / (window.devicePixelRatio || 1)];
  }

  // Whether every node lies inside the visible part of the canvas.
  allVisible() {
    if (!this.graph._nodes.length) return true;
    const [x0, y0, x1, y1] = this.bounds();
    const [w, h] = this.viewSize();
    const { offset, scale } = this.canvas.ds;
    return x0 >= -offset[0] && y0 >= -offset[1] && x1 <= w / scale - offset[0] && y1 <= h / scale - offset[1];
  }

  fitView() {
    if (!this.graph._nodes.length) return;
    const [x0, y0, x1, y1] = this.bounds();
    const [w, h] = this.viewSize();
    const fit = Math.min((w - 80) / (x1 - x0), (h - 80) / (y1 - y0));
    const scale = Math.min(1.1, Math.max(MIN_FIT_SCALE, fit));
    this.canvas.ds.scale = scale;
    if (fit >= MIN_FIT_SCALE) {
      this.canvas.ds.offset = [(w / scale - (x1 - x0)) / 2 - x0, (h / scale - (y1 - y0)) / 2 - y0];
    } else { // too big to fit legibly: show its top left corner, centred horizontally if it fits
      const left = x1 - x0 <= (w - 80) / scale ? (w / scale - (x1 - x0)) / 2 : 40 / scale;
      this.canvas.ds.offset = [left - x0, 40 / scale - y0];
    }
    this.canvas.setDirty(true, true);
  }

  // ----------------------------------------------------------------- run state
  forEachNode(fn) {
    for (const n of this.graph._nodes) if (n.noodle) fn(n);
    this.canvas.setDirty(true, true);
  }

  runStarted() {
    this.forEachNode((n) => Object.assign(n.noodle, { running: false, cached: false, progress: null, preview: null, errors: [] }));
  }

  setRunning(id) {
    this.forEachNode((n) => {
      n.noodle.running = id != null && String(n.id) === String(id);
      if (!n.noodle.running) n.noodle.progress = null;
    });
  }

  setProgress(id, step, total, previewUrl) {
    const n = this.node(id);
    if (!n?.noodle) return;
    n.noodle.progress = { step, total };
    if (previewUrl) n.noodle.preview = this.image(previewUrl, n);
    this.canvas.setDirty(true, true);
  }

  // Shows a node's outputs: `ui.images` as image URLs (made by `urlFor`) and `ui.text`.
  setOutputs(id, ui, urlFor) {
    const n = this.node(id);
    if (!n?.noodle) return;
    n.noodle.preview = null;
    n.noodle.progress = null;
    if (ui.images) n.noodle.images = ui.images.map((ref) => this.image(urlFor(ref), n));
    const texts = [...(ui.text ?? []), ...(ui.value ?? [])];
    if (texts.length) n.noodle.texts = texts;
    const needed = contentBottom(n) + 200;
    if (n.size[1] < needed) n.size[1] = needed;
    this.canvas.setDirty(true, true);
  }

  image(url, node) {
    const img = new Image();
    img.onload = () => this.canvas.setDirty(true, true);
    img.src = url;
    img.dataset.node = String(node.id);
    return img;
  }

  outputImages(id) {
    return (this.node(id)?.noodle?.images ?? []).map((img) => ({ src: img.src, loaded: img.complete && img.naturalWidth > 0 }));
  }

  // errors: [{node, input, code, message}] as the server reports them.
  setErrors(errors) {
    this.forEachNode((n) => { n.noodle.errors = []; });
    for (const e of errors) {
      const n = e.node != null ? this.node(e.node) : null;
      if (n?.noodle) n.noodle.errors.push(e);
    }
  }

  errorsOf(id) {
    return [...(this.node(id)?.noodle?.errors ?? [])];
  }

  // Applies each seed's "control after run" (randomize, increment, ...) once a run is queued.
  advanceSeeds() {
    for (const n of this.graph._nodes) {
      for (const control of n.widgets ?? []) {
        if (!control.noodleControlFor || !SEED_CONTROLS.includes(control.value)) continue;
        const w = n.widgets.find((x) => x.name === control.noodleControlFor);
        if (!w || w.disabled) continue;
        if (control.value === "randomize") w.value = Math.floor(Math.random() * MAX_SEED);
        else if (control.value === "increment") w.value = Math.min(w.options.max, w.value + 1);
        else if (control.value === "decrement") w.value = Math.max(w.options.min, w.value - 1);
      }
    }
    this.canvas.setDirty(true, true);
    this.onChange();
  }

  summary() {
    return this.graph._nodes.map((n) => ({ id: String(n.id), type: n.type, title: n.title,
      widgets: Object.fromEntries((n.widgets ?? []).map((w) => [w.name, w.value])),
      links: (n.inputs ?? []).filter((s) => s.link != null).map((s) => s.name) }));
  }
}

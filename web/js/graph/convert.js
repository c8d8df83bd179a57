// Workflow file v1 <-> litegraph graph. The file is the source of truth: node ids are strings,
// inputs are literals or {from, output}, UI data lives under each node's "ui" and the top-level
// "ui" (groups, viewport). Whatever this canvas does not understand (unknown keys, inputs the
// node type lacks, links it cannot draw, node types the server does not know) is kept and
// written back unchanged, so loading then saving never loses anything.

import { LGraphGroup, LiteGraph } from "../../lib/litegraph.es.js";
import { applyMode, isMode, modeOf } from "./modes.js";
import { MissingNode } from "./node-types.js";

export const FORMAT = "noodle.workflow";
const TOP_KEYS = new Set(["format", "version", "name", "description", "nodes", "ui"]);
const NODE_KEYS = new Set(["type", "inputs", "ui"]);

export function isLink(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v) && "from" in v;
}

function nodeIdOf(id) {
  return /^[1-9]\d{0,14}$/.test(id) ? Number(id) : id;
}

function round(v) {
  return Math.round(v * 10) / 10;
}

export function checkShape(doc) {
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) throw new Error("a workflow must be a JSON object");
  if (doc.format !== FORMAT) throw new Error(`not a Noodle workflow (format ${JSON.stringify(doc.format)})`);
  if (doc.version !== 1) throw new Error(`unsupported workflow version ${JSON.stringify(doc.version)}`);
  if (!doc.nodes || typeof doc.nodes !== "object" || Array.isArray(doc.nodes)) throw new Error('"nodes" must be an object');
}

// Fills `graph` from a v1 document; returns the list of unknown node types.
export function loadInto(graph, canvas, doc) {
  checkShape(doc);
  graph.clear();
  const missing = new Set();
  const byId = new Map();
  for (const [id, nd] of Object.entries(doc.nodes)) {
    let node = LiteGraph.createNode(nd.type);
    if (!node) {
      missing.add(nd.type);
      node = new MissingNode(`${nd.type} (unknown)`);
      node.type = nd.type;
    }
    node.id = nodeIdOf(id);
    const ui = nd.ui ?? {};
    // A mode the canvas knows becomes litegraph's; any other value is kept as written.
    const extra = Object.fromEntries(Object.entries(nd).filter(([k]) => !NODE_KEYS.has(k) && !(k === "mode" && isMode(nd.mode))));
    node.noodle.raw = { id, node: nd, extra, unknownInputs: {}, ui };
    if (Array.isArray(ui.pos)) node.pos = [Number(ui.pos[0]) || 0, Number(ui.pos[1]) || 0];
    if (Array.isArray(ui.size)) node.size = [Number(ui.size[0]) || node.size[0], Number(ui.size[1]) || node.size[1]];
    if (typeof ui.title === "string" && ui.title) node.title = ui.title;
    node.flags.collapsed = Boolean(ui.collapsed);
    applyMode(node, isMode(nd.mode) ? nd.mode : null);
    graph.add(node);
    byId.set(id, node);
    for (const [name, value] of Object.entries(nd.inputs ?? {})) {
      if (isLink(value)) continue;
      const w = node.widgets?.find((x) => x.name === name && x.noodleInput);
      if (w) {
        if (w.type === "combo" && !w.options.values.includes(value)) w.options.values = [...w.options.values, value];
        w.value = value;
      } else node.noodle.raw.unknownInputs[name] = value;
    }
    for (const w of node.widgets ?? []) {
      if (w.noodleControlFor && ui.control_after_run?.[w.noodleControlFor]) w.value = ui.control_after_run[w.noodleControlFor];
    }
  }
  for (const [id, nd] of Object.entries(doc.nodes)) {
    const node = byId.get(id);
    for (const [name, value] of Object.entries(nd.inputs ?? {})) {
      if (!isLink(value)) continue;
      const origin = byId.get(String(value.from));
      let slot = node.findInputSlot?.(name) ?? -1;
      if (slot < 0 && node.widgetToInput) slot = node.widgetToInput(name);
      const out = origin?.findOutputSlot?.(value.output) ?? -1;
      const link = slot >= 0 && out >= 0 ? origin.connect(out, node, slot) : null;
      if (!link) node.noodle.pending[name] = value; // kept as written; validation will say why
    }
  }
  graph.noodleDoc = {
    name: typeof doc.name === "string" ? doc.name : "",
    description: typeof doc.description === "string" ? doc.description : "",
    extra: Object.fromEntries(Object.entries(doc).filter(([k]) => !TOP_KEYS.has(k))),
    ui: Object.fromEntries(Object.entries(doc.ui ?? {}).filter(([k]) => k !== "groups" && k !== "viewport")),
  };
  for (const g of doc.ui?.groups ?? []) {
    if (!Array.isArray(g.bounding)) continue;
    const group = new LGraphGroup(g.title ?? "Group");
    group.configure({ id: -1, title: g.title ?? "Group", bounding: g.bounding, color: g.color ?? "#3f789e", font_size: g.font_size ?? 24, flags: {} });
    graph.add(group);
  }
  const vp = doc.ui?.viewport;
  if (vp && canvas) {
    if (Array.isArray(vp.offset)) canvas.ds.offset = [Number(vp.offset[0]) || 0, Number(vp.offset[1]) || 0];
    if (typeof vp.scale === "number" && vp.scale > 0) canvas.ds.scale = vp.scale;
  }
  graph.setDirtyCanvas(true, true);
  return [...missing];
}

function widgetValue(w) {
  const spec = w.noodleInput;
  if (spec.widget === "int" || spec.widget === "seed") return Math.round(Number(w.value));
  if (spec.widget === "float") return Number(w.value);
  if (spec.widget === "bool") return Boolean(w.value);
  return w.value;
}

function serializeNode(graph, node) {
  const raw = node.noodle?.raw;
  const mode = modeOf(node);
  if (node instanceof MissingNode && raw) {
    const { mode: _, ...rest } = raw.node;
    const kept = "mode" in raw.node && !isMode(raw.node.mode) ? { mode: raw.node.mode } : {}; // as written
    return { ...rest, ...kept, ...(mode ? { mode } : {}), ui: { ...(raw.node.ui ?? {}), pos: Array.from(node.pos, round), size: Array.from(node.size, round) } };
  }
  const inputs = { ...(raw?.unknownInputs ?? {}) };
  for (const w of node.widgets ?? []) if (w.noodleInput) inputs[w.name] = widgetValue(w);
  for (const [name, value] of Object.entries(node.noodle?.pending ?? {})) inputs[name] = value;
  for (const slot of node.inputs ?? []) {
    if (slot.link == null) continue;
    const link = graph.links.get ? graph.links.get(slot.link) : graph.links[slot.link];
    const origin = link && graph.getNodeById(link.origin_id);
    if (!origin) continue;
    inputs[slot.name] = { from: String(origin.id), output: origin.outputs[link.origin_slot].name };
  }
  const ui = { ...(raw?.ui ?? {}), pos: Array.from(node.pos, round), size: Array.from(node.size, round) };
  const defaultTitle = node.constructor.title;
  if (node.title && node.title !== defaultTitle) ui.title = node.title;
  else delete ui.title;
  ui.collapsed = Boolean(node.flags?.collapsed);
  const controls = {};
  for (const w of node.widgets ?? []) if (w.noodleControlFor) controls[w.noodleControlFor] = w.value;
  if (Object.keys(controls).length) ui.control_after_run = controls;
  return { type: node.type, inputs, ui, ...(raw?.extra ?? {}), ...(mode ? { mode } : {}) };
}

function byNaturalId(a, b) {
  const na = Number(a.id);
  const nb = Number(b.id);
  if (Number.isFinite(na) && Number.isFinite(nb)) return na - nb;
  return String(a.id).localeCompare(String(b.id));
}

export function serialize(graph, canvas) {
  const meta = graph.noodleDoc ?? { name: "", description: "", extra: {}, ui: {} };
  const nodes = {};
  for (const node of [...graph._nodes].sort(byNaturalId)) nodes[String(node.id)] = serializeNode(graph, node);
  const groups = graph._groups.map((g) => ({ title: g.title, bounding: [...g._bounding].map(round), color: g.color }));
  const doc = { format: FORMAT, version: 1, name: meta.name, description: meta.description, nodes,
                ui: { ...meta.ui, groups, viewport: { offset: Array.from(canvas.ds.offset, round), scale: round(canvas.ds.scale * 100) / 100 } } };
  return { ...doc, ...meta.extra };
}

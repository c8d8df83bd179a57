// Copy and paste as v1 workflow fragments: the copied nodes, written exactly as in a workflow
// file, so a fragment survives the system clipboard and can be pasted into another page.
// Links from nodes outside the copy are kept in the fragment; a plain paste drops them and
// "paste with inputs" keeps those whose source node exists where it is pasted.

import { FORMAT, isLink } from "./convert.js";

function numericIds(nodes) {
  return Object.keys(nodes).map(Number).filter((n) => Number.isInteger(n) && n > 0);
}

// The nodes `ids` of a v1 document, as a fragment document.
export function makeFragment(doc, ids) {
  const wanted = new Set(ids.map(String));
  const nodes = {};
  for (const [id, nd] of Object.entries(doc.nodes)) if (wanted.has(id)) nodes[id] = structuredClone(nd);
  return { format: FORMAT, version: 1, nodes };
}

// A fragment from clipboard text, or null when the text is not one.
export function parseFragment(text) {
  if (!text) return null;
  try {
    const doc = JSON.parse(text);
    const ok = doc?.format === FORMAT && doc.version === 1 && doc.nodes && typeof doc.nodes === "object"
      && !Array.isArray(doc.nodes) && Object.keys(doc.nodes).length > 0;
    return ok ? doc : null;
  } catch (err) {
    return null;
  }
}

// Top left corner of the fragment's nodes.
function corner(nodes) {
  const pos = Object.values(nodes).map((nd) => (Array.isArray(nd.ui?.pos) ? nd.ui.pos : [0, 0]));
  return [Math.min(...pos.map((p) => Number(p[0]) || 0)), Math.min(...pos.map((p) => Number(p[1]) || 0))];
}

// `doc` with the fragment's nodes added under fresh ids, their top left corner at `at`.
// Returns the new document and the new ids.
export function mergeFragment(doc, fragment, { at, keepInputs = false }) {
  const merged = structuredClone(doc);
  let next = Math.max(0, ...numericIds(merged.nodes)) + 1;
  const renamed = new Map();
  for (const id of Object.keys(fragment.nodes)) {
    while (Object.hasOwn(merged.nodes, String(next))) next += 1;
    renamed.set(id, String(next));
    next += 1;
  }
  const [x0, y0] = corner(fragment.nodes);
  for (const [id, source] of Object.entries(fragment.nodes)) {
    const nd = structuredClone(source);
    const inputs = {};
    for (const [name, value] of Object.entries(nd.inputs ?? {})) {
      if (!isLink(value)) inputs[name] = value;
      else if (renamed.has(String(value.from))) inputs[name] = { ...value, from: renamed.get(String(value.from)) };
      else if (keepInputs && Object.hasOwn(doc.nodes, String(value.from))) inputs[name] = value;
    }
    nd.inputs = inputs;
    const pos = Array.isArray(nd.ui?.pos) ? nd.ui.pos : [0, 0];
    nd.ui = { ...(nd.ui ?? {}), pos: [at[0] + (Number(pos[0]) || 0) - x0, at[1] + (Number(pos[1]) || 0) - y0] };
    merged.nodes[renamed.get(id)] = nd;
  }
  return { doc: merged, ids: [...renamed.values()] };
}

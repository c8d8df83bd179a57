// The node palette: node types grouped by category, with a filter box. Click adds a node in
// the middle of the view; dragging an entry onto the canvas drops it where it is released.

import { typeColour } from "./graph/theme.js";

export const DRAG_MIME = "application/x-noodle-node";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

export function buildPalette(root, schemas, onAdd) {
  root.replaceChildren();
  const filter = el("input", { type: "search", placeholder: "Filter nodes…", class: "palette-filter", "aria-label": "Filter nodes" });
  const list = el("div", { class: "palette-list" });
  root.append(filter, list);
  const byCategory = new Map();
  for (const s of Object.values(schemas)) {
    const cat = s.category || "misc";
    if (!byCategory.has(cat)) byCategory.set(cat, []);
    byCategory.get(cat).push(s);
  }
  for (const cat of [...byCategory.keys()].sort()) {
    const items = byCategory.get(cat).sort((a, b) => (a.display_name || a.name).localeCompare(b.display_name || b.name));
    const details = el("details", { class: "palette-category", open: "" }, el("summary", {}, cat));
    for (const s of items) {
      const dots = el("span", { class: "dots" }, ...s.outputs.slice(0, 5).map((o) => {
        const d = el("i", { title: o.type });
        d.style.background = typeColour(o.type);
        return d;
      }));
      const item = el("button", {
        class: "palette-item", draggable: "true", title: s.description || s.name,
        dataset: { type: s.name, search: `${s.name} ${s.display_name} ${cat}`.toLowerCase() },
        onclick: () => onAdd(s.name, null),
        ondragstart: (ev) => { ev.dataTransfer.setData(DRAG_MIME, s.name); ev.dataTransfer.effectAllowed = "copy"; },
      }, el("span", { class: "label" }, s.display_name || s.name), dots);
      details.append(item);
    }
    list.append(details);
  }
  filter.addEventListener("input", () => {
    const q = filter.value.trim().toLowerCase();
    for (const d of list.querySelectorAll(".palette-category")) {
      let any = false;
      for (const b of d.querySelectorAll(".palette-item")) {
        const hit = !q || b.dataset.search.includes(q);
        b.hidden = !hit;
        any ||= hit;
      }
      d.hidden = !any;
      if (q) d.open = true;
    }
  });
}

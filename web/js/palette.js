// The node palette: node types grouped by category, with a filter box. Click adds a node in
// the middle of the view; dragging an entry onto the canvas drops it where it is released.

import { el } from "./dom.js";
import { typeColour } from "./graph/theme.js";

export const DRAG_MIME = "application/x-noodle-node";

function paletteItem(s, onAdd) {
  const dots = el("span", { class: "dots" }, ...s.outputs.slice(0, 5).map((o) => {
    const d = el("i", { title: o.type });
    d.style.background = typeColour(o.type);
    return d;
  }));
  return el("button", {
    class: "palette-item", draggable: "true", // its description shows in a tooltip (node-tips.js)
    dataset: { type: s.name, search: `${s.name} ${s.display_name} ${s.category || ""}`.toLowerCase() },
    onclick: () => onAdd(s.name, null),
    ondragstart: (ev) => { ev.dataTransfer.setData(DRAG_MIME, s.name); ev.dataTransfer.effectAllowed = "copy"; },
  }, el("span", { class: "label" }, s.display_name || s.name), dots);
}

export function buildPalette(root, schemas, onAdd) {
  root.replaceChildren();
  const filter = el("input", { type: "search", placeholder: "Filter nodes…", class: "palette-filter", "aria-label": "Filter nodes" });
  const list = el("div", { class: "palette-list" });
  root.append(filter, list);
  // Categories nest on "/" (ComfyUI/sampling/...): one group per first segment, one
  // sub-group per rest. Big packs start folded so the library's own groups stay in view.
  const groups = new Map();
  for (const s of Object.values(schemas)) {
    const [top, ...rest] = (s.category || "misc").split("/");
    if (!groups.has(top)) groups.set(top, new Map());
    const subs = groups.get(top);
    const sub = rest.join("/");
    if (!subs.has(sub)) subs.set(sub, []);
    subs.get(sub).push(s);
  }
  const byName = (a, b) => a.localeCompare(b, undefined, { sensitivity: "base" });
  for (const top of [...groups.keys()].sort(byName)) {
    const subs = groups.get(top);
    const nested = [...subs.keys()].some((k) => k !== "");
    const details = el("details", { class: "palette-category", ...(nested ? { "data-folded": "1" } : { open: "" }) },
      el("summary", {}, top));
    for (const sub of [...subs.keys()].sort(byName)) {
      const target = sub === "" ? details
        : el("details", { class: "palette-category palette-sub", open: "" }, el("summary", {}, sub));
      for (const s of subs.get(sub).sort((a, b) => byName(a.display_name || a.name, b.display_name || b.name))) {
        target.append(paletteItem(s, onAdd));
      }
      if (target !== details) details.append(target);
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
      d.open = q ? true : d.dataset.folded !== "1";
    }
  });
}

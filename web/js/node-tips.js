// A node's help in a tooltip: its description (the node function's docstring, served by
// /api/nodes) beside a palette entry or a search box result, after a short hover, and beside
// the search result the arrow keys select. The browser's own `title` tooltip would clip a
// long docstring and cannot be styled, so this one is drawn by the page.

import { el } from "./dom.js";

const DELAY_MS = 250;
const ITEMS = ".palette-item, .lite-search-item";
const GAP = 8;

// The node type an entry stands for (the search box stores it `escape`d).
function typeOf(item) {
  const raw = item.dataset.type ?? "";
  return item.classList.contains("lite-search-item") ? unescape(raw) : raw;
}

// Beside `rect`, on its right unless that leaves the window, and inside the window.
function place(tip, rect) {
  const { width, height } = tip.getBoundingClientRect();
  let left = rect.right + GAP;
  if (left + width > window.innerWidth - GAP) left = Math.max(GAP, rect.left - width - GAP);
  const top = Math.min(Math.max(GAP, rect.top), window.innerHeight - height - GAP);
  tip.style.left = `${Math.round(left)}px`;
  tip.style.top = `${Math.round(Math.max(GAP, top))}px`;
}

export function bindNodeTips(schemas) {
  const tip = el("div", { id: "node-tip", class: "node-tip", role: "tooltip", hidden: true });
  document.body.append(tip);
  let timer = null;
  let anchor = null;

  const hide = () => {
    clearTimeout(timer);
    anchor = null;
    tip.hidden = true;
  };
  const show = (item) => {
    const s = schemas[typeOf(item)];
    if (!s || !item.isConnected) return hide();
    anchor = item;
    tip.dataset.type = s.name;
    tip.replaceChildren(
      el("div", { class: "node-tip-title" }, s.display_name || s.name),
      el("div", { class: "node-tip-type muted" }, [s.name, s.category].filter(Boolean).join(" · ")),
      el("div", { class: "node-tip-text" }, s.description || "No description."));
    tip.hidden = false;
    place(tip, item.getBoundingClientRect());
    return undefined;
  };

  document.addEventListener("mouseover", (e) => {
    const item = e.target.closest?.(ITEMS) ?? null;
    if (item === anchor) return;
    clearTimeout(timer);
    if (!item) return hide();
    timer = setTimeout(() => show(item), tip.hidden ? DELAY_MS : 0);
    return undefined;
  });
  document.addEventListener("mouseout", (e) => { if (!e.relatedTarget) hide(); });
  document.addEventListener("pointerdown", hide, true);
  document.addEventListener("keydown", (e) => {
    hide();
    if (!e.target.closest?.(".litesearchbox") || !["ArrowUp", "ArrowDown"].includes(e.key)) return;
    // litegraph moves its selection on this same key: look once it has.
    setTimeout(() => {
      const selected = document.querySelector(".litesearchbox .lite-search-item.selected");
      if (selected) show(selected);
    }, 0);
  }, true);
}

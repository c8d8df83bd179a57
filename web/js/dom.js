// Building DOM elements in one expression: el("button", {class: "small", onclick: f}, "Text").
// Attributes named on* become listeners, `dataset` fills data-*, null or false skips one.

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  e.append(...children.filter((c) => c != null && c !== false));
  return e;
}


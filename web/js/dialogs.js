// Small modal dialogs (ask for a name, pick a workflow) and transient toasts.

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

export function toast(message, kind = "info", ms = 4000) {
  const box = document.getElementById("toasts");
  const t = el("div", `toast ${kind}`, message);
  box.append(t);
  setTimeout(() => t.remove(), ms);
  return t;
}

// An empty dialog over the page, closed by Escape or a click beside it.
export function modal(title) {
  const overlay = el("div", "modal-overlay");
  const box = el("div", "modal");
  box.setAttribute("role", "dialog");
  box.append(el("h2", null, title));
  overlay.append(box);
  document.body.append(overlay);
  // Escape from anywhere, not only from a focused control inside (a click on text moves the
  // focus out of the dialog).
  const onKey = (e) => { if (e.key === "Escape") close(); };
  const close = () => {
    overlay.remove();
    document.removeEventListener("keydown", onKey);
  };
  overlay.addEventListener("pointerdown", (e) => { if (e.target === overlay) close(); });
  document.addEventListener("keydown", onKey);
  return { overlay, box, close };
}

// Resolves to the entered text, or null when cancelled.
export function askName(title, initial = "") {
  return new Promise((resolve) => {
    const { box, close } = modal(title);
    const input = el("input", "modal-input");
    input.value = initial;
    input.setAttribute("aria-label", title);
    const ok = el("button", "primary", "OK");
    const cancel = el("button", null, "Cancel");
    const row = el("div", "modal-buttons");
    row.append(cancel, ok);
    box.append(input, row);
    const done = (v) => { close(); resolve(v); };
    ok.addEventListener("click", () => done(input.value.trim() || null));
    cancel.addEventListener("click", () => done(null));
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") done(input.value.trim() || null);
      if (e.key === "Escape") done(null);
    });
    input.focus();
    input.select();
  });
}

// A list of workflows to open; `actions` = {open(w), rename(w), remove(w)}.
export function pickWorkflow(workflows, actions) {
  const { box, close } = modal("Open workflow");
  const sections = [["Your workflows", workflows.filter((w) => w.source === "user")],
                    ["Examples", workflows.filter((w) => w.source === "shipped")]];
  for (const [label, items] of sections) {
    box.append(el("h3", null, label));
    if (!items.length) box.append(el("p", "muted", "None yet."));
    const list = el("ul", "workflow-list");
    for (const w of items) {
      const li = el("li");
      const open = el("button", "link", w.name);
      open.title = w.description || w.name;
      open.dataset.workflow = `${w.source}:${w.name}`;
      open.addEventListener("click", () => { close(); actions.open(w); });
      li.append(open, el("span", "muted", w.description || ""));
      if (w.source === "user") {
        const rn = el("button", "small", "Rename");
        rn.addEventListener("click", () => { close(); actions.rename(w); });
        const rm = el("button", "small danger", "Delete");
        rm.addEventListener("click", () => { close(); actions.remove(w); });
        li.append(rn, rm);
      }
      list.append(li);
    }
    box.append(list);
  }
  const row = el("div", "modal-buttons");
  const cancel = el("button", null, "Close");
  cancel.addEventListener("click", close);
  row.append(cancel);
  box.append(row);
}

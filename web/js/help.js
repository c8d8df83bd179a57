// The keyboard and mouse reference (opened with "?"), and the keys that open panels: Q shows
// or hides the queue and history, M the models browser, "?" this list. Like every shortcut here they never act
// while a text field has the focus, nor while a dialog or the image viewer is open.
//
// The list is written down rather than collected from the handlers because half of the
// bindings are litegraph's own (select all, delete, pan, zoom); keep it in step with
// shortcuts.js, main.js and the viewer when a binding changes.

import { modal } from "./dialogs.js";
import { el } from "./dom.js";
import { ARRANGE_KEYS } from "./graph/arrange.js";
import { isEditable } from "./graph/history.js";

export const KEY_BINDINGS = [
  ["Workflow", [
    ["Ctrl+Enter", "Queue the workflow"],
    ["Ctrl+S", "Save the workflow"],
  ]],
  ["Editing", [
    ["Ctrl+Z", "Undo"],
    ["Ctrl+Shift+Z, Ctrl+Y", "Redo"],
    ["Ctrl+C", "Copy the selected nodes (as workflow JSON, also to other tabs)"],
    ["Ctrl+V", "Paste at the mouse"],
    ["Ctrl+Shift+V", "Paste, keeping the links that came into the copied nodes"],
    ["Ctrl+B", "Bypass the selected nodes (again: make them active)"],
    ["Ctrl+M", "Mute the selected nodes (again: make them active)"],
    ["Ctrl+A", "Select every node"],
    ["Delete, Backspace", "Delete the selected nodes"],
  ]],
  ["Canvas", [
    ["Double-click", "Search for a node to add (↑ ↓ choose, Enter adds)"],
    ["Drag the background, Space+drag", "Pan"],
    ["Wheel", "Zoom"],
    ["Ctrl+drag", "Select the nodes in a rectangle (Ctrl+Shift+drag adds to the selection)"],
    ["Shift+click", "Add a node to the selection"],
    ...ARRANGE_KEYS.map(([combo, , what]) => [combo, what]),
    ["Right-click the background", "The same actions for the selection, and Add Group"],
    ["Drop a link on the background", "Menu of nodes to connect (with Shift: the search box)"],
    ["Escape", "Close the search box, or drop the link being dragged"],
  ]],
  ["Panels", [
    ["Q", "Show or hide the queue and history"],
    ["M", "Show or hide the models browser (drag a model onto the canvas to load it)"],
    ["?", "This list"],
    ["← →", "Image viewer: previous, next image (Home, End: first, last)"],
    ["Escape", "Close the image viewer or a dialog"],
  ]],
];

function keys(text) {
  // "Ctrl+Shift+Z, Ctrl+Y" -> <kbd>Ctrl</kbd>+<kbd>Shift</kbd>+<kbd>Z</kbd>, ...
  const parts = [];
  text.split(", ").forEach((combo, i) => {
    if (i) parts.push(", ");
    combo.split("+").forEach((k, j) => {
      if (j) parts.push("+");
      parts.push(el("kbd", {}, k));
    });
  });
  return parts;
}

export function showShortcuts() {
  if (document.getElementById("shortcuts")) return;
  const { box, close } = modal("Keyboard and mouse");
  box.id = "shortcuts";
  box.classList.add("shortcuts");
  for (const [group, rows] of KEY_BINDINGS) {
    box.append(el("h3", {}, group), el("table", { class: "shortcut-table" },
      ...rows.map(([combo, what]) => el("tr", { dataset: { keys: combo } },
        el("td", { class: "shortcut-keys" }, ...keys(combo)), el("td", {}, what)))));
  }
  box.append(el("p", { class: "muted" }, "On a Mac, ⌘ works in place of Ctrl for queueing, saving, undo, redo, copy, paste, bypass and mute."));
  const done = el("button", { class: "primary", onclick: close }, "Close");
  box.append(el("div", { class: "modal-buttons" }, done));
  done.focus({ preventScroll: true }); // Escape closes from inside the dialog
}

// Q and "?" (no Ctrl, Alt or ⌘), unless the keys are text for a field or a dialog is up.
export function bindPanelKeys({ toggleSidebar, toggleModels = () => {} }) {
  window.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || isEditable(e.target)) return;
    if (document.querySelector(".modal-overlay, .litesearchbox, .graphdialog")) return;
    if (e.key === "?") showShortcuts();
    else if (e.key === "q" || e.key === "Q") toggleSidebar();
    else if (e.key === "m" || e.key === "M") toggleModels();
    else return;
    e.preventDefault();
  });
}

// Arranging the selected nodes: align their left or top edges, spread them evenly, and put a
// group around them. Every action is one undo step (the editor checkpoints after it). Groups
// are litegraph's and travel in the workflow's `ui.groups` (see convert.js).

import { LGraphGroup, LiteGraph } from "../../lib/litegraph.es.js";
import { isEditable } from "./history.js";

const GROUP_PADDING = 20;

function selectedNodes(editor) {
  const ids = new Set(editor.selectedIds());
  return editor.graph._nodes.filter((n) => ids.has(String(n.id)));
}

// Moves `nodes` so that they line up: "left" and "top" align those edges with the leftmost or
// topmost node; "horizontal" and "vertical" spread them with equal gaps between first and last.
export function alignNodes(nodes, how) {
  if (nodes.length < 2) return false;
  if (how === "left" || how === "top") {
    const axis = how === "left" ? 0 : 1;
    const edge = Math.min(...nodes.map((n) => n.pos[axis]));
    for (const n of nodes) n.pos[axis] = edge;
    return true;
  }
  const axis = how === "horizontal" ? 0 : 1;
  const sorted = [...nodes].sort((a, b) => a.pos[axis] - b.pos[axis]);
  const first = sorted[0].pos[axis];
  const last = sorted.at(-1);
  const span = last.pos[axis] + last.size[axis] - first;
  const total = sorted.reduce((sum, n) => sum + n.size[axis], 0);
  const gap = Math.max(0, (span - total) / (sorted.length - 1));
  let at = first;
  for (const n of sorted) {
    n.pos[axis] = at;
    at += n.size[axis] + gap;
  }
  return true;
}

// A group around `nodes` (titles included), added to the graph; returns it.
export function groupNodes(graph, nodes, title = "Group") {
  if (!nodes.length) return null;
  const th = LiteGraph.NODE_TITLE_HEIGHT;
  const x0 = Math.min(...nodes.map((n) => n.pos[0])) - GROUP_PADDING;
  const y0 = Math.min(...nodes.map((n) => n.pos[1] - th)) - GROUP_PADDING - 34; // room for the group's title
  const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + GROUP_PADDING;
  const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + GROUP_PADDING;
  const group = new LGraphGroup(title);
  group.configure({ id: -1, title, bounding: [x0, y0, x1 - x0, y1 - y0], color: group.color ?? "#3f789e", font_size: 24, flags: {} });
  graph.add(group);
  return group;
}

// Runs an arrange action on the selection and records it; false when it did nothing.
export function arrangeSelection(editor, action) {
  const nodes = selectedNodes(editor);
  const done = action === "group" ? groupNodes(editor.graph, nodes) !== null : alignNodes(nodes, action);
  if (!done) return false;
  editor.canvas.setDirty(true, true);
  editor.onChange();
  editor.history.checkpoint(true);
  return true;
}

export const ARRANGE_KEYS = [
  ["Alt+L", "left", "Align the selected nodes' left edges"],
  ["Alt+T", "top", "Align the selected nodes' top edges"],
  ["Alt+H", "horizontal", "Spread the selected nodes evenly, left to right"],
  ["Alt+V", "vertical", "Spread the selected nodes evenly, top to bottom"],
  ["Ctrl+G", "group", "Put a group around the selected nodes"],
];

function actionFor(e) {
  if ((e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey && e.key.toLowerCase() === "g") return "group";
  if (!e.altKey || e.ctrlKey || e.metaKey) return null;
  // By the key's place (e.code): Alt changes the character on some layouts.
  return { KeyL: "left", KeyT: "top", KeyH: "horizontal", KeyV: "vertical" }[e.code] ?? null;
}

// The keys above, and the same actions in the canvas's right-click menu.
export function bindArrange(editor) {
  window.addEventListener("keydown", (e) => {
    if (isEditable(e.target) || document.querySelector(".modal-overlay")) return;
    const action = actionFor(e);
    if (!action || !editor.selectedIds().length) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    arrangeSelection(editor, action);
  }, true);
  const canvasMenu = editor.canvas.getCanvasMenuOptions.bind(editor.canvas);
  editor.canvas.getCanvasMenuOptions = () => {
    const options = canvasMenu();
    const count = editor.selectedIds().length;
    if (!count) return options;
    const item = (content, action) => ({ content, callback: () => arrangeSelection(editor, action) });
    return [...options, null,
      ...(count > 1 ? [item("Align left edges", "left"), item("Align top edges", "top"),
        item("Spread horizontally", "horizontal"), item("Spread vertically", "vertical")] : []),
      item("Group the selected nodes", "group")];
  };
}

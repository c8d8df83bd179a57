// Bypassed and muted nodes. The file stores `"mode": "bypass" | "mute"` (absent when active);
// litegraph keeps the same as its node `mode` number. The engine does the skipping: a bypassed
// node passes its first input of the matching type through, a muted one is left out with what
// only it feeds. Here they are only marked and tinted so they stand out on the canvas.

import { LiteGraph } from "../../lib/litegraph.es.js";

const LG_MODES = { bypass: 4, mute: 2 }; // litegraph's BYPASS and NEVER
const TINTS = {
  bypass: { color: "#5b2a6e", bgcolor: "#3b1f4a" },
  mute: { color: "#3a3a3a", bgcolor: "#262626" },
};

export function isMode(value) {
  return Object.hasOwn(LG_MODES, value);
}

// The file's mode of a litegraph node, or null when it is active.
export function modeOf(node) {
  return Object.keys(LG_MODES).find((m) => LG_MODES[m] === node.mode) ?? null;
}

// Sets a node's mode ("bypass", "mute" or null for active) and its tint.
export function applyMode(node, mode) {
  node.noodle ??= {};
  if (!("plainColors" in node.noodle)) node.noodle.plainColors = { color: node.color, bgcolor: node.bgcolor };
  const colors = isMode(mode) ? TINTS[mode] : node.noodle.plainColors;
  node.mode = isMode(mode) ? LG_MODES[mode] : LiteGraph.ALWAYS;
  for (const key of ["color", "bgcolor"]) {
    if (colors[key] === undefined) delete node[key];
    else node[key] = colors[key];
  }
}

// Ctrl+B / Ctrl+M: puts every node in `mode`, or back to active when all already were.
export function toggleMode(nodes, mode) {
  if (!nodes.length) return false;
  const next = nodes.every((n) => modeOf(n) === mode) ? null : mode;
  for (const node of nodes) applyMode(node, next);
  return true;
}

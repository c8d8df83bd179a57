// Colours of socket types and of node states, shared by the canvas and the palette. Socket
// colours come from the server (/api/types): node libraries register their own types.

export const DEFAULT_TYPE_COLOUR = "#9aa4b2";

export const STATE_COLOURS = {
  running: "#4ade80",
  cached: "#60a5fa",
  error: "#f43f5e",
  progress: "#4ade80",
};

let colours = new Map();

// `types`: the server's socket types by name ({name, color, accepts, description}).
export function setTypeColours(types) {
  colours = new Map(Object.entries(types).map(([name, t]) => [name, t.color || DEFAULT_TYPE_COLOUR]));
}

// Every served colour by type name, as a plain object for litegraph's colour tables.
export function typeColours() {
  return Object.fromEntries(colours);
}

export function typeColour(type) {
  return colours.get(type) ?? DEFAULT_TYPE_COLOUR;
}

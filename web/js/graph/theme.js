// Colours of socket types and of node states, shared by the canvas and the palette.

export const TYPE_COLOURS = {
  TOKENIZER: "#d08770",
  TEXT_ENCODER: "#ebcb8b",
  UNET: "#b48ead",
  VAE: "#ef6f6c",
  SCHEDULER: "#5fb3b3",
  TOKENS: "#a3be8c",
  CONDITIONING: "#f0a35e",
  LATENT: "#f48fb1",
  IMAGE: "#64b5f6",
  MASK: "#4db6ac",
  INT: "#8fd3a8",
  FLOAT: "#b5d98a",
  STRING: "#c5cbd6",
  BOOLEAN: "#e57373",
};

export const STATE_COLOURS = {
  running: "#4ade80",
  cached: "#60a5fa",
  error: "#f43f5e",
  progress: "#4ade80",
};

export function typeColour(type) {
  return TYPE_COLOURS[type] ?? "#9aa4b2";
}

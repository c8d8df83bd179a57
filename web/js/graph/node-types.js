// Turns the server's node schemas into litegraph node classes: sockets, widgets, and the
// drawing of run state (running outline, progress, previews, output images, error badges).

import { LGraphNode, LiteGraph } from "../../lib/litegraph.es.js";
import { STATE_COLOURS, typeColour } from "./theme.js";

export const SEED_CONTROLS = ["fixed", "increment", "decrement", "randomize"];
// More buttons beside an upload button, by upload kind: [{label, run(node, input)}].
export const uploadExtras = {};
const MIN_WIDTH = 260;
const IMAGE_MIN_HEIGHT = 220;

function decimalsOf(step) {
  if (!step || step >= 1) return 0;
  return Math.min(6, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
}

// One widget for an input with a widget spec; `changed(name)` tells the editor.
function addInputWidget(node, spec, changed) {
  const cb = () => changed(node, spec.name);
  let w;
  switch (spec.widget) {
    case "int":
    case "seed":
      w = node.addWidget("number", spec.name, spec.default ?? 0, cb, {
        min: spec.min ?? -Number.MAX_SAFE_INTEGER, max: spec.max ?? Number.MAX_SAFE_INTEGER,
        step2: spec.step ?? 1, precision: 0, round: 1,
      });
      break;
    case "float":
      w = node.addWidget("number", spec.name, spec.default ?? 0, cb, {
        min: spec.min ?? -Infinity, max: spec.max ?? Infinity,
        step2: spec.step ?? 0.01, precision: decimalsOf(spec.step ?? 0.01), round: spec.step ?? 0.01,
      });
      break;
    case "choice": {
      const values = [...(spec.options ?? [])];
      if (spec.default && !values.includes(spec.default)) values.unshift(spec.default);
      w = node.addWidget("combo", spec.name, spec.default ?? values[0] ?? "", cb, { values });
      break;
    }
    case "bool":
      w = node.addWidget("toggle", spec.name, Boolean(spec.default), cb, { on: "true", off: "false" });
      break;
    default:
      w = node.addWidget("text", spec.name, spec.default ?? "", cb, { multiline: Boolean(spec.multiline) });
      if (spec.multiline) makeTextArea(w);
  }
  w.noodleInput = spec;
  if (spec.tooltip) w.tooltip = spec.tooltip;
  if (spec.widget === "seed") {
    const control = node.addWidget("combo", "control after run",
      SEED_CONTROLS.includes(spec.control_after_run) ? spec.control_after_run : "fixed",
      () => changed(node, null), { values: SEED_CONTROLS });
    control.noodleControlFor = spec.name;
    control.serialize = false;
  }
  return w;
}

const TEXTAREA_HEIGHT = 84;

function wrapLines(ctx, text, width, maxLines) {
  const lines = [];
  for (const para of String(text).split("\n")) {
    let line = "";
    for (const word of para.split(/(\s+)/)) {
      if (line && ctx.measureText(line + word).width > width) {
        lines.push(line.trimEnd());
        line = word.trimStart();
      } else line += word;
      if (lines.length >= maxLines) return lines;
    }
    lines.push(line);
    if (lines.length >= maxLines) return lines;
  }
  return lines;
}

// A multi-line text widget: taller, showing the wrapped text; a click opens the editor.
function makeTextArea(w) {
  w.computeSize = (width) => [width ?? MIN_WIDTH, TEXTAREA_HEIGHT];
  w.drawWidget = function drawTextArea(ctx, { width }) {
    const x = 15;
    const h = (this.computedHeight ?? TEXTAREA_HEIGHT) - 6;
    ctx.save();
    ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
    ctx.strokeStyle = LiteGraph.WIDGET_OUTLINE_COLOR;
    roundRect(ctx, x, this.y, width - 2 * x, h, 8);
    ctx.fill();
    ctx.stroke();
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
    ctx.fillText(this.label ?? this.name, x + 10, this.y + 14);
    ctx.font = "13px system-ui, sans-serif";
    ctx.fillStyle = this.value ? LiteGraph.WIDGET_TEXT_COLOR : LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
    const lines = wrapLines(ctx, this.value || "(empty)", width - 2 * x - 20, Math.floor((h - 20) / 16));
    lines.forEach((line, i) => ctx.fillText(line, x + 10, this.y + 32 + i * 16));
    ctx.restore();
  };
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, r);
}

function fitImage(ctx, img, x, y, w, h, crisp = true) {
  if (!img?.complete || !img.naturalWidth || w < 8 || h < 8) return;
  const scale = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const dw = img.naturalWidth * scale;
  const dh = img.naturalHeight * scale;
  const smooth = ctx.imageSmoothingEnabled;
  ctx.imageSmoothingEnabled = !crisp || scale < 2; // enlarged outputs: crisp pixels, not blur
  ctx.drawImage(img, x + (w - dw) / 2, y + (h - dh) / 2, dw, dh);
  ctx.imageSmoothingEnabled = smooth;
}

// Where the node's own content (slots + widgets) ends, in node-local coordinates.
export function contentBottom(node) {
  let bottom = (Math.max(node.inputs?.length ?? 0, node.outputs?.length ?? 0)) * LiteGraph.NODE_SLOT_HEIGHT + 6;
  for (const w of node.widgets ?? []) {
    if (w.y != null) bottom = Math.max(bottom, w.y + (w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT) + 4);
  }
  return bottom;
}

class NoodleNode extends LGraphNode {
  static schema = null;
  static onWidgetChanged = null;
  static uploadInputs = []; // input schemas with an `upload` kind: each gets a button
  static onUpload = null;

  constructor(title) {
    super(title);
    const schema = this.constructor.schema;
    this.noodle = { running: false, cached: false, progress: null, preview: null, images: [],
                    texts: [], errors: [], raw: null, pending: {} };
    this.serialize_widgets = true;
    for (const spec of schema.inputs) {
      if (spec.widget) addInputWidget(this, spec, this.constructor.onWidgetChanged);
      else this.addInput(spec.name, spec.type, {
        color_on: typeColour(spec.type), color_off: typeColour(spec.type),
        label: spec.required ? spec.name : `${spec.name} (optional)`,
      });
    }
    const uploads = this.constructor.uploadInputs;
    for (const spec of uploads) {
      // Named after the input only when there are several to tell apart.
      const label = `${uploads.length > 1 ? `${spec.name}: ` : ""}upload ${spec.upload}…`;
      const button = this.addWidget("button", label, null, () => this.constructor.onUpload(this, spec.name, spec.upload));
      button.serialize = false;
      for (const extra of uploadExtras[spec.upload] ?? []) {
        const more = this.addWidget("button", `${uploads.length > 1 ? `${spec.name}: ` : ""}${extra.label}`, null, () => extra.run(this, spec.name));
        more.serialize = false;
      }
    }
    for (const out of schema.outputs) {
      this.addOutput(out.name, out.type, { color_on: typeColour(out.type), color_off: typeColour(out.type) });
    }
    const size = this.computeSize();
    this.size = [Math.max(MIN_WIDTH, size[0]), size[1] + (schema.output_node ? IMAGE_MIN_HEIGHT : 0)];
    if (schema.output_node) this.color = "#2b3d33";
  }

  // A widget input that should be wired: add a socket of the widget's type.
  widgetToInput(name) {
    const w = this.widgets?.find((x) => x.name === name && x.noodleInput);
    if (!w || this.findInputSlot(name) >= 0) return this.findInputSlot(name);
    const type = w.noodleInput.type;
    this.addInput(name, type, { color_on: typeColour(type), color_off: typeColour(type), label: `${name} ⇠` });
    w.disabled = true;
    this.setDirtyCanvas(true, true);
    return this.findInputSlot(name);
  }

  getExtraMenuOptions(canvas, options) {
    const convertible = (this.widgets ?? []).filter((w) => w.noodleInput && this.findInputSlot(w.name) < 0);
    if (convertible.length) {
      options.push(null, {
        content: "Wire a widget as input",
        has_submenu: true,
        submenu: { options: convertible.map((w) => ({ content: w.name, callback: () => this.widgetToInput(w.name) })) },
      });
    }
    return options;
  }

  onConnectionsChange(type, index, connected) {
    if (type !== LiteGraph.INPUT) return;
    const slot = this.inputs[index];
    const w = this.widgets?.find((x) => x.name === slot?.name && x.noodleInput);
    if (w) w.disabled = Boolean(connected);
    this.noodle.errors = this.noodle.errors.filter((e) => e.input !== slot?.name);
  }

  onDrawBackground(ctx) {
    if (this.flags.collapsed) return;
    const top = contentBottom(this) + 4;
    const h = this.size[1] - top - 6;
    const shown = this.noodle.preview ? [this.noodle.preview] : this.noodle.images;
    if (shown.length && h > 16) {
      const n = shown.length;
      const cols = Math.ceil(Math.sqrt(n));
      const rows = Math.ceil(n / cols);
      const cw = (this.size[0] - 12) / cols;
      const ch = h / rows;
      const crisp = !this.noodle.preview; // step previews are tiny: smooth them instead
      shown.forEach((img, i) => fitImage(ctx, img, 6 + (i % cols) * cw, top + Math.floor(i / cols) * ch, cw, ch, crisp));
    } else if (this.noodle.texts.length && h > 16) {
      ctx.fillStyle = "#d8dee9";
      ctx.font = "13px ui-monospace, monospace";
      this.noodle.texts.slice(0, 8).forEach((t, i) => ctx.fillText(String(t).slice(0, 60), 10, top + 16 + i * 16));
    }
  }

  onDrawForeground(ctx) {
    const th = LiteGraph.NODE_TITLE_HEIGHT;
    const [w, h] = this.flags.collapsed ? [this._collapsed_width ?? LiteGraph.NODE_COLLAPSED_WIDTH, 0] : this.size;
    const outline = this.noodle.errors.length ? STATE_COLOURS.error : this.noodle.running ? STATE_COLOURS.running : null;
    if (outline) {
      ctx.save();
      ctx.lineWidth = 3;
      ctx.strokeStyle = outline;
      roundRect(ctx, -4, -th - 4, w + 8, h + th + 8, 10);
      ctx.stroke();
      ctx.restore();
    }
    const p = this.noodle.progress;
    if (p && !this.flags.collapsed) {
      ctx.fillStyle = "#0b0f14";
      ctx.fillRect(0, h - 5, w, 5);
      ctx.fillStyle = STATE_COLOURS.progress;
      ctx.fillRect(0, h - 5, (w * p.step) / Math.max(1, p.total), 5);
    }
    if (this.noodle.errors.length) this.drawErrors(ctx, w, th);
  }

  drawErrors(ctx, w, th) {
    ctx.save();
    const first = this.noodle.errors[0];
    const more = this.noodle.errors.length > 1 ? `  (+${this.noodle.errors.length - 1})` : "";
    const named = first.input && !String(first.message).startsWith(first.input);
    const text = `⚠ ${named ? first.input + ": " : ""}${first.message}`.slice(0, 90) + more;
    ctx.font = "12px system-ui, sans-serif";
    const tw = Math.min(ctx.measureText(text).width + 16, Math.max(w, 420));
    ctx.fillStyle = STATE_COLOURS.error;
    roundRect(ctx, 0, -th - 30, tw, 22, 6);
    ctx.fill();
    ctx.fillStyle = "#fff";
    ctx.fillText(text, 8, -th - 15, tw - 16);
    for (const err of this.noodle.errors) {
      if (!err.input || this.flags.collapsed) continue;
      const slot = this.findInputSlot(err.input);
      const widget = this.widgets?.find((x) => x.name === err.input);
      ctx.strokeStyle = STATE_COLOURS.error;
      ctx.lineWidth = 2;
      if (slot >= 0) {
        const y = (slot + 0.7) * LiteGraph.NODE_SLOT_HEIGHT;
        ctx.beginPath();
        ctx.arc(10, y - 5, 8, 0, Math.PI * 2);
        ctx.stroke();
      } else if (widget?.y != null) {
        roundRect(ctx, 10, widget.y - 1, w - 20, LiteGraph.NODE_WIDGET_HEIGHT + 2, 6);
        ctx.stroke();
      }
    }
    ctx.restore();
  }
}

// Registers one class per schema; returns the list of type names. A widget input whose schema
// names an `upload` kind ("image") gets a button; `onUpload(node, input, kind)` does the upload.
export function registerSchemas(schemas, onWidgetChanged, onUpload = null) {
  const names = [];
  for (const schema of Object.values(schemas)) {
    const cls = class extends NoodleNode {};
    cls.schema = schema;
    cls.onWidgetChanged = onWidgetChanged;
    if (onUpload) {
      cls.uploadInputs = schema.inputs.filter((spec) => spec.widget && spec.upload);
      cls.onUpload = onUpload;
    }
    cls.title = schema.display_name || schema.name;
    cls.description = schema.description;
    LiteGraph.registerNodeType(schema.name, cls);
    cls.category = schema.category;
    names.push(schema.name);
  }
  return names;
}

// A node whose type the server does not know: shown in red, its JSON kept verbatim.
export class MissingNode extends LGraphNode {
  constructor(title) {
    super(title);
    this.noodle = { running: false, progress: null, preview: null, images: [], texts: [], errors: [], raw: null, pending: {} };
    this.color = "#5b1f2a";
    this.bgcolor = "#3a1820";
    this.size = [260, 60];
  }

  onDrawForeground(ctx) {
    NoodleNode.prototype.onDrawForeground.call(this, ctx);
  }

  drawErrors(ctx, w, th) {
    NoodleNode.prototype.drawErrors.call(this, ctx, w, th);
  }
}

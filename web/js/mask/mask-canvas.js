// The paintable mask of the mask editor: a canvas at the image's own resolution whose alpha
// is the mask (255: repaint). Strokes are round-capped lines of the brush's width in image
// pixels; erasing removes alpha. Each stroke first saves a snapshot, so strokes undo one by
// one. The saved image is the picture's colours with alpha = 255 - mask, as ComfyUI's mask
// editor stores a mask (LoadImage reads transparency as the mask).

const UNDO_LIMIT = 30;
// The colour the mask is shown in (only its alpha is saved).
const COLOUR = [40, 130, 255];

export class MaskCanvas {
  // `canvas`: the visible mask layer; `width`, `height`: the image's size.
  constructor(canvas, width, height) {
    this.canvas = canvas;
    this.canvas.width = width;
    this.canvas.height = height;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.undoStack = [];
    this.mode = "paint";
    this.size = Math.max(2, Math.round(Math.min(width, height) / 8));
    this.last = null;
  }

  // Starts from an existing mask: 255 - alpha of the image's pixels (`ImageData`).
  loadFromAlpha(pixels) {
    const out = this.ctx.createImageData(pixels.width, pixels.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      [out.data[i], out.data[i + 1], out.data[i + 2]] = COLOUR;
      out.data[i + 3] = 255 - pixels.data[i + 3];
    }
    this.ctx.putImageData(out, 0, 0);
  }

  // Image coordinates of a pointer event over the (CSS-scaled) canvas.
  toImage(event) {
    const box = this.canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (this.canvas.width / box.width),
            (event.clientY - box.top) * (this.canvas.height / box.height)];
  }

  begin(point) {
    this.undoStack.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
    this.last = point;
    this.line(point, point);
  }

  move(point) {
    if (!this.last) return;
    this.line(this.last, point);
    this.last = point;
  }

  end() {
    this.last = null;
  }

  line(from, to) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = this.mode === "erase" ? "destination-out" : "source-over";
    ctx.strokeStyle = `rgb(${COLOUR.join(",")})`;
    ctx.lineWidth = this.size;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0] + (from === to ? 0.01 : 0), to[1]);
    ctx.stroke();
    ctx.restore();
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  undo() {
    const snapshot = this.undoStack.pop();
    if (snapshot) this.ctx.putImageData(snapshot, 0, 0);
  }

  clear() {
    this.undoStack.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  // Whether anything is masked.
  isEmpty() {
    const { data } = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i]) return false;
    return true;
  }

  // A PNG blob: the colours of `rgb` (opaque `ImageData`), alpha = 255 - mask.
  async toPng(rgb) {
    const { width, height } = this.canvas;
    const mask = this.ctx.getImageData(0, 0, width, height).data;
    const out = new ImageData(width, height);
    for (let i = 0; i < out.data.length; i += 4) {
      out.data[i] = rgb.data[i];
      out.data[i + 1] = rgb.data[i + 1];
      out.data[i + 2] = rgb.data[i + 2];
      out.data[i + 3] = 255 - mask[i + 3];
    }
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(out, 0, 0);
    return new Promise((resolve, reject) => canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error("could not encode the mask"))), "image/png"));
  }
}

// An image's pixels (`ImageData`), fetched from `url` without colour conversion.
export async function loadPixels(url) {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`cannot read the image (HTTP ${resp.status})`);
  const bitmap = await createImageBitmap(await resp.blob(),
    { premultiplyAlpha: "none", colorSpaceConversion: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

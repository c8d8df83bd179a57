// The canvas application: palette, workflow menu, queueing, live run state, drag and drop.

import { api, ApiError, connectEvents } from "./api.js";
import { askName, pickWorkflow, toast } from "./dialogs.js";
import { Editor } from "./graph/editor.js";
import { buildPalette, DRAG_MIME } from "./palette.js";
import { workflowFromPng } from "./png.js";

const STORE_KEY = "noodle.workflow.v1";
// Nodes that read an image from the input folder, and the input that names it.
const IMAGE_UPLOADS = { LoadImage: "path" };
const $ = (sel) => document.querySelector(sel);

// "input: message", unless the message already starts with the input's name.
function withInput(e) {
  return e.input && !String(e.message).startsWith(e.input) ? `${e.input}: ${e.message}` : e.message;
}

function clientId() {
  let id = sessionStorage.getItem("noodle.client");
  if (!id) {
    id = crypto.randomUUID().replace(/-/g, "");
    sessionStorage.setItem("noodle.client", id);
  }
  return id;
}

class App {
  constructor() {
    this.clientId = clientId();
    this.current = { name: "", source: null };
    this.lastSaved = "";
    this.editor = new Editor($("#graph"), { onChange: () => this.persistSoon() });
    this.messages = $("#messages");
    this.finished = new Set();
  }

  async start() {
    const schemas = await api.nodes();
    this.editor.registerTypes(schemas, { uploads: IMAGE_UPLOADS, onUpload: (id, input) => this.pickUpload(id, input) });
    buildPalette($("#palette"), schemas, (type, pos) => this.editor.addNode(type, pos));
    this.bindUi();
    this.resize();
    await this.restore();
    connectEvents(this.clientId, (m) => this.onEvent(m), (up) => {
      $("#connection").classList.toggle("down", !up);
      $("#connection").title = up ? "Connected" : "Reconnecting…";
    });
    setInterval(() => this.persist(), 1500);
    document.body.dataset.ready = "true";
  }

  // ------------------------------------------------------------ workflow in and out
  async restore() {
    const stored = localStorage.getItem(STORE_KEY);
    if (stored) {
      try {
        const { doc, name, source } = JSON.parse(stored);
        this.loadDoc(doc, { name, source, fit: false });
        return;
      } catch (err) {
        localStorage.removeItem(STORE_KEY);
      }
    }
    await this.openWorkflow({ name: "txt2img", source: "shipped" }, { quiet: true });
  }

  loadDoc(doc, { name = doc.name ?? "", source = null, fit = true } = {}) {
    const missing = this.editor.load(doc);
    this.current = { name, source };
    this.showName();
    this.clearMessages();
    if (fit && (!doc.ui?.viewport || !this.editor.allVisible())) this.editor.fitView();
    if (missing.length) this.message(`Unknown node types: ${missing.join(", ")}`, "error");
    this.persist();
  }

  async openWorkflow(w, { quiet = false } = {}) {
    try {
      const doc = await api.loadWorkflow(w.name, w.source);
      this.loadDoc(doc, { name: w.name, source: w.source });
    } catch (err) {
      if (!quiet) toast(`Could not open ${w.name}: ${err.message}`, "error");
    }
  }

  showName() {
    const label = this.current.name || "untitled";
    $("#workflow-name").textContent = label + (this.current.source === "shipped" ? " (example)" : "");
    document.title = `${label} · Noodle`;
  }

  persistSoon() {
    clearTimeout(this.persistTimer);
    this.persistTimer = setTimeout(() => this.persist(), 300);
  }

  persist() {
    const doc = this.editor.serialize();
    const text = JSON.stringify({ doc, name: this.current.name, source: this.current.source });
    if (text !== this.lastSaved) {
      localStorage.setItem(STORE_KEY, text);
      this.lastSaved = text;
    }
  }

  async save(asNew = false) {
    let name = this.current.source === "user" && !asNew ? this.current.name : null;
    name ??= await askName("Save workflow as", this.current.name || "my-workflow");
    if (!name) return;
    const doc = this.editor.serialize();
    doc.name = name;
    try {
      const res = await api.saveWorkflow(name, doc);
      this.editor.name = name;
      this.current = { name: res.name, source: "user" };
      this.showName();
      toast(`Saved “${res.name}”`, "ok");
    } catch (err) {
      toast(`Save failed: ${err.message}`, "error");
    }
  }

  async rename(w = this.current) {
    if (w.source !== "user") return this.save(true);
    const name = await askName("Rename workflow", w.name);
    if (!name || name === w.name) return;
    try {
      const doc = w === this.current ? this.editor.serialize() : await api.loadWorkflow(w.name, "user");
      doc.name = name;
      await api.saveWorkflow(name, doc);
      await api.deleteWorkflow(w.name);
      if (w.name === this.current.name && this.current.source === "user") {
        this.editor.name = name;
        this.current = { name, source: "user" };
        this.showName();
      }
      toast(`Renamed to “${name}”`, "ok");
    } catch (err) {
      toast(`Rename failed: ${err.message}`, "error");
    }
  }

  async remove(w) {
    try {
      await api.deleteWorkflow(w.name);
      toast(`Deleted “${w.name}”`, "ok");
      if (w.name === this.current.name && this.current.source === "user") this.current.source = null;
    } catch (err) {
      toast(`Delete failed: ${err.message}`, "error");
    }
  }

  download() {
    const doc = this.editor.serialize();
    const blob = new Blob([JSON.stringify(doc, null, 2) + "\n"], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${this.current.name || "workflow"}.json`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  async loadFile(file) {
    try {
      let doc;
      if (file.type === "image/png" || /\.png$/i.test(file.name)) {
        doc = await workflowFromPng(await file.arrayBuffer());
        if (!doc) throw new Error("this PNG carries no workflow");
      } else {
        doc = JSON.parse(await file.text());
      }
      this.loadDoc(doc, { name: doc.name || file.name.replace(/\.(json|png)$/i, ""), source: null });
      toast(`Loaded ${file.name}`, "ok");
    } catch (err) {
      toast(`Cannot load ${file.name}: ${err.message}`, "error");
    }
  }

  pickUpload(nodeId, input) {
    const picker = document.createElement("input");
    picker.type = "file";
    picker.accept = "image/png,image/jpeg,image/webp,image/gif,image/bmp";
    picker.addEventListener("change", () => {
      if (picker.files?.[0]) this.uploadInto(nodeId, input, picker.files[0]);
    });
    picker.click();
  }

  // Uploads an image into the input folder and points the node's input at it.
  async uploadInto(nodeId, input, file) {
    try {
      const ref = await api.uploadImage(file);
      this.editor.setWidget(nodeId, input, ref.name);
      this.editor.setOutputs(nodeId, { images: [{ filename: ref.name, subfolder: ref.subfolder, type: ref.type }] }, api.viewUrl);
      toast(`Uploaded ${file.name}`, "ok");
    } catch (err) {
      toast(`Upload failed: ${err.message}`, "error");
    }
  }

  // ------------------------------------------------------------ running
  async queue() {
    const doc = this.editor.serialize();
    // Cleared before sending: a fast run may report its events before the reply arrives.
    this.editor.setErrors([]);
    this.clearMessages();
    try {
      const res = await api.queue(doc, this.clientId);
      this.editor.advanceSeeds();
      if (!this.finished.has(res.prompt_id)) $("#status").textContent = `Queued #${res.number}`;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      this.editor.setErrors(err.errors);
      this.clearMessages();
      for (const e of err.errors) this.message(`${e.node != null ? `#${e.node} ` : ""}${withInput(e)}`, "error", e);
      toast(`The workflow has ${err.errors.length} problem(s); see the marked nodes`, "error");
    }
  }

  onEvent({ type, data }) {
    const ed = this.editor;
    switch (type) {
      case "status": {
        const waiting = data.queue_remaining - (data.running ? 1 : 0);
        $("#queue-size").textContent = data.running
          ? `running${waiting > 0 ? ` · ${waiting} waiting` : ""}` : waiting > 0 ? `${waiting} waiting` : "idle";
        break;
      }
      case "started":
        $("#status").textContent = "Running…";
        ed.runStarted();
        this.setBar(0);
        break;
      case "node_started":
        ed.setRunning(data.node);
        break;
      case "progress":
        ed.setProgress(data.node, data.step, data.total, data.preview);
        this.setBar(data.step / Math.max(1, data.total));
        break;
      case "executed":
        ed.setOutputs(data.node, data.ui, api.viewUrl);
        break;
      case "error":
        ed.setErrors([{ node: data.node, input: null, code: data.exception_type, message: `${data.exception_type}: ${data.message}` }]);
        this.message(`#${data.node} ${data.node_type}: ${data.exception_type}: ${data.message}`, "error", data);
        toast(`${data.node_type} failed: ${data.message}`, "error", 8000);
        break;
      case "invalid":
        ed.setErrors(data.errors);
        break;
      case "finished":
        this.finished.add(data.prompt_id);
        ed.setRunning(null);
        this.setBar(null);
        $("#status").textContent = data.ok ? `Done in ${data.seconds.toFixed(1)} s` : data.interrupted ? "Interrupted" : "Failed";
        break;
      default:
        break;
    }
  }

  setBar(fraction) {
    const bar = $("#progress");
    bar.hidden = fraction == null;
    bar.firstElementChild.style.width = `${Math.round((fraction ?? 0) * 100)}%`;
  }

  message(text, kind, data = null) {
    const li = document.createElement("li");
    li.className = kind;
    li.textContent = text;
    if (data?.node != null) li.dataset.node = String(data.node);
    if (data?.input) li.dataset.input = data.input;
    if (data?.code) li.dataset.code = data.code;
    this.messages.append(li);
    this.messages.hidden = false;
  }

  clearMessages() {
    this.messages.replaceChildren();
    this.messages.hidden = true;
  }

  // ------------------------------------------------------------ UI wiring
  resize() {
    const el = $("#graph");
    const box = el.parentElement.getBoundingClientRect();
    el.width = box.width;
    el.height = box.height;
    this.editor.resize();
  }

  bindUi() {
    window.addEventListener("resize", () => this.resize());
    $("#queue").addEventListener("click", () => this.queue());
    $("#interrupt").addEventListener("click", () => api.interrupt());
    window.addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
        e.preventDefault();
        this.queue();
      } else if ((e.ctrlKey || e.metaKey) && e.key === "s") {
        e.preventDefault();
        this.save();
      }
    }, true);
    const menu = $("#workflow-menu");
    $("#workflow-button").addEventListener("click", async () => {
      menu.hidden = !menu.hidden;
      if (!menu.hidden) await this.fillExamples();
    });
    document.addEventListener("pointerdown", (e) => {
      if (!menu.hidden && !menu.contains(e.target) && e.target !== $("#workflow-button")) menu.hidden = true;
    });
    const actions = {
      new: () => { this.editor.clear(); this.current = { name: "", source: null }; this.showName(); },
      open: async () => pickWorkflow((await api.workflows()).workflows, {
        open: (w) => this.openWorkflow(w), rename: (w) => this.rename(w), remove: (w) => this.remove(w),
      }),
      save: () => this.save(false),
      "save-as": () => this.save(true),
      rename: () => this.rename(),
      download: () => this.download(),
      upload: () => $("#file-input").click(),
    };
    menu.addEventListener("click", (e) => {
      const action = e.target.closest("[data-action]")?.dataset.action;
      if (!action) return;
      menu.hidden = true;
      actions[action]?.();
    });
    $("#file-input").addEventListener("change", (e) => {
      const f = e.target.files?.[0];
      if (f) this.loadFile(f);
      e.target.value = "";
    });
    const stage = $("#stage");
    stage.addEventListener("dragover", (e) => {
      e.preventDefault();
      stage.classList.add("dropping");
    });
    stage.addEventListener("dragleave", () => stage.classList.remove("dropping"));
    stage.addEventListener("drop", (e) => {
      e.preventDefault();
      stage.classList.remove("dropping");
      const type = e.dataTransfer.getData(DRAG_MIME);
      if (type) this.editor.addNode(type, this.editor.screenToGraph(e.clientX, e.clientY));
      else if (e.dataTransfer.files?.length) this.loadFile(e.dataTransfer.files[0]);
    });
  }

  async fillExamples() {
    const list = $("#examples");
    try {
      const { workflows } = await api.workflows();
      list.replaceChildren(...workflows.filter((w) => w.source === "shipped").map((w) => {
        const b = document.createElement("button");
        b.textContent = w.name;
        b.title = w.description;
        b.dataset.example = w.name;
        b.addEventListener("click", () => { $("#workflow-menu").hidden = true; this.openWorkflow(w); });
        return b;
      }));
    } catch (err) {
      list.replaceChildren();
    }
  }
}

const app = new App();
window.noodle = app;
app.start().catch((err) => {
  toast(`Noodle could not start: ${err.message}`, "error", 60000);
  throw err;
});

// The canvas application: palette, workflow menu, queueing, live run state, drag and drop.

import { api, ApiError, connectEvents } from "./api.js";
import { pickWorkflow, toast } from "./dialogs.js";
import { Documents } from "./documents.js";
import { bindArrange } from "./graph/arrange.js";
import { Editor } from "./graph/editor.js";
import { bindPanelKeys } from "./help.js";
import { installMaskEditor } from "./mask/mask-editor.js";
import { ModelsBrowser } from "./models/browser.js";
import { bindNodeTips } from "./node-tips.js";
import { buildPalette, DRAG_MIME } from "./palette.js";
import { Sidebar } from "./queue/sidebar.js";
import { bindEditingKeys } from "./shortcuts.js";

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
    this.editor = new Editor($("#graph"), {
      onChange: () => this.docs.persistSoon(),
      onHistory: () => this.docs?.historyChanged(),
    });
    this.docs = new Documents(this.editor, (missing) => {
      this.clearMessages();
      if (missing.length) this.message(`Unknown node types: ${missing.join(", ")}`, "error");
    });
    this.messages = $("#messages");
    this.begun = new Set(); // prompts whose run started: their status is past "Queued"
  }

  async start() {
    const [schemas, types] = await Promise.all([api.nodes(), api.types()]);
    // Before the node classes (its "edit mask…" buttons) and the editing keys (its keys).
    this.maskEditor = installMaskEditor((id, input, file) => this.uploadInto(id, input, file));
    // Before the palette: it takes its colours from the socket types registered here.
    this.editor.registerTypes(schemas, types, { onUpload: (id, input, kind) => this.pickUpload(id, input, kind) });
    buildPalette($("#palette"), schemas, (type, pos) => this.editor.addNode(type, pos));
    bindNodeTips(schemas);
    // Before the editing keys: its viewer takes every key while it is open.
    this.sidebar = new Sidebar({ clientId: this.clientId, onLoad: (entry) => this.docs.loadRun(entry.workflow),
                                 onToggle: () => this.resize() });
    this.models = new ModelsBrowser($("#models"), this.editor);
    this.models.onToggle = () => this.resize();
    this.bindUi();
    this.resize();
    await this.docs.restore();
    connectEvents(this.clientId, (m) => this.onEvent(m), (up) => {
      $("#connection").classList.toggle("down", !up);
      $("#connection").title = up ? "Connected" : "Reconnecting…";
      if (up) this.sidebar.reconnected();
    });
    setInterval(() => {
      this.editor.history.checkpoint(); // whatever a change hook missed
      this.docs.persist();
    }, 1500);
    document.body.dataset.ready = "true";
  }

  loadDoc(doc, options) {
    this.docs.loadDoc(doc, options);
  }

  openWorkflow(w) {
    return this.docs.openWorkflow(w);
  }

  // The server takes uploads of images only (POST /api/upload/image).
  pickUpload(nodeId, input, kind) {
    if (kind !== "image") {
      toast(`Cannot upload ${kind} files`, "error");
      return;
    }
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
      if (!this.begun.has(res.prompt_id)) $("#status").textContent = `Queued #${res.number}`;
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
    this.sidebar.onEvent(type, data);
    switch (type) {
      case "status": {
        const waiting = data.queue_remaining - (data.running ? 1 : 0);
        $("#queue-size").textContent = waiting > 0 ? `${waiting} waiting` : data.running ? "" : "idle";
        break;
      }
      case "started":
        this.begun.add(data.prompt_id);
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
        this.begun.add(data.prompt_id);
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
    bindEditingKeys(this.editor);
    bindArrange(this.editor);
    bindPanelKeys({ toggleSidebar: () => this.sidebar.toggle(), toggleModels: () => this.models.toggle() });
    $("#models-button").addEventListener("click", () => this.models.toggle());
    window.addEventListener("beforeunload", (e) => {
      if (!this.editor.history.dirty) return;
      e.preventDefault();
      e.returnValue = ""; // older browsers show the prompt only when this is set
    });
    $("#queue").addEventListener("click", () => this.queue());
    $("#interrupt").addEventListener("click", () => api.interrupt());
    window.addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
        e.preventDefault();
        this.queue();
      } else if ((e.ctrlKey || e.metaKey) && e.key === "s") {
        e.preventDefault();
        this.docs.save();
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
      new: () => this.docs.newDocument(),
      open: async () => pickWorkflow((await api.workflows()).workflows, {
        open: (w) => this.docs.openWorkflow(w), rename: (w) => this.docs.rename(w), remove: (w) => this.docs.remove(w),
      }),
      save: () => this.docs.save(false),
      "save-as": () => this.docs.save(true),
      rename: () => this.docs.rename(),
      download: () => this.docs.download(),
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
      if (f) this.docs.loadFile(f);
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
      const at = this.editor.screenToGraph(e.clientX, e.clientY);
      if (this.models.drop(e.dataTransfer, at)) return;
      if (type) this.editor.addNode(type, at);
      else if (e.dataTransfer.files?.length) this.docs.loadFile(e.dataTransfer.files[0]);
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
        b.addEventListener("click", () => { $("#workflow-menu").hidden = true; this.docs.openWorkflow(w); });
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

// The running and pending prompts, with the running one's progress and a cancel control on
// each. The list is read from GET /api/queue whenever the server says the queue changed (its
// `status` event goes to every client); progress comes from the run events, which the server
// sends only to the client that queued the prompt, so another tab's run shows no bar.

import { api } from "../api.js";
import { toast } from "../dialogs.js";
import { el } from "../dom.js";

// What is known of the running prompt from its events: its nodes (null when its start was
// missed, e.g. by a reload), those done (run or taken from the cache), the running one's steps.
function newRun(data) {
  const done = new Set((data.cached ?? []).map(String));
  const nodes = data.nodes ? Math.max(1, data.nodes.length) : null;
  return { promptId: data.prompt_id, nodes, done, nodeType: "", step: 0, total: 0 };
}

// The share of the run done: nodes done plus the running node's steps (only the latter
// when the number of nodes is unknown).
function fractionOf(run) {
  const partial = run.total > 0 ? run.step / run.total : 0;
  return run.nodes ? Math.min(1, (run.done.size + partial) / run.nodes) : partial;
}

export class LiveQueue {
  // `list`: the <ul> to fill; `clearButton`: "clear pending"; `onLeft(ids)`: prompts that
  // were in the queue and are not any more (finished, cancelled or run elsewhere).
  constructor(list, clearButton, { clientId = "", onLeft = () => {} } = {}) {
    this.list = list;
    this.clearButton = clearButton;
    this.clientId = clientId;
    this.onLeft = onLeft;
    this.running = [];
    this.pending = [];
    this.run = null;
    this.reads = 0; // a read answered after a newer one started is dropped
    this.timer = null;
    clearButton.addEventListener("click", () => this.clearPending());
  }

  // Reads the queue soon: a burst of events costs one request.
  refreshSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), 30);
  }

  async refresh() {
    const read = ++this.reads;
    let state;
    try {
      state = await api.queueState();
    } catch (err) {
      return; // the server is away: the socket reconnects, and its greeting asks again
    }
    if (read !== this.reads) return;
    const before = this.ids();
    this.running = state.running ?? [];
    this.pending = state.pending ?? [];
    const now = new Set(this.ids());
    this.render();
    const left = before.filter((id) => !now.has(id));
    if (left.length) this.onLeft(left);
  }

  ids() {
    return [...this.running, ...this.pending].map((i) => i.prompt_id);
  }

  // A websocket event (see graph_runtime/server/messages.py).
  onEvent(type, data) {
    const id = data?.prompt_id;
    if (!this.run && id && type !== "finished" && this.running[0]?.prompt_id === id) this.run = newRun({ prompt_id: id });
    const mine = this.run && id === this.run.promptId;
    if (type === "status") this.refreshSoon();
    else if (type === "started") {
      this.run = newRun(data);
      this.refreshSoon();
    } else if (type === "node_started" && mine) {
      Object.assign(this.run, { nodeType: data.node_type ?? "", step: 0, total: 0 });
      this.showProgress();
    } else if (type === "progress" && mine) {
      Object.assign(this.run, { step: data.step, total: data.total });
      this.showProgress();
    } else if ((type === "node_finished" || type === "node_cached") && mine) {
      this.run.done.add(String(data.node));
      Object.assign(this.run, { step: 0, total: 0 });
      this.showProgress();
    } else if (type === "finished" && mine) {
      this.run = null;
      this.refreshSoon();
    }
  }

  render() {
    const items = [...this.running.map((i) => this.item(i, true)), ...this.pending.map((i) => this.item(i, false))];
    if (!items.length) items.push(el("li", { class: "queue-empty muted" }, "Nothing running or waiting."));
    this.list.replaceChildren(...items);
    this.clearButton.disabled = this.pending.length === 0;
    this.showProgress();
  }

  item(info, running) {
    const id = info.prompt_id;
    const other = info.client_id && info.client_id !== this.clientId ? " · another tab" : "";
    const cancel = el("button", {
      class: "small danger queue-cancel", title: running ? "Stop this run" : "Remove from the queue",
      onclick: () => this.cancel(id, running),
    }, running ? "Stop" : "Cancel");
    return el("li", { class: `queue-item ${running ? "running" : "pending"}`, dataset: { prompt: id } },
      el("div", { class: "queue-row" },
        el("span", { class: "queue-name" }, info.name || "untitled"),
        el("span", { class: "muted" }, `#${info.number}${running ? " · running" : " · waiting"}${other}`),
        cancel),
      running ? el("div", { class: "queue-bar" }, el("div")) : null,
      running ? el("div", { class: "queue-detail muted" }) : null);
  }

  // Moves the running prompt's bar without rebuilding the list (progress comes often).
  showProgress() {
    const li = this.run && this.list.querySelector(`.queue-item.running[data-prompt="${this.run.promptId}"]`);
    if (!li) return;
    const fraction = fractionOf(this.run);
    li.querySelector(".queue-bar > div").style.width = `${Math.round(fraction * 100)}%`;
    li.dataset.progress = fraction.toFixed(3);
    const steps = this.run.total > 0 ? ` ${this.run.step}/${this.run.total}` : "";
    li.querySelector(".queue-detail").textContent = this.run.nodeType ? `${this.run.nodeType}${steps}` : "starting…";
  }

  async cancel(promptId, running) {
    try {
      if (running) await api.interrupt(promptId);
      else await api.cancel(promptId);
    } catch (err) {
      toast(`Could not cancel: ${err.message}`, "error");
    }
    this.refreshSoon();
  }

  async clearPending() {
    try {
      await api.clearPending();
    } catch (err) {
      toast(`Could not clear the queue: ${err.message}`, "error");
    }
    this.refreshSoon();
  }
}

// REST and websocket client for the Noodle server (see graph_runtime/server/app.py).

export class ApiError extends Error {
  constructor(status, errors) {
    super(errors?.[0]?.message ?? `HTTP ${status}`);
    this.status = status;
    this.errors = errors ?? [];
  }
}

async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data?.errors);
  return data;
}

export const api = {
  nodes: () => call("GET", "/api/nodes"),
  types: () => call("GET", "/api/types"),
  queue: (workflow, clientId) => call("POST", "/api/prompt", { workflow, client_id: clientId }),
  // Interrupts the running prompt; given an id, only if that one is still running.
  interrupt: (promptId = null) => call("POST", "/api/interrupt", promptId ? { prompt_id: promptId } : undefined),
  queueState: () => call("GET", "/api/queue"),
  // Drops a pending prompt (a running one is interrupted instead).
  cancel: (promptId) => call("DELETE", `/api/queue/${encodeURIComponent(promptId)}`),
  // Drops every pending prompt, leaving the running one alone.
  clearPending: () => call("DELETE", "/api/queue"),
  // A page of finished prompts, oldest first: `limit` from `offset` (0: the oldest), or the
  // newest `limit` without an offset; with the number of entries in the whole history.
  history: async ({ limit, offset = null }) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (offset != null) q.set("offset", String(offset));
    const resp = await fetch(`/api/history?${q}`);
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data?.errors);
    return { entries: data, total: Number(resp.headers.get("X-Total-Count") ?? data.length) };
  },
  // Every model file the loaders can read: {models: [{kind, name, source, size, family}]}.
  modelLibrary: () => call("GET", "/api/model-library"),
  workflows: () => call("GET", "/api/workflows"),
  loadWorkflow: (name, source) =>
    call("GET", `/api/workflows/${encodeURIComponent(name)}${source ? `?source=${source}` : ""}`),
  saveWorkflow: (name, doc) => call("PUT", `/api/workflows/${encodeURIComponent(name)}`, doc),
  deleteWorkflow: (name) => call("DELETE", `/api/workflows/${encodeURIComponent(name)}`),
  // Any importable file (JSON or PNG) as it is -> {workflow: v1, format}.
  importWorkflow: async (file) => {
    const headers = { "Content-Type": file.type || "application/octet-stream" };
    const resp = await fetch("/api/workflows/import", { method: "POST", headers, body: file });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data?.errors);
    return data;
  },
  uploadImage: async (file) => {
    const form = new FormData();
    form.append("image", file, file.name);
    const resp = await fetch("/api/upload/image", { method: "POST", body: form });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, data?.errors);
    return data;
  },
  viewUrl: (ref) => {
    const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "output" });
    return `/api/view?${q}`;
  },
};

// Reconnecting websocket; `onMessage({type, data})` for every event.
export function connectEvents(clientId, onMessage, onState) {
  let delay = 500;
  let socket = null;
  const open = () => {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${proto}://${location.host}/ws?client_id=${encodeURIComponent(clientId)}`);
    socket.onopen = () => { delay = 500; onState(true); };
    socket.onmessage = (ev) => {
      if (typeof ev.data === "string") onMessage(JSON.parse(ev.data));
    };
    socket.onclose = () => {
      onState(false);
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 8000);
    };
  };
  open();
  return () => socket?.close();
}

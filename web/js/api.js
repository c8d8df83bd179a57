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
  interrupt: () => call("POST", "/api/interrupt"),
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

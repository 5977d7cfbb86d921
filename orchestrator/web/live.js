// The WebSocket feed: snapshot, then diffs; resume with since= after a dropped connection, with backoff.

import { readToken } from "./api.js";

const MIN_BACKOFF = 500;
const MAX_BACKOFF = 10_000;

export function connectLive({ view, model, onReset, onChange, onReport, onStatus }) {
  let socket = null;
  let backoff = MIN_BACKOFF;
  let current = { ...view };
  let closed = false;
  let timer = null;

  function url() {
    const params = new URLSearchParams({ level: current.level, external: current.external });
    if (current.host) params.set("host", current.host);
    if (model.seq !== null) params.set("since", String(model.seq));
    const token = readToken();
    if (token) params.set("token", token);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/api/v1/ws?${params}`;
  }

  function open() {
    onStatus(socket === null && backoff === MIN_BACKOFF ? "connecting" : "reconnecting");
    socket = new WebSocket(url());
    socket.addEventListener("open", () => {
      backoff = MIN_BACKOFF;
      onStatus("live");
    });
    socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
    socket.addEventListener("close", () => {
      if (closed) return;
      onStatus("reconnecting");
      timer = setTimeout(open, backoff);
      backoff = Math.min(MAX_BACKOFF, backoff * 2);
    });
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function receive(message) {
    if (message.type === "topology_update") {
      model.reset(message.payload, message.seq);
      onReset();
    } else if (message.type === "topology_diff") {
      if (model.seq === null) return; // waiting for the new view's snapshot
      const change = model.apply(message.payload, message.seq);
      if (change === null) send({ type: "resync" }); // a gap: ask for a fresh snapshot
      else onChange(change);
    } else if (message.type === "report_update") {
      onReport(message.payload);
    } else if (message.type === "error") {
      onStatus("live", message.payload && message.payload.message);
    }
  }

  open();
  return {
    subscribe(view) {
      current = { ...view };
      model.seq = null; // a new view starts from its own snapshot
      if (socket && socket.readyState === WebSocket.OPEN) {
        send({ type: "subscribe", level: current.level, host: current.host || null, external: current.external });
      }
    },
    close() {
      closed = true;
      clearTimeout(timer);
      if (socket) socket.close(1000);
    },
  };
}

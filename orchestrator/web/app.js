// The page: picks the view, keeps the live topology from the WebSocket, and draws it as a graph, a table,
// the selected node's details, the agents, and the topology at a past time.

import { ApiError, askForToken, getJSON, readToken } from "./api.js";
import { Details } from "./details.js";
import { EDGE_LIMIT, Graph } from "./graph.js";
import { connectLive } from "./live.js";
import { Topology } from "./model.js";
import { Table } from "./table.js";

const MAX_GRAPH_NODES = 3000; // beyond this a view is shown as the table
const $ = (id) => document.getElementById(id);

const page = {
  view: readView(),
  live: new Topology(),
  past: null, // the topology at the slider's time, while one is shown
  selected: null,
  at: null, // the past time shown, while one is
  paused: false,
  tab: "graph",
  hostnames: new Set(),
  serverOffset: 0, // server clock - browser clock, from the feed's timestamps
  // Read by benchmarks/bench_page.py: when the first full drawing finished, and what drawing costs.
  stats: { renders: 0, firstRenderAt: null, lastRenderMs: 0, maxUpdateMs: 0, nodes: 0 },
};
window.orchestratorPage = page.stats;

const graph = new Graph($("canvas"), select);
const table = new Table(select);
const details = new Details(select);
table.onFilter = () => renderTable();

function readView() {
  const params = new URLSearchParams(location.search);
  const level = ["host", "container", "process"].includes(params.get("level")) ? params.get("level") : "host";
  return { level, host: params.get("host") || "", external: params.get("external") === "each" ? "each" : "group" };
}

function viewKey(view) {
  return `${view.level}|${view.host}|${view.external}`;
}

function shown() {
  return page.past || page.live;
}

// -- drawing ---------------------------------------------------------------------------------------------

function renderAll() {
  const started = performance.now();
  const topology = shown();
  const tooBig = topology.nodes.size > MAX_GRAPH_NODES;
  $("view-note").textContent = tooBig
    ? `${topology.nodes.size} nodes: too many to draw, shown as the table (pick a host or a higher level to draw it).`
    : viewNote(topology);
  if (tooBig) {
    graph.clear();
    if (page.tab === "graph") showTab("table");
  } else {
    graph.render(topology.nodes, topology.edges);
  }
  renderTable();
  details.show(page.selected, topology.nodes, topology.edges);
  updateHosts(topology);
  $("seq").textContent = `seq ${topology.seq ?? "–"}`;
  page.stats.renders += 1;
  page.stats.lastRenderMs = performance.now() - started;
  page.stats.nodes = topology.nodes.size;
  if (page.stats.firstRenderAt === null && topology.nodes.size) page.stats.firstRenderAt = performance.now();
}

function renderChange(change) {
  const started = performance.now();
  const topology = page.live;
  if (topology.nodes.size > MAX_GRAPH_NODES || change.nodes.size > MAX_GRAPH_NODES) {
    renderAll();
    return;
  }
  graph.update(change, topology.nodes, topology.edges);
  if (page.tab === "table") scheduleTable();
  if (page.selected && (change.nodes.has(page.selected) || change.structural)) {
    details.show(page.selected, topology.nodes, topology.edges);
  }
  if (change.structural) updateHosts(topology);
  $("view-note").textContent = viewNote(topology);
  $("seq").textContent = `seq ${topology.seq}`;
  page.stats.maxUpdateMs = Math.max(page.stats.maxUpdateMs, performance.now() - started);
}

function viewNote(topology) {
  const counts = `${topology.nodes.size} nodes, ${topology.edges.size} edges`;
  return topology.edges.size > EDGE_LIMIT ? `${counts}: too many edges to draw, select a node to see its edges.` : counts;
}

let tableTimer = null;
function scheduleTable() {
  if (tableTimer === null) tableTimer = setTimeout(() => ((tableTimer = null), renderTable()), 500);
}

function renderTable() {
  if (page.tab === "table") table.render(shown().nodes, shown().edges);
}

function updateHosts(topology) {
  let added = false;
  for (const name of topology.hostnames()) {
    if (!page.hostnames.has(name)) {
      page.hostnames.add(name);
      added = true;
    }
  }
  if (!added && $("host").options.length > 1) return;
  const select = $("host");
  const options = [new Option("All hosts", "")];
  for (const name of [...page.hostnames].sort()) options.push(new Option(name, name));
  select.replaceChildren(...options);
  select.value = page.view.host;
}

function select(id) {
  page.selected = id;
  graph.select(id);
  table.select(id);
  details.show(id, shown().nodes, shown().edges);
}

// -- live feed -------------------------------------------------------------------------------------------

function setStatus(status, problem) {
  const label = page.past ? "history" : page.paused && status === "live" ? "paused" : status;
  const el = $("status");
  el.textContent = label;
  el.className = `status ${label}`;
  if (problem) $("view-note").textContent = problem;
}

let feed = null;
function startFeed() {
  graph.useView(viewKey(page.view), page.view.level);
  feed = connectLive({
    view: page.view,
    model: page.live,
    onStatus: (status, problem) => {
      page.connection = status;
      setStatus(status, problem);
    },
    onReset: () => {
      noteServerTime(page.live.timestamp);
      if (!page.paused && !page.past) renderAll();
    },
    onChange: (change) => {
      if (!page.paused && !page.past) renderChange(change);
    },
    onReport: (payload) => {
      if (payload && payload.report) noteServerTime(payload.report.timestamp);
      if (page.selected && payload) details.refreshCharts(payload.agent_id);
      if (page.tab === "agents") scheduleAgents();
    },
  });
}

function noteServerTime(stamp) {
  const t = Date.parse(stamp || "");
  if (!Number.isNaN(t) && Math.abs(Date.now() - t) < 15_000) page.serverOffset = t - Date.now();
}

function changeView() {
  page.view = {
    level: $("level").value,
    host: $("host").value,
    external: $("group").checked ? "group" : "each",
  };
  writeAddress();
  graph.useView(viewKey(page.view), page.view.level);
  $("seq").textContent = "seq –"; // until the new view's snapshot arrives
  feed.subscribe(page.view);
  if (page.past) showPastAt(page.at);
}

function writeAddress() {
  const params = new URLSearchParams({ level: page.view.level, external: page.view.external });
  if (page.view.host) params.set("host", page.view.host);
  if (page.at) params.set("at", page.at);
  history.replaceState(null, "", `/?${params}`);
}

// -- tabs and agents -------------------------------------------------------------------------------------

function showTab(name) {
  page.tab = name;
  for (const tab of ["graph", "table", "agents"]) {
    $(tab).hidden = tab !== name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
  }
  if (name === "table") renderTable();
  if (name === "agents") loadAgents();
}

let agentsTimer = null;
function scheduleAgents() {
  if (agentsTimer === null) agentsTimer = setTimeout(() => ((agentsTimer = null), loadAgents()), 2000);
}

async function loadAgents() {
  const body = await getJSON("/api/v1/query/agents");
  const rows = body.agents.map((agent) => {
    const tr = document.createElement("tr");
    for (const value of [agent.agent_id, agent.hostname, agent.status, agent.last_seen, agent.reports_received]) {
      const td = document.createElement("td");
      td.textContent = String(value ?? "");
      tr.appendChild(td);
    }
    tr.classList.add(agent.status);
    return tr;
  });
  $("agent-rows").replaceChildren(...rows);
}

// -- history ---------------------------------------------------------------------------------------------

function timeLabel(minutes) {
  if (minutes === 0) return "live";
  const at = new Date(Date.now() + page.serverOffset - minutes * 60_000);
  return `${minutes} min ago (${at.toLocaleTimeString()})`;
}

async function showPast(minutes) {
  $("time-label").textContent = timeLabel(minutes);
  if (minutes === 0) {
    backToLive();
    return;
  }
  await showPastAt(new Date(Date.now() + page.serverOffset - minutes * 60_000).toISOString());
}

// The topology as published at `at` (an RFC 3339 time), with what changed since outlined. The address
// carries `at`, so a past view can be linked to (an incident's "what did it look like at 03:00").
async function showPastAt(at) {
  const params = { level: page.view.level, host: page.view.host, external: page.view.external };
  try {
    const [then, changes] = await Promise.all([
      getJSON("/api/v1/query/topology", { ...params, at }),
      getJSON("/api/v1/query/changes", { ...params, from: at }),
    ]);
    const past = new Topology();
    past.reset(then.topology, then.topology.seq ?? then.seq ?? null);
    page.past = past;
    const marks = new Map();
    for (const id of Object.keys(changes.nodes.removed)) marks.set(id, "removed");
    for (const id of Object.keys(changes.nodes.updated)) marks.set(id, "updated");
    const added = Object.keys(changes.nodes.added).length;
    $("history-note").textContent =
      `Showing ${then.topology.timestamp}. Since then: ${added} added, ` +
      `${Object.keys(changes.nodes.removed).length} removed (red), ${Object.keys(changes.nodes.updated).length} changed (orange).`;
    $("live-btn").hidden = false;
    page.at = at;
    writeAddress();
    graph.useView(viewKey(page.view), page.view.level); // the live view's positions: nothing jumps
    graph.mark(marks);
    renderAll();
    setStatus(page.connection || "live");
  } catch (error) {
    if (error instanceof ApiError && error.code === "not_found") {
      $("history-note").textContent = "This server keeps no history.";
      $("time").disabled = true;
    } else {
      $("history-note").textContent = error.message;
    }
  }
}

function backToLive() {
  page.past = null;
  page.at = null;
  writeAddress();
  $("time").value = "0";
  $("time-label").textContent = "live";
  $("history-note").textContent = "";
  $("live-btn").hidden = true;
  graph.useView(viewKey(page.view), page.view.level);
  graph.mark(new Map());
  renderAll();
  setStatus(page.connection || "live");
}

// -- start -----------------------------------------------------------------------------------------------

async function start() {
  $("level").value = page.view.level;
  $("group").checked = page.view.external === "group";
  for (const id of ["level", "host", "group"]) $(id).addEventListener("change", changeView);
  $("pause").addEventListener("change", () => {
    page.paused = $("pause").checked;
    setStatus(page.connection || "live");
    if (!page.paused && !page.past) renderAll();
  });
  for (const tab of ["graph", "table", "agents"]) $(`tab-${tab}`).addEventListener("click", () => showTab(tab));
  $("zoom-in").addEventListener("click", () => graph.zoom(1.25));
  $("zoom-out").addEventListener("click", () => graph.zoom(0.8));
  $("zoom-fit").addEventListener("click", () => graph.fit());
  $("canvas").addEventListener("click", () => select(null));
  // The slider runs from -60 (an hour ago) to 0 (live): minutes ago is its value negated.
  const minutesAgo = () => -Number($("time").value);
  $("time").addEventListener("input", () => ($("time-label").textContent = timeLabel(minutesAgo())));
  $("time").addEventListener("change", () => showPast(minutesAgo()));
  $("live-btn").addEventListener("click", backToLive);
  // Ask for a read token before the first read needs it (the WebSocket cannot show a 401 at all).
  const config = await getJSON("/ui/config.json");
  if (config.read_token_required && !readToken()) await askForToken();
  await getJSON("/api/v1/query/stats");
  startFeed();
  const at = new URLSearchParams(location.search).get("at");
  if (at) {
    const minutes = Math.round((Date.now() + page.serverOffset - Date.parse(at)) / 60_000);
    $("time").value = String(-Math.min(60, Math.max(0, minutes)));
    $("time-label").textContent = `at ${at}`;
    await showPastAt(at);
  }
}

start().catch((error) => setStatus("offline", error.message));

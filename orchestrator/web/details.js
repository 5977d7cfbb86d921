// The details of the selected node: its fields and metadata, parent and children, edges in and out (each
// a link), and for a host its time series over the last hour.

import { getJSON } from "./api.js";
import { lineChart } from "./charts.js";
import { formatBytes } from "./table.js";

const FIELDS = ["id", "type", "host", "agent_ids", "first_seen", "last_seen"];

export class Details {
  constructor(onSelect) {
    this.root = document.getElementById("details");
    this.onSelect = onSelect;
    this.id = null;
    this.chartsFor = null;
    this.chartsAt = 0;
  }

  show(id, nodes, edges) {
    this.id = id;
    const node = nodes.get(id);
    this.root.replaceChildren();
    if (!id) {
      this.root.appendChild(paragraph("Select a node in the graph or the table.", "note"));
      return;
    }
    if (!node) {
      this.root.append(heading("h2", id), paragraph("Not in this view (it may be outside the host filter, or gone).", "note"));
      return;
    }
    this.root.appendChild(heading("h2", node.name || id));
    const fields = document.createElement("dl");
    for (const key of FIELDS) {
      const value = node[key];
      if (value !== undefined && value !== null) addPair(fields, key, Array.isArray(value) ? value.join(", ") : String(value));
    }
    if (node.parent) addPair(fields, "parent", this.link(node.parent, nodes));
    this.root.appendChild(fields);
    if (node.type === "host" && node.agent_ids && node.agent_ids.length) {
      const charts = document.createElement("div");
      charts.id = "charts";
      this.root.append(heading("h3", "Last hour"), charts);
      this.loadCharts(node.agent_ids[0], charts);
    }
    this.section("Metrics", pairs(node.metrics));
    this.section("Metadata", pairs(node.metadata));
    const children = [...nodes.values()].filter((n) => n.parent === id).map((n) => this.link(n.id, nodes));
    this.section("Children", list(children));
    const out = [];
    const into = [];
    for (const edge of edges.values()) {
      if (edge.source === id) out.push(this.edgeItem(edge, edge.target, nodes));
      if (edge.target === id) into.push(this.edgeItem(edge, edge.source, nodes));
    }
    this.section("Edges out (client of)", list(out));
    this.section("Edges in (server to)", list(into));
  }

  // Fresh charts for the shown host, at most every 5 s (a report_update arrives per report).
  refreshCharts(agentId) {
    const charts = document.getElementById("charts");
    if (!charts || this.chartsFor !== agentId || Date.now() - this.chartsAt < 5000) return;
    this.loadCharts(agentId, charts);
  }

  async loadCharts(agentId, target) {
    this.chartsFor = agentId;
    this.chartsAt = Date.now();
    try {
      const series = await getJSON(`/api/v1/query/agents/${encodeURIComponent(agentId)}/timeseries`, { duration: "1h" });
      const points = series.points || [];
      target.replaceChildren(
        lineChart("CPU", points, "cpu_percent", (v) => `${v.toFixed(1)} %`),
        lineChart("Memory used", points, "memory_used", formatBytes),
        lineChart("Network in", points, "net_rx_rate", (v) => `${formatBytes(v)}/s`),
        lineChart("Network out", points, "net_tx_rate", (v) => `${formatBytes(v)}/s`),
      );
    } catch (error) {
      target.replaceChildren(paragraph(`No time series: ${error.message}`, "note"));
    }
  }

  link(id, nodes) {
    const a = document.createElement("a");
    a.textContent = nodes.get(id) ? nodes.get(id).name || id : id;
    a.title = id;
    a.dataset.id = id;
    a.addEventListener("click", () => this.onSelect(id));
    return a;
  }

  edgeItem(edge, other, nodes) {
    const span = document.createElement("span");
    span.append(this.link(other, nodes), ` ${edge.protocol} ${(edge.ports || []).join(",")} ×${edge.connections}`);
    return span;
  }

  section(title, content) {
    if (content) this.root.append(heading("h3", title), content);
  }
}

function heading(tag, text) {
  const h = document.createElement(tag);
  h.textContent = text;
  return h;
}

function paragraph(text, cls) {
  const p = document.createElement("p");
  p.textContent = text;
  if (cls) p.className = cls;
  return p;
}

function addPair(dl, key, value) {
  const dt = document.createElement("dt");
  dt.textContent = key;
  const dd = document.createElement("dd");
  if (typeof value === "string") dd.textContent = value;
  else dd.appendChild(value);
  dl.append(dt, dd);
}

function pairs(object) {
  const entries = Object.entries(object || {});
  if (!entries.length) return null;
  const dl = document.createElement("dl");
  for (const [key, value] of entries) addPair(dl, key, typeof value === "object" ? JSON.stringify(value) : String(value));
  return dl;
}

function list(items) {
  if (!items.length) return null;
  const ul = document.createElement("ul");
  for (const item of items) {
    const li = document.createElement("li");
    li.appendChild(item);
    ul.appendChild(li);
  }
  return ul;
}

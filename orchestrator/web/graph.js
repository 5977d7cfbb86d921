// The graph: SVG, one group per node (shape by type, its name as text), one line per edge from client to
// server with its ports. Redraws only what a change touched; positions come from the stable layout.

import { Layout } from "./layout.js";

const NS = "http://www.w3.org/2000/svg";
const KNOWN_TYPES = new Set(["host", "container", "process", "external", "pod"]);
const NODE_W = 170;
const NODE_H = 24;

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function shortName(text, max = 24) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

export class Graph {
  constructor(svg, onSelect) {
    this.svg = svg;
    this.viewport = svg.querySelector("#viewport");
    this.nodeLayer = svg.querySelector("#nodes");
    this.edgeLayer = svg.querySelector("#edges");
    this.onSelect = onSelect;
    this.layouts = new Map(); // view key -> Layout, so switching back to a view restores its positions
    this.layout = null;
    this.nodeEls = new Map();
    this.edgeEls = new Map();
    this.selected = null;
    this.transform = { x: 40, y: 40, k: 1 };
    this.marks = new Map();
    this.enablePanZoom();
  }

  useView(key, level) {
    if (!this.layouts.has(key)) this.layouts.set(key, new Layout(level));
    this.layout = this.layouts.get(key);
    this.fitted = this.layout.fitted;
    this.clear();
  }

  clear() {
    this.nodeLayer.replaceChildren();
    this.edgeLayer.replaceChildren();
    this.nodeEls.clear();
    this.edgeEls.clear();
  }

  // Everything anew (a snapshot). Nodes are placed in id order within each kind, so a reload lays a view out
  // the same way.
  render(nodes, edges) {
    this.clear();
    const ids = [...nodes.keys()].sort(byTypeThenId(nodes));
    for (const id of ids) this.drawNode(id, nodes.get(id));
    for (const [id, edge] of edges) this.drawEdge(id, edge, nodes);
    this.applyMarks();
    if (!this.layout.fitted && nodes.size) {
      this.layout.fitted = true; // once per view: later updates never move the camera
      this.fit();
    }
  }

  // Only what changed: a node or edge added, removed or updated.
  update(change, nodes, edges) {
    for (const id of change.nodes) {
      const node = nodes.get(id);
      if (!node) this.removeNode(id);
      else if (this.nodeEls.has(id)) this.refreshNode(id, node);
      else this.drawNode(id, node);
    }
    for (const id of change.edges) {
      const edge = edges.get(id);
      this.removeEdge(id);
      if (edge) this.drawEdge(id, edge, nodes);
    }
  }

  drawNode(id, node) {
    const { x, y } = this.layout.position(id, node);
    const kind = KNOWN_TYPES.has(node.type) ? node.type : "other";
    const g = el("g", { class: `node ${kind}`, transform: `translate(${x},${y})`, "data-id": id }, this.nodeLayer);
    el("rect", { class: "hit", width: NODE_W, height: NODE_H }, g); // the whole label is clickable
    if (kind === "process") el("circle", { class: "shape", cx: 8, cy: NODE_H / 2, r: 7 }, g);
    else if (kind === "external") el("polygon", { class: "shape", points: `8,2 16,${NODE_H / 2} 8,${NODE_H - 2} 0,${NODE_H / 2}` }, g);
    else el("rect", { class: "shape", width: 16, height: NODE_H - 4, y: 2, rx: kind === "container" ? 2 : 5 }, g);
    const label = el("text", { x: 22, y: NODE_H / 2 + 4 }, g);
    label.textContent = shortName(node.name || id);
    el("title", {}, g).textContent = tooltip(id, node);
    g.addEventListener("click", (event) => {
      event.stopPropagation();
      this.onSelect(id);
    });
    if (id === this.selected) g.classList.add("selected");
    this.nodeEls.set(id, g);
    return g;
  }

  refreshNode(id, node) {
    const g = this.nodeEls.get(id);
    g.querySelector("text").textContent = shortName(node.name || id);
    g.querySelector("title").textContent = tooltip(id, node);
  }

  removeNode(id) {
    const g = this.nodeEls.get(id);
    if (g) g.remove();
    this.nodeEls.delete(id);
  }

  ensureEndpoint(id, nodes) {
    // The far end of an edge may lie outside a host-filtered view: draw a placeholder for it.
    if (this.nodeEls.has(id)) return;
    const node = nodes.get(id) || { id, type: "other", name: id, host: null };
    this.drawNode(id, node);
  }

  drawEdge(id, edge, nodes) {
    this.ensureEndpoint(edge.source, nodes);
    this.ensureEndpoint(edge.target, nodes);
    const a = this.layout.position(edge.source, nodes.get(edge.source));
    const b = this.layout.position(edge.target, nodes.get(edge.target));
    // From shape centre to shape centre, bent a little so that edges along one row or column stay apart.
    const x1 = a.x + 8;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x + 8;
    const y2 = b.y + NODE_H / 2;
    const dx = x2 - x1;
    const dy = y2 - y1;
    const cx = (x1 + x2) / 2 - dy * 0.2;
    const cy = (y1 + y2) / 2 + dx * 0.2;
    // Stop short of the target's shape so the arrowhead shows.
    const tx = x2 - cx;
    const ty = y2 - cy;
    const length = Math.hypot(tx, ty) || 1;
    const ex = x2 - (tx / length) * 10;
    const ey = y2 - (ty / length) * 10;
    const g = el("g", { class: "edge", "data-id": id, "data-source": edge.source, "data-target": edge.target }, this.edgeLayer);
    el("path", { d: `M${x1},${y1} Q${cx},${cy} ${ex},${ey}` }, g);
    el("title", {}, g).textContent = `${edge.source} → ${edge.target} ${edge.protocol} ${(edge.ports || []).join(",")}`;
    const text = el("text", { x: (x1 + 2 * cx + x2) / 4, y: (y1 + 2 * cy + y2) / 4 - 3 }, g);
    text.textContent = (edge.ports || []).slice(0, 3).join(",") + ((edge.ports || []).length > 3 ? ",…" : "");
    if (edge.source === this.selected || edge.target === this.selected) g.classList.add("selected");
    this.edgeEls.set(id, g);
  }

  removeEdge(id) {
    const g = this.edgeEls.get(id);
    if (g) g.remove();
    this.edgeEls.delete(id);
  }

  select(id) {
    if (this.selected && this.nodeEls.has(this.selected)) this.nodeEls.get(this.selected).classList.remove("selected");
    this.selected = id;
    if (id && this.nodeEls.has(id)) this.nodeEls.get(id).classList.add("selected");
    // Ports are shown on the selected node's edges only: on every edge they are unreadable.
    for (const g of this.edgeLayer.querySelectorAll(".edge.selected")) g.classList.remove("selected");
    if (id) {
      for (const g of this.edgeLayer.children) {
        if (g.dataset.source === id || g.dataset.target === id) g.classList.add("selected");
      }
    }
  }

  // History: outline what changed since the shown time (added / updated / removed).
  mark(marks) {
    this.marks = marks;
    this.applyMarks();
  }

  applyMarks() {
    for (const g of this.nodeLayer.querySelectorAll(".node[class*=changed-]")) {
      g.classList.remove("changed-added", "changed-updated", "changed-removed");
    }
    for (const [id, kind] of this.marks) {
      const g = this.nodeEls.get(id);
      if (g) g.classList.add(`changed-${kind}`);
    }
  }

  enablePanZoom() {
    let drag = null;
    this.svg.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX, y: event.clientY, tx: this.transform.x, ty: this.transform.y };
      this.svg.classList.add("dragging");
    });
    window.addEventListener("pointermove", (event) => {
      if (!drag) return;
      this.transform.x = drag.tx + event.clientX - drag.x;
      this.transform.y = drag.ty + event.clientY - drag.y;
      this.applyTransform();
    });
    window.addEventListener("pointerup", () => {
      drag = null;
      this.svg.classList.remove("dragging");
    });
    this.svg.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const box = this.svg.getBoundingClientRect();
        this.zoom(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - box.left, event.clientY - box.top);
      },
      { passive: false },
    );
  }

  zoom(factor, cx = this.svg.clientWidth / 2, cy = this.svg.clientHeight / 2) {
    const k = Math.min(4, Math.max(0.05, this.transform.k * factor));
    const ratio = k / this.transform.k;
    this.transform.x = cx - (cx - this.transform.x) * ratio;
    this.transform.y = cy - (cy - this.transform.y) * ratio;
    this.transform.k = k;
    this.applyTransform();
  }

  fit() {
    const box = this.viewport.getBBox();
    if (!box.width || !box.height) return;
    const k = Math.min(2, 0.95 * Math.min(this.svg.clientWidth / box.width, this.svg.clientHeight / box.height));
    this.transform = { k, x: -box.x * k + 20, y: -box.y * k + 20 };
    this.applyTransform();
  }

  applyTransform() {
    const { x, y, k } = this.transform;
    this.viewport.setAttribute("transform", `translate(${x},${y}) scale(${k})`);
  }
}

function byTypeThenId(nodes) {
  const rank = { host: 0, pod: 1, container: 2, process: 3, external: 4 };
  return (a, b) => {
    const ra = rank[nodes.get(a).type] ?? 5;
    const rb = rank[nodes.get(b).type] ?? 5;
    return ra - rb || (a < b ? -1 : a > b ? 1 : 0);
  };
}

function tooltip(id, node) {
  const cpu = node.metrics && node.metrics.cpu_percent !== undefined ? ` · CPU ${node.metrics.cpu_percent}%` : "";
  return `${node.name || id} (${node.type})${cpu}\n${id}`;
}

// The graph: SVG. One group per node (shape by type, its name as text); every edge an arrow from client to
// server. All edges are one path element (its geometry cached per edge, so a change costs a string join, not
// DOM work), and the selected node's edges are drawn on top one by one, with their ports. Past EDGE_LIMIT
// edges (the host view of 1,000 hosts has 100,000) the whole set is an unreadable mesh that costs seconds to
// draw: only the selected node's edges are drawn then. Positions come from the stable layout; a
// metrics-only change touches no geometry at all.

import { Layout } from "./layout.js";

const KNOWN_TYPES = new Set(["host", "container", "process", "external", "pod"]);
const NODE_W = 170;
const NODE_H = 24;
const ARROW = 7;
export const EDGE_LIMIT = 5000;

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escape = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

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
    this.segments = new Map(); // edge id -> its part of the all-edges path
    this.edges = new Map();
    this.nodes = new Map();
    this.selected = null;
    this.transform = { x: 40, y: 40, k: 1 };
    this.marks = new Map();
    this.pendingEdges = false;
    this.edgeLayer.innerHTML = '<path class="all-edges"></path><g class="selected-edges"></g>';
    this.allEdges = this.edgeLayer.firstChild;
    this.selectedEdges = this.edgeLayer.lastChild;
    this.nodeLayer.addEventListener("click", (event) => {
      const g = event.target.closest(".node");
      if (!g) return;
      event.stopPropagation();
      this.onSelect(g.dataset.id);
    });
    this.enablePanZoom();
  }

  useView(key, level) {
    if (!this.layouts.has(key)) this.layouts.set(key, new Layout(level));
    this.layout = this.layouts.get(key);
    this.clear();
  }

  clear() {
    this.nodeLayer.replaceChildren();
    this.nodeEls.clear();
    this.segments.clear();
    this.allEdges.setAttribute("d", "");
    this.selectedEdges.replaceChildren();
  }

  // Everything anew (a snapshot). Nodes are placed in type-then-id order, so a reload lays a view out the
  // same way; nodes already placed in this view keep their positions.
  render(nodes, edges) {
    this.clear();
    this.nodes = nodes;
    this.edges = edges;
    const ids = [...nodes.keys()].sort(byTypeThenId(nodes));
    const parts = ids.map((id) => this.nodeMarkup(id, nodes.get(id)));
    for (const edge of edges.values()) {
      for (const end of [edge.source, edge.target]) {
        if (!nodes.has(end)) parts.push(this.nodeMarkup(end, placeholder(end)));
      }
    }
    this.nodeLayer.innerHTML = parts.join("");
    for (const g of this.nodeLayer.children) this.nodeEls.set(g.dataset.id, g);
    this.allDrawn = edges.size <= EDGE_LIMIT;
    if (this.allDrawn) for (const [id, edge] of edges) this.segments.set(id, this.segment(edge));
    this.drawEdges();
    this.applyMarks();
    if (!this.layout.fitted && nodes.size) {
      this.layout.fitted = true; // once per view: later updates never move the camera
      this.fit();
    }
  }

  // Only what changed: nodes added, removed or renamed; edges added or removed. Counts, times and metrics
  // change no geometry.
  update(change, nodes, edges) {
    if (edges.size <= EDGE_LIMIT !== this.allDrawn) {
      this.render(nodes, edges); // crossed the limit: all edges drawn, or only the selected node's
      return;
    }
    this.nodes = nodes;
    this.edges = edges;
    for (const id of change.nodes) {
      const node = nodes.get(id);
      const g = this.nodeEls.get(id);
      if (!node) {
        if (g) g.remove();
        this.nodeEls.delete(id);
      } else if (g) {
        g.querySelector("text").textContent = shortName(node.name || id);
        g.querySelector("title").textContent = tooltip(id, node);
      } else {
        this.addNode(id, node);
      }
    }
    let geometry = false;
    for (const id of this.allDrawn ? change.edges : []) {
      const edge = edges.get(id);
      if (!edge) {
        geometry = this.segments.delete(id) || geometry;
        continue;
      }
      const segment = this.segment(edge);
      if (this.segments.get(id) !== segment) {
        this.segments.set(id, segment);
        geometry = true;
      }
    }
    if (geometry) this.scheduleEdges();
    if (this.selected && (change.edges.size || change.nodes.has(this.selected))) this.drawSelectedEdges();
  }

  addNode(id, node) {
    this.nodeLayer.insertAdjacentHTML("beforeend", this.nodeMarkup(id, node));
    const g = this.nodeLayer.lastElementChild;
    this.nodeEls.set(id, g);
    if (this.marks.has(id)) g.classList.add(`changed-${this.marks.get(id)}`);
  }

  nodeMarkup(id, node) {
    if (this.nodeEls.has(id)) return "";
    this.nodeEls.set(id, null); // placed once, even when an edge names it again
    const { x, y } = this.layout.position(id, node);
    const kind = KNOWN_TYPES.has(node.type) ? node.type : "other";
    let shape;
    if (kind === "process") shape = `<circle class="shape" cx="8" cy="${NODE_H / 2}" r="7"></circle>`;
    else if (kind === "external") {
      shape = `<polygon class="shape" points="8,2 16,${NODE_H / 2} 8,${NODE_H - 2} 0,${NODE_H / 2}"></polygon>`;
    } else shape = `<rect class="shape" width="16" height="${NODE_H - 4}" y="2" rx="${kind === "container" ? 2 : 5}"></rect>`;
    const selected = id === this.selected ? " selected" : "";
    return (
      `<g class="node ${kind}${selected}" transform="translate(${x},${y})" data-id="${escape(id)}">` +
      `<rect class="hit" width="${NODE_W}" height="${NODE_H}"></rect>${shape}` +
      `<text x="22" y="${NODE_H / 2 + 4}">${escape(shortName(node.name || id))}</text>` +
      `<title>${escape(tooltip(id, node))}</title></g>`
    );
  }

  ensurePlaced(id) {
    if (!this.nodeEls.has(id)) this.addNode(id, this.nodes.get(id) || placeholder(id));
  }

  // An edge's geometry: a curve from the client's shape to the server's, bent a little so that edges along
  // one row or column stay apart, ending in an open arrowhead short of the server's shape.
  segment(edge) {
    this.ensurePlaced(edge.source);
    this.ensurePlaced(edge.target);
    const a = this.layout.positions.get(edge.source);
    const b = this.layout.positions.get(edge.target);
    const x1 = a.x + 8;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x + 8;
    const y2 = b.y + NODE_H / 2;
    const cx = (x1 + x2) / 2 - (y2 - y1) * 0.2;
    const cy = (y1 + y2) / 2 + (x2 - x1) * 0.2;
    const tx = x2 - cx;
    const ty = y2 - cy;
    const length = Math.hypot(tx, ty) || 1;
    const ux = tx / length;
    const uy = ty / length;
    const ex = x2 - ux * 10;
    const ey = y2 - uy * 10;
    const h1x = ex - ux * ARROW - uy * ARROW * 0.6;
    const h1y = ey - uy * ARROW + ux * ARROW * 0.6;
    const h2x = ex - ux * ARROW + uy * ARROW * 0.6;
    const h2y = ey - uy * ARROW - ux * ARROW * 0.6;
    const r = (v) => Math.round(v);
    return (
      `M${r(x1)} ${r(y1)}Q${r(cx)} ${r(cy)} ${r(ex)} ${r(ey)}` +
      `M${r(h1x)} ${r(h1y)}L${r(ex)} ${r(ey)}L${r(h2x)} ${r(h2y)}`
    );
  }

  scheduleEdges() {
    if (this.pendingEdges) return;
    this.pendingEdges = true;
    requestAnimationFrame(() => {
      this.pendingEdges = false;
      this.drawEdges();
    });
  }

  drawEdges() {
    this.allEdges.setAttribute("d", [...this.segments.values()].join(""));
    this.drawSelectedEdges();
  }

  // The selected node's edges, one element each, highlighted, with their ports.
  drawSelectedEdges() {
    const parts = [];
    if (this.selected) {
      for (const [id, edge] of this.edges) {
        if (edge.source !== this.selected && edge.target !== this.selected) continue;
        const segment = this.segments.get(id) || this.segment(edge);
        const a = this.layout.positions.get(edge.source);
        const b = this.layout.positions.get(edge.target);
        const ports = edge.ports || [];
        const label = ports.slice(0, 3).join(",") + (ports.length > 3 ? ",…" : "");
        parts.push(
          `<g class="edge selected" data-id="${escape(id)}"><path d="${segment}"></path>` +
            `<text x="${(a.x + b.x) / 2 + 8}" y="${(a.y + b.y) / 2 + NODE_H / 2 - 3}">${escape(label)}</text>` +
            `<title>${escape(`${edge.source} → ${edge.target} ${edge.protocol} ${ports.join(",")}`)}</title></g>`,
        );
      }
    }
    this.selectedEdges.innerHTML = parts.join("");
  }

  select(id) {
    const before = this.selected && this.nodeEls.get(this.selected);
    if (before) before.classList.remove("selected");
    this.selected = id;
    const after = id && this.nodeEls.get(id);
    if (after) after.classList.add("selected");
    this.drawSelectedEdges();
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
    const k = Math.min(4, Math.max(0.02, this.transform.k * factor));
    const ratio = k / this.transform.k;
    this.transform.x = cx - (cx - this.transform.x) * ratio;
    this.transform.y = cy - (cy - this.transform.y) * ratio;
    this.transform.k = k;
    this.applyTransform();
  }

  // The whole drawing in view, from the layout's own extent (no layout query to the browser).
  fit() {
    let minX = Infinity;
    let minY = Infinity;
    let maxX = -Infinity;
    let maxY = -Infinity;
    for (const id of this.nodeEls.keys()) {
      const p = this.layout.positions.get(id);
      if (!p) continue;
      minX = Math.min(minX, p.x);
      minY = Math.min(minY, p.y);
      maxX = Math.max(maxX, p.x + NODE_W);
      maxY = Math.max(maxY, p.y + NODE_H);
    }
    if (minX === Infinity) return;
    const width = this.svg.clientWidth || 800;
    const height = this.svg.clientHeight || 600;
    const k = Math.min(2, 0.95 * Math.min(width / (maxX - minX), height / (maxY - minY)));
    this.transform = { k, x: -minX * k + 20, y: -minY * k + 20 };
    this.applyTransform();
  }

  applyTransform() {
    const { x, y, k } = this.transform;
    this.viewport.setAttribute("transform", `translate(${x},${y}) scale(${k})`);
  }
}

function placeholder(id) {
  // The far end of an edge outside a host-filtered view.
  return { id, type: "other", name: id, host: null };
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

// The table: the same nodes as rows, sortable, with a filter on names and key:value metadata. It is also the
// fallback when a view is too big to draw.

const MAX_ROWS = 1000;

export function nodeMemory(node) {
  const m = node.metrics || {};
  return m.memory_rss ?? m.memory_used ?? m.memory_usage ?? null;
}

export function formatBytes(value) {
  if (value === null || value === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(value);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// "web image:nginx" matches nodes whose name or id contains "web" and whose image metadata contains "nginx".
export function matches(node, terms) {
  for (const term of terms) {
    const colon = term.indexOf(":");
    if (colon > 0) {
      const key = term.slice(0, colon);
      const want = term.slice(colon + 1);
      const value = key in (node.metadata || {}) ? node.metadata[key] : node[key];
      if (value === undefined || value === null || !String(value).toLowerCase().includes(want)) return false;
    } else if (!`${node.name || ""} ${node.id}`.toLowerCase().includes(term)) {
      return false;
    }
  }
  return true;
}

export class Table {
  constructor(onSelect) {
    this.body = document.getElementById("rows");
    this.note = document.getElementById("table-note");
    this.filter = document.getElementById("filter");
    this.onSelect = onSelect;
    this.sort = { key: "name", dir: 1 };
    this.selected = null;
    this.filter.addEventListener("input", () => this.onFilter && this.onFilter());
    for (const th of document.querySelectorAll("#table th[data-sort]")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
        for (const other of document.querySelectorAll("#table th[data-sort]")) other.removeAttribute("data-dir");
        th.dataset.dir = this.sort.dir > 0 ? "asc" : "desc";
        this.onFilter && this.onFilter();
      });
    }
  }

  render(nodes, edges) {
    const degree = new Map();
    for (const edge of edges.values()) {
      degree.set(edge.source, (degree.get(edge.source) || 0) + 1);
      degree.set(edge.target, (degree.get(edge.target) || 0) + 1);
    }
    const terms = this.filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const rows = [];
    for (const node of nodes.values()) {
      if (!terms.length || matches(node, terms)) rows.push(row(node, nodes, degree));
    }
    const { key, dir } = this.sort;
    rows.sort((a, b) => dir * compare(a[key], b[key]) || compare(a.id, b.id));
    const fragment = document.createDocumentFragment();
    for (const r of rows.slice(0, MAX_ROWS)) fragment.appendChild(this.rowElement(r));
    this.body.replaceChildren(fragment);
    this.note.textContent =
      rows.length > MAX_ROWS ? `Showing ${MAX_ROWS} of ${rows.length} matching nodes: narrow the filter.` : `${rows.length} nodes`;
  }

  rowElement(r) {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id;
    if (r.id === this.selected) tr.classList.add("selected");
    const cells = [r.type, r.name, r.host, r.parentName, r.cpu ?? "", formatBytes(r.memory), r.connections];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = value === null || value === undefined ? "" : String(value);
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => this.onSelect(r.id));
    return tr;
  }

  select(id) {
    this.selected = id;
    for (const tr of this.body.querySelectorAll("tr.selected")) tr.classList.remove("selected");
    const tr = this.body.querySelector(`tr[data-id="${CSS.escape(id || "")}"]`);
    if (tr) tr.classList.add("selected");
  }
}

function row(node, nodes, degree) {
  const parent = node.parent ? nodes.get(node.parent) : null;
  const cpu = node.metrics ? node.metrics.cpu_percent : undefined;
  return {
    id: node.id,
    type: node.type,
    name: node.name || node.id,
    host: node.host || "",
    parentName: parent ? parent.name : node.parent || "",
    parent: node.parent || "",
    cpu: typeof cpu === "number" ? Math.round(cpu * 10) / 10 : null,
    memory: nodeMemory(node),
    connections: degree.get(node.id) || 0,
  };
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined || a === "") return 1;
  if (b === null || b === undefined || b === "") return -1;
  return typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
}

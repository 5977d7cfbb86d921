// The topology as the contract defines it: a snapshot, then diffs applied in order. What changed in each
// step is returned so the views redraw only that.

export class Topology {
  constructor() {
    this.nodes = new Map();
    this.edges = new Map();
    this.seq = null;
    this.timestamp = null;
  }

  reset(payload, seq) {
    this.nodes = new Map(Object.entries(payload.nodes || {}));
    this.edges = new Map(Object.entries(payload.edges || {}));
    this.seq = seq;
    this.timestamp = payload.timestamp || null;
  }

  // Applies a topology_diff payload; returns what changed, or null when the diff does not follow this seq.
  apply(payload, seq) {
    if (this.seq === null || payload.from_seq !== this.seq) return null;
    const change = { structural: false, nodes: new Set(), edges: new Set() };
    applySection(this.nodes, payload.nodes, change.nodes, change);
    applySection(this.edges, payload.edges, change.edges, change);
    this.seq = seq;
    return change;
  }

  hostnames() {
    const names = new Set();
    for (const node of this.nodes.values()) if (node.host) names.add(node.host);
    return names;
  }
}

function applySection(items, section, touched, change) {
  if (!section) return;
  for (const id of section.removed || []) {
    if (items.delete(id)) change.structural = true;
    touched.add(id);
  }
  for (const [id, item] of Object.entries(section.added || {})) {
    items.set(id, item);
    touched.add(id);
    change.structural = true;
  }
  for (const [id, item] of Object.entries(section.updated || {})) {
    const before = items.get(id);
    if (!before || before.parent !== item.parent || before.name !== item.name) change.structural = true;
    items.set(id, item);
    touched.add(id);
  }
}

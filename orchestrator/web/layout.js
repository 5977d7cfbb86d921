// A stable layout: every node keeps the position it was first given, for as long as the page shows that
// view. A new node takes the next free slot of its lane and moves nobody; a metrics-only update moves
// nothing. Lanes are deterministic: one column per host (in order of first appearance) with the host on top
// and its containers and processes below, and the addresses outside every host in a lane of their own to the
// left, growing leftwards, so a new host or address never shifts an existing lane.

const SLOT_W = 230;
const SLOT_H = 34;
const GRID_COLUMNS = 8; // hosts per row in the host view
const GRID_W = 210;
const GRID_H = 64;
const GRID_ROWS = 24; // outside addresses per column
const OUTSIDE = "\u0000outside";

export class Layout {
  constructor(level) {
    this.level = level;
    this.positions = new Map(); // node id -> {x, y}
    this.lanes = new Map(); // lane key -> {index, rows}
    this.hostLanes = 0;
    this.outsideLanes = 0;
    this.gridCount = 0;
    this.outsideCount = 0;
  }

  position(id, node) {
    let found = this.positions.get(id);
    if (!found) {
      found = this.place(id, node);
      this.positions.set(id, found);
    }
    return found;
  }

  place(id, node) {
    const outside = !node || node.type === "external" || !node.host;
    if (this.level === "host") {
      // Hosts fill rows of a grid (a new host starts the next free cell); outside addresses fill columns
      // to the left of it.
      if (outside) {
        const i = this.outsideCount++;
        return { x: -GRID_W * (1 + Math.floor(i / GRID_ROWS)), y: SLOT_H * (i % GRID_ROWS) };
      }
      const i = this.gridCount++;
      return { x: GRID_W * (i % GRID_COLUMNS), y: GRID_H * Math.floor(i / GRID_COLUMNS) };
    }
    const key = outside ? OUTSIDE : node.host;
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = { index: outside ? -1 : this.hostLanes++, rows: 0, hostPlaced: false };
      this.lanes.set(key, lane);
    }
    if (node && node.type === "host" && !lane.hostPlaced) {
      lane.hostPlaced = true;
      return { x: lane.index * SLOT_W, y: 0 };
    }
    const row = ++lane.rows; // row 0 is the host's
    if (outside) {
      const column = Math.floor((row - 1) / GRID_ROWS);
      return { x: -SLOT_W * (1 + column), y: SLOT_H * ((row - 1) % GRID_ROWS) };
    }
    const indent = node.type === "process" && node.parent && node.parent.startsWith("container:") ? 14 : 0;
    return { x: lane.index * SLOT_W + indent, y: row * SLOT_H };
  }
}

export const SIZES = { slotWidth: SLOT_W, slotHeight: SLOT_H };

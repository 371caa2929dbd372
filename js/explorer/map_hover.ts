// Nearest-error lookup for hovering and clicking a large regl map without the library's own
// detection: each hover change there redraws every point, which on software WebGL blocks the page
// for most of a second at a million points. A uniform grid over the normalized positions
// ([-1, 1]^2), built once per draw in O(n); the camera's view matrix maps the mouse to them.
const G = 512;

export class GridIndex {
  private start: Int32Array; // cell c holds order[start[c] .. start[c + 1])
  private order: Int32Array;

  /** Errors are points `first ..` of the columns (the background before them is not indexed). */
  constructor(private x: Float32Array, private y: Float32Array, private first: number) {
    const n = x.length - first, cellOf = new Int32Array(n), count = new Int32Array(G * G + 1);
    for (let i = 0; i < n; i++) {
      const c = GridIndex.cell(x[first + i], y[first + i]);
      cellOf[i] = c;
      count[c + 1]++;
    }
    for (let c = 0; c < G * G; c++) count[c + 1] += count[c];
    this.start = count.slice();
    this.order = new Int32Array(n);
    const fill = count; // reused as the write cursor of each cell
    for (let i = 0; i < n; i++) this.order[fill[cellOf[i]]++] = i;
  }

  private static axis(v: number): number { return Math.min(G - 1, Math.max(0, Math.floor(((v + 1) / 2) * G))); }
  private static cell(x: number, y: number): number { return GridIndex.axis(y) * G + GridIndex.axis(x); }

  /** The error nearest to (x, y) within `r` (normalized units), or -1. */
  nearest(x: number, y: number, r: number): number {
    let best = -1, bestD = r * r;
    const x0 = GridIndex.axis(x - r), x1 = GridIndex.axis(x + r), y0 = GridIndex.axis(y - r), y1 = GridIndex.axis(y + r);
    for (let cy = y0; cy <= y1; cy++) {
      for (let cx = x0; cx <= x1; cx++) {
        const c = cy * G + cx;
        for (let k = this.start[c]; k < this.start[c + 1]; k++) {
          const i = this.order[k], dx = this.x[this.first + i] - x, dy = this.y[this.first + i] - y;
          const d = dx * dx + dy * dy;
          if (d < bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }
}

/** Normalized position under canvas point (px, py) (CSS pixels) for a view matrix without
 * rotation, the data aspect ratio set to the canvas's (as the regl map does); and the size of
 * one CSS pixel there. */
export function unproject(view: ArrayLike<number>, w: number, h: number, px: number, py: number): [number, number, number] {
  const ar = w / h, xc = (2 * px) / w - 1, yc = 1 - (2 * py) / h;
  return [(xc - view[12] / ar) / view[0], (yc - view[13]) / view[5], 2 / (w * view[0])];
}

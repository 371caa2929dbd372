// Point categories and their styles for the regl map. Every drawn point has one category: 0 for the
// faint background, 1 + 4 * key + 2 * bit + fixed for an error (key: its "Colour by" color,
// map_colors.ts; bit: in the selected region, set only when the colors are not the regions';
// fixed: 1 when a fine-tuning round fixed it). Colors, opacities and sizes are small
// per-category tables, so selecting a region while colored by region restyles the map without
// re-sending its points.
import { Arr } from "../common/codec";
import { BACKGROUND, MapData } from "./map_data";
import { Coloring } from "./map_colors";

export type Style = { pointColor: string[]; opacity: number[]; pointSize: number[] };

/** Category of each point: background 0, error i 1 + 4 * key + 2 * (in the highlighted set) + fixed
 * (Float32, as the library reads them). */
export function categories(c: Coloring, fixed: Arr | null, inSel: Uint8Array | null, nb: number): Float32Array {
  const k = c.keys, f = fixed?.data, n = k.length;
  const out = new Float32Array(nb + n); // background: 0
  for (let i = 0; i < n; i++) out[nb + i] = 1 + 4 * k[i] + (inSel && inSel[i] ? 2 : 0) + (f && f[i] ? 1 : 0);
  return out;
}

/** Whether the points of `key` (and highlight bit `bit`) are highlighted; null: nothing is. */
export type Highlight = ((key: number, bit: number) => boolean) | null;

/** `#rrggbb` drawn at opacity `a` over white, as an opaque color (for drawing without blending). */
export function overWhite(hex: string, a: number): string {
  const v = parseInt(hex.slice(1, 7), 16);
  const ch = (shift: number) => Math.round(255 - a * (255 - ((v >> shift) & 255)));
  return `#${((1 << 24) | (ch(16) << 16) | (ch(8) << 8) | ch(0)).toString(16).slice(1)}`;
}

/** Without alpha blending (the library's performance mode), opacities become opaque colors. */
export function flatten(st: Style): Style {
  return { pointColor: st.pointColor.map((c, k) => overWhite(c, st.opacity[k])),
    opacity: st.opacity.map(() => 1), pointSize: st.pointSize };
}

/** The per-category tables: highlighted points drawn larger and opaque, the others dimmed. */
export function style(c: Coloring, on: Highlight, size: number): Style {
  const pointColor = [BACKGROUND.color], opacity = [BACKGROUND.opacity], pointSize = [Math.max(1, size - 2)];
  for (let key = 0; key < c.colors.length; key++) {
    for (const bit of [0, 1]) {
      const lit = on === null || on(key, bit);
      pointColor.push(c.colors[key], c.colors[key]);
      opacity.push(lit ? (on === null ? 0.85 : 1) : 0.25, lit ? 0.35 : 0.08); // normal, fixed
      const s = on !== null && lit ? size + 2 : size;
      pointSize.push(s, s);
    }
  }
  return { pointColor, opacity, pointSize };
}

/** Scale to normalized device coordinates [-0.95, 0.95] over the errors and the background. */
export function normalizer(arrays: Arr2[]): (x: number, y: number) => [number, number] {
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i += 2) {
      const x = a[i], y = a[i + 1];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
  }
  if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
  if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
  const sx = 1.9 / (x1 - x0), sy = 1.9 / (y1 - y0);
  return (x, y) => [(x - x0) * sx - 0.95, (y - y0) * sy - 0.95];
}

type Arr2 = ArrayLike<number>; // interleaved x, y

/** x and y columns (normalized) of the background then the errors. */
export function positions(d: MapData, bg: Arr2 | null): { x: Float32Array; y: Float32Array } {
  const e = d.xy.data, parts = bg ? [bg, e] : [e];
  const norm = normalizer(parts);
  const total = parts.reduce((s, a) => s + a.length / 2, 0);
  const x = new Float32Array(total), y = new Float32Array(total);
  let k = 0;
  for (const a of parts) {
    for (let i = 0; i < a.length; i += 2, k++) [x[k], y[k]] = norm(a[i], a[i + 1]);
  }
  return { x, y };
}

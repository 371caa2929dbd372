// Point categories and their styles for the regl map. Every drawn point has one category: 0 for the
// faint background, 1 + 2 * slot + fixed for an error (slot 0: in no region, slot k: the k-th
// region id; fixed: 1 when a fine-tuning round fixed it). Colors, opacities and sizes are small
// per-category tables, so selecting a region restyles the map without re-sending its points.
import { BACKGROUND, GREY, MapData } from "./map";

export type Style = { pointColor: string[]; opacity: number[]; pointSize: number[] };

/** Region id -> slot (1..), in id order. */
export function slotsOf(d: MapData): Map<number, number> {
  const ids = [...d.colors.keys()].sort((a, b) => a - b);
  return new Map(ids.map((id, k) => [id, k + 1]));
}

/** Categories of nb background points followed by the errors (Float32, as the library reads them). */
export function categories(d: MapData, slots: Map<number, number>, nb: number): Float32Array {
  const r = d.region.data, f = d.fixed?.data, n = r.length;
  const out = new Float32Array(nb + n); // background: 0
  for (let i = 0; i < n; i++) out[nb + i] = 1 + 2 * (slots.get(r[i]) ?? 0) + (f && f[i] ? 1 : 0);
  return out;
}

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

/** The per-category tables; `selected`: the highlighted region's id (-1: none, nothing dimmed). */
export function style(d: MapData, slots: Map<number, number>, selected: number, size: number): Style {
  const sel = slots.get(selected) ?? -1;
  const pointColor = [BACKGROUND.color], opacity = [BACKGROUND.opacity], pointSize = [Math.max(1, size - 2)];
  const colorOfSlot = new Map<number, string>([[0, GREY]]);
  for (const [id, slot] of slots) colorOfSlot.set(slot, d.colors.get(id) ?? GREY);
  for (let slot = 0; slot <= slots.size; slot++) {
    const on = sel < 0 || slot === sel;
    const color = colorOfSlot.get(slot) ?? GREY;
    pointColor.push(color, color);
    opacity.push(on ? (sel < 0 ? 0.85 : 1) : 0.25, on ? 0.35 : 0.08); // normal, fixed
    const s = sel >= 0 && slot === sel ? size + 2 : size;
    pointSize.push(s, s);
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

// "Colour by": what each error's color stands for (its region, true class, predicted class or
// validity), as a key per error into a small color table (key 0: grey, "no value"), so both map
// engines color, dim and restyle from the same numbers.
import { GREY, MapData } from "./map_data";

export type ColorBy = "region" | "true" | "pred" | "validity";

export const COLOR_BY: [ColorBy, string][] = [
  ["region", "Region"], ["true", "True class"], ["pred", "Predicted class"], ["validity", "Validity"],
];

/** keys[i]: error i's entry of `colors`; `legend`: what the colors mean (empty for regions,
 * whose list beside the map is their legend). */
export type Coloring = {
  keys: Uint16Array; colors: string[]; legend: [string, string][];
  regionKey?: Map<number, number>; // when colored by region: region id -> key
};

const CLASS_COLORS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#3182bd",
  "#fd8d3c", "#74c476", "#ad494a", "#a55194",
];
const VALIDITY_COLORS = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"]; // viridis

function byRegion(d: MapData): Coloring {
  const ids = [...d.colors.keys()].sort((a, b) => a - b);
  const slot = new Map(ids.map((id, k) => [id, k + 1]));
  const r = d.region.data, keys = new Uint16Array(r.length);
  for (let i = 0; i < r.length; i++) keys[i] = slot.get(r[i]) ?? 0;
  return { keys, colors: [GREY, ...ids.map((id) => d.colors.get(id) ?? GREY)], legend: [], regionKey: slot };
}

function byClass(d: MapData, column: 0 | 1): Coloring {
  const n = d.region.data.length, keys = new Uint16Array(n), lab = d.labels?.data;
  const k = Math.max(d.classes.length, 1);
  if (lab) for (let i = 0; i < n; i++) keys[i] = lab[2 * i + column] >= 0 ? 1 + lab[2 * i + column] : 0;
  const colors = [GREY], legend: [string, string][] = [];
  for (let c = 0; c < k; c++) {
    const color = CLASS_COLORS[c % CLASS_COLORS.length];
    colors.push(color);
    legend.push([d.classes[c] ?? String(c), color]);
  }
  return { keys, colors, legend };
}

function byValidity(d: MapData): Coloring {
  const n = d.region.data.length, keys = new Uint16Array(n), v = d.validity?.data, bins = VALIDITY_COLORS.length;
  if (v) for (let i = 0; i < n; i++) keys[i] = Number.isFinite(v[i]) ? 1 + Math.min(bins - 1, Math.max(0, Math.floor(v[i] * bins))) : 0;
  const legend = VALIDITY_COLORS.map((c, b): [string, string] => [`${(b / bins).toFixed(2)}–${((b + 1) / bins).toFixed(2)}`, c]);
  return { keys, colors: [GREY, ...VALIDITY_COLORS], legend };
}

export function coloring(d: MapData, by: ColorBy): Coloring {
  if (by === "true") return byClass(d, 0);
  if (by === "pred") return byClass(d, 1);
  if (by === "validity") return byValidity(d);
  return byRegion(d);
}

/** inSel[i]: whether error i lies in region `selected` (null when none is selected). */
export function inRegion(d: MapData, selected: number): Uint8Array | null {
  if (selected < 0) return null;
  const r = d.region.data, out = new Uint8Array(r.length);
  for (let i = 0; i < r.length; i++) out[i] = r[i] === selected ? 1 : 0;
  return out;
}

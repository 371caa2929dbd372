// The error map: what the explorer sees of it (MapView), the element every engine draws into
// (MapShell: accessible name, data-* attributes, mode buttons, hover tooltip, background note),
// the two engines: regl-scatterplot (WebGL, millions of points; map_regl.ts) by default, plotly
// scattergl (map_plotly.ts) on request or where WebGL is missing (map_create.ts chooses).
import { Arr, imageURL } from "../common/codec";
import { COLOR_BY, ColorBy, coloring } from "./map_colors";
import { KeyNav } from "./map_keys";
import { MapData } from "./map_data";

export type MapHandlers = {
  onClickPoint(index: number): void;
  onSelect(indices: Int32Array | null): void;
  thumb(index: number): Promise<Arr | null>;
};

export type MapMode = "lasso" | "pan";

/** What explorer.ts uses of a map, whichever engine draws it. */
export interface MapView {
  root: HTMLElement;
  selectedRegion: number;
  render(d: MapData): Promise<void>;
  recolor(d: MapData): Promise<void>;
  setSelectedRegion(rid: number): Promise<void>;
  /** What the errors' colors stand for (map_colors.ts); the selected region stays highlighted. */
  setColorBy(by: ColorBy): Promise<void>;
  setSelection(indices: Int32Array | null): void;
  setMode(mode: MapMode): void;
  resetView(): void;
  /** Name the background points in the map's note (no redraw). */
  setBackgroundLabel(label: string): void;
  /** The color and opacity error `i` is drawn with (tests). */
  styleOf(i: number): { color: string; opacity: number } | null;
  /** Page (client) coordinates of error `i`, or null when it is not drawn (tests, benchmarks). */
  screenPosition(i: number): [number, number] | null;
  destroy(): void;
}

export function webglOK(): boolean {
  try {
    const c = document.createElement("canvas");
    return !!(c.getContext("webgl") || c.getContext("experimental-webgl"));
  } catch { return false; }
}

/** Marker size in CSS pixels for a map of n errors (the same for both engines). */
export function markerSize(n: number): number { return n > 20000 ? 3 : n > 2000 ? 5 : 7; }

function button(label: string, text: string, onClick: () => void): HTMLButtonElement {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "dfx-map-tool";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/** Error i in words: true -> predicted (confidence) and its region. */
export function describe(d: MapData, i: number): string {
  const t = d.labels ? d.labels.data[2 * i] : -1, p = d.labels ? d.labels.data[2 * i + 1] : -1;
  const conf = d.confidence ? d.confidence.data[i] : NaN, rid = d.region.data[i];
  const name = (k: number) => d.classes[k] ?? String(k);
  return `${name(t)} \u2192 ${name(p)} (${(100 * conf).toFixed(0)}%)` + (rid >= 0 ? ` \u00b7 region ${rid}` : "");
}

/** The map's element and the parts both engines share. */
export class MapShell {
  root: HTMLElement;
  plot: HTMLElement;
  tip: HTMLElement;
  note: HTMLElement;
  private tools: HTMLElement;
  private hoverToken = 0;
  private backgroundLabel = "";
  private modeButtons = new Map<MapMode, HTMLButtonElement>();
  private data: MapData | null = null;
  head: HTMLElement;
  private legend: HTMLElement;
  colorBy: ColorBy = "region";
  keys: KeyNav;

  constructor(parent: HTMLElement, engine: string, private h: MapHandlers, private view: MapView) {
    this.root = document.createElement("div");
    this.root.className = "dfx-map";
    this.root.setAttribute("role", "figure");
    this.root.setAttribute("aria-label", "Error map");
    this.root.dataset.engine = engine;
    (this.root as any).dfxMap = view; // for tests and benchmarks: screenPosition, setMode
    this.plot = document.createElement("div");
    this.plot.className = "dfx-map-plot";
    this.tip = document.createElement("div");
    this.tip.className = "dfx-tip";
    this.tip.setAttribute("role", "tooltip");
    this.note = document.createElement("div");
    this.note.className = "dfx-map-note";
    this.tools = document.createElement("div");
    this.tools.className = "dfx-map-tools";
    this.tools.setAttribute("role", "toolbar");
    this.tools.setAttribute("aria-label", "Map tools");
    for (const [mode, label, text] of [["lasso", "Lasso Select", "Lasso"], ["pan", "Pan", "Pan"]] as const) {
      const b = button(label, text, () => view.setMode(mode));
      this.modeButtons.set(mode, b);
      this.tools.append(b);
    }
    this.tools.append(button("Reset axes", "Reset", () => view.resetView()));
    this.root.append(this.plot, this.tip, this.note, this.tools);
    this.legend = document.createElement("span");
    this.legend.className = "dfx-legend";
    this.head = this.makeHead();
    parent.append(this.head, this.root);
    this.keys = new KeyNav(this.root, {
      region: () => this.data?.region.data ?? null,
      selectedRegion: () => this.view.selectedRegion,
      position: (i) => this.view.screenPosition(i),
      show: (i, x, y) => { if (this.data) void this.showTip(this.data, i, x, y); },
      hide: () => this.hideTip(),
      describe: (i) => (this.data ? describe(this.data, i) : ""),
      open: (i) => this.h.onClickPoint(i),
    });
  }

  /** The header above the map: "Colour by" and the legend of the chosen colors. */
  private makeHead(): HTMLElement {
    const head = document.createElement("div");
    head.className = "dfx-map-head";
    const label = document.createElement("label");
    label.textContent = "Colour by ";
    const select = document.createElement("select");
    select.setAttribute("aria-label", "Colour by");
    for (const [value, text] of COLOR_BY) select.append(new Option(text, value, value === this.colorBy, value === this.colorBy));
    select.addEventListener("change", () => void this.setColorBy(select.value as ColorBy));
    label.append(select);
    this.legend.setAttribute("aria-label", "Colour legend");
    head.append(label, this.legend);
    return head;
  }

  async setColorBy(by: ColorBy): Promise<void> {
    this.colorBy = by;
    this.root.dataset.colorBy = by;
    this.showLegend();
    await this.view.setColorBy(by);
    this.root.dataset.colored = by;
  }

  private showLegend(): void {
    const items = this.data ? coloring(this.data, this.colorBy).legend : [];
    this.legend.replaceChildren(...items.map(([text, color]) => {
      const item = document.createElement("span");
      const sw = document.createElement("span");
      sw.className = "dfx-swatch";
      sw.style.background = color;
      item.append(sw, text);
      return item;
    }));
  }

  /** Mark the pressed mode button and the root's `data-mode`. */
  showMode(mode: MapMode): void {
    this.root.dataset.mode = mode;
    for (const [m, b] of this.modeButtons) b.setAttribute("aria-pressed", String(m === mode));
  }

  /** The note naming the faint background points (the label may come after the points). */
  setNote(nb: number, label: string): void {
    if (label) this.backgroundLabel = label; // a draw begun before the label came keeps it
    this.note.textContent = nb ? `Faint grey: ${nb.toLocaleString("en-US")} ${this.backgroundLabel}` : "";
  }

  /** Background note and the `data-*` attributes outside checks rely on, after a draw. */
  drawn(d: MapData, n: number, nb: number): void {
    const first = !this.data;
    this.data = d;
    if (first) this.showLegend();
    this.root.dataset.colorBy = this.colorBy;
    this.root.dataset.colored = this.colorBy;
    this.setNote(nb, d.backgroundLabel);
    this.root.dataset.background = String(nb);
    this.root.dataset.points = String(n);
    this.root.dataset.layout = d.layout;
    this.root.dataset.rendered = String(Date.now());
  }

  setSelectedCount(n: number): void { this.root.dataset.selected = String(n); }

  hideTip(): void { this.hoverToken++; this.tip.style.display = "none"; }

  /** The hover tooltip of error i at page position (clientX, clientY): text now, image when it comes. */
  async showTip(d: MapData, i: number, clientX: number | null, clientY: number | null): Promise<void> {
    const token = ++this.hoverToken;
    const box = this.root.getBoundingClientRect();
    const x = clientX === null ? 10 : clientX - box.left, y = clientY === null ? 10 : clientY - box.top;
    const t = d.labels ? d.labels.data[2 * i] : -1, p = d.labels ? d.labels.data[2 * i + 1] : -1;
    const name = (k: number) => d.classes[k] ?? String(k);
    const text = describe(d, i);
    this.tip.innerHTML = "";
    const cap = document.createElement("div");
    cap.textContent = text;
    this.tip.append(cap);
    this.tip.style.left = `${Math.min(x + 12, box.width - 150)}px`;
    this.tip.style.top = `${Math.max(0, y - 90)}px`;
    this.tip.style.display = "block";
    const arr = await this.h.thumb(i);
    if (token !== this.hoverToken || !arr) return;
    const img = document.createElement("img");
    img.alt = `Error ${i}: true ${name(t)}, predicted ${name(p)}`;
    img.src = imageURL(arr, arr.shape[0] === 1 ? 0 : i);
    this.tip.prepend(img);
    this.root.dataset.hovered = String(i);
  }
}

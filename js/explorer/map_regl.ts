// The error map on regl-scatterplot (WebGL; one point set: the faint background first, beneath,
// then the errors, so error i is drawn point nb + i). Colors, opacities and sizes come from
// per-category tables (map_style.ts): selecting a region dims the others without re-sending the
// points. Dragging lassoes (or pans, with the Pan tool), the wheel zooms, a click on an error
// opens it, hovering shows its thumbnail.
import createScatterplot, { createRenderer } from "regl-scatterplot";
import { MapHandlers, MapMode, MapShell, MapView, markerSize } from "./map";
import { MapData } from "./map_data";
import { GridIndex, unproject } from "./map_hover";
import { ColorBy, Coloring, coloring, inRegion } from "./map_colors";
import { categories, flatten, Highlight, positions, style } from "./map_style";

/** Above this many drawn points, the library's performance mode: square points, no alpha blending
 * (opacities become opaque colors), several times cheaper per frame on software WebGL. */
export const FLAT_ABOVE = 500_000;

type Scatter = ReturnType<typeof createScatterplot>;
type Renderer = ReturnType<typeof createRenderer>;

export class ReglMap implements MapView {
  root: HTMLElement;
  data: MapData | null = null;
  selectedRegion = -1;
  private shell: MapShell;
  private canvas: HTMLCanvasElement;
  private sp: Scatter | null = null;
  private renderer: Renderer | null = null;
  private flat = false; // whether `sp` was made in performance mode
  private observer: ResizeObserver;
  private nb = 0; // background points drawn beneath the errors
  private cols: { x: Float32Array; y: Float32Array; z: Float32Array } | null = null;
  private col: Coloring | null = null;
  private colorBy: ColorBy = "region";
  private layout: string | null = null;
  private mode: MapMode = "lasso";
  private selected = new Int32Array(0); // error indices, as Python has them
  private lassoing = false;
  private mouse: [number, number] | null = null;
  private grid: GridIndex | null = null; // own hover/click lookup in performance mode
  private hovered = -1;
  private down: [number, number] | null = null;

  constructor(parent: HTMLElement, private h: MapHandlers) {
    this.shell = new MapShell(parent, "regl", h, this);
    this.root = this.shell.root;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "dfx-map-canvas";
    this.canvas.setAttribute("aria-hidden", "true");
    this.shell.plot.append(this.canvas);
    this.canvas.addEventListener("mousemove", (e) => { this.mouse = [e.clientX, e.clientY]; if (!e.buttons) this.gridHover(e); });
    this.canvas.addEventListener("mousedown", (e) => { this.down = [e.clientX, e.clientY]; });
    this.canvas.addEventListener("click", (e) => this.gridClick(e));
    this.canvas.addEventListener("mouseleave", () => { this.hovered = -1; this.shell.hideTip(); });
    this.shell.showMode(this.mode);
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.root);
  }

  private size(): [number, number] {
    const w = this.shell.plot.clientWidth || 600, h = this.shell.plot.clientHeight || 460;
    return [w, h];
  }

  /** A renderer drawing at the map's size (the library's default draws at the window's size,
   * then copies: several times the pixels to fill on a software-WebGL machine). */
  private makeRenderer(width: number, height: number): Renderer {
    const c = document.createElement("canvas"), dpr = window.devicePixelRatio || 1;
    c.width = Math.round(width * dpr); c.height = Math.round(height * dpr);
    return createRenderer({ canvas: c } as any);
  }

  private create(flat: boolean): Scatter {
    const [width, height] = this.size();
    this.flat = flat;
    this.renderer = this.makeRenderer(width, height);
    const sp = createScatterplot({
      canvas: this.canvas, renderer: this.renderer, width, height, aspectRatio: width / height,
      syncEvents: true, // handlers run in the input event, before the next (blocking) frame
      performanceMode: flat,
      // hover and click found by `grid`: a negative detection size makes the library's own search
      // find nothing, so a hover neither redraws every point nor reports a background point
      ...(flat ? { pointSizeMouseDetection: -1e9 } : {}),
      backgroundColor: "#ffffff", pointColorHover: "#000000", pointColorActive: "#1a1a1a",
      opacityInactiveScale: 0.5, pointSizeSelected: 1, pointOutlineWidth: 1,
      colorBy: "valueA", opacityBy: "valueA", sizeBy: "valueA",
      mouseMode: this.mode === "lasso" ? "lasso" : "panZoom",
      deselectOnEscape: false, lassoMinDelay: 8, lassoMinDist: 3,
    } as any);
    sp.subscribe("lassoStart", () => { this.lassoing = true; });
    sp.subscribe("lassoEnd", () => { this.lassoing = false; });
    sp.subscribe("select", ({ points }: { points: number[] }) => this.onSelect(points));
    sp.subscribe("deselect", () => this.onDeselect());
    if (!flat) {
      sp.subscribe("pointOver", (i: number) => this.onHover(i));
      sp.subscribe("pointOut", () => this.shell.hideTip());
    }
    return sp;
  }

  /** Draws run one after another (the library refuses a draw while one is under way). */
  private queue: Promise<void> = Promise.resolve();

  private enqueue(job: () => Promise<void>): Promise<void> {
    const run = this.queue.then(job);
    this.queue = run.catch(() => undefined);
    return run;
  }

  render(d: MapData): Promise<void> { return this.enqueue(() => this.renderNow(d)); }

  recolor(d: MapData): Promise<void> { return this.enqueue(() => this.recolorNow(d)); }

  private async renderNow(d: MapData): Promise<void> {
    this.data = d;
    const bg = d.background && d.background.data.length ? d.background : null;
    this.nb = bg ? bg.shape[0] : 0;
    const { x, y } = positions(d, bg ? bg.data : null);
    this.cols = { x, y, z: this.categoriesOf(d) };
    const flat = x.length > ((window as any).dfxFlatAbove ?? FLAT_ABOVE); // overridable by tests
    if (this.sp && this.flat !== flat) this.destroyScatter();
    this.sp ??= this.create(flat);
    this.grid = null;
    await this.draw(false);
    if (this.flat) this.grid = new GridIndex(x, y, this.nb);
    if (this.layout !== null && this.layout !== d.layout) this.sp.reset(); // a new layout: new view
    this.layout = d.layout;
    this.shell.drawn(d, d.region.data.length, this.nb);
  }

  /** Upload the columns (reusing the spatial index when only categories change), style, wait a frame. */
  private async draw(sameXY: boolean): Promise<void> {
    const sp = this.sp!, c = this.cols!;
    const opts: any = { zDataType: "categorical", preventFilterReset: sameXY };
    if (sameXY) opts.spatialIndex = sp.get("spatialIndex" as any);
    const painted = new Promise<void>((resolve) => sp.subscribe("draw", () => resolve(), 1));
    this.applyStyle();
    await sp.draw({ x: c.x, y: c.y, valueA: c.z } as any, opts);
    this.reselect();
    await painted;
  }

  private async recolorNow(d: MapData): Promise<void> {
    if (!this.sp || !this.cols || !this.data || d.region.data.length !== this.data.region.data.length) return this.renderNow(d);
    this.data = d;
    const z = this.categoriesOf(d), old = this.cols.z;
    let same = z.length === old.length;
    for (let i = 0; same && i < z.length; i++) same = z[i] === old[i];
    if (same) { this.applyStyle(); return; }
    this.cols.z = z;
    await this.draw(true);
  }

  /** Colors by region carry the highlight in the style tables; other colors in a category bit. */
  private categoriesOf(d: MapData): Float32Array {
    this.col = coloring(d, this.colorBy);
    const bit = this.colorBy === "region" ? null : inRegion(d, this.selectedRegion);
    return categories(this.col, d.fixed, bit, this.nb);
  }

  private highlight(): Highlight {
    if (this.selectedRegion < 0 || !this.col) return null;
    const key = this.col.regionKey?.get(this.selectedRegion);
    if (this.col.regionKey) return (k) => k === key;
    return (_k, bit) => bit === 1;
  }

  private applyStyle(): void {
    if (!this.sp || !this.data || !this.col) return;
    const st = style(this.col, this.highlight(), markerSize(this.data.region.data.length));
    // regl-scatterplot keeps its opacity and size tables when the new ones hold the same *set*
    // of values (its hasSameElements): a highlight moved from one region to another would never
    // be painted. A one-entry table in between makes every new table count as a change.
    this.sp.set({ opacity: [1], pointSize: [1] } as any);
    this.sp.set((this.flat ? flatten(st) : st) as any);
  }

  async setSelectedRegion(rid: number): Promise<void> {
    this.selectedRegion = rid;
    if (this.colorBy === "region" || !this.data) { this.applyStyle(); return; }
    const d = this.data;
    return this.enqueue(() => this.recolorNow(d));
  }

  setColorBy(by: ColorBy): Promise<void> {
    this.colorBy = by;
    const d = this.data;
    return d ? this.enqueue(() => this.recolorNow(d)) : Promise.resolve();
  }

  styleOf(i: number): { color: string; opacity: number } | null {
    if (!this.col || !this.cols || !this.data || i < 0 || i >= this.data.region.data.length) return null;
    const st = style(this.col, this.highlight(), markerSize(this.data.region.data.length));
    const z = this.cols.z[this.nb + i];
    return { color: st.pointColor[z], opacity: st.opacity[z] };
  }

  setSelection(indices: Int32Array | null): void {
    this.selected = indices ? Int32Array.from(indices) : new Int32Array(0);
    this.shell.setSelectedCount(this.selected.length);
    this.reselect();
  }

  /** Show `selected` (errors only) without telling anyone. */
  private reselect(): void {
    const sp = this.sp;
    if (!sp || !this.cols) return;
    if (!this.selected.length) { sp.deselect({ preventEvent: true }); return; }
    const pts = new Array<number>(this.selected.length);
    for (let k = 0; k < pts.length; k++) pts[k] = this.selected[k] + this.nb;
    sp.select(pts, { preventEvent: true });
  }

  private onSelect(points: number[]): void {
    const nb = this.nb;
    if (!this.lassoing) { // a click picks one point: open it, keep the lasso selection as it was
      this.reselect();
      if (points.length === 1 && points[0] >= nb) this.h.onClickPoint(points[0] - nb);
      return;
    }
    this.lassoing = false;
    const errs = new Int32Array(points.length);
    let k = 0;
    for (const p of points) if (p >= nb) errs[k++] = p - nb;
    this.selected = errs.slice(0, k);
    this.shell.setSelectedCount(k);
    this.h.onSelect(this.selected);
    // background points are not selectable; reselecting is another pass over every selected
    // point, so it runs after Python has been sent the selection
    if (k !== points.length) this.reselect();
  }

  private onDeselect(): void {
    this.lassoing = false;
    this.selected = new Int32Array(0);
    this.shell.setSelectedCount(0);
    this.h.onSelect(null);
  }

  private onHover(p: number): void {
    if (!this.data || p < this.nb) { this.shell.hideTip(); return; }
    const m = this.mouse;
    void this.shell.showTip(this.data, p - this.nb, m ? m[0] : null, m ? m[1] : null);
  }

  /** The error under the mouse (performance mode), or -1. */
  private gridFind(e: MouseEvent): number {
    if (!this.grid || !this.sp) return -1;
    const box = this.canvas.getBoundingClientRect();
    const view = this.sp.get("cameraView" as any) as unknown as Float32Array;
    const [x, y, px] = unproject(view, box.width, box.height, e.clientX - box.left, e.clientY - box.top);
    return this.grid.nearest(x, y, 5 * px);
  }

  private gridHover(e: MouseEvent): void {
    if (!this.grid || !this.data) return;
    const i = this.gridFind(e);
    if (i === this.hovered) return;
    this.hovered = i;
    if (i < 0) this.shell.hideTip(); else void this.shell.showTip(this.data, i, e.clientX, e.clientY);
  }

  private gridClick(e: MouseEvent): void {
    const d = this.down;
    if (!this.grid || !d || Math.hypot(e.clientX - d[0], e.clientY - d[1]) > 3) return;
    const i = this.gridFind(e);
    if (i >= 0) this.h.onClickPoint(i);
  }

  setMode(mode: MapMode): void {
    this.mode = mode;
    this.shell.showMode(mode);
    this.sp?.set({ mouseMode: mode === "lasso" ? "lasso" : "panZoom" } as any);
  }

  setBackgroundLabel(label: string): void {
    if (this.data) this.data = { ...this.data, backgroundLabel: label };
    this.shell.setNote(this.nb, label);
  }

  resetView(): void { this.sp?.reset(); }

  screenPosition(i: number): [number, number] | null {
    if (!this.sp || !this.data || i < 0 || i >= this.data.region.data.length) return null;
    const p = this.sp.getScreenPosition(i + this.nb);
    if (!p) return null;
    const box = this.canvas.getBoundingClientRect();
    return [box.left + p[0], box.top + p[1]];
  }

  private resize(): void {
    const [width, height] = this.size();
    if (!this.sp || this.shell.plot.clientWidth <= 0) return;
    this.renderer?.resize(width, height);
    this.sp.set({ width, height, aspectRatio: width / height } as any);
  }

  private destroyScatter(): void {
    this.sp?.destroy();
    this.renderer?.destroy();
    this.sp = null;
    this.renderer = null;
  }

  destroy(): void { this.observer.disconnect(); this.destroyScatter(); }
}

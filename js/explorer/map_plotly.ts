// The error map on plotly: one WebGL scatter (scattergl) of the 2-D projection, colored by region,
// over an optional faint trace of dataset images' codes placed on the same map (no hover, not
// selectable). Kept beside the regl map for the benchmark and as the no-WebGL fallback (SVG).
import Plotly from "plotly.js-gl2d-dist-min";
import { Arr } from "../common/codec";
import { MapHandlers, MapMode, MapShell, MapView, markerSize, webglOK } from "./map";
import { BACKGROUND, MapData } from "./map_data";
import { ColorBy, coloring } from "./map_colors";

/** x and y columns of an (n, 2) array. */
function columns(a: Arr): [Float32Array, Float32Array] {
  const n = a.shape[0], xs = new Float32Array(n), ys = new Float32Array(n);
  for (let i = 0; i < n; i++) { xs[i] = a.data[2 * i]; ys[i] = a.data[2 * i + 1]; }
  return [xs, ys];
}

export class PlotlyMap implements MapView {
  root: HTMLElement;
  plot: HTMLElement;
  data: MapData | null = null;
  selectedRegion = -1;
  ready = false;
  private shell: MapShell;
  private observer: ResizeObserver;
  private overlay: HTMLCanvasElement;
  private markerSize = 7;
  private errorTrace = 0; // index of the error trace (1 when a background trace lies beneath it)
  private traceType = webglOK() ? "scattergl" : "scatter";
  private mode: MapMode = "lasso";
  private colorBy: ColorBy = "region";

  constructor(parent: HTMLElement, private h: MapHandlers) {
    this.shell = new MapShell(parent, "plotly", h, this);
    this.root = this.shell.root;
    this.plot = this.shell.plot;
    this.overlay = document.createElement("canvas");
    this.overlay.style.cssText = "position:absolute;left:0;top:0;pointer-events:none";
    this.overlay.setAttribute("aria-hidden", "true");
    this.plot.after(this.overlay);
    this.shell.showMode(this.mode);
    // the widget's element may not be in the page (or sized) yet at the first draw
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.root);
  }

  private colorArray(d: MapData): string[] {
    const { keys, colors } = coloring(d, this.colorBy), out = new Array<string>(keys.length);
    for (let i = 0; i < keys.length; i++) out[i] = colors[keys[i]];
    return out;
  }

  /** Fixed errors faint; with a region selected, the other regions' errors dimmed. */
  private opacityArray(d: MapData): number[] | number {
    const f = d.fixed?.data, r = d.region.data, sel = this.selectedRegion;
    if (!f && sel < 0) return 0.85;
    const out = new Array<number>(r.length);
    for (let i = 0; i < r.length; i++) {
      const lit = sel < 0 || r[i] === sel;
      out[i] = (f && f[i] ? 0.2 : lit ? 0.9 : 0.25) * (lit ? 1 : 0.6);
    }
    return out;
  }

  private restyle(d: MapData): Promise<unknown> {
    return Plotly.restyle(this.plot, { "marker.color": [this.colorArray(d)], "marker.opacity": [this.opacityArray(d)] }, [this.errorTrace]);
  }

  /** Indices of the selected region's points (outlined on a 2-D canvas over the WebGL plot:
   * restyling a second WebGL trace would make plotly recompute every trace, ~seconds at 100k). */
  private highlighted: number[] = [];

  private computeHighlight(): void {
    const d = this.data, out: number[] = [];
    if (d && this.selectedRegion >= 0) {
      const r = d.region.data;
      for (let i = 0; i < r.length; i++) if (r[i] === this.selectedRegion) out.push(i);
    }
    this.highlighted = out;
  }

  private drawOverlay(): void {
    const gd: any = this.plot, L = gd._fullLayout, d = this.data;
    const cv = this.overlay, dpr = window.devicePixelRatio || 1;
    const w = this.root.clientWidth, h = this.root.clientHeight;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
      cv.style.width = `${w}px`; cv.style.height = `${h}px`;
    }
    const ctx = cv.getContext("2d")!;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (!L || !L.xaxis || !d || !this.highlighted.length) return;
    const s = L._size, xy = d.xy.data, rad = this.markerSize / 2 + 2;
    ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5;
    ctx.beginPath();
    for (const i of this.highlighted) {
      const px = s.l + L.xaxis.l2p(xy[2 * i]), py = s.t + L.yaxis.l2p(xy[2 * i + 1]);
      if (px < s.l || py < s.t || px > s.l + s.w || py > s.t + s.h) continue;
      ctx.moveTo(px + rad, py);
      ctx.arc(px, py, rad, 0, 2 * Math.PI);
    }
    ctx.stroke();
  }

  private backgroundTrace(bg: Arr, size: number): object {
    const [xs, ys] = columns(bg);
    const marker = { color: BACKGROUND.color, opacity: BACKGROUND.opacity, size: Math.max(2, size - 2) };
    return { type: this.traceType, mode: "markers", x: xs, y: ys, hoverinfo: "skip", marker,
      selected: { marker: { opacity: BACKGROUND.opacity } }, unselected: { marker: { opacity: BACKGROUND.opacity } } };
  }

  async render(d: MapData): Promise<void> {
    this.data = d;
    const n = d.region.data.length;
    const [xs, ys] = columns(d.xy);
    const size = markerSize(n);
    this.markerSize = size;
    this.computeHighlight();
    const bg = d.background && d.background.data.length ? d.background : null;
    const traces = [
      ...(bg ? [this.backgroundTrace(bg, size)] : []),
      { type: this.traceType, mode: "markers", x: xs, y: ys, hoverinfo: "none",
        marker: { color: this.colorArray(d), opacity: this.opacityArray(d), size } },
    ];
    this.errorTrace = traces.length - 1;
    const nb = bg ? bg.shape[0] : 0;
    const layout = {
      width: this.root.clientWidth || undefined, height: this.root.clientHeight || undefined, autosize: true,
      margin: { l: 20, r: 10, t: 10, b: 20 }, showlegend: false, dragmode: this.mode, hovermode: "closest",
      xaxis: { showticklabels: false, zeroline: false, showgrid: false },
      yaxis: { showticklabels: false, zeroline: false, showgrid: false },
      uirevision: d.layout || "keep",
    };
    const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["toImage"], scrollZoom: true };
    if (!this.ready) {
      await Plotly.newPlot(this.plot, traces, layout, config);
      this.bind();
      this.ready = true;
    } else {
      await Plotly.react(this.plot, traces, layout, config);
    }
    this.drawOverlay();
    this.shell.drawn(d, n, nb);
  }

  async recolor(d: MapData): Promise<void> {
    if (!this.ready) return this.render(d);
    this.data = d;
    await this.restyle(d);
    this.computeHighlight();
    this.drawOverlay();
  }

  async setSelectedRegion(rid: number): Promise<void> {
    const changed = rid !== this.selectedRegion;
    this.selectedRegion = rid;
    if (!this.ready || !this.data) return;
    this.computeHighlight();
    this.drawOverlay();
    if (changed) await this.restyle(this.data);
  }

  async setColorBy(by: ColorBy): Promise<void> {
    this.colorBy = by;
    if (this.ready && this.data) await this.restyle(this.data);
  }

  styleOf(i: number): { color: string; opacity: number } | null {
    const m = (this.plot as any).data?.[this.errorTrace]?.marker;
    if (!m || !this.data || i < 0 || i >= this.data.region.data.length) return null;
    return { color: m.color[i], opacity: typeof m.opacity === "number" ? m.opacity : m.opacity[i] };
  }

  setSelection(indices: Int32Array | null): void {
    if (!this.ready) return;
    // show a Python-made selection; an empty one clears the lasso highlight
    const sel = indices && indices.length ? Array.from(indices) : null;
    this.shell.setSelectedCount(sel ? sel.length : 0);
    if (sel) Plotly.restyle(this.plot, { selectedpoints: [sel] }, [this.errorTrace]);
    else Plotly.update(this.plot, { selectedpoints: [null] }, { selections: [] }, [this.errorTrace]);
  }

  private bind(): void {
    const gd: any = this.plot;
    gd.on("plotly_click", (ev: any) => {
      const p = ev?.points?.find((q: any) => q.curveNumber === this.errorTrace);
      if (p) this.h.onClickPoint(p.pointIndex ?? p.pointNumber);
    });
    gd.on("plotly_selected", (ev: any) => {
      if (!ev) { this.select(null); return; }
      const idx = (ev.points || []).filter((q: any) => q.curveNumber === this.errorTrace).map((q: any) => q.pointIndex ?? q.pointNumber);
      this.select(Int32Array.from(idx));
    });
    gd.on("plotly_deselect", () => this.select(null));
    gd.on("plotly_hover", (ev: any) => {
      const p = ev?.points?.find((q: any) => q.curveNumber === this.errorTrace);
      if (p && this.data) void this.shell.showTip(this.data, p.pointIndex ?? p.pointNumber, ev.event?.clientX ?? null, ev.event?.clientY ?? null);
    });
    gd.on("plotly_afterplot", () => this.drawOverlay());
    gd.on("plotly_relayout", () => this.drawOverlay());
    gd.on("plotly_unhover", () => this.shell.hideTip());
  }

  private select(idx: Int32Array | null): void {
    this.shell.setSelectedCount(idx ? idx.length : 0);
    this.h.onSelect(idx);
  }

  setMode(mode: MapMode): void {
    this.mode = mode;
    this.shell.showMode(mode);
    if (this.ready) void Plotly.relayout(this.plot, { dragmode: mode });
  }

  setBackgroundLabel(label: string): void {
    if (this.data) this.data = { ...this.data, backgroundLabel: label };
    this.shell.setNote(this.backgroundCount(), label);
  }

  resetView(): void {
    if (this.ready) void Plotly.relayout(this.plot, { "xaxis.autorange": true, "yaxis.autorange": true });
  }

  private backgroundCount(): number { return this.data?.background?.shape[0] ?? 0; }

  screenPosition(i: number): [number, number] | null {
    const gd: any = this.plot, L = gd._fullLayout, d = this.data;
    if (!this.ready || !L || !d || i < 0 || i >= d.region.data.length) return null;
    const box = gd.getBoundingClientRect();
    return [box.left + L._size.l + L.xaxis.l2p(d.xy.data[2 * i]), box.top + L._size.t + L.yaxis.l2p(d.xy.data[2 * i + 1])];
  }

  resize(): void { if (this.ready && this.root.clientWidth > 0) Plotly.Plots.resize(this.plot); }
  destroy(): void { this.observer.disconnect(); if (this.ready) Plotly.purge(this.plot); }
}

// Fine-tuning controls: inputs, start/cancel/revert, progress bar, live loss, the last round's
// numbers; the per-round chart goes where the explorer puts it (a tab).
import Plotly from "plotly.js-gl2d-dist-min";

export type Params = { steps: number; lam: number; lr: number };
export type ClassDelta = { name: string; delta: number };
export type Harm = { name: string; drop: number };
export type Round = { round: number; test_accuracy: number | null; labeled_region_accuracy: number | null;
  labeled_region_real_accuracy?: number | null; labeled_region_real_images?: number; event?: string;
  base_round?: number; stopped?: string; class_deltas?: ClassDelta[]; harm?: Harm[];
  validation?: { before?: number; after?: number }; samples_note?: string };

/** Below this many real test images inside the labeled regions their accuracy is shown greyed. */
export const MIN_REAL_IMAGES = 20;

/** The chart's tick for one history entry: "start", "R1" (a round), "↺R0" (a revert to round 0). */
export function eventTick(r: Round): string {
  if (r.event === "start") return "start";
  if (r.event === "revert") return `\u21ba R${r.round}`;
  if (r.event === "before") return `before R${r.round + 1}`;
  return `R${r.round}`;
}
export type Progress = { running: boolean; step: number; total: number; loss: number | null; outcome?: string };

export type TuneHandlers = { start(p: Params): void; cancel(): void; revert(round?: number): void; params(p: Params): void };

const signed = (v: number) => `${v >= 0 ? "+" : "\u2212"}${Math.abs(v).toFixed(1)}`;

/** "Coat −4.1 points, overall −0.8 point": what a harmful round broke. */
export function harmText(harm: Harm[]): string {
  return harm.map((h) => `${h.name} \u2212${h.drop.toFixed(1)} point${h.drop === 1 ? "" : "s"}`).join(", ");
}

export class FineTune {
  root: HTMLElement;
  inputs: Record<keyof Params, HTMLInputElement>;
  bar: HTMLElement;
  fill: HTMLElement;
  loss: HTMLElement;
  numbers: HTMLElement;
  chart: HTMLElement;
  startBtn: HTMLButtonElement;
  cancelBtn: HTMLButtonElement;
  revertBtn: HTMLButtonElement;
  relabels: HTMLElement;
  summary: HTMLElement;
  harm: HTMLElement;
  private chartReady = false;
  private pending: [unknown[], unknown] | null = null; // a chart to draw once it is shown

  constructor(parent: HTMLElement, private h: TuneHandlers, chartParent: HTMLElement) {
    this.root = document.createElement("section");
    this.root.className = "dfx-tune";
    this.root.setAttribute("aria-label", "Fine-tuning");
    const title = document.createElement("h3");
    title.textContent = "Fine-tune on the labeled regions";
    const row = document.createElement("div");
    row.className = "dfx-controls";
    const mk = (key: keyof Params, text: string, step: string) => {
      const l = document.createElement("label");
      l.textContent = `${text} `;
      const i = document.createElement("input");
      i.type = "number"; i.step = step; i.setAttribute("aria-label", text);
      i.addEventListener("change", () => this.h.params(this.read()));
      l.append(i); row.append(l);
      return i;
    };
    this.inputs = { lam: mk("lam", "Lambda", "any"), steps: mk("steps", "Steps", "1"), lr: mk("lr", "Learning rate", "any") };
    const btn = (name: string, fn: () => void) => {
      const b = document.createElement("button");
      b.textContent = name; b.setAttribute("aria-label", name);
      b.addEventListener("click", fn); row.append(b);
      return b;
    };
    this.startBtn = btn("Fine-tune", () => this.h.start(this.read()));
    this.cancelBtn = btn("Cancel fine-tuning", () => this.h.cancel());
    this.revertBtn = btn("Revert model", () => this.h.revert());
    this.bar = document.createElement("div");
    this.bar.setAttribute("role", "progressbar");
    this.bar.setAttribute("aria-label", "Fine-tuning progress");
    this.bar.setAttribute("aria-valuemin", "0");
    this.bar.setAttribute("aria-valuemax", "100");
    this.bar.setAttribute("aria-valuenow", "0");
    this.bar.style.cssText = "width:220px;height:10px;border:1px solid #999;display:inline-block;vertical-align:middle";
    this.fill = document.createElement("div");
    this.fill.style.cssText = "height:100%;width:0;background:#2a7ae2";
    this.bar.append(this.fill);
    this.loss = document.createElement("span");
    this.loss.setAttribute("aria-live", "polite");
    const prow = document.createElement("div");
    prow.className = "dfx-controls";
    prow.append(this.bar, this.loss);
    this.relabels = document.createElement("p");
    this.relabels.className = "dfx-tune-relabels";
    this.setRelabels(0);
    this.numbers = document.createElement("div");
    this.numbers.className = "dfx-numbers";
    this.numbers.setAttribute("aria-label", "Accuracy");
    this.chart = document.createElement("div");
    this.chart.className = "dfx-chart";
    this.chart.setAttribute("aria-label", "Accuracy per round");
    chartParent.append(this.chart);
    this.harm = document.createElement("div");
    this.harm.className = "dfx-harm";
    this.harm.setAttribute("role", "alert");
    this.harm.setAttribute("aria-label", "Round harm");
    this.harm.hidden = true;
    this.summary = document.createElement("p");
    this.summary.className = "dfx-round-summary";
    this.summary.setAttribute("aria-label", "Round summary");
    this.root.append(title, this.relabels, row, prow, this.harm, this.summary, this.numbers);
    parent.append(this.root);
  }

  read(): Params {
    return { steps: Math.max(1, Math.round(Number(this.inputs.steps.value) || 1)),
      lam: Number(this.inputs.lam.value), lr: Number(this.inputs.lr.value) };
  }

  setParams(p: Params): void {
    for (const k of ["steps", "lam", "lr"] as (keyof Params)[]) {
      if (document.activeElement !== this.inputs[k]) this.inputs[k].value = String(p[k]);
    }
  }

  /** How many confirmed relabels of training images the next round trains with. */
  setRelabels(n: number): void {
    this.relabels.dataset.relabels = String(n);
    this.relabels.textContent = n
      ? `The next round trains with ${n} confirmed relabel${n === 1 ? "" : "s"} of training images.`
      : "The next round uses no relabels (audit a labeled region to confirm some).";
  }

  setProgress(p: Progress): void {
    const pct = p.total > 0 ? Math.round((100 * p.step) / p.total) : 0;
    this.bar.setAttribute("aria-valuenow", String(pct));
    this.bar.setAttribute("aria-valuetext", `${p.step} of ${p.total} steps`);
    this.fill.style.width = `${pct}%`;
    const steps = p.total ? `step ${p.step}/${p.total}` + (p.loss != null ? ` · loss ${p.loss.toFixed(4)}` : "") : "";
    // running: the steps; otherwise what became of the last action (done, cancelled, reverted, failed)
    this.loss.textContent = p.running ? steps : p.outcome || steps;
    this.root.dataset.outcome = p.running ? "running" : p.outcome || "";
    this.startBtn.disabled = p.running;
    this.cancelBtn.disabled = !p.running;
    this.revertBtn.disabled = p.running;
  }

  /** The last round's per-class deltas and why it stopped; a warning with revert when it hurt. */
  setRoundSummary(last: Round | undefined): void {
    const round = last?.event === "round" ? last : undefined;
    const deltas = round?.class_deltas ?? [];
    const v = round?.validation;
    const val = v?.before != null && v?.after != null
      ? ` Validation accuracy ${(100 * v.before).toFixed(1)}% \u2192 ${(100 * v.after).toFixed(1)}%.` : "";
    this.summary.textContent = round && deltas.length
      ? `Round ${round.round} per class (test, points): ` +
        deltas.map((d) => `${d.name} ${signed(d.delta)}`).join(", ") + (round.stopped ? `. ${round.stopped}.` : ".") + val +
        (round.samples_note ? ` ${round.samples_note}` : "")
      : "";
    const harm = round?.harm ?? [];
    this.harm.hidden = !harm.length;
    this.harm.innerHTML = "";
    if (!round || !harm.length) return;
    const text = document.createElement("span");
    text.textContent = `Round ${round.round} made things worse: ${harmText(harm)}. `;
    const back = round.base_round ?? 0;
    const undo = document.createElement("button");
    undo.textContent = `Revert to round ${back}`;
    undo.setAttribute("aria-label", "Revert harmful round");
    undo.addEventListener("click", () => this.h.revert(back));
    this.harm.append(text, undo);
  }

  async setHistory(rounds: Round[], baseline: Round | null): Promise<void> {
    const all = baseline ? [baseline, ...rounds] : rounds;
    this.setRoundSummary(all[all.length - 1]);
    const fmt = (v: number | null | undefined) => (v == null || Number.isNaN(v) ? "–" : `${(100 * v).toFixed(1)}%`);
    const last = all[all.length - 1];
    this.numbers.innerHTML = "";
    const line = (k: string, v: string, key: string) => {
      const d = document.createElement("div");
      d.dataset.metric = key;
      d.textContent = `${k}: ${v}`;
      this.numbers.append(d);
      return d;
    };
    if (last) {
      line("Test accuracy", fmt(last.test_accuracy), "test_accuracy");
      line("Labeled-region accuracy (samples)", fmt(last.labeled_region_accuracy), "labeled_region_accuracy");
      const n = last.labeled_region_real_images ?? 0;
      const real = line("Labeled-region accuracy (real)", `${fmt(last.labeled_region_real_accuracy)} (n = ${n})`,
        "labeled_region_real_accuracy");
      if (n < MIN_REAL_IMAGES) {
        real.classList.add("dfx-few");
        real.title = `Only ${n} real test image${n === 1 ? "" : "s"} inside the labeled regions: too few to trust this figure`;
      }
      line("Rounds", String(rounds.filter((r) => r.event === "round").length), "rounds");
    }
    const xs = all.map((_, i) => i);
    const isRevert = all.map((r) => r.event === "revert");
    const marker = { symbol: isRevert.map((v) => (v ? "x" : "circle")), size: isRevert.map((v) => (v ? 10 : 6)) };
    const traces = [
      { type: "scatter", mode: "lines+markers", name: "test", x: xs, y: all.map((r) => r.test_accuracy), marker },
      { type: "scatter", mode: "lines+markers", name: "labeled regions", x: xs, y: all.map((r) => r.labeled_region_accuracy), marker },
    ];
    const layout = { margin: { l: 40, r: 10, t: 24, b: 30 }, height: 200, width: 420,
      xaxis: { tickvals: xs, ticktext: all.map(eventTick), range: [-0.5, Math.max(1, xs.length) - 0.5] },
      yaxis: { range: [0, 1.02], tickformat: ".0%" }, legend: { orientation: "h", x: 0, y: 1.18 } };
    this.pending = [traces, layout];
    await this.drawChart();
  }

  /** Draw the per-round chart if it is shown (plotly measures text: a hidden chart waits). */
  async drawChart(): Promise<void> {
    if (!this.pending || !this.chart.isConnected || this.chart.offsetParent === null) return;
    const [traces, layout] = this.pending;
    this.pending = null;
    const config = { displayModeBar: false, staticPlot: true };
    if (!this.chartReady) { await Plotly.newPlot(this.chart, traces, layout, config); this.chartReady = true; }
    else await Plotly.react(this.chart, traces, layout, config);
  }

  destroy(): void { if (this.chartReady) Plotly.purge(this.chart); }
}

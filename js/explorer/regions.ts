// Region list (sortable, labeled from the keyboard) and the region panel (samples + labeling
// controls; the member errors and their sources go in a pane of their own).
import { Arr, decode, imageURL, Wire } from "../common/codec";
import { MIN_REAL_IMAGES } from "./finetune";

export type RegionInfo = {
  id: number; color: string; size: number; weight: number; transition: [number, number];
  validity: number; confidence: number; user_defined: boolean;
  sample_accuracy?: number | null; real_accuracy?: number | null; real_images?: number | null;
  recognition?: number | null; reach?: number | null;
};

export const MODEL_IS_RIGHT = -1;
export const UNRECOGNIZABLE = -2;

export function labelText(label: number | undefined, classes: string[]): string {
  if (label === undefined || label === null) return "unlabeled";
  if (label === MODEL_IS_RIGHT) return "model is right";
  if (label === UNRECOGNIZABLE) return "unrecognizable";
  return `label: ${classes[label] ?? label}`;
}

const pct = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? "–" : `${(100 * v).toFixed(0)}%`);

/** ", real accuracy 64% (n = 11)", saying so when the figure rests on too few real images. */
export function realAccuracyText(r: RegionInfo): string {
  const n = r.real_images;
  if (n == null) return "";
  if (n === 0) return ", no real test image inside";
  return `, real accuracy ${pct(r.real_accuracy)} (n = ${n}${n < MIN_REAL_IMAGES ? ": too few to trust" : ""})`;
}

export type RegionSort = "size" | "real_accuracy" | "recognition" | "label";

export const SORT_NAMES: Record<RegionSort, string> = {
  size: "Size", real_accuracy: "Accuracy on real images", recognition: "Recognisable samples", label: "Label state",
};

/** Ascending by `v` with unknown values last; ties by size, then id. */
function ascending(v: (r: RegionInfo) => number | null | undefined) {
  return (a: RegionInfo, b: RegionInfo) => {
    const x = v(a), y = v(b);
    const ux = x == null || Number.isNaN(x), uy = y == null || Number.isNaN(y);
    if (ux !== uy) return ux ? 1 : -1;
    return (ux ? 0 : (x as number) - (y as number)) || b.size - a.size || a.id - b.id;
  };
}

/** The regions in list order: largest first; the lowest real accuracy or recognition first (the
 * likeliest bugs, the hardest to read); or the unlabeled first. */
export function sortRegions(regions: RegionInfo[], by: string, labels: Record<string, number>): RegionInfo[] {
  const cmp = by === "real_accuracy" ? ascending((r) => r.real_accuracy)
    : by === "recognition" ? ascending((r) => r.recognition)
    : by === "label" ? ascending((r) => (labels[String(r.id)] === undefined ? 0 : 1))
    : (a: RegionInfo, b: RegionInfo) => b.size - a.size || a.id - b.id;
  return [...regions].sort(cmp);
}

export const SHORTCUTS = "\u2191\u2193 move \u00b7 0\u20139 label as that class \u00b7 R model is right \u00b7 " +
  "U unrecognizable \u00b7 N next unlabeled \u00b7 Del clear";

export type ListHandlers = {
  pick(rid: number): void;
  label(rid: number, label: number): void;
  unlabel(rid: number): void;
  /** The region under the pointer or keyboard focus (null: none), to highlight on the map. */
  hover(rid: number | null): void;
  sort(by: string): void;
};

const CHORD_MS = 700; // with more than ten classes, digits typed within this time make one number

/** The region list with its sort order and keyboard labeling: with a row focused, arrows move
 * (and open the region), digits label it with a class, R / U / N / Del as the shortcuts say. */
export class RegionList {
  section: HTMLElement;
  root: HTMLElement;
  sortSelect: HTMLSelectElement;
  live: HTMLElement;
  private order: RegionInfo[] = [];
  private labels: Record<string, number> = {};
  private classes: string[] = [];
  private active = -1;
  private digits = "";
  private chord = 0;

  constructor(parent: HTMLElement, private h: ListHandlers) {
    this.section = document.createElement("section");
    this.section.className = "dfx-listcol";
    this.section.setAttribute("aria-label", "Region list");
    const head = document.createElement("div");
    head.className = "dfx-list-head";
    const sortLabel = document.createElement("label");
    sortLabel.textContent = "Sort ";
    this.sortSelect = document.createElement("select");
    this.sortSelect.setAttribute("aria-label", "Sort regions by");
    this.sortSelect.addEventListener("change", () => this.h.sort(this.sortSelect.value));
    sortLabel.append(this.sortSelect);
    head.append(sortLabel);
    const help = document.createElement("p");
    help.className = "dfx-keys";
    help.id = `dfx-keys-${Math.random().toString(36).slice(2)}`;
    help.textContent = SHORTCUTS;
    this.root = document.createElement("div");
    this.root.className = "dfx-list";
    this.root.setAttribute("role", "group");
    this.root.setAttribute("aria-label", "Regions");
    this.root.setAttribute("aria-describedby", help.id);
    this.root.setAttribute("aria-keyshortcuts", "ArrowUp ArrowDown 0 1 2 3 4 5 6 7 8 9 R U N Delete");
    this.root.addEventListener("keydown", (e) => this.key(e));
    this.root.addEventListener("mouseleave", () => this.h.hover(null));
    this.root.addEventListener("focusout", (e) => {
      if (!this.root.contains(e.relatedTarget as Node | null)) this.h.hover(null);
    });
    this.live = document.createElement("p");
    this.live.className = "dfx-live";
    this.live.setAttribute("role", "status");
    this.live.setAttribute("aria-live", "polite");
    this.live.setAttribute("aria-label", "Keyboard labeling");
    this.section.append(head, this.root, help, this.live);
    parent.append(this.section);
  }

  setSorts(sorts: string[], by: string): void {
    if (Array.from(this.sortSelect.options).map((o) => o.value).join() !== sorts.join()) {
      this.sortSelect.replaceChildren(...sorts.map((k) => new Option(SORT_NAMES[k as RegionSort] ?? k, k)));
    }
    this.sortSelect.value = by;
  }

  render(regions: RegionInfo[], labels: Record<string, number>, selected: number, classes: string[], by = "size"): void {
    const hadFocus = this.root.contains(document.activeElement);
    this.order = sortRegions(regions, by, labels);
    this.labels = labels;
    this.classes = classes;
    if (selected >= 0 || !this.order.some((r) => r.id === this.active)) this.active = selected;
    if (!this.order.some((r) => r.id === this.active)) this.active = this.order[0]?.id ?? -1;
    this.root.innerHTML = "";
    this.root.dataset.sort = by;
    if (!this.order.length) {
      this.root.textContent = "No regions yet (run session.distill()).";
      return;
    }
    for (const r of this.order) {
      const b = document.createElement("button");
      const [t, p] = r.transition;
      const tr = `${classes[t] ?? t} \u2192 ${classes[p] ?? p}`;
      const lab = labelText(labels[String(r.id)], classes);
      b.setAttribute("aria-pressed", String(r.id === selected));
      b.setAttribute("aria-label", `Region ${r.id}: ${r.size} errors, ${tr}, validity ${pct(r.validity)}, ${lab}`);
      b.dataset.region = String(r.id);
      b.tabIndex = r.id === this.active ? 0 : -1;
      const sw = document.createElement("span");
      sw.className = "dfx-swatch";
      sw.style.background = r.color;
      const txt = document.createElement("span");
      const acc = r.sample_accuracy !== undefined && r.sample_accuracy !== null ? ` · acc ${pct(r.sample_accuracy)}` : "";
      const real = r.real_accuracy != null && (by === "real_accuracy") ? ` · real ${pct(r.real_accuracy)}` : "";
      const rec = r.recognition != null && by === "recognition" ? ` · recog ${pct(r.recognition)}` : "";
      const reach = r.reach != null ? ` · reaches ${r.reach}` : "";
      txt.textContent = `#${r.id}${r.user_defined ? "*" : ""} · ${r.size} · ${tr} · valid ${pct(r.validity)}${acc}${real}${rec}${reach}`;
      txt.title = `Region ${r.id}${r.user_defined ? " (* made by you)" : ""}: ${r.size} errors, true ${tr} predicted; ` +
        `valid: how natural the generator finds its samples (mean validity)` +
        (acc ? "; acc: the classifier's accuracy on fresh samples against the region's label" : "") +
        (real ? "; real: its accuracy on the real test images inside" : "") +
        (rec ? "; recog: the share of its samples recognised as its class" : "") +
        (reach ? "; reaches: the real training images nearest its errors' source images (the audit's and the rounds' rows)" : "");
      const lb = document.createElement("span");
      lb.className = "dfx-lab";
      lb.textContent = lab;
      b.append(sw, txt, lb);
      b.addEventListener("click", () => { this.active = r.id; this.h.pick(r.id); });
      b.addEventListener("mouseenter", () => this.h.hover(r.id));
      this.root.append(b);
    }
    if (hadFocus) this.row(this.active)?.focus({ preventScroll: false });
  }

  private row(rid: number): HTMLButtonElement | null {
    return this.root.querySelector<HTMLButtonElement>(`button[data-region="${rid}"]`);
  }

  /** Focus (and open) the region `rid`. */
  private go(rid: number): void {
    if (rid < 0) return;
    this.active = rid;
    for (const b of Array.from(this.root.querySelectorAll<HTMLButtonElement>("button"))) b.tabIndex = b.dataset.region === String(rid) ? 0 : -1;
    const b = this.row(rid);
    b?.focus();
    b?.scrollIntoView({ block: "nearest" });
    this.h.hover(rid);
    this.h.pick(rid);
  }

  say(text: string): void { this.live.textContent = text; }

  private key(e: KeyboardEvent): void {
    if (e.altKey || e.ctrlKey || e.metaKey || !this.order.length) return;
    const at = Math.max(0, this.order.findIndex((r) => r.id === this.active));
    const rid = this.order[at]?.id ?? -1;
    const k = e.key;
    let handled = true;
    if (k === "ArrowDown") this.go(this.order[Math.min(this.order.length - 1, at + 1)].id);
    else if (k === "ArrowUp") this.go(this.order[Math.max(0, at - 1)].id);
    else if (k === "Home") this.go(this.order[0].id);
    else if (k === "End") this.go(this.order[this.order.length - 1].id);
    else if (/^[0-9]$/.test(k)) this.digit(rid, k);
    else if (k === "r" || k === "R") { this.h.label(rid, MODEL_IS_RIGHT); this.say(`Region ${rid}: model is right.`); }
    else if (k === "u" || k === "U") { this.h.label(rid, UNRECOGNIZABLE); this.say(`Region ${rid}: unrecognizable.`); }
    else if (k === "n" || k === "N") this.nextUnlabeled(at);
    else if (k === "Delete" || k === "Backspace") { this.h.unlabel(rid); this.say(`Region ${rid}: label cleared.`); }
    else handled = false;
    if (handled) { e.preventDefault(); e.stopPropagation(); }
  }

  /** A class label from digits: one digit with up to ten classes; with more, digits typed within
   * CHORD_MS make one number, applied once no further digit could extend it (or the time is up). */
  private digit(rid: number, d: string): void {
    const k = this.classes.length;
    window.clearTimeout(this.chord);
    this.digits += d;
    const n = Number(this.digits);
    const apply = () => {
      const c = Number(this.digits);
      this.digits = "";
      if (c >= k) { this.say(`No class ${c}: the classes are 0 to ${k - 1}.`); return; }
      this.h.label(rid, c);
      this.say(`Region ${rid}: labeled ${c} (${this.classes[c] ?? c}).`);
    };
    if (k <= 10 || n * 10 >= k) apply();
    else { this.say(`Class ${n}\u2026`); this.chord = window.setTimeout(apply, CHORD_MS); }
  }

  private nextUnlabeled(at: number): void {
    const n = this.order.length;
    for (let step = 1; step <= n; step++) {
      const r = this.order[(at + step) % n];
      if (this.labels[String(r.id)] === undefined) { this.go(r.id); this.say(`Region ${r.id}: unlabeled.`); return; }
    }
    this.say("Every region is labeled.");
  }
}

export type PanelHandlers = {
  label(rid: number, label: number): void;
  unlabel(rid: number): void;
  addRegion(): void;
};

export class RegionPanel {
  root: HTMLElement;
  head: HTMLElement;
  body: HTMLElement;
  select: HTMLSelectElement;
  selectionInfo: HTMLElement;
  addBtn: HTMLButtonElement;
  region = -1;

  constructor(parent: HTMLElement, private h: PanelHandlers, private members: HTMLElement) {
    this.root = document.createElement("section");
    this.root.className = "dfx-panel";
    this.root.setAttribute("aria-label", "Region panel");
    this.head = document.createElement("h3");
    this.head.textContent = "Click a point or a region to see its samples.";
    const controls = document.createElement("div");
    controls.className = "dfx-controls";
    const lab = document.createElement("label");
    lab.textContent = "True label ";
    this.select = document.createElement("select");
    this.select.setAttribute("aria-label", "True label");
    lab.append(this.select);
    const btn = (name: string, fn: () => void) => {
      const b = document.createElement("button");
      b.textContent = name;
      b.setAttribute("aria-label", name);
      b.addEventListener("click", fn);
      return b;
    };
    const need = (fn: (rid: number) => void) => () => { if (this.region >= 0) fn(this.region); };
    controls.append(
      lab,
      btn("Apply label", need((rid) => this.h.label(rid, Number(this.select.value)))),
      btn("Model is right", need((rid) => this.h.label(rid, MODEL_IS_RIGHT))),
      btn("Unrecognizable", need((rid) => this.h.label(rid, UNRECOGNIZABLE))),
      btn("Clear label", need((rid) => this.h.unlabel(rid))),
    );
    const selRow = document.createElement("div");
    selRow.className = "dfx-controls";
    this.selectionInfo = document.createElement("span");
    this.addBtn = btn("New region from selection", () => this.h.addRegion());
    this.addBtn.disabled = true;
    selRow.append(this.selectionInfo, this.addBtn);
    this.body = document.createElement("div");
    this.root.append(this.head, controls, selRow, this.body);
    parent.append(this.root);
  }

  setClasses(classes: string[]): void {
    if (this.select.options.length === classes.length) return;
    this.select.innerHTML = "";
    classes.forEach((c, i) => {
      const o = document.createElement("option");
      o.value = String(i); o.textContent = `${i}: ${c}`;
      this.select.append(o);
    });
  }

  setSelectionCount(n: number): void {
    this.selectionInfo.textContent = n ? `${n} points selected` : "Lasso or box on the map to select points.";
    this.addBtn.disabled = n < 2; // a region needs at least 2 points
  }

  render(panel: any, regions: RegionInfo[], labels: Record<string, number>, classes: string[]): void {
    const rid = panel && typeof panel.region === "number" ? panel.region : -1;
    this.region = rid;
    this.root.dataset.region = String(rid);
    this.body.innerHTML = "";
    this.members.innerHTML = "";
    if (rid < 0) {
      this.head.textContent = "Click a point or a region to see its samples.";
      this.members.textContent = "Select a region to see its member errors and their source images.";
      return;
    }
    const r = regions.find((q) => q.id === rid);
    const lab = labels[String(rid)];
    const name = (k: number) => classes[k] ?? String(k);
    const tr = r ? `${name(r.transition[0])} \u2192 ${name(r.transition[1])}` : "";
    this.head.textContent = `Region ${rid}: ${r ? r.size : "?"} errors, ${tr}, ${labelText(lab, classes)}` +
      (r && r.sample_accuracy != null ? `, sample accuracy ${pct(r.sample_accuracy)}` : "") +
      (r ? realAccuracyText(r) : "") +
      (r && r.reach != null ? `, reaches ${r.reach} real training image${r.reach === 1 ? "" : "s"}` : "");
    if (lab !== undefined && lab >= 0) this.select.value = String(lab);
    else if (r) this.select.value = String(r.transition[0]);
    this.gallery(this.body, "Fresh samples from the region", rid, decode(panel.samples as Wire), decode(panel.sample_pred as Wire),
      decode(panel.sample_conf as Wire), null, name);
    this.gallery(this.members, "Member errors (decoded)", rid, decode(panel.members as Wire), decode(panel.member_pred as Wire),
      decode(panel.member_conf as Wire), decode(panel.member_true as Wire), name);
    this.gallery(this.members, "Their source images", rid, decode(panel.sources as Wire), null, null,
      decode(panel.member_true as Wire), name);
  }

  private gallery(into: HTMLElement, title: string, rid: number, imgs: Arr | null, pred: Arr | null, conf: Arr | null,
    truth: Arr | null, name: (k: number) => string): void {
    if (!imgs || !imgs.shape[0]) return;
    const h = document.createElement("h3");
    h.textContent = title;
    if (pred) {
      const key = document.createElement("span");
      key.className = "dfx-key";
      key.textContent = truth ? " (caption: predicted class and confidence; red border: wrong)"
        : " (caption: predicted class and confidence)";
      h.append(key);
    }
    const g = document.createElement("div");
    g.className = "dfx-gallery";
    for (let i = 0; i < imgs.shape[0]; i++) {
      const f = document.createElement("figure");
      const img = document.createElement("img");
      img.src = imageURL(imgs, i);
      const cap = document.createElement("figcaption");
      if (pred) {
        const p = pred.data[i];
        img.alt = `Region ${rid} sample ${i + 1}: predicted ${name(p)}`;
        cap.textContent = `${name(p)}${conf ? ` ${(100 * conf.data[i]).toFixed(0)}%` : ""}`;
        cap.title = `The classifier predicts ${name(p)}` + (conf ? ` with ${(100 * conf.data[i]).toFixed(0)}% confidence` : "") +
          (truth ? ` (source image labeled ${name(truth.data[i])})` : "");
        if (truth && truth.data[i] !== p) f.className = "dfx-wrong";
      } else {
        const t = truth ? truth.data[i] : -1;
        img.alt = `Region ${rid} source image ${i + 1}: labeled ${name(t)}`;
        cap.textContent = `${name(t)}`;
        cap.title = `The source image's label: ${name(t)}`;
      }
      f.append(img, cap);
      g.append(f);
    }
    g.setAttribute("role", "group");
    g.setAttribute("aria-label", title);
    into.append(h, g);
  }
}

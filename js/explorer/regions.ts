// Region list (sorted by size) and the region panel (gallery + labeling controls).
import { Arr, decode, imageURL, Wire } from "../common/codec";
import { MIN_REAL_IMAGES } from "./finetune";

export type RegionInfo = {
  id: number; color: string; size: number; weight: number; transition: [number, number];
  validity: number; confidence: number; user_defined: boolean;
  sample_accuracy?: number | null; real_accuracy?: number | null; real_images?: number | null;
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

export class RegionList {
  root: HTMLElement;
  constructor(parent: HTMLElement, private onPick: (rid: number) => void) {
    this.root = document.createElement("div");
    this.root.className = "dfx-list";
    this.root.setAttribute("role", "group");
    this.root.setAttribute("aria-label", "Regions");
    parent.append(this.root);
  }

  render(regions: RegionInfo[], labels: Record<string, number>, selected: number, classes: string[]): void {
    const sorted = [...regions].sort((a, b) => b.size - a.size || a.id - b.id);
    this.root.innerHTML = "";
    if (!sorted.length) {
      this.root.textContent = "No regions yet (run session.distill()).";
      return;
    }
    for (const r of sorted) {
      const b = document.createElement("button");
      const [t, p] = r.transition;
      const tr = `${classes[t] ?? t} \u2192 ${classes[p] ?? p}`;
      const lab = labelText(labels[String(r.id)], classes);
      b.setAttribute("aria-pressed", String(r.id === selected));
      b.setAttribute("aria-label", `Region ${r.id}: ${r.size} errors, ${tr}, validity ${pct(r.validity)}, ${lab}`);
      b.dataset.region = String(r.id);
      const sw = document.createElement("span");
      sw.className = "dfx-swatch";
      sw.style.background = r.color;
      const txt = document.createElement("span");
      const acc = r.sample_accuracy !== undefined && r.sample_accuracy !== null ? ` · acc ${pct(r.sample_accuracy)}` : "";
      txt.textContent = `#${r.id}${r.user_defined ? "*" : ""} · ${r.size} · ${tr} · valid ${pct(r.validity)}${acc}`;
      txt.title = `Region ${r.id}${r.user_defined ? " (* made by you)" : ""}: ${r.size} errors, true ${tr} predicted; ` +
        `valid: how natural the generator finds its samples (mean validity)` +
        (acc ? "; acc: the classifier's accuracy on fresh samples against the region's label" : "");
      const lb = document.createElement("span");
      lb.className = "dfx-lab";
      lb.textContent = lab;
      b.append(sw, txt, lb);
      b.addEventListener("click", () => this.onPick(r.id));
      this.root.append(b);
    }
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

  constructor(parent: HTMLElement, private h: PanelHandlers) {
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
    if (rid < 0) { this.head.textContent = "Click a point or a region to see its samples."; return; }
    const r = regions.find((q) => q.id === rid);
    const lab = labels[String(rid)];
    const name = (k: number) => classes[k] ?? String(k);
    const tr = r ? `${name(r.transition[0])} \u2192 ${name(r.transition[1])}` : "";
    this.head.textContent = `Region ${rid}: ${r ? r.size : "?"} errors, ${tr}, ${labelText(lab, classes)}` +
      (r && r.sample_accuracy != null ? `, sample accuracy ${pct(r.sample_accuracy)}` : "") +
      (r ? realAccuracyText(r) : "");
    if (lab !== undefined && lab >= 0) this.select.value = String(lab);
    else if (r) this.select.value = String(r.transition[0]);
    this.gallery("Fresh samples from the region", rid, decode(panel.samples as Wire), decode(panel.sample_pred as Wire),
      decode(panel.sample_conf as Wire), null, name);
    this.gallery("Member errors (decoded)", rid, decode(panel.members as Wire), decode(panel.member_pred as Wire),
      decode(panel.member_conf as Wire), decode(panel.member_true as Wire), name);
    this.gallery("Their source images", rid, decode(panel.sources as Wire), null, null,
      decode(panel.member_true as Wire), name);
  }

  private gallery(title: string, rid: number, imgs: Arr | null, pred: Arr | null, conf: Arr | null,
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
    this.body.append(h, g);
  }
}

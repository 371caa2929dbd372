// Audit section of the region panel: the training images inside the selected class-labeled region
// that carry another label (a gallery with checkboxes), relabel / undo, and the relabel count.
import { Arr, decode, imageURL, Wire } from "../common/codec";

export type AuditHandlers = {
  open(rid: number): void;
  select(idx: Int32Array): void;
  relabel(idx: number[]): void;
  undo(idx: number[]): void;
};

type AuditData = {
  region: number; label: number; min_probability: number; inside: number; conflicts: number; total: number;
  indices: Wire; images: Wire; original: Wire; predictions: Wire; probabilities: Wire;
};

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

export class AuditView {
  root: HTMLElement;
  info: HTMLElement;
  openBtn: HTMLButtonElement;
  controls: HTMLElement;
  count: HTMLElement;
  gallery: HTMLElement;
  relabelBtn: HTMLButtonElement;
  undoBtn: HTMLButtonElement;
  private region = -1;
  private label: number | undefined;
  private data: AuditData | null = null;
  private indices: Int32Array = new Int32Array(0);
  private original: Arr | null = null;
  private boxes: HTMLInputElement[] = [];
  private captions: HTMLElement[] = [];
  private figures: HTMLElement[] = [];
  private selected = new Set<number>();
  private classes: string[] = [];

  constructor(parent: HTMLElement, private h: AuditHandlers) {
    this.root = document.createElement("section");
    this.root.className = "dfx-audit";
    this.root.setAttribute("aria-label", "Audit");
    const title = document.createElement("h3");
    title.textContent = "Audit";
    this.info = document.createElement("p");
    this.info.className = "dfx-audit-info";
    const btn = (name: string, fn: () => void) => {
      const b = document.createElement("button");
      b.textContent = name; b.setAttribute("aria-label", name);
      b.addEventListener("click", fn);
      return b;
    };
    this.openBtn = btn("Audit training images", () => { if (this.region >= 0) this.h.open(this.region); });
    this.controls = document.createElement("div");
    this.controls.className = "dfx-controls";
    const selAll = btn("Select all", () => this.setSelected(this.indices, true));
    const selNone = btn("Select none", () => this.setSelected(new Int32Array(0), true));
    this.relabelBtn = btn("Relabel selected", () => this.h.relabel([...this.selected]));
    this.undoBtn = btn("Undo relabel", () => this.h.undo([...this.selected]));
    this.count = document.createElement("span");
    this.count.className = "dfx-relabels";
    this.count.setAttribute("aria-live", "polite");
    this.controls.append(selAll, selNone, this.relabelBtn, this.undoBtn, this.count);
    this.gallery = document.createElement("div");
    this.gallery.className = "dfx-gallery";
    this.gallery.setAttribute("role", "group");
    this.gallery.setAttribute("aria-label", "Training images to audit");
    this.root.append(title, this.info, this.openBtn, this.controls, this.gallery);
    parent.append(this.root);
    this.setCount(0);
    this.update();
  }

  /** The selected region and its label (the section follows the panel). */
  setRegion(rid: number, label: number | undefined, classes: string[]): void {
    this.region = rid; this.label = label; this.classes = classes;
    this.update();
  }

  setCount(n: number): void {
    this.count.dataset.relabels = String(n);
    this.count.textContent = `${plural(n, "confirmed relabel")} in all`;
  }

  /** The audit data of the selected region (null: none open) and its current training labels. */
  setData(data: AuditData | null, labels: Arr | null): void {
    this.data = data;
    const idx = data ? decode(data.indices) : null;
    this.indices = idx ? new Int32Array(idx.data) : new Int32Array(0);
    this.original = data ? decode(data.original) : null;
    this.buildGallery();
    this.setLabels(labels);
    this.update();
  }

  /** Current training labels (relabels applied) of the shown images: marks the relabeled ones. */
  setLabels(labels: Arr | null): void {
    const name = (k: number) => this.classes[k] ?? String(k);
    this.figures.forEach((f, i) => {
      const now = labels && i < labels.data.length ? labels.data[i] : this.original?.data[i];
      const was = this.original?.data[i];
      const relabeled = now !== undefined && was !== undefined && now !== was;
      f.classList.toggle("dfx-relabeled", relabeled);
      f.dataset.relabeled = String(relabeled);
      const cap = this.captions[i];
      const pred = decode(this.data!.predictions)!.data[i];
      cap.textContent = relabeled ? `${name(was!)} \u2192 ${name(now!)} · pred ${name(pred)}`
        : `${name(now ?? -1)} · pred ${name(pred)}`;
    });
    this.update();
  }

  /** Select by training index (from Python or the buttons); `emit` sends it to Python. */
  setSelected(idx: Int32Array | number[], emit = false): void {
    this.selected = new Set(Array.from(idx).filter((i) => this.indices.includes(i)));
    this.boxes.forEach((b, i) => { b.checked = this.selected.has(this.indices[i]); });
    this.update();
    if (emit) this.h.select(Int32Array.from(this.selected));
  }

  private buildGallery(): void {
    this.gallery.innerHTML = "";
    this.boxes = []; this.captions = []; this.figures = [];
    const d = this.data;
    if (!d) return;
    const imgs = decode(d.images), pred = decode(d.predictions), prob = decode(d.probabilities);
    if (!imgs || !pred || !prob) return;
    const name = (k: number) => this.classes[k] ?? String(k);
    for (let i = 0; i < this.indices.length; i++) {
      const index = this.indices[i];
      const f = document.createElement("figure");
      const img = document.createElement("img");
      img.src = imageURL(imgs, i);
      const was = this.original ? this.original.data[i] : -1;
      img.alt = `Training image ${index}: labeled ${name(was)}, predicted ${name(pred.data[i])}`;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.setAttribute("aria-label",
        `Select training image ${index} (labeled ${name(was)}, predicted ${name(pred.data[i])}, ` +
        `probability ${(100 * prob.data[i]).toFixed(0)}%)`);
      box.addEventListener("change", () => {
        if (box.checked) this.selected.add(index); else this.selected.delete(index);
        this.update();
        this.h.select(Int32Array.from(this.selected));
      });
      const cap = document.createElement("figcaption");
      const p = document.createElement("div");
      p.textContent = `#${index} · p ${(100 * prob.data[i]).toFixed(0)}%`;
      const lab = document.createElement("label");
      lab.append(box, cap);
      f.append(img, lab, p);
      f.dataset.index = String(index);
      this.gallery.append(f);
      this.boxes.push(box); this.captions.push(cap); this.figures.push(f);
    }
  }

  private update(): void {
    const name = (k: number) => this.classes[k] ?? String(k);
    this.root.hidden = this.region < 0;
    const labeled = this.label !== undefined && this.label >= 0;
    const open = !!this.data && this.data.region === this.region;
    this.openBtn.hidden = open;
    this.openBtn.disabled = !labeled;
    this.controls.hidden = !open;
    this.gallery.hidden = !open;
    if (!labeled) {
      this.info.textContent = "Label this region with a class to audit the training images inside it.";
    } else if (!open) {
      this.info.textContent = `Find the training images inside this region labeled other than ${name(this.label!)}.`;
    } else {
      const d = this.data!;
      const fixed = this.figures.filter((f) => f.dataset.relabeled === "true").length;
      const shown = this.indices.length;
      const more = d.total > shown ? ` (the likeliest ${shown} shown)` : "";
      this.info.textContent = d.conflicts || shown
        ? `${plural(d.conflicts, "training image")} of ${d.inside} inside the region (probability \u2265 ` +
          `${d.min_probability}) labeled other than ${name(d.label)}${more}; ${fixed} relabeled here. ` +
          `Select the mislabeled ones and relabel them ${name(d.label)}: the next fine-tuning round trains ` +
          "on confirmed relabels."
        : d.inside
          ? `No training image inside this region (${d.inside} in all) is labeled other than ${name(d.label)}.`
          : `No training image falls inside this region (probability \u2265 ${d.min_probability}): ` +
            "there is nothing to audit here.";
    }
    const n = this.selected.size;
    this.relabelBtn.disabled = n === 0;
    this.undoBtn.disabled = n === 0;
  }
}

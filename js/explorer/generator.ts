// The Generator tab: how well the generator draws each class (session.generator_report), measured
// on request; a flagged class's regions will not look like it, whatever the classifier does.

type ClassRow = { index: number; name: string; images: number; real: number | null; reconstructed: number | null;
  ratio: number | null; looks_like: string | null; flagged: boolean };
export type GeneratorReport = { judge: string; images: number; frechet: number | null; mse: number | null;
  classes: ClassRow[]; flagged: { name: string; message: string }[] };

const pct = (v: number | null) => (v == null ? "–" : `${(100 * v).toFixed(0)}%`);

export class GeneratorView {
  root: HTMLElement;
  button: HTMLButtonElement;
  private body: HTMLElement;

  constructor(parent: HTMLElement, measure: () => void) {
    this.root = document.createElement("section");
    this.root.className = "dfx-generator";
    this.root.setAttribute("aria-label", "Generator");
    this.button = document.createElement("button");
    this.button.textContent = "Measure the generator";
    this.button.setAttribute("aria-label", "Measure the generator");
    this.button.addEventListener("click", measure);
    this.body = document.createElement("div");
    this.root.append(this.button, this.body);
    parent.append(this.root);
    this.set(null);
  }

  set(report: GeneratorReport | null): void {
    this.body.replaceChildren();
    const p = document.createElement("p");
    p.className = "dfx-hint";
    if (!report) {
      p.textContent = "How often a judge recognises the generator's reconstructions of each class, against real images: " +
        "a class it draws badly gives regions nobody can label.";
      this.body.append(p);
      return;
    }
    p.textContent = `Judged by ${report.judge} on ${report.images} images; reconstruction MSE ${report.mse == null ? "–" : report.mse.toFixed(4)}.`;
    const table = document.createElement("table");
    table.className = "dfx-gen-table";
    table.setAttribute("aria-label", "Generator per class");
    const head = table.insertRow();
    for (const h of ["class", "real", "reconstructed", "ratio", "looks like"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.append(th);
    }
    for (const c of report.classes) {
      const row = table.insertRow();
      if (c.flagged) row.className = "dfx-gen-flagged";
      for (const v of [c.name, pct(c.real), pct(c.reconstructed), c.ratio == null ? "–" : c.ratio.toFixed(2), c.looks_like ?? ""]) {
        row.insertCell().textContent = v;
      }
    }
    this.body.append(p, table);
    for (const f of report.flagged) {
      const m = document.createElement("p");
      m.className = "dfx-gen-message";
      m.textContent = f.message;
      this.body.append(m);
    }
  }
}

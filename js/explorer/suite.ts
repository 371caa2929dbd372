// "Export as test": the labeled regions become a regression suite in a directory the user names.

export type ExportHandlers = { exportTests(path: string): void };

export class SuiteExport {
  root: HTMLElement;
  input: HTMLInputElement;
  button: HTMLButtonElement;
  hint: HTMLElement;

  constructor(parent: HTMLElement, private h: ExportHandlers) {
    this.root = document.createElement("section");
    this.root.className = "dfx-suite";
    this.root.setAttribute("aria-label", "Regression tests");
    const title = document.createElement("h3");
    title.textContent = "Regions as regression tests";
    const row = document.createElement("div");
    row.className = "dfx-controls";
    const label = document.createElement("label");
    label.textContent = "Suite directory ";
    this.input = document.createElement("input");
    this.input.type = "text";
    this.input.value = "defuse-suite";
    this.input.setAttribute("aria-label", "Suite directory");
    label.append(this.input);
    this.button = document.createElement("button");
    this.button.textContent = "Export as test";
    this.button.setAttribute("aria-label", "Export as test");
    this.button.addEventListener("click", () => this.h.exportTests(this.input.value.trim()));
    this.input.addEventListener("keydown", (e) => { if (e.key === "Enter") this.button.click(); });
    row.append(label, this.button);
    this.hint = document.createElement("p");
    this.hint.className = "dfx-suite-hint";
    this.root.append(title, row, this.hint);
    parent.append(this.root);
    this.setLabeled(0);
  }

  /** How many regions are labeled with a class: the button exports them (none: disabled). */
  setLabeled(n: number): void {
    this.button.disabled = n === 0;
    this.root.dataset.labeled = String(n);
    this.hint.textContent = n
      ? `Writes the ${n} class-labeled region${n === 1 ? "" : "s"} (held-out samples, real images, a manifest) ` +
        "for dw.check_suite, dw.testing.assert_suite or `defuse-widgets check`."
      : "Label a region with a class to export it as a test.";
  }
}

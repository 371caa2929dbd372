// The interpolation panel of the selected error: the explorer's `interpolator` trait holds a child
// Interpolator widget (an "anywidget:<model_id>" reference); its own view (interpolator.js, with
// the back-pressured frame protocol) is rendered here through anywidget's `host.getWidget`, so
// none of the interpolator's code is bundled into the explorer.

import type { Host } from "@anywidget/types";

/** A thrown value as words: never an empty string or "undefined" (some hosts reject with nothing). */
export function reason(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message || "(no message)"}`;
  return e === undefined || e === null || e === "" ? "no reason given by the front end" : String(e);
}

export class InterpPanel {
  root: HTMLElement;
  private title: HTMLElement;
  private body: HTMLElement;
  private ref: string | null = null;
  private controller: AbortController | null = null;
  private revealing: ResizeObserver | null = null;

  constructor(parent: HTMLElement, private host: Host | undefined, private onError: (msg: string) => void) {
    this.root = document.createElement("section");
    this.root.className = "dfx-interp";
    this.root.setAttribute("aria-label", "Selected error");
    this.root.tabIndex = -1;
    this.title = document.createElement("h3");
    this.body = document.createElement("div");
    this.root.append(this.title, this.body);
    this.root.hidden = true;
    parent.append(this.root);
  }

  set(ref: string | null, index: number): void {
    this.root.hidden = !ref || index < 0;
    this.title.textContent = index >= 0 ? `Selected error ${index}` : "";
    if (!ref || ref === this.ref) return;
    this.controller?.abort();
    this.body.replaceChildren();
    this.ref = ref;
    if (!this.host) {
      this.onError("This front end cannot show the interpolator inside the explorer (anywidget >= 0.11 needed): display explorer.interpolator in a cell.");
      return;
    }
    const controller = new AbortController();
    this.controller = controller;
    const el = document.createElement("div");
    this.body.append(el);
    this.host.getWidget(ref)
      .then((w) => (controller.signal.aborted ? undefined : w.render({ el, signal: controller.signal })))
      .catch((e) => this.onError(`Could not show the interpolator: ${reason(e)}`));
  }

  /** Bring the panel into view and focus once it shows, following its growth for a moment
   * (its content is drawn by the kernel's answer): a click on the map opens it where one looks. */
  reveal(ms = 3000): void {
    this.revealing?.disconnect();
    let focused = false;
    const show = () => {
      if (this.root.hidden) return;
      this.root.scrollIntoView({ block: "nearest" });
      if (!focused) { focused = true; this.root.focus({ preventScroll: true }); }
    };
    const watch = new ResizeObserver(show);
    watch.observe(this.root);
    if (this.root.parentElement) watch.observe(this.root.parentElement); // the panel above may grow
    this.revealing = watch;
    window.setTimeout(() => { watch.disconnect(); if (this.revealing === watch) this.revealing = null; }, ms);
    show();
  }

  destroy(): void {
    this.controller?.abort();
    this.revealing?.disconnect();
  }
}

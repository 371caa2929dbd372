// Keyboard navigation of the map's points: with the map focused, the arrow keys step through the
// selected region's errors (all errors when no region is selected), a ring marks the current one
// and a live region names it; Enter opens it (as a click would), Escape lets go of it.

export type KeyNavHost = {
  region(): Int32Array | Uint8Array | ArrayLike<number> | null; // region id per error
  selectedRegion(): number;
  position(i: number): [number, number] | null; // page coordinates
  show(i: number, x: number, y: number): void; // the hover tooltip, at page coordinates
  hide(): void;
  describe(i: number): string;
  open(i: number): void;
};

const STEPS: Record<string, number> = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };

export class KeyNav {
  current = -1;
  private marker: HTMLElement;
  private live: HTMLElement;

  constructor(private root: HTMLElement, private h: KeyNavHost) {
    root.tabIndex = 0;
    this.marker = document.createElement("div");
    this.marker.className = "dfx-map-cursor";
    this.marker.setAttribute("aria-hidden", "true");
    this.marker.hidden = true;
    this.live = document.createElement("div");
    this.live.className = "dfx-sr-only";
    this.live.setAttribute("aria-live", "polite");
    root.append(this.marker, this.live);
    root.addEventListener("keydown", (e) => this.onKey(e));
    root.addEventListener("mousedown", () => this.unmark());
    root.addEventListener("wheel", () => this.unmark(), { passive: true });
  }

  /** The errors the arrows step through, in index order. */
  private members(): number[] {
    const r = this.h.region(), rid = this.h.selectedRegion(), out: number[] = [];
    if (!r) return out;
    for (let i = 0; i < r.length; i++) if (rid < 0 || r[i] === rid) out.push(i);
    return out;
  }

  private onKey(e: KeyboardEvent): void {
    if (e.target !== this.root) return; // keys typed into the map's own buttons stay theirs
    if (e.key in STEPS) this.step(STEPS[e.key]);
    else if (e.key === "Home" || e.key === "End") this.jump(e.key === "Home");
    else if (e.key === "Enter" && this.current >= 0) this.h.open(this.current);
    else if (e.key === "Escape") this.clear();
    else return;
    e.preventDefault();
    e.stopPropagation(); // JupyterLab's command-mode shortcuts must not see them
  }

  private step(delta: number): void {
    const list = this.members();
    if (!list.length) { this.live.textContent = "No errors to step through."; return; }
    const pos = list.indexOf(this.current);
    const next = pos < 0 ? (delta > 0 ? 0 : list.length - 1) : (pos + delta + list.length) % list.length;
    this.mark(list[next], next, list.length);
  }

  private jump(first: boolean): void {
    const list = this.members();
    if (list.length) this.mark(list[first ? 0 : list.length - 1], first ? 0 : list.length - 1, list.length);
  }

  private mark(i: number, pos: number, total: number): void {
    this.current = i;
    this.root.dataset.current = String(i);
    this.live.textContent = `Error ${i} (${pos + 1} of ${total}): ${this.h.describe(i)}. Enter opens it.`;
    const p = this.h.position(i);
    if (!p) { this.marker.hidden = true; return; }
    const box = this.root.getBoundingClientRect();
    this.marker.style.left = `${p[0] - box.left}px`;
    this.marker.style.top = `${p[1] - box.top}px`;
    this.marker.hidden = false;
    this.h.show(i, p[0], p[1]);
  }

  /** Hide the ring (the view moves under a drag or the wheel); the current point stays. */
  private unmark(): void { this.marker.hidden = true; }

  clear(): void {
    this.current = -1;
    delete this.root.dataset.current;
    this.marker.hidden = true;
    this.h.hide();
  }
}

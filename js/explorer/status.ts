// The status line (busy spinner, kernel status, errors) and the page's actions: each button runs
// an anywidget command (`experimental.invoke`) that answers {ok, message}; the page stops waiting
// after a timeout, so it never hangs on a kernel that is gone.
import type { AnyModel, Experimental } from "@anywidget/types";

export const ACTION_TIMEOUT_MS = 20000;
const NO_ANSWER = "No answer from the kernel: it may have been restarted or be busy. Re-run the cell that shows the explorer.";

export type Answer = { ok: boolean; message?: string };

/** A signal that aborts when the view goes or after `ms`. */
export function deadline(signal: AbortSignal, ms = ACTION_TIMEOUT_MS): AbortSignal {
  const timeout = AbortSignal.timeout(ms);
  return typeof AbortSignal.any === "function" ? AbortSignal.any([signal, timeout]) : timeout;
}

export class Status {
  root: HTMLElement;
  private localError = "";
  private localNote = "";
  private lostMessage = "";

  constructor(parent: HTMLElement, private model: AnyModel, private invoke: Experimental["invoke"],
    private signal: AbortSignal) {
    this.root = document.createElement("div");
    this.root.className = "dfx-status";
    this.root.setAttribute("role", "status");
    this.root.setAttribute("aria-live", "polite");
    parent.append(this.root);
  }

  /** A message of this view (shown instead of the kernel's status until the next action). */
  note(text: string): void { this.localNote = text; this.show(); }

  /** An error of this view (e.g. a map that could not be drawn). */
  fail(text: string): void { this.localError = text; this.show(); }

  /** The kernel is gone: say so, in place of everything else, from now on. */
  lose(message: string): void { this.lostMessage = message; this.show(); }

  get lost(): boolean { return this.lostMessage !== ""; }

  /** Run command `name` with `msg`, showing `note` until the kernel answers. */
  async act(name: string, msg: Record<string, unknown> = {}, note = ""): Promise<void> {
    if (this.lost) return;
    this.localError = "";
    this.localNote = note;
    this.show();
    try {
      const [answer] = await this.invoke<Answer>(name, msg, { signal: deadline(this.signal) });
      this.localError = answer.ok ? "" : String(answer.message || "failed");
    } catch {
      if (this.signal.aborted) return; // the view is gone
      this.localError = NO_ANSWER;
    }
    this.localNote = "";
    this.show();
  }

  show(): void {
    if (this.lost) { this.showLost(); return; }
    const busy: string = this.model.get("busy") || "";
    const err: string = this.localError || this.model.get("error") || "";
    this.root.innerHTML = "";
    if (busy) {
      const s = document.createElement("span");
      s.className = "dfx-spin";
      s.setAttribute("aria-hidden", "true");
      this.root.append(s);
    }
    const msg = document.createElement("span");
    msg.textContent = this.localNote || this.model.get("status") || "";
    this.root.append(msg);
    if (err) {
      const e = document.createElement("span");
      e.className = "dfx-err";
      e.setAttribute("role", "alert");
      e.textContent = ` ${err}`;
      this.root.append(e);
    }
  }

  private showLost(): void {
    const e = document.createElement("span");
    e.className = "dfx-err";
    e.setAttribute("role", "alert");
    e.textContent = this.lostMessage;
    this.root.replaceChildren(e);
  }
}

// Noticing that the kernel behind a widget went away (restarted, shut down, died). In Jupyter
// (JupyterLab, Notebook 7) the widget manager marks every model's comm as no longer live when the
// kernel restarts: the model fires "comm_live_update", and "comm:close" when the kernel closes
// it. A kernel that is shut down or replaced shows as a changed or dead `widget_manager.kernel`,
// looked at twice a second. Hosts without these (marimo) never report a loss here.
import type { AnyModel } from "@anywidget/types";

export const LOST_MESSAGE = "The kernel was restarted or stopped, so this widget is no longer connected to it. " +
  "Re-run the cell that shows it (and the cells before it) to get it back.";

const POLL_MS = 500;

type Kernel = { status?: string; isDisposed?: boolean } | null | undefined;

function kernelOf(model: AnyModel): Kernel {
  try { return (model as any).widget_manager?.kernel as Kernel; } catch { return undefined; }
}

/** Call `onLost` once, as soon as the model's kernel is gone (or never, where no host says). */
export function watchKernel(model: AnyModel, signal: AbortSignal | undefined, onLost: () => void): () => boolean {
  let lost = false;
  const first = kernelOf(model);
  const lose = () => {
    if (lost || signal?.aborted) return;
    lost = true;
    stop();
    onLost();
  };
  const poll = () => {
    if (first === undefined) return; // this host has no kernel to look at
    const k = kernelOf(model);
    if (k !== first || !k || k.isDisposed || k.status === "dead" || k.status === "restarting") lose();
  };
  const timer = window.setInterval(poll, POLL_MS);
  model.on("comm_live_update", lose);
  model.on("comm:close", lose);
  function stop(): void {
    window.clearInterval(timer);
    model.off("comm_live_update", lose);
    model.off("comm:close", lose);
  }
  signal?.addEventListener("abort", stop);
  return () => lost;
}

/** Disable every control under `root` and make all but `keep` inert (no clicks, no focus). */
export function freeze(root: HTMLElement, keep: HTMLElement): void {
  root.dataset.kernel = "lost";
  root.querySelectorAll<HTMLInputElement>("button, input, select, textarea").forEach((el) => { el.disabled = true; });
  Array.from(root.children).forEach((child) => {
    if (child !== keep && !child.contains(keep)) (child as HTMLElement).inert = true;
  });
}

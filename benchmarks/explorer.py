"""Benchmark: the error explorer in a real JupyterLab in headless Chromium, at 1k, 10k, 100k errors.

Measures, for each size (synthetic error codes through the real widget code path: a real
DefuseSession with untrained digits-shaped models, an ErrorSet of Gaussian blobs and a RegionSet
built from them):

- ``projection_s``: the 2-D projection in the kernel (UMAP by default; cached afterwards),
- ``render_s``: from pressing Shift+Enter on ``Explorer(s)`` (projection cached) to the map drawn
  in the page (wall clock seen by the test driver); ``js_render_ms``, the widget's own time
  from its render() call to the drawn map; ``js_draw_ms``, from the points being in the page
  (decoding the buffers) to the drawn map,
- ``click_ms``: from a click on a region button to the region panel showing that region's
  gallery (median over 5 regions, each built fresh in the kernel),
- bytes received by the page over the kernel websocket for the display, a region click and a
  label change (all kernel messages in that window, status messages included).

Prints a table and, last, one JSON line. Run: ``.venv/bin/python benchmarks/explorer.py``
(``--sizes 1000 10000``, ``--projection pca`` to skip UMAP).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import conftest as lab  # noqa: E402  (the e2e fixtures' plain helpers)

SETUP = r'''
import time, math, numpy as np, torch
import defuse_widgets as dw
from defuse_widgets import projection
from defuse_widgets.distill import Mixture, Region, RegionSet
from defuse_widgets import ErrorSet
from defuse_widgets.widgets.explorer import Explorer
torch.manual_seed(0)
data = dw.load_dataset("digits")
s = dw.DefuseSession(classifier=dw.SmallCNN(data.image_shape, data.num_classes),
                     generator=dw.ConvVAE(data.image_shape, latent_dim=8), data=data,
                     device="cpu", seed=0, progress=False)

def synthetic(m, k=30, d=8, seed=0):
    """An ErrorSet of m codes in k Gaussian blobs and the RegionSet of those blobs."""
    g = np.random.default_rng(seed)
    centers = g.normal(scale=4.0, size=(k, d))
    blob = g.integers(0, k, m)
    codes = (centers[blob] + g.normal(size=(m, d))).astype(np.float32)
    n_test = len(data.x_test)
    true = g.integers(0, 10, m)
    pred = (true + 1 + g.integers(0, 9, m)) % 10
    errors = ErrorSet(codes=torch.from_numpy(codes),
                      source_index=torch.from_numpy(g.integers(0, n_test, m)),
                      true_label=torch.from_numpy(true), pred_label=torch.from_numpy(pred),
                      confidence=torch.from_numpy(g.uniform(0.3, 1, m).astype(np.float32)),
                      validity=torch.from_numpy(g.uniform(0.5, 1, m).astype(np.float32)),
                      perturbation=torch.zeros(m, d), split="test")
    assign = np.where(g.uniform(size=m) < 0.1, -1, blob)
    regions, means, covs, weights = [], [], [], []
    for c in range(k):
        x = codes[blob == c]
        mean, cov = x.mean(0), np.cov(x.T) + 1e-3 * np.eye(d)
        means.append(mean); covs.append(cov); weights.append(len(x) / m)
        regions.append(Region(id=c, weight=len(x) / m, size=int((assign == c).sum()),
                              mean=torch.from_numpy(mean), covariance=torch.from_numpy(cov).float(),
                              transition=(int(c % 10), int((c + 1) % 10)), transition_share=0.5,
                              mean_confidence=0.7, mean_validity=0.8, component=c))
    mix = Mixture(torch.tensor(weights), torch.tensor(np.stack(means)),
                  torch.tensor(np.stack(covs)))
    rs = RegionSet(regions, torch.from_numpy(assign), mix, settings={}, seed=0)
    rs.decode, rs.predict = s.decode, s.predict
    return errors, rs

def prepare(m, method):
    errors, rs = synthetic(m)
    s.errors, s.regions = errors, rs
    for rid in list(s.labels):
        s.unlabel(rid)
    t0 = time.perf_counter()
    projection.project(errors.codes, method)
    print("PROJECTED", m, round(time.perf_counter() - t0, 2))
'''


def _wait_rendered(page: Any, m: int, timeout: float) -> None:
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('[aria-label="Error map"]')]
                  .some(e => e.dataset.points === '{m}')""",
        timeout=timeout * 1000,
    )


CLICK_JS = """async ([m, rid]) => {
  const maps = [...document.querySelectorAll('[aria-label="Error map"]')];
  const root = maps.find(e => e.dataset.points === String(m)).closest('.dfx');
  const btn = [...root.querySelectorAll('button')].find(
      b => (b.getAttribute('aria-label') || '').startsWith(`Region ${rid}:`));
  const panel = root.querySelector('[aria-label="Region panel"]');
  const done = () => panel.dataset.region === String(rid) && panel.querySelector('img');
  const t0 = performance.now();
  btn.click();
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('panel timeout')), 30000);
    const obs = new MutationObserver(() => {
      if (done()) { obs.disconnect(); clearTimeout(timer); resolve(null); }
    });
    obs.observe(panel, { childList: true, subtree: true, attributes: true });
  });
  return performance.now() - t0;
}"""


class Frames:
    """Bytes the page receives over kernel websockets."""

    def __init__(self, page: Any) -> None:
        self.total = 0
        page.on("websocket", self._attach)

    def _attach(self, ws: Any) -> None:
        ws.on("framereceived", self._frame)

    def _frame(self, payload: Any) -> None:
        self.total += len(payload.encode() if isinstance(payload, str) else payload)


def run_cell(page: Any, source: str) -> float:
    """Append a cell, run it; return the time of the Shift+Enter press."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    n = cells.count()
    cells.nth(n - 1).locator(".jp-InputArea-prompt").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    cells.nth(n).locator(".cm-content").click()
    page.keyboard.insert_text(source)
    t0 = time.perf_counter()
    page.keyboard.press("Shift+Enter")
    return t0


def settle(page: Any, frames: Frames, quiet_s: float = 0.7, timeout: float = 60) -> int:
    """Wait until no websocket bytes arrive for ``quiet_s``; return the bytes seen so far."""
    last, since = frames.total, time.perf_counter()
    deadline = since + timeout
    while time.perf_counter() < deadline:
        page.wait_for_timeout(100)
        if frames.total != last:
            last, since = frames.total, time.perf_counter()
        elif time.perf_counter() - since >= quiet_s:
            break
    return frames.total


def bench(sizes: list[int], method: str, threads: int | None) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    url, proc = lab.start_lab(root)
    rows = []
    try:
        setup = SETUP + (f"torch.set_num_threads({threads})\n" if threads else "")
        lab.write_notebook(root, "bench", [setup + "print('READY')"])
        with sync_playwright() as p:
            browser = lab.launch_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            frames = Frames(page)
            lab.open_and_run(page, url, "bench")
            page.get_by_text("READY").wait_for(timeout=180_000)
            lab.wait_kernel_idle(page)
            for m in sizes:
                out = lab.run_new_cell(page, f"prepare({m}, {method!r})", "PROJECTED", 900)
                projection_s = float(out.split()[-1])
                lab.wait_kernel_idle(page)
                settle(page, frames)
                b0 = frames.total
                t0 = run_cell(page, f"w = Explorer(s, projection={method!r}, samples=16)\nw")
                _wait_rendered(page, m, 300)
                render_s = time.perf_counter() - t0
                js_ms, draw_ms = page.evaluate(
                    f"""() => {{
                      const e = [...document.querySelectorAll('[aria-label="Error map"]')]
                        .find(e => e.dataset.points === '{m}');
                      return [+e.dataset.renderMs, +e.dataset.drawMs];
                    }}"""
                )
                lab.wait_kernel_idle(page)
                display_bytes = settle(page, frames) - b0
                clicks, click_bytes = [], []
                for rid in range(5):
                    b0 = settle(page, frames)
                    clicks.append(page.evaluate(CLICK_JS, [m, rid]))
                    click_bytes.append(settle(page, frames) - b0)
                b0 = settle(page, frames)
                root_sel = (
                    f'.dfx:has([aria-label="Error map"][data-points="{m}"]) '
                    'button[aria-label="Apply label"]'
                )
                page.locator(root_sel).click()
                page.wait_for_function(
                    f"""() => [...document.querySelectorAll('.dfx')].some(d =>
                      d.querySelector('[aria-label="Error map"][data-points="{m}"]') &&
                      [...d.querySelectorAll('button')].some(b =>
                        /^Region 4: .*label: /.test(b.getAttribute('aria-label') || '')))""",
                    timeout=30_000,
                )
                label_bytes = settle(page, frames) - b0
                rows.append(
                    {
                        "points": m,
                        "projection": method,
                        "projection_s": projection_s,
                        "render_s": round(render_s, 3),
                        "js_render_ms": js_ms,
                        "js_draw_ms": draw_ms,
                        "click_ms_median": round(statistics.median(clicks), 1),
                        "click_ms_max": round(max(clicks), 1),
                        "display_bytes": display_bytes,
                        "click_bytes_median": int(statistics.median(click_bytes)),
                        "label_bytes": label_bytes,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            browser.close()
    finally:
        lab.stop_lab(proc)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--projection", choices=("umap", "pca"), default="umap")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the kernel")
    args = ap.parse_args()
    import os

    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__}, device cpu (kernel), Chromium {lab.CHROMIUM} headless; "
        f"click: median of 5 regions; bytes: all kernel websocket frames received by the page"
    )
    print(
        f"load average before: {os.getloadavg()}; kernel torch threads: {args.threads or 'default'}"
    )
    rows = bench(args.sizes, args.projection, args.threads)
    print(f"load average after: {os.getloadavg()}")
    cols = [
        ("points", 8), ("projection_s", 13), ("render_s", 9), ("js_render_ms", 13),
        ("js_draw_ms", 11),
        ("click_ms_median", 16), ("click_ms_max", 13), ("display_bytes", 14),
        ("click_bytes_median", 19), ("label_bytes", 12),
    ]  # fmt: skip
    print(" ".join(name.rjust(w) for name, w in cols))
    for row in rows:
        print(" ".join(str(row[name]).rjust(w) for name, w in cols))
    print(json.dumps({"benchmark": "explorer", "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()

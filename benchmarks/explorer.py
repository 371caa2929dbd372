"""Benchmark: the explorer's map in a real JupyterLab in headless Chromium, both drawing libraries.

For each size (synthetic error codes through the real widget code path: a real DefuseSession with
untrained digits-shaped models, an ErrorSet of Gaussian blobs and a RegionSet built from them; the
explorer built and projected in the kernel first, ``block=True``, with as many synthetic
background points as errors) and each map engine (``regl``: regl-scatterplot, ``plotly``:
scattergl), in the same run and page:

- ``render_s``: the display cell's Shift+Enter (projection ready) -> the map drawn in the page,
- ``fps``, ``frame_ms_p90``: ``requestAnimationFrame`` frames per second and their 90th
  percentile interval while dragging to pan (Pan tool)
  for ~1 s, then 12 wheel zooms over ~1 s,
- ``hover_ms``: the mouse reaching an error -> its thumbnail in the tooltip (median of 5),
- ``lasso_ms``: mouse release of a lasso over about a quarter of the errors -> the selection in
  Python (``on_select`` callback; page and kernel clocks on one machine), ``lasso_sent_ms`` the
  part until the page sends it, ``lasso_points`` its size,
- ``click_ms``: a region button click -> that region's gallery in the panel (median of 3),
- ``page_mb``: the page's JS heap (CDP) after the map is drawn,
- ``label_bytes``: bytes the page receives for one label change,

and, once, ``cold_first_look_s``: digits, a fresh kernel, ``s.explorer()`` cell run -> first (PCA)
map drawn. Prints a table and, last, one JSON line for the first engine. Chromium runs with
--disable-gpu here: WebGL is software (SwiftShader), so the figures are pessimistic for a GPU.

Run: ``python benchmarks/explorer.py --sizes 1000 100000 1000000`` (``--engines regl``,
``--no-background``, ``--no-cold``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _map_probe as probe  # noqa: E402
import conftest as lab  # noqa: E402  (the e2e fixtures' plain helpers)

SETUP = r'''
import time, math, numpy as np, torch
import defuse_widgets as dw
from defuse_widgets.projection import layout as projection
from defuse_widgets.regions.distill import Mixture, Region, RegionSet
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

T = []  # (kernel time, count) of each selection that reached Python

def prepare(m, method, nb):
    """Synthetic errors and regions, an explorer over them (projected), nb background points."""
    global w
    errors, rs = synthetic(m)
    s.errors, s.regions = errors, rs
    for rid in list(s.labels):
        s.unlabel(rid)
    t0 = time.perf_counter()
    projection.project(errors.codes, method)
    projection_s = time.perf_counter() - t0
    w = Explorer(s, projection=method, samples=16, block=True)
    w.on_select(lambda idx: T.append((time.time(), len(idx))))
    if nb:
        g = np.random.default_rng(1)
        xy = w.points[g.integers(0, m, nb)] + g.normal(scale=0.3, size=(nb, 2))
        w.background_label = "synthetic background points"
        w.background_points = xy.astype(np.float32)
    print("PROJECTED", m, round(projection_s, 2))

def show(engine):
    """Display w drawn by engine, in place of the previous view."""
    global handle
    if "handle" in globals():
        handle.update("")
    w.map_engine = engine
    handle = display(w, display_id=True)
'''


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


COLD = [
    "import torch\nimport defuse_widgets as dw\ntorch.manual_seed(0)\n"
    'data = dw.load_dataset("digits")\n'
    "s = dw.DefuseSession(classifier=dw.SmallCNN(data.image_shape, data.num_classes),\n"
    "    generator=dw.ConvVAE(data.image_shape, latent_dim=8), data=data, device='cpu', seed=0,\n"
    "    progress=False)\n"
    's.identify(split="test", limit=200)\ns.distill(max_regions=20)\nprint("READY", len(s.errors))'
]


def measure_engine(page: Any, frames: Frames, m: int, engine: str) -> dict[str, Any]:
    """Display the prepared explorer with ``engine``; measure render, fps, hover, lasso, click."""
    row: dict[str, Any] = {"points": m, "engine": engine}
    settle(page, frames)
    t0 = run_cell(page, f"show({engine!r})")
    probe.wait_drawn(page, m, engine, 300)
    row["render_s"] = round(time.perf_counter() - t0, 3)
    lab.wait_kernel_idle(page)
    # the explorer's background work for a shown view (fixed points...) ends before the next probes
    lab.run_new_cell(page, "w.wait(); print('WAITED')", "WAITED", 600)
    settle(page, frames)
    row["page_mb"] = probe.heap_mb(page)
    fps = probe.pan_zoom_fps(page, m, engine)
    row["fps"], row["frame_ms_p90"] = (fps["fps"], fps["p90"]) if fps else (None, None)
    row["hover_ms"] = probe.hover_ms(page, m, engine)
    n_before = int(lab.run_new_cell(page, "print('N', len(T))", "N").split()[-1])
    t_up, expected = probe.lasso(page, m, engine)
    page.wait_for_function(
        f"() => +document.querySelector('{probe.map_sel(m, engine)}').dataset.selected > 0",
        timeout=120_000,
    )
    out = lab.run_new_cell(page, f"print('SEL', *T[{n_before}], len(T))", "SEL", 120)
    t_py, count = float(out.split()[1]), int(out.split()[2])
    row["lasso_ms"], row["lasso_points"] = round(t_py * 1000 - t_up, 1), count
    row["lasso_sent_ms"] = probe.lasso_sent_ms(page, t_up)
    lab.run_new_cell(page, "w.select(None); print('CLEARED')", "CLEARED")
    clicks = probe.click_ms(page, m, engine, [0, 1, 2])
    row["click_ms"], row["click_ms_max"] = statistics.median(clicks), max(clicks)
    return row


def label_bytes(page: Any, frames: Frames, m: int, engine: str) -> int:
    """Bytes the page receives for one label change (the label map and the status line)."""
    b0 = settle(page, frames)
    sel = f'.dfx:has({probe.map_sel(m, engine)}) button[aria-label="Apply label"]'
    page.locator(sel).click()
    page.wait_for_function(
        f"""() => [...document.querySelector('{probe.map_sel(m, engine)}').closest('.dfx')
              .querySelectorAll('button')].some(b =>
                /^Region 2: .*label: /.test(b.getAttribute('aria-label') || ''))""",
        timeout=60_000,
    )
    return settle(page, frames) - b0


def cold_first_look(page: Any, url: str, root: Path) -> float:
    """Digits, a fresh kernel: the explorer's cell run -> the first (PCA) map drawn, seconds."""
    lab.write_notebook(root, "cold", COLD)
    lab.open_and_run(page, url, "cold")
    page.get_by_text("READY").wait_for(timeout=300_000)
    lab.wait_kernel_idle(page)
    t0 = run_cell(page, "w = s.explorer()\nw")
    page.wait_for_selector('[aria-label="Error map"][data-layout="pca"][data-rendered]',
                           timeout=120_000)  # fmt: skip
    return round(time.perf_counter() - t0, 2)


def bench(sizes: list[int], engines: list[str], method: str, background: bool,
          cold: bool) -> tuple[list[dict[str, Any]], float | None]:  # fmt: skip
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    url, proc = lab.start_lab(root)
    rows, cold_s = [], None
    try:
        lab.write_notebook(root, "bench", [SETUP + "print('READY')"])
        with sync_playwright() as p:
            browser = lab.launch_browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            frames = Frames(page)
            lab.open_and_run(page, url, "bench")
            page.get_by_text("READY").wait_for(timeout=180_000)
            lab.wait_kernel_idle(page)
            for m in sizes:
                src = f"prepare({m}, {method!r}, {m if background else 0})"
                out = lab.run_new_cell(page, src, "PROJECTED", 1200)
                lab.wait_kernel_idle(page, 600)
                for engine in engines:
                    try:
                        row = measure_engine(page, frames, m, engine)
                        row["label_bytes"] = label_bytes(page, frames, m, engine)
                    except Exception as exc:  # noqa: BLE001 (reported in the table)
                        row = {"points": m, "engine": engine, "failed": str(exc)[:120]}
                    row["background"] = m if background else 0
                    row["projection_s"] = float(out.split()[-1])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    with contextlib.suppress(Exception):
                        lab.run_new_cell(page, "handle.update(''); print('GONE')", "GONE", 120)
            if cold:
                cold_s = cold_first_look(browser.new_page(viewport={"width": 1400, "height": 1000}),
                                         url, root)  # fmt: skip
            browser.close()
    finally:
        lab.stop_lab(proc)
    return rows, cold_s


COLS = [
    ("points", 8), ("engine", 7), ("background", 11), ("render_s", 9), ("fps", 6),
    ("frame_ms_p90", 13), ("hover_ms", 9), ("lasso_ms", 9), ("lasso_sent_ms", 14),
    ("lasso_points", 13),
    ("click_ms", 9), ("click_ms_max", 13), ("page_mb", 8), ("label_bytes", 12),
]  # fmt: skip
KEYS = ("render_s", "click_ms", "hover_ms", "lasso_ms", "fps", "page_mb")


def esm_mb() -> float:
    return round((ROOT / "defuse_widgets" / "static" / "explorer.js").stat().st_size / 1e6, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    ap.add_argument("--engines", nargs="+", default=["regl", "plotly"])
    ap.add_argument("--projection", choices=("umap", "pca"), default="pca")
    ap.add_argument("--no-background", action="store_true", help="no background points")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-kernel first look")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, "
        f"Chromium {lab.CHROMIUM} headless with --disable-gpu (software WebGL: SwiftShader); "
        f"background: as many points as errors; load average before: {os.getloadavg()}"
    )
    rows, cold_s = bench(args.sizes, args.engines, args.projection, not args.no_background,
                         not args.no_cold)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    print(" ".join(name.rjust(w) for name, w in COLS))
    for row in rows:
        print(" ".join(str(row.get(name, row.get("failed", "-") if name == "fps" else "-")).rjust(w)
                       for name, w in COLS))  # fmt: skip
    chosen = args.engines[0]
    sizes = {str(r["points"]): {k: r.get(k) for k in KEYS} for r in rows if r["engine"] == chosen}
    print(json.dumps({"engine": chosen, "sizes": sizes, "cold_first_look_s": cold_s,
                      "esm_mb": esm_mb()}))  # fmt: skip


if __name__ == "__main__":
    main()

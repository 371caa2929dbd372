"""In-page measurements of the explorer's map for benchmarks/explorer.py (and the map's browser
tests): find a displayed map by engine and size, hover, pan and zoom under a
``requestAnimationFrame`` frame counter, lasso, click a region, read the JS heap.

Every function takes a Playwright page; times are measured in the page (``performance.now()``) or,
where Python must see the result, with wall clocks of the browser and the kernel on one machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Any


def map_sel(m: int, engine: str) -> str:
    """CSS selector of the map of ``m`` errors drawn by ``engine``."""
    return f'[aria-label="Error map"][data-points="{m}"][data-engine="{engine}"]'


def wait_drawn(page: Any, m: int, engine: str, timeout_s: float) -> None:
    page.wait_for_selector(f"{map_sel(m, engine)}[data-rendered]", timeout=timeout_s * 1000)


def _eval(page: Any, m: int, engine: str, body: str, arg: Any = None) -> Any:
    """Evaluate ``body`` (a JS function body) with ``el`` (the map root), ``view`` and ``arg``."""
    fn = f"""(arg) => {{
      const el = document.querySelector('{map_sel(m, engine)}'); const view = el.dfxMap;
      {body}
    }}"""
    return page.evaluate(fn, arg)


def positions(page: Any, m: int, engine: str, count: int = 4000) -> list[list[float]]:
    """Page positions of up to ``count`` errors spread over the index range."""
    body = """const n = +el.dataset.points, step = Math.max(1, Math.floor(n / arg)), out = [];
      for (let i = 0; i < n; i += step) {
        const p = view.screenPosition(i); if (p) out.push([i, ...p]);
      }
      return out;"""
    return list(_eval(page, m, engine, body, count))


def plot_box(page: Any, m: int, engine: str) -> dict[str, float]:
    """The map's box in page coordinates, scrolled into view first."""
    page.locator(map_sel(m, engine)).scroll_into_view_if_needed()
    page.wait_for_timeout(200)
    return dict(_eval(page, m, engine, "const b = el.getBoundingClientRect(); "
                      "return {x: b.left, y: b.top, w: b.width, h: b.height};"))  # fmt: skip


def heap_mb(page: Any) -> float:
    """JS heap used by the page (CDP Performance metrics), MB."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("Performance.enable")
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        return round(metrics["JSHeapUsedSize"] / 1e6, 1)
    finally:
        cdp.detach()


HOVER_SETUP = """() => {
  window.__hov = { t0: 0, t1: 0 };
  window.__hovMove = (e) => { if (!window.__hov.t0) window.__hov.t0 = performance.now(); };
  document.addEventListener('mousemove', window.__hovMove, true);
  const tip = document.querySelector('%s .dfx-tip');
  window.__hovObs?.disconnect();
  window.__hovObs = new MutationObserver(() => {
    if (tip.querySelector('img') && !window.__hov.t1) window.__hov.t1 = performance.now();
  });
  window.__hovObs.observe(tip, { childList: true, subtree: true });
}"""


def hover_ms(page: Any, m: int, engine: str, repeats: int = 5) -> float | None:
    """Median time from the mouse reaching an error to its thumbnail shown in the tooltip."""
    page.evaluate(HOVER_SETUP % map_sel(m, engine))
    box = plot_box(page, m, engine)
    pts = [p for p in positions(page, m, engine, 400)
           if box["x"] + 40 < p[1] < box["x"] + box["w"] - 40
           and box["y"] + 40 < p[2] < box["y"] + box["h"] - 40]  # fmt: skip
    times = []
    for _, x, y in pts[1 : 1 + repeats * 7 : 7]:
        page.mouse.move(box["x"] + 5, box["y"] + 5)
        page.wait_for_timeout(150)
        page.evaluate(  # no thumbnail of an earlier hover left in the tooltip
            f"() => {{ document.querySelector('{map_sel(m, engine)} .dfx-tip').innerHTML = '';"
            " window.__hov.t0 = 0; window.__hov.t1 = 0; }"
        )
        page.mouse.move(x - 2, y - 2)
        page.mouse.move(x, y)
        try:
            page.wait_for_function("() => window.__hov.t1 > 0", timeout=10_000)
        except Exception:  # noqa: BLE001 (no thumbnail: counted as missing)
            continue
        times.append(page.evaluate("() => window.__hov.t1 - window.__hov.t0"))
    page.evaluate("() => document.removeEventListener('mousemove', window.__hovMove, true)")
    return round(statistics.median(times), 1) if times else None


FRAMES_START = """() => {
  window.__frames = []; window.__counting = true;
  const tick = (t) => {
    window.__frames.push(t); if (window.__counting) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""
FRAMES_STOP = """() => {
  window.__counting = false; const f = window.__frames;
  if (f.length < 2) return null;
  const dts = f.slice(1).map((t, i) => t - f[i]).sort((a, b) => a - b);
  return { fps: (f.length - 1) * 1000 / (f[f.length - 1] - f[0]),
           p90: dts[Math.floor(0.9 * (dts.length - 1))], max: dts[dts.length - 1] };
}"""


def pan_zoom_fps(page: Any, m: int, engine: str, seconds: float = 2.0) -> dict[str, float] | None:
    """Frames per second (requestAnimationFrame) while dragging to pan, then wheel-zooming."""
    _eval(page, m, engine, "view.setMode('pan');")
    box = plot_box(page, m, engine)
    cx, cy = box["x"] + box["w"] / 2, box["y"] + box["h"] / 2
    page.mouse.move(cx, cy)
    page.evaluate(FRAMES_START)
    page.mouse.down()
    steps = 24
    for k in range(steps):
        dx = 120 * (1 if k < steps / 2 else -1)
        page.mouse.move(cx + dx * (k % (steps // 2)) / steps, cy + 40 * ((k % 4) - 2) / 4)
        page.wait_for_timeout(seconds * 500 / steps)
    page.mouse.up()
    for k in range(12):
        page.mouse.wheel(0, -120 if k < 6 else 120)
        page.wait_for_timeout(seconds * 500 / 12)
    out = page.evaluate(FRAMES_STOP)
    _eval(page, m, engine, "view.resetView(); view.setMode('lasso');")
    page.wait_for_timeout(300)
    if not out:
        return None
    return {k: round(v, 1) for k, v in out.items()}


# the map view's (private) selection handler, wrapped once: when the page sent the selection
MARK_SENT = """window.__sent = 0; const h = view.h, send = h.onSelect;
  h.onSelect = (idx) => { send(idx); window.__sent = Date.now(); h.onSelect = send; };"""


def lasso(page: Any, m: int, engine: str, share: float = 0.25) -> tuple[float, int]:
    """Lasso a rectangle holding about ``share`` of the errors (left of their ``share`` quantile
    in x); returns the page time of the mouse release (epoch ms) and the expected count. The
    time the page sends the selection is read afterwards with :func:`lasso_sent_ms`."""
    plot_box(page, m, engine)
    pts = positions(page, m, engine, 20000)
    xs = sorted(p[1] for p in pts)
    ys = [p[2] for p in pts]
    cut = xs[int(share * (len(xs) - 1))]
    x0, y0, y1 = xs[0] - 6, min(ys) - 6, max(ys) + 6
    page.evaluate(
        "() => { window.__up = 0; window.addEventListener('mouseup', "
        "() => { window.__up = Date.now(); }, { capture: true, once: true }); }"
    )
    _eval(page, m, engine, MARK_SENT)
    page.mouse.move(x0, y0)
    page.mouse.down()
    for px, py in ((cut, y0), (cut, y1), (x0, y1), (x0, y0 + 1)):
        page.mouse.move(px, py, steps=8)
    page.mouse.up()
    expected = sum(1 for x in xs if x <= cut) * m // max(1, len(xs))
    return float(page.evaluate("() => window.__up")), expected


def lasso_sent_ms(page: Any, t_up: float) -> float:
    """After :func:`lasso`: mouse release -> the page sending the selection (ms)."""
    return round(float(page.evaluate("() => window.__sent")) - t_up, 1)


CLICK_JS = """async ([sel, rid]) => {
  const root = document.querySelector(sel).closest('.dfx');
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


def click_ms(page: Any, m: int, engine: str, regions: list[int]) -> list[float]:
    """Region button click -> that region's gallery in the panel, per region."""
    out = []
    for rid in regions:
        out.append(round(page.evaluate(CLICK_JS, [map_sel(m, engine), rid]), 1))
        page.wait_for_timeout(200)
    return out


def now_ms() -> float:
    return time.time() * 1000

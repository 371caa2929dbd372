"""End to end: the explorer's map (regl-scatterplot) at 100,000 points in a real JupyterLab.

Synthetic errors (Gaussian blobs, laid out by their first two coordinates) on a real session with
untrained digits models. Hovering an error shows its thumbnail (asked of the kernel, one point at
a time at this size); the Pan tool and a drag move the points by the drag; the wheel zooms in
around the mouse; Reset puts the view back; a lasso selects exactly the errors inside it and the
selection reaches Python as an int32 array; a selection made in Python shows in the page. In the
library's performance mode (above ``FLAT_ABOVE`` drawn points, lowered here) the map's own grid
finds the hovered and the clicked error, and a background point beside it does not hide its
thumbnail.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

N = 100_000
SETUP = f"""
import numpy as np, torch
import defuse_widgets as dw
from defuse_widgets import ErrorSet
from defuse_widgets.widgets.explorer import Explorer
torch.manual_seed(0)
data = dw.load_dataset("digits")
s = dw.DefuseSession(classifier=dw.SmallCNN(data.image_shape, data.num_classes),
                     generator=dw.ConvVAE(data.image_shape, latent_dim=8), data=data,
                     device="cpu", seed=0, progress=False)
g = np.random.default_rng(0)
m = {N}
codes = (g.normal(scale=4.0, size=(12, 8))[g.integers(0, 12, m)] + g.normal(size=(m, 8)))
true = g.integers(0, 10, m)
s.errors = ErrorSet(codes=torch.from_numpy(codes.astype(np.float32)),
    source_index=torch.from_numpy(g.integers(0, len(data.x_test), m)),
    true_label=torch.from_numpy(true), pred_label=torch.from_numpy((true + 1) % 10),
    confidence=torch.full((m,), 0.9), validity=torch.ones(m), perturbation=torch.zeros(m, 8),
    split="test")
w = Explorer(s, projection=codes[:, :2].astype(np.float32), max_thumbnail_bytes=0, block=True)
w
"""
MAP = f'[aria-label="Error map"][data-points="{N}"]'


def _positions(page: Any, indices: list[int]) -> list[list[float]]:
    js = f"(ix) => ix.map(i => document.querySelector('{MAP}').dfxMap.screenPosition(i))"
    return list(page.evaluate(js, indices))


def _inside(page: Any, x0: float, y0: float, x1: float, y1: float) -> int:
    """How many errors the page draws inside the rectangle (page coordinates)."""
    js = f"""([x0, y0, x1, y1]) => {{
      const v = document.querySelector('{MAP}').dfxMap; let k = 0;
      for (let i = 0; i < {N}; i++) {{
        const p = v.screenPosition(i);
        if (p && p[0] > x0 && p[0] < x1 && p[1] > y0 && p[1] < y1) k++;
      }}
      return k;
    }}"""
    return int(page.evaluate(js, [x0, y0, x1, y1]))


def test_map_at_100k_points(notebook: Any, lab_helpers: Any) -> None:
    run_new_cell = lab_helpers.run_new_cell
    page = notebook("map_100k", [SETUP], timeout=180)
    emap = page.locator(f'{MAP}[data-engine="regl"][data-rendered]')
    emap.wait_for(timeout=240_000)
    lab_helpers.wait_kernel_idle(page, 120)
    emap.scroll_into_view_if_needed()
    box = emap.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    # hover: the nearest error's thumbnail, fetched from the kernel
    i = next(k for k, p in enumerate(_positions(page, list(range(0, 2000, 50))))
             if abs(p[0] - cx) < 150 and abs(p[1] - cy) < 120) * 50  # fmt: skip
    ((x, y),) = _positions(page, [i])
    page.mouse.move(x - 2, y - 2)
    page.mouse.move(x, y)
    tip = page.locator(".dfx-tip img")
    tip.wait_for(state="visible", timeout=20_000)
    assert "predicted" in (tip.get_attribute("alt") or "")

    # pan: the Pan tool, a drag of (80, 40) px moves the points by that much
    page.get_by_role("button", name="Pan", exact=True).click()
    before = _positions(page, [i, i + 1])
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 80, cy + 40, steps=10)
    page.mouse.up()
    page.wait_for_timeout(300)
    after = _positions(page, [i, i + 1])
    assert after[0][0] - before[0][0] == pytest.approx(80, abs=6)
    assert after[0][1] - before[0][1] == pytest.approx(40, abs=6)

    # zoom: the wheel spreads the points apart
    def spread(p: list[list[float]]) -> float:
        return float(abs(p[0][0] - p[1][0]) + abs(p[0][1] - p[1][1]))

    page.mouse.move(cx, cy)
    for _ in range(3):
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(100)
    page.wait_for_timeout(300)
    assert spread(_positions(page, [i, i + 1])) > 1.3 * spread(after)
    page.get_by_role("button", name="Reset axes").click()
    page.wait_for_timeout(300)
    reset = _positions(page, [i])[0]
    assert reset == pytest.approx(before[0], abs=1.5)

    # lasso: exactly the errors inside the rectangle reach Python, as int32
    page.get_by_role("button", name="Lasso Select").click()
    x0, y0, x1, y1 = cx - 120, cy - 90, cx + 60, cy + 70
    expected = _inside(page, x0, y0, x1, y1)
    assert expected > 1000
    page.mouse.move(x0, y0)
    page.mouse.down()
    for px, py in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 1)):
        page.mouse.move(px, py, steps=8)
    page.mouse.up()
    page.get_by_text(re.compile(r"^[\d,]+ points selected$")).wait_for(timeout=20_000)
    out = run_new_cell(
        page, "print('SEL', len(w.selected_indices), w.selected_indices.dtype)", expect="SEL"
    )
    count, dtype = out.split()[-2:]
    assert dtype == "int32"
    assert int(count) == pytest.approx(expected, rel=0.01, abs=5)

    # a selection made in Python shows on the map
    run_new_cell(page, "w.select(range(10)); print('TEN')", expect="TEN")
    page.wait_for_function(f"() => document.querySelector('{MAP}').dataset.selected === '10'",
                           timeout=15_000)  # fmt: skip


FLAT_N = 5_000
FLAT_SETUP = SETUP.replace(f"m = {N}", f"m = {FLAT_N}").rsplit("w = Explorer", 1)[0]
FLAT_MAP = f'[aria-label="Error map"][data-points="{FLAT_N}"][data-engine="regl"]'
FLAT_SHOW = (
    "w = Explorer(s, projection=codes[:, :2].astype(np.float32), max_thumbnail_bytes=0,"
    " block=True)\nw"
)


def test_flat_map_finds_the_error_beside_background(notebook: Any, lab_helpers: Any) -> None:
    """Above ``FLAT_ABOVE`` drawn points the map finds hovered and clicked errors itself: a
    background point right under the mouse, beside the error, must not take the hover from it."""
    run_new_cell = lab_helpers.run_new_cell
    page = notebook("map_flat", [FLAT_SETUP + "print('READY')"], timeout=180)
    page.get_by_text("READY").wait_for(timeout=120_000)
    page.evaluate("() => { window.dfxFlatAbove = 1000; }")  # performance mode at 10,000 points
    run_new_cell(page, FLAT_SHOW)
    page.locator(f"{FLAT_MAP}[data-rendered]").wait_for(timeout=120_000)
    emap = page.locator(FLAT_MAP)
    emap.scroll_into_view_if_needed()
    box = emap.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    view = f"document.querySelector('{FLAT_MAP}').dfxMap"
    js = f"(ix) => ix.map(i => [i, ...{view}.screenPosition(i)])"
    i, x, y = next(p for p in page.evaluate(js, list(range(0, 500, 5)))
                   if abs(p[1] - cx) < 150 and abs(p[2] - cy) < 120)  # fmt: skip
    far = max(page.evaluate(js, list(range(500, 1000, 5))), key=lambda p: abs(p[1] - x))
    out = run_new_cell(page, f"print('X', *w.points[[{i}, {far[0]}], 0])", expect="X")
    px_per_unit = (far[1] - x) / (float(out.split()[-1]) - float(out.split()[-2]))
    # every error gets a background point 3 px to its right
    run_new_cell(page, f"w.background_points = w.points + np.float32([3 / {px_per_unit}, 0])\n"
                       "print('BG')", expect="BG")  # fmt: skip
    page.locator(f'{FLAT_MAP}[data-background="{FLAT_N}"]').wait_for(timeout=60_000)
    lab_helpers.wait_kernel_idle(page, 120)
    # the background widens the drawn extent: the error and its background point moved closer
    emap.scroll_into_view_if_needed()
    page.wait_for_timeout(200)
    (_, x1, y), (_, far_x1, _) = page.evaluate(js, [i, far[0]])
    dx = 3 * (far_x1 - x1) / (far[1] - x)
    x = x1
    page.mouse.move(x + dx / 2, y - 2)
    page.mouse.move(x + dx, y)
    tip = page.locator(f"{FLAT_MAP} .dfx-tip img")
    tip.wait_for(state="visible", timeout=20_000)
    page.wait_for_timeout(500)
    assert tip.is_visible()
    hovered = int(emap.get_attribute("data-hovered") or -1)
    assert hovered >= 0 and (tip.get_attribute("alt") or "").startswith(f"Error {hovered}:")
    page.mouse.click(x + dx, y)
    out = run_new_cell(page, "print('SE', w.selected_error)", expect="SE")
    assert int(out.split()[-1]) == hovered


@pytest.fixture(autouse=True)
def _skip_without_built_js() -> None:
    js = Path(__file__).resolve().parents[2] / "defuse_widgets" / "static" / "explorer.js"
    if not js.exists() or js.stat().st_size < 100_000:
        pytest.skip("explorer.js is not built (npm run build)")

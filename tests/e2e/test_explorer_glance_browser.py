"""End to end in JupyterLab at 1,400 x 900: the explorer at a glance (issue 33).

With the explorer scrolled to the top of the window, the map, the region list, the selected
region's samples, its label controls and the Fine-tune button all lie inside the viewport at once
(their bounding boxes); ten regions are labeled from the keyboard alone on the focused region
list (digits, R, U, N) and the labels are checked in Python; a region row under the pointer is lit
on the map and the rest dimmed; the list sorts by label state; the Generator tab measures the
generator on request; "Presentation size" enlarges the thumbnails. A screenshot goes to
``tests/output/explorer_glance.png`` (``docs/explorer.png`` is made by
``test_explorer_browser.py``, in a fuller state).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
from digits_cells import session_source
from PIL import Image

MAP = '[aria-label="Error map"]'
OUTPUT = Path(__file__).resolve().parents[2] / "tests" / "output"  # git-ignored
VIEWPORT = {"width": 1400, "height": 900}


def _cells(paths: dict[str, Path]) -> list[str]:
    return [
        session_source(paths, limit=300, max_regions=30)
        + 'w = s.explorer(steps=20, projection="pca")\n'
        "w",
    ]


def _inside(page: Any, locator: Any, what: str) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, f"{what}: not shown"
    vp = page.viewport_size
    assert box["x"] >= 0 and box["x"] + box["width"] <= vp["width"], (what, box)
    assert box["y"] >= 0 and box["y"] + box["height"] <= vp["height"], (what, box)
    return dict(box)


def _painted(page: Any, i: int, color: str) -> None:
    """Error ``i`` is painted in ``color`` on the map's canvas (its 3 x 3 centre pixels), not
    only in the style tables: the map library must have taken the new tables."""
    want = np.array([int(color[k : k + 2], 16) for k in (1, 3, 5)], float)
    x, y = page.evaluate(f"(i) => document.querySelector('{MAP}').dfxMap.screenPosition(i)", i)
    for _ in range(20):
        png = page.screenshot(clip={"x": x - 1, "y": y - 1, "width": 3, "height": 3})
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float).reshape(-1, 3)
        if np.abs(np.median(pixels, 0) - want).max() < 40:
            return
        page.wait_for_timeout(150)
    raise AssertionError(f"error {i} is painted {np.median(pixels, 0)}, expected {want}")


def _region_order(page: Any) -> list[int]:
    rows = page.locator('[role="group"][aria-label="Regions"] button[data-region]')
    return [int(r) for r in rows.evaluate_all("(bs) => bs.map((b) => b.dataset.region)")]


def test_explorer_fits_one_screen_and_labels_from_the_keyboard(
    browser_page: Any, notebook: Any, lab_helpers: Any, digits_model_paths: dict[str, Path]
) -> None:
    browser_page.set_viewport_size(VIEWPORT)
    page = notebook("explorer_glance", _cells(digits_model_paths), timeout=120)
    page.locator(f"{MAP}[data-rendered]").wait_for(timeout=150_000)
    lab_helpers.wait_kernel_idle(page)
    page.wait_for_function(
        "() => document.querySelector('[data-metric=\"test_accuracy\"]') !== null", timeout=60_000
    )
    order = _region_order(page)
    assert len(order) >= 12, order

    # the explorer's top at the window's top: from here on nothing scrolls the notebook
    page.locator(".dfx").first.evaluate("(e) => e.scrollIntoView({ block: 'start' })")
    rows = page.locator('[role="group"][aria-label="Regions"] button[data-region]')
    rows.first.focus()
    page.keyboard.press("Home")  # opens the first region
    first = order[0]
    samples = page.get_by_role("img", name=re.compile(rf"^Region {first} sample \d+: predicted"))
    samples.first.wait_for(timeout=30_000)

    # everything a person needs to look, label and fine-tune, in the viewport at once
    boxes = {
        "map": _inside(page, page.locator(MAP), "map"),
        "list": _inside(page, page.get_by_role("group", name="Regions"), "region list"),
        "sample": _inside(page, samples.first, "first sample"),
        "last sample": _inside(page, samples.last, "last sample"),
        "label": _inside(page, page.get_by_role("combobox", name="True label"), "True label"),
        "apply": _inside(page, page.get_by_role("button", name="Apply label"), "Apply label"),
        "right": _inside(page, page.get_by_role("button", name="Model is right"), "Model is right"),
        "tune": _inside(
            page, page.get_by_role("button", name="Fine-tune", exact=True), "Fine-tune"
        ),
        "result": _inside(page, page.locator('[data-metric="test_accuracy"]'), "test accuracy"),
    }
    assert boxes["map"]["width"] >= 300 and boxes["map"]["height"] >= 300, boxes["map"]
    assert samples.count() >= 12
    # the shortcuts are shown beside the list
    assert "N next unlabeled" in page.locator(".dfx-keys").inner_text()

    # a row under the pointer lights its region on the map and dims the others
    other = order[1]
    # the region's point farthest on screen from any other region's (its pixels are its own;
    # which point that is depends on the trained models)
    info = page.evaluate(
        f"""(rid) => {{ const v = document.querySelector('{MAP}').dfxMap, d = v.data.region.data;
          const at = [...d.keys()].map((i) => v.screenPosition(i));
          const mine = [...d.keys()].filter((i) => d[i] === rid && at[i]);
          const others = [...d.keys()].filter((i) => d[i] !== rid && at[i]);
          const gap = (i) => Math.min(...others.map((j) =>
            Math.hypot(at[i][0] - at[j][0], at[i][1] - at[j][1])));
          const inside = mine.reduce((a, b) => (gap(b) > gap(a) ? b : a));
          return {{ inside, outside: others[0] }}; }}""",
        other,
    )
    rows.nth(1).hover()
    page.wait_for_function(
        f"(rid) => document.querySelector('{MAP}').dataset.hoveredRegion === String(rid)",
        arg=other,
    )
    style = f"(i) => document.querySelector('{MAP}').dfxMap.styleOf(i)"
    page.wait_for_function(f"(i) => ({style})(i).opacity < 0.5", arg=info["outside"])
    assert page.evaluate(style, info["inside"])["opacity"] > 0.8
    _painted(page, info["inside"], page.evaluate(style, info["inside"])["color"])
    page.mouse.move(5, 5)  # off the list: the selected region is lit again

    # ten regions labeled from the keyboard alone: a class digit, R (model is right) or
    # U (unrecognizable), then N (next unlabeled) opens the next region
    rows.first.focus()
    keys = ["1", "2", "r", "3", "u", "4", "5", "6", "7", "8"]
    expected: dict[int, int] = {}
    for k, key in enumerate(keys):
        rid = order[k]
        active = page.evaluate("() => document.activeElement.dataset.region")
        assert active == str(rid), (k, active, rid)
        page.keyboard.press(key)
        expected[rid] = {"r": -1, "u": -2}.get(key, int(key) if key.isdigit() else 0)
        page.locator(f'[role="group"][aria-label="Regions"] button[data-region="{rid}"]').filter(
            has_not_text="unlabeled"
        ).wait_for(timeout=15_000)
        announced = page.get_by_role("status", name="Keyboard labeling").inner_text()
        assert announced.startswith(f"Region {rid}:"), announced
        page.keyboard.press("n")
    out = lab_helpers.run_new_cell(page, "print('LABELS', sorted(s.labels.items()))", "LABELS")
    assert out.split("LABELS", 1)[1].strip() == str(sorted(expected.items()))

    # sorted by label state: the unlabeled regions come first
    page.get_by_role("combobox", name="Sort regions by").select_option("label")
    page.locator('[role="group"][aria-label="Regions"][data-sort="label"]').wait_for()
    by_label = _region_order(page)
    assert set(by_label[-10:]) == set(expected) and not set(by_label[:-10]) & set(expected)

    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.locator(".dfx").first.evaluate("(e) => e.scrollIntoView({ block: 'start' })")
    page.get_by_role("combobox", name="Sort regions by").select_option("size")
    rows.nth(3).click()
    shown = page.get_by_role("img", name=re.compile(rf"^Region {order[3]} sample")).first
    shown.wait_for()
    small = shown.bounding_box()["width"]
    page.mouse.move(5, 5)
    page.wait_for_timeout(500)
    shot = page.locator(".dfx").first.screenshot(path=str(OUTPUT / "explorer_glance.png"))
    assert shot

    # the generator's figures, measured on request in their own pane
    page.get_by_role("tab", name="Generator").click()
    page.get_by_role("button", name="Measure the generator").click()
    table = page.get_by_role("table", name="Generator per class")
    table.wait_for(timeout=60_000)
    assert table.get_by_role("row").count() == 11  # a header and ten digits

    # a projector: larger thumbnails and text
    page.get_by_role("button", name="Presentation size").click()
    page.locator('.dfx[data-size="presentation"]').wait_for()
    assert shown.bounding_box()["width"] > 1.5 * small
    out = lab_helpers.run_new_cell(page, "print('BIG', w.presentation)", "BIG")
    assert out.split()[-1] == "True"

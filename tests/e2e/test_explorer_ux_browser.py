"""End to end in JupyterLab: the explorer as people meet it (issue 16).

"Colour by" recolors the map (regl and plotly) and keeps the selected region highlighted, the
others dimmed; the arrow keys step through the selected region's errors with a visible ring and
Enter opens one; a clicked point's interpolator is brought into view and focused; a kernel
restart is noticed within 2 s of the restart finishing: the controls are disabled, the widget says
to re-run the cell, and the page logs no uncaught error.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from digits_cells import session_source

MAP = '[aria-label="Error map"]'


def _cells(paths: dict[str, Path]) -> list[str]:
    return [
        session_source(paths, limit=120, max_regions=12)
        + 'w = s.explorer(steps=20, projection="pca")\n'
        "w",
    ]


def _style(page: Any, i: int, nth: int = 0) -> dict[str, Any]:
    js = f"([i, k]) => document.querySelectorAll('{MAP}')[k].dfxMap.styleOf(i)"
    return dict(page.evaluate(js, [i, nth]))


def _in_viewport(page: Any, locator: Any) -> bool:
    box = locator.bounding_box()
    vp = page.viewport_size
    return bool(box) and box["y"] < vp["height"] and box["y"] + min(box["height"], 80) > 0


def _check_colour_by(page: Any, nth: int) -> None:
    """Colour by true class: error i takes its class's color; the selected region stays lit."""
    emap = page.locator(MAP).nth(nth)
    select = page.get_by_role("combobox", name="Colour by").nth(nth)
    assert [o.strip() for o in select.locator("option").all_inner_texts()] == [
        "Region", "True class", "Predicted class", "Validity"]  # fmt: skip
    info = page.evaluate(
        f"""(k) => {{ const v = document.querySelectorAll('{MAP}')[k].dfxMap, d = v.data;
          const r = d.region.data, sel = v.selectedRegion;
          const inside = [...r.keys()].find((i) => r[i] === sel);
          const outside = [...r.keys()].find((i) => r[i] !== sel);
          const a = [...r.keys()].find((i) => d.labels.data[2 * i] !== d.labels.data[2 * inside]);
          return {{ sel, inside, outside, a,
                   color: d.colors.get(sel) }}; }}""",
        nth,
    )
    assert info["sel"] >= 0
    region_color = _style(page, info["inside"], nth)["color"].lower()
    assert region_color == info["color"].lower()
    select.select_option("true")
    page.wait_for_function(
        f"(k) => document.querySelectorAll('{MAP}')[k].dataset.colored === 'true'", arg=nth
    )
    lit, dim = _style(page, info["inside"], nth), _style(page, info["outside"], nth)
    assert lit["opacity"] > 0.8 > 0.3 > dim["opacity"]  # the selected region, the rest dimmed
    if info["a"] is not None:  # two true classes, two colors
        assert _style(page, info["a"], nth)["color"] != lit["color"]
    legend = page.get_by_label("Colour legend").nth(nth)
    assert legend.locator(".dfx-swatch").count() == len(
        page.evaluate(f"(k) => document.querySelectorAll('{MAP}')[k].dfxMap.data.classes", nth)
    )
    select.select_option("validity")
    page.wait_for_function(
        f"(k) => document.querySelectorAll('{MAP}')[k].dataset.colored === 'validity'", arg=nth
    )
    select.select_option("region")
    page.wait_for_function(
        f"(k) => document.querySelectorAll('{MAP}')[k].dataset.colored === 'region'", arg=nth
    )
    assert _style(page, info["inside"], nth)["color"].lower() == region_color
    assert emap.get_attribute("data-engine") in ("regl", "plotly")


def test_explorer_as_people_meet_it(
    notebook: Any, lab_helpers: Any, digits_model_paths: dict[str, Path]
) -> None:
    page = notebook("explorer_ux", _cells(digits_model_paths), timeout=120)
    pageerrors: list[str] = []
    page.on("pageerror", lambda e: pageerrors.append(str(e)))
    emap = page.locator(f"{MAP}[data-rendered]")
    emap.wait_for(timeout=120_000)
    lab_helpers.wait_kernel_idle(page)

    # a region selected: Colour by keeps it lit, the others dimmed
    button = page.get_by_role("button", name=re.compile(r"^Region \d+")).first
    rid = int(re.match(r"Region (\d+)", button.get_attribute("aria-label") or "").group(1))
    button.click()
    page.get_by_role("img", name=re.compile(rf"^Region {rid} sample")).first.wait_for(
        timeout=30_000
    )
    page.wait_for_function(f"(r) => document.querySelector('{MAP}').dfxMap.selectedRegion === r",
                           arg=rid)  # fmt: skip
    _check_colour_by(page, 0)

    # the keyboard: arrows step through the region's errors (a ring on the current one), Enter
    # opens it in the interpolator, which comes into view with the focus
    members = page.evaluate(
        f"""(r) => {{ const d = document.querySelector('{MAP}').dfxMap.data.region.data;
          return [...d.keys()].filter((i) => d[i] === r); }}""",
        rid,
    )
    page.locator(MAP).focus()
    page.keyboard.press("ArrowRight")
    assert emap.get_attribute("data-current") == str(members[0])
    page.keyboard.press("ArrowRight")
    current = members[1 % len(members)]
    assert emap.get_attribute("data-current") == str(current)
    ring = page.locator(".dfx-map-cursor")
    assert ring.is_visible()
    ((px, py),) = page.evaluate(
        f"(i) => [document.querySelector('{MAP}').dfxMap.screenPosition(i)]", current
    )
    rb = ring.bounding_box()
    assert abs(rb["x"] + rb["width"] / 2 - px) < 3 and abs(rb["y"] + rb["height"] / 2 - py) < 3
    page.keyboard.press("ArrowLeft")
    assert emap.get_attribute("data-current") == str(members[0])
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    interp = page.get_by_role("region", name="Selected error")
    interp.get_by_role("slider", name="Interpolation", exact=True).wait_for(timeout=60_000)
    assert interp.get_by_role("heading").inner_text() == f"Selected error {current}"
    page.wait_for_timeout(300)
    assert _in_viewport(page, interp)
    assert page.evaluate("() => !!document.activeElement.closest('.dfx-interp')")
    out = lab_helpers.run_new_cell(page, "print('ERR', w.selected_error)", expect="ERR")
    assert out.split()[-1] == str(current)

    # a click on a point far up the page: the interpolator is brought into view
    page.locator(MAP).scroll_into_view_if_needed()
    page.mouse.wheel(0, -200)
    page.wait_for_timeout(300)
    other = next(i for i in range(int(emap.get_attribute("data-points"))) if i != current)
    ((x, y),) = page.evaluate(
        f"(i) => [document.querySelector('{MAP}').dfxMap.screenPosition(i)]", other
    )
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y)
    page.locator(".dfx-tip img").wait_for(state="visible", timeout=15_000)
    page.mouse.click(x, y)
    page.get_by_role("heading", name=f"Selected error {other}").wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    assert _in_viewport(page, interp)

    # the plotly map colors the same way
    lab_helpers.run_new_cell(
        page,
        f"w2 = s.explorer(projection='pca', map_engine='plotly'); w2.select_region({rid}); "
        "display(w2); print('PLOTLY')",
        expect="PLOTLY",
    )
    page.locator(f'{MAP}[data-engine="plotly"][data-rendered]').wait_for(timeout=60_000)
    page.wait_for_function(
        f"(r) => document.querySelectorAll('{MAP}')[1]?.dfxMap.selectedRegion === r", arg=rid
    )
    _check_colour_by(page, 1)

    # the kernel restarts: within 2 s of it being back, the widgets say so and stop working
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Restart Kernel(…|\.\.\.)")).click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    t0 = time.monotonic()
    lost = page.get_by_role("alert").filter(has_text="Re-run the cell")
    lost.first.wait_for(timeout=30_000)
    t_msg = time.monotonic()
    lab_helpers.wait_kernel_idle(page, 60)
    t_idle = time.monotonic()
    assert t_msg - t_idle < 2.0, (t_msg - t0, t_idle - t0)
    assert lost.count() >= 3  # both explorers and the interpolator inside the first
    for name in ("Apply label", "Fine-tune"):
        assert page.get_by_role("button", name=name, exact=True).first.is_disabled()
    assert page.get_by_role("combobox", name="Colour by").first.is_disabled()
    page.get_by_role("button", name=re.compile(r"^Region \d+")).first.click(force=True)
    page.wait_for_timeout(1500)
    assert pageerrors == []
    assert not [e for e in page.console_errors if "Cannot send" in e]


@pytest.fixture(autouse=True)
def _skip_without_built_js() -> None:
    js = Path(__file__).resolve().parents[2] / "defuse_widgets" / "static" / "explorer.js"
    if not js.exists() or js.stat().st_size < 100_000:
        pytest.skip("explorer.js is not built (npm run build)")

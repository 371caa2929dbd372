"""End to end: the explorer in the other front ends it is tested in, Notebook 7 and marimo.

Notebook 7 (``jupyter notebook``, opened at ``/notebooks/NAME.ipynb``): the explorer renders, a
region click fills the panel, and a kernel restart disables it with a notice. marimo
(``marimo run app.py --headless``, the explorer wrapped in ``mo.ui.anywidget``): the explorer
renders, a region click fills the panel, and a click on a map point opens the interpolator, whose
first frame is decoded by the kernel and painted.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from digits_cells import session_source

MAP = '[aria-label="Error map"]'


def _setup(paths: dict[str, Path]) -> str:
    return (
        session_source(paths, limit=60, max_regions=8)
        + 'w = s.explorer(steps=20, projection="pca")\n'
    )


def _click_a_region(page: Any) -> None:
    button = page.get_by_role("button", name=re.compile(r"^Region \d+")).first
    button.wait_for(timeout=60_000)
    rid = int(re.match(r"Region (\d+)", button.get_attribute("aria-label") or "").group(1))
    button.click()
    gallery = page.get_by_role("img", name=re.compile(rf"^Region {rid} sample \d+: predicted"))
    gallery.first.wait_for(timeout=60_000)
    assert button.get_attribute("aria-pressed") == "true"


def _click_a_point(page: Any) -> int:
    """Hover and click the middle error (locators, not document queries: marimo draws widgets
    in a shadow root); return the index the map says was hovered."""
    emap = page.locator(f"{MAP}[data-rendered]")
    emap.scroll_into_view_if_needed()
    i = int(emap.get_attribute("data-points") or 0) // 2
    x, y = emap.evaluate("(el, i) => el.dfxMap.screenPosition(i)", i)
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y)
    page.locator(".dfx-tip img").wait_for(state="visible", timeout=20_000)
    page.mouse.click(x, y)
    return int(emap.get_attribute("data-hovered") or -1)


def test_notebook7_shows_the_explorer(
    notebook7_server: tuple[str, Path],
    browser_page: Any,
    lab_helpers: Any,
    digits_model_paths: dict[str, Path],
) -> None:
    url, root = notebook7_server
    lab_helpers.write_notebook(root, "nb7_explorer", [_setup(digits_model_paths) + "w"])
    page = browser_page
    page.goto(f"{url}/notebooks/nb7_explorer.ipynb", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_function(  # the kernel is up before Run All
        "() => /Idle/i.test(document.querySelector('.jp-NotebookKernelStatus, #jp-top-panel')"
        "?.textContent || '') || !!document.querySelector('[data-status=\"idle\"]')",
        timeout=120_000,
    )
    lab_helpers.run_all(page)
    try:
        page.locator(f"{MAP}[data-rendered]").wait_for(timeout=150_000)
    except Exception as exc:  # say what the cell printed (an error, or how far it got)
        output = lab_helpers.cell_output_text(page, 0)
        raise AssertionError(f"the explorer did not render; the cell's output:\n{output}") from exc
    _click_a_region(page)
    # a kernel restart: the widget says so and disables its controls, no uncaught error
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Restart Kernel(…|\.\.\.)")).click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.get_by_role("alert").filter(has_text="Re-run the cell").first.wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Apply label").is_disabled()
    page.wait_for_timeout(1000)
    assert errors == []


MARIMO_APP = """
import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo
{setup}
    ui = mo.ui.anywidget(w)
    ui
    return
"""


@pytest.fixture(scope="module")
def marimo_url(tmp_path_factory: pytest.TempPathFactory, digits_model_paths: dict[str, Path]
               ) -> Iterator[str]:  # fmt: skip
    pytest.importorskip("marimo", reason="marimo is in the dev extra (pip install marimo)")
    from conftest import _free_port, stop_lab, wait_for_server

    root = tmp_path_factory.mktemp("marimo")
    app = root / "app.py"
    app.write_text(MARIMO_APP.format(setup=textwrap.indent(_setup(digits_model_paths), "    ")))
    port = _free_port()
    marimo = Path(sys.executable).with_name("marimo")
    cmd = [str(marimo), "run", str(app), "--headless", "--host", "127.0.0.1", "--port", str(port),
           "--no-token"]  # fmt: skip
    log = open(root / "marimo.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    wait_for_server(proc, f"{url}/health", 90, log.name)
    try:
        yield url
    finally:
        stop_lab(proc)
        log.close()


def test_marimo_shows_the_explorer_and_interpolates(marimo_url: str, browser_page: Any) -> None:
    page = browser_page
    page.goto(marimo_url, wait_until="domcontentloaded")
    page.locator(f"{MAP}[data-rendered]").wait_for(timeout=180_000)
    _click_a_region(page)
    i = _click_a_point(page)
    interp = page.get_by_role("region", name="Selected error")
    interp.get_by_role("heading", name=f"Selected error {i}").wait_for(timeout=30_000)
    interp.get_by_role("slider", name="Interpolation", exact=True).wait_for(timeout=60_000)
    interp.locator('.dw-interp[data-painted-values="[0]"]').wait_for(timeout=60_000)
    assert "Could not interpolate" not in page.locator(".dfx-status").inner_text()
    assert "Could not show the interpolator" not in page.locator(".dfx-status").inner_text()


@pytest.fixture(autouse=True)
def _skip_without_built_js() -> None:
    js = Path(__file__).resolve().parents[2] / "defuse_widgets" / "static" / "explorer.js"
    if not js.exists() or js.stat().st_size < 100_000:
        pytest.skip("explorer.js is not built (npm run build)")

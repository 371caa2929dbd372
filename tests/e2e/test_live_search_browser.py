"""End to end in JupyterLab: the explorer's live search (issue 34).

``s.explorer(search=...)`` opens at once; the map grows as the search reports its errors, a
quick fit's regions show as soon as there are enough errors (the status line says so and the
map's ``data-regions-fit`` is "quick"), a person labels a quick region from the keyboard while
the search is still running, and the full fit then replaces the quick regions in place, the label
carried over to the matching full regions. To look while the search runs, whatever the machine's
speed, the notebook holds the search after its third report until the test releases it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digits_cells import models_source

MAP = '[aria-label="Error map"]'
ROWS = '[role="group"][aria-label="Regions"] button[data-region]'
# every value the map's data-points and data-regions-fit take, in order (set before the page loads)
RECORDER = """
window.__dfxLive = [];
new MutationObserver((changes) => {
  for (const c of changes) {
    const el = c.target;
    if (el.matches && el.matches('[aria-label="Error map"]'))
      window.__dfxLive.push([c.attributeName, el.getAttribute(c.attributeName)]);
  }
}).observe(document, { subtree: true, attributes: true,
                       attributeFilter: ["data-points", "data-regions-fit"] });
"""


def _cells(paths: dict[str, Path]) -> list[str]:
    setup = models_source(paths) + (
        "import threading\n"
        # the test's hold: the search waits after its third report until `release.set()`
        "release, reports, search = threading.Event(), [], s.search\n"
        "def held_search(on_errors, **options):\n"
        "    def report(errors):\n"
        "        on_errors(errors)\n"
        "        reports.append(len(errors))\n"
        "        if len(reports) == 3:\n"
        "            release.wait(120)\n"
        "    return search(on_errors=report, **options)\n"
        "s.search = held_search\n"
    )
    show = (
        'w = s.explorer(search={"limit": 400, "step_images": 40}, projection="pca",\n'
        '               distill={"min_errors": 60, "max_regions": 20})\n'
        "w"
    )
    return [setup, show]


def test_regions_show_and_take_labels_while_the_search_runs(
    browser_page: Any, notebook: Any, lab_helpers: Any, digits_model_paths: dict[str, Path]
) -> None:
    browser_page.add_init_script(RECORDER)
    page = notebook("live_search", _cells(digits_model_paths), timeout=120)
    quick = page.locator(f'{MAP}[data-regions-fit="quick"]')
    quick.wait_for(timeout=150_000)
    status = page.get_by_role("status").filter(has_text="Searching:")
    status.first.wait_for(timeout=30_000)
    text = status.first.inner_text()
    assert "quick regions" in text and "of 400 images" in text, text
    shown = int(page.locator(MAP).get_attribute("data-points") or 0)
    assert shown > 0

    # label the largest quick region from the keyboard while the search is held
    rows = page.locator(ROWS)
    rows.first.wait_for(timeout=30_000)
    rid = int(rows.first.get_attribute("data-region") or -1)
    true_class = lab_helpers.run_new_cell(
        page, f"print('CLASS', s.regions.get({rid}).transition[0])", expect="CLASS"
    ).split()[-1]
    rows.first.focus()
    page.keyboard.press("Home")  # opens the first (largest) region
    page.keyboard.press(true_class)
    # the kernel builds the opened region's panel first; with the other test worker training
    # models beside it, 15 s once did not suffice
    page.locator(f'{ROWS}[data-region="{rid}"]').filter(has_not_text="unlabeled").wait_for(
        timeout=60_000
    )
    labeled = lab_helpers.run_new_cell(
        page, "print('LABELS', s.labels, w.regions_fit)", expect="LABELS"
    )
    assert f"{rid}: {true_class}" in labeled and "quick" in labeled, labeled

    # release the search: the map grows, then the full fit replaces the quick regions
    lab_helpers.run_new_cell(page, "release.set(); print('RELEASED')", expect="RELEASED")
    page.locator(f'{MAP}[data-regions-fit="full"]').wait_for(timeout=120_000)
    page.get_by_role("status").filter(has_text="Full fit:").first.wait_for(timeout=120_000)
    final = page.get_by_role("status").filter(has_text="Full fit:").first.inner_text()
    assert "(replaced the quick fit)" in final, final
    out = lab_helpers.run_new_cell(
        page,
        "w.wait(); print('DONE', len(s.errors), s.errors.images_searched, sorted(set("
        "s.labels.values())), w.status)",
        expect="DONE",
    )
    done = out.split("DONE", 1)[1].split()
    n_errors, searched = int(done[0]), int(done[1])
    assert searched == 400 and n_errors > shown
    assert int(page.locator(MAP).get_attribute("data-points") or 0) == n_errors
    carried = "carried over to 0 full regions" not in final
    assert (carried and f"[{true_class}]" in out) or "label again" in final, (final, out)

    history = page.evaluate("() => window.__dfxLive")
    counts = [int(v) for name, v in history if name == "data-points"]
    fits = [v for name, v in history if name == "data-regions-fit"]
    assert len(set(counts)) >= 3 and counts == sorted(counts), counts  # the map grew
    assert fits[:2] == ["", "quick"] or fits[0] == "quick", fits
    assert fits[-1] == "full", fits

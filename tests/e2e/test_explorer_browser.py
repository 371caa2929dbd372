"""End to end: the error explorer in a real JupyterLab, driven by headless Chromium.

Renders the explorer on digits, hovers a point (thumbnail), clicks it (the interpolation panel
opens; its slider changes the decoded frame), opens a region, labels it (the session
has the label), fine-tunes one round (progress reaches the end, numbers change), reverts (the
original accuracy returns), audits a class-labeled region (relabel one training image, undo),
follows a label and a fine-tuning round made on the session directly, flags a harmful round
(which classes lost; revert in one click) and reports its views to the kernel. A second test
runs the quickstart's loop (its quick classifier, the reference labeler) through the explorer's
Fine-tune button: the round is kept and lifts test accuracy, and its screenshot is the docs' one
(``docs/explorer.png``, rewritten with ``DEFUSE_UPDATE_DOCS=1``). A third clicks "Export as test".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from digits_cells import session_source

DOCS = Path(__file__).resolve().parents[2] / "docs"
OUTPUT = Path(__file__).resolve().parents[2] / "tests" / "output"  # git-ignored


def _setup_cells(paths: dict[str, Path]) -> list[str]:
    return [
        session_source(paths, limit=200, max_regions=20)
        + 'w = s.explorer(steps=40, projection="pca", background="train")  # UMAP: elsewhere\n'
        "w",
    ]


def _point_position(page: Any) -> tuple[float, float]:
    """Page coordinates of an error point on the map (the map's own ``screenPosition``, whichever
    library draws it; the errors lie above the faint background of training images)."""
    pos = page.evaluate(
        """() => {
          const el = document.querySelector('[aria-label="Error map"]');
          return el.dfxMap.screenPosition(Math.floor(+el.dataset.points / 2));
        }"""
    )
    return float(pos[0]), float(pos[1])


def _metric(page: Any, key: str) -> str:
    return str(page.locator(f'[data-metric="{key}"]').inner_text())


def test_explorer_end_to_end(
    notebook: Any, lab_helpers: Any, digits_model_paths: dict[str, Path]
) -> None:
    run_new_cell, wait_kernel_idle = lab_helpers.run_new_cell, lab_helpers.wait_kernel_idle
    page = notebook("explorer_e2e", _setup_cells(digits_model_paths), timeout=120)

    # the map renders (after the UMAP projection in the background)
    emap = page.locator('[aria-label="Error map"][data-points]')
    emap.wait_for(timeout=150_000)
    assert int(emap.get_attribute("data-points") or 0) > 10
    # the training images' codes, placed on the same map, as a faint background trace
    page.wait_for_function(
        "() => Number(document.querySelector('[aria-label=\"Error map\"]').dataset.background) > 0",
        timeout=60_000,
    )
    page.get_by_text(re.compile(r"^Faint grey: [\d,]+ training images$")).wait_for(timeout=5_000)
    wait_kernel_idle(page)
    page.wait_for_function(
        "() => document.querySelector('[data-metric=\"test_accuracy\"]') !== null", timeout=60_000
    )
    start_acc = _metric(page, "test_accuracy")

    # hover a point: a thumbnail with true -> predicted and confidence
    x, y = _point_position(page)
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y)
    tip = page.locator(".dfx-tip img")
    tip.wait_for(state="visible", timeout=15_000)
    assert "predicted" in (tip.get_attribute("alt") or "")
    assert "\u2192" in page.locator(".dfx-tip").inner_text()

    # lasso around that point: the selection reaches Python as widget.selected_indices
    page.mouse.move(x - 25, y - 25)
    page.mouse.down()
    for px, py in ((x + 25, y - 25), (x + 25, y + 25), (x - 25, y + 25), (x - 25, y - 24)):
        page.mouse.move(px, py, steps=6)
    page.mouse.up()
    page.get_by_text(re.compile(r"^\d+ points selected$")).wait_for(timeout=15_000)
    out = run_new_cell(page, "print('SEL', len(w.selected_indices))", expect="SEL")
    assert int(out.split()[-1]) >= 1
    # and a selection made in Python shows in the page (here: cleared)
    run_new_cell(page, "w.select(None); print('CLEARED')", expect="CLEARED")
    page.get_by_text("Lasso or box on the map to select points.").wait_for(timeout=15_000)

    # click that point: the explorer shows the interpolator of that error (the child widget's
    # own view, decoded in the kernel); moving its slider changes the decoded frame
    page.locator('[aria-label="Error map"]').scroll_into_view_if_needed()
    x, y = _point_position(page)  # the notebook may have scrolled
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y)
    tip.wait_for(state="visible", timeout=15_000)  # a click opens the hovered point
    page.mouse.click(x, y)
    interp = page.get_by_role("region", name="Selected error")
    slider = interp.get_by_role("slider", name="Interpolation", exact=True)
    slider.wait_for(timeout=60_000)
    painted = "(v) => document.querySelector('.dfx-interp .dw-interp')?.dataset.paintedValues === v"
    page.wait_for_function(painted, arg="[0]", timeout=30_000)
    frame = interp.get_by_role("img", name="Decoded image", exact=True)
    before = frame.evaluate("(c) => c.toDataURL()")
    slider.focus()
    page.keyboard.press("End")  # the slider to 1: the error's own code
    page.wait_for_function(painted, arg="[1]", timeout=30_000)
    assert frame.evaluate("(c) => c.toDataURL()") != before
    out = run_new_cell(
        page, "print('ERR', w.selected_error, w.interpolator.error_index)", expect="ERR"
    )
    err = out.split()[-2:]
    assert err[0] == err[1] and int(err[0]) >= 0

    # click the largest region: the panel shows its samples
    button = page.get_by_role("button", name=re.compile(r"^Region \d+")).first
    rid = int(re.match(r"Region (\d+)", button.get_attribute("aria-label") or "").group(1))
    button.click()
    gallery = page.get_by_role("img", name=re.compile(rf"^Region {rid} sample \d+: predicted"))
    gallery.first.wait_for(timeout=30_000)
    assert gallery.count() >= 4

    # label it with the class the panel proposes (the region's most common true class)
    label = int(page.get_by_role("combobox", name="True label").input_value())
    page.get_by_role("button", name="Apply label").click()
    page.get_by_role("button", name=re.compile(rf"^Region {rid}: .*label: ")).wait_for(
        timeout=15_000
    )
    assert f"{{{rid}: {label}}}" in run_new_cell(page, "print(s.labels)", expect=f"{rid}:")

    # fine-tune one round: the progress bar reaches the end, the numbers change. Lambda 0.1: the
    # region's real test images are mostly right already and its samples are the generator's 3s
    # that look like 9s; at the default 1.0 the round learned from them and cost the test split
    # 3.3 points (9s and 8s), at 0.1 between 0.2 and 1.3 (9s), depending on torch's threads.
    # Digits' 18 validation images a class cannot show such a drop, so the round is kept and the
    # explorer flags the harm on the test split with its revert button
    page.get_by_role("spinbutton", name="Lambda").fill("0.1")
    page.get_by_role("button", name="Fine-tune", exact=True).click()
    bar = page.get_by_role("progressbar", name="Fine-tuning progress")
    page.wait_for_function(
        """() => /Round \\d+ done/.test(document.querySelector('.dfx-status').textContent)""",
        timeout=120_000,
    )
    assert bar.get_attribute("aria-valuenow") == "100"
    assert _metric(page, "rounds") == "Rounds: 1"
    # the panel's real-image accuracy says how many images it rests on (or that there are none)
    head = page.get_by_role("region", name="Region panel").locator("h3").first
    real = (
        r", (real accuracy \d+% \(n = \d+(: too few to trust)?\)|no real test image inside)"
        r"(, reaches \d+ real training images?)?$"
    )
    page.wait_for_function(
        "(re) => new RegExp(re).test(document.querySelector('.dfx-panel h3').textContent)",
        arg=real, timeout=15_000,
    )  # fmt: skip
    assert re.search(real, head.inner_text())
    out = run_new_cell(
        page, "print('HIST', [h['event'] for h in w.history], len(s.history))", expect="HIST"
    )
    assert "'round'" in out and out.strip().endswith("1")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.locator(".dfx").first.screenshot(path=str(OUTPUT / "explorer_e2e.png"))

    # revert: the original accuracy returns
    page.get_by_role("button", name="Revert model").click()
    page.wait_for_function(
        """() => /Reverted/.test(document.querySelector('.dfx-status').textContent)""",
        timeout=60_000,
    )
    assert _metric(page, "test_accuracy") == start_acc
    assert "ACTIVE 0" in run_new_cell(page, "print('ACTIVE', s.active_round)", expect="ACTIVE")
    # the fine-tuning section says what happened next to its controls; the chart plots rounds
    tune = page.get_by_role("region", name="Fine-tuning")
    tune.get_by_text(re.compile(r"^Reverted to round 0: test accuracy")).wait_for(timeout=15_000)
    page.get_by_role("tab", name="Rounds").click()  # the chart's pane (drawn once shown)
    chart = "document.querySelector('[aria-label=\"Accuracy per round\"]')"
    page.wait_for_function(f"() => {chart}.layout !== undefined", timeout=15_000)
    ticks = page.evaluate(f"() => {chart}.layout.xaxis.ticktext")
    assert ticks[-2:] == ["R1", "\u21ba R0"], ticks
    real = tune.locator('[data-metric="labeled_region_real_accuracy"]')
    assert re.search(r"\(n = \d+\)$", real.inner_text())

    # a second fine-tune with no class label left gives a clear message, no spinner
    page.get_by_role("button", name="Clear label").click()
    page.get_by_role("button", name="Fine-tune", exact=True).click()
    page.get_by_role("alert").filter(has_text="label at least one region").wait_for(timeout=15_000)
    assert page.locator(".dfx-spin").count() == 0

    # audit: a region labeled with a class that some training images inside it do not carry
    out = run_new_cell(
        page,
        "pick = next((r.id, c) for r in s.regions.regions for c in range(10) "
        "if len(s.audit(r.id, label=c))); print('PICK', *pick)",
        expect="PICK",
    )
    rid2, cls = (int(v) for v in out.split()[-2:])
    page.get_by_role("button", name=re.compile(rf"^Region {rid2}: ")).click()
    page.get_by_role("img", name=re.compile(rf"^Region {rid2} sample")).first.wait_for(
        timeout=30_000
    )
    page.get_by_role("combobox", name="True label").select_option(str(cls))
    page.get_by_role("button", name="Apply label").click()
    page.get_by_role("button", name=re.compile(rf"^Region {rid2}: .*label: ")).wait_for(
        timeout=15_000
    )
    page.get_by_role("tab", name="Audit").click()  # the audit's pane beside the map
    page.get_by_role("button", name="Audit training images").click()
    boxes = page.get_by_role("checkbox", name=re.compile(r"^Select training image \d+"))
    boxes.first.wait_for(timeout=60_000)
    index = int(re.findall(r"\d+", boxes.first.get_attribute("aria-label") or "")[0])
    boxes.first.check()
    page.get_by_role("button", name="Relabel selected").click()
    count = page.locator(".dfx-audit .dfx-relabels")
    page.wait_for_function(
        "() => document.querySelector('.dfx-audit .dfx-relabels').dataset.relabels === '1'",
        timeout=15_000,
    )
    assert count.inner_text().startswith("1 confirmed relabel")
    assert "trains with 1 confirmed relabel" in page.locator(".dfx-tune-relabels").inner_text()
    out = run_new_cell(page, "print('RELABELS', {i: r.new_label for i, r in s.relabels.items()})",
                       expect="RELABELS")  # fmt: skip
    assert f"{{{index}: {cls}}}" in out
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.locator(".dfx-audit").screenshot(path=str(OUTPUT / "explorer_audit.png"))
    page.get_by_role("button", name="Undo relabel").click()
    page.wait_for_function(
        "() => document.querySelector('.dfx-audit .dfx-relabels').dataset.relabels === '0'",
        timeout=15_000,
    )
    assert count.inner_text().startswith("0 confirmed relabels")
    assert "RELABELS {}" in run_new_cell(
        page, "print('RELABELS', dict(s.relabels))", expect="RELABELS"
    )

    # changes made on the session itself, not through the widget, show in the page
    region_name = """(rid) => [...document.querySelectorAll('.dfx-list button')]
        .map((b) => b.getAttribute('aria-label')).find((n) => n.startsWith(`Region ${rid}: `))"""
    run_new_cell(page, f"s.unlabel({rid2}); print('UNLABELED')", expect="UNLABELED")
    page.wait_for_function(f"(rid) => /unlabeled$/.test(({region_name})(rid))", arg=rid2)
    src = f"s.label({rid2}, {cls}); print('ROUND', s.correct(steps=20).round)"
    assert run_new_cell(page, src, expect="ROUND", timeout=120).split()[-1] == "2"
    page.wait_for_function(
        """() => /Round 2 done/.test(document.querySelector('.dfx-status').textContent)""",
        timeout=60_000,
    )
    assert _metric(page, "rounds") == "Rounds: 2"
    assert re.search(r"label: ", page.evaluate(region_name, rid2))

    # a reckless round hurts: the explorer says which classes lost, and revert is one click away
    src = "r = s.correct(steps=60, lr=0.5, keep=0.0, early_stopping=False)\n"
    src += "print('HARM', r.round, r.harmful)"
    assert run_new_cell(page, src, expect="HARM", timeout=120).split()[-2:] == ["3", "True"]
    harm = page.get_by_role("alert", name="Round harm")
    harm.wait_for(timeout=60_000)
    assert re.search(r"Round 3 made things worse: .+ \u2212\d+\.\d points?", harm.inner_text())
    summary = page.locator('[aria-label="Round summary"]').inner_text()
    assert re.search(r"^Round 3 per class \(test, points\): 0 [+\u2212]\d", summary), summary
    harm.get_by_role("button", name="Revert harmful round").click()
    page.wait_for_function(
        """() => /Reverted to round 2/.test(document.querySelector('.dfx-status').textContent)""",
        timeout=60_000,
    )
    assert "ACTIVE 2" in run_new_cell(page, "print('ACTIVE', s.active_round)", expect="ACTIVE")
    assert page.get_by_role("alert", name="Round harm").count() == 0

    # the page tells the kernel whether a view is shown (_has_visible_views): a second view
    # of w, once removed, leaves the first one shown
    views = "() => document.querySelectorAll('.dfx').length === {}"
    run_new_cell(page, "h = display(w, display_id=True); print('SHOWN')", expect="SHOWN")
    page.wait_for_function(views.format(2), timeout=30_000)
    run_new_cell(page, "h.update('replaced'); print('UPDATED')", expect="UPDATED")
    page.wait_for_function(views.format(1), timeout=30_000)
    page.wait_for_timeout(500)
    out = run_new_cell(page, "print('VIEWS', w._has_visible_views)", expect="VIEWS")
    assert out.split()[-1] == "True"
    # an explorer whose only view is removed has none left
    src = "w2 = s.explorer(projection='pca'); h2 = display(w2, display_id=True); print('TWO')"
    run_new_cell(page, src, expect="TWO")
    page.wait_for_function(views.format(2), timeout=30_000)
    page.wait_for_timeout(500)
    assert (
        run_new_cell(page, "print('V2', w2._has_visible_views)", expect="V2").split()[-1] == "True"
    )
    run_new_cell(page, "h2.update('gone'); print('GONE')", expect="GONE")
    page.wait_for_function(views.format(1), timeout=30_000)
    page.wait_for_timeout(500)
    assert (
        run_new_cell(page, "print('V2', w2._has_visible_views)", expect="V2").split()[-1] == "False"
    )

    # the first look never waits for UMAP: PCA positions at once, replaced in place by UMAP
    # (numba compiles on first use in this kernel); a selection made meanwhile stays
    src = "w3 = s.explorer(); w3.select([0, 1, 2]); display(w3); print('THREE')"
    run_new_cell(page, src, expect="THREE")
    last = "[...document.querySelectorAll('[aria-label=\"Error map\"]')].pop()"
    page.wait_for_function(f"() => {last}.dataset.layout === 'pca'", timeout=30_000)
    page.wait_for_function(f"() => {last}.dataset.layout === 'umap'", timeout=150_000)
    page.wait_for_function(f"() => {last}.dataset.selected === '3'", timeout=15_000)


@pytest.fixture(autouse=True)
def _skip_without_built_js() -> None:
    js = Path(__file__).resolve().parents[2] / "defuse_widgets" / "static" / "explorer.js"
    if not js.exists() or js.stat().st_size < 100_000:
        pytest.skip("explorer.js is not built (npm run build)")


def test_a_kept_round_on_the_quickstart_models_is_the_docs_screenshot(
    notebook: Any, lab_helpers: Any, demo_model_cache: Path
) -> None:
    """The quickstart's loop in the explorer: its quick classifier (about 83% on test), every
    region labeled by the reference model, one round from the Fine-tune button at the quickstart's
    settings with the reference vetting the samples. The round is kept and raises test accuracy
    (measured: 83.3% -> 87.6%; the explorer flags the 3 and 2 test images it costs 8s and 3s);
    the screenshot goes to tests/output/ and, when missing or asked for
    (DEFUSE_UPDATE_DOCS=1), to docs/explorer.png, so a test run leaves the checkout clean."""
    setup = (
        "import os, torch\n"
        f"os.environ['DEFUSE_WIDGETS_CACHE'] = {str(demo_model_cache)!r}  # the cached models\n"
        "import defuse_widgets as dw\n"
        "from defuse_widgets.cli import demo_models\n"
        "torch.set_num_threads(2)\n"
        'data = dw.load_dataset("digits")\n'
        "models = demo_models(data, seed=0, progress=False)\n"
        's = dw.DefuseSession(models["classifier"], models["vae"], data, seed=0, progress=False)\n'
        's.identify(split="test")\n'
        "s.distill(max_regions=100, min_weight=0.01)\n"
        'labeler = dw.ReferenceModelLabeler(models["reference"])\n'
        "s.auto_label(labeler)\n"
        'w = s.explorer(projection="pca", background="train")\n'
        "w.labeler = labeler  # the Fine-tune button's rounds: the reference vets their samples\n"
        "w"
    )
    page = notebook("explorer_docs_e2e", [setup], timeout=180)
    page.locator('[aria-label="Error map"][data-points]').wait_for(timeout=150_000)
    lab_helpers.wait_kernel_idle(page)
    page.wait_for_function(
        "() => document.querySelector('[data-metric=\"test_accuracy\"]') !== null", timeout=60_000
    )
    start = float(_metric(page, "test_accuracy").split()[-1].rstrip("%"))
    labeled = page.get_by_role("button", name=re.compile(r"^Region \d+: .*label: \d")).first
    labeled.click()  # a class-labeled region's panel, as the screenshot shows it
    page.get_by_role("img", name=re.compile(r"^Region \d+ sample")).first.wait_for(timeout=30_000)
    page.get_by_role("spinbutton", name="Steps").fill("300")  # the quickstart's settings
    page.get_by_role("spinbutton", name="Learning rate").fill("0.01")
    page.get_by_role("button", name="Fine-tune", exact=True).click()
    page.wait_for_function(
        """() => /Round 1 done/.test(document.querySelector('.dfx-status').textContent)""",
        timeout=240_000,
    )
    out = lab_helpers.run_new_cell(
        page, "r = s.history[-1]; print('KEPT', r.best_step, r.stopped)", expect="KEPT"
    )
    assert out.split()[1] != "0", out
    after = float(_metric(page, "test_accuracy").split()[-1].rstrip("%"))
    assert after > start + 1.0, (start, after)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 2200})
    page.locator(".dfx").first.scroll_into_view_if_needed()
    page.wait_for_timeout(800)
    shot = page.locator(".dfx").first.screenshot(path=str(OUTPUT / "explorer.png"))
    if os.environ.get("DEFUSE_UPDATE_DOCS") == "1" or not (DOCS / "explorer.png").exists():
        (DOCS / "explorer.png").write_bytes(shot)


def test_export_as_test_button(
    notebook: Any,
    lab_helpers: Any,
    lab_server: tuple[str, Path],
    digits_model_paths: dict[str, Path],
) -> None:
    """The "Export as test" button writes the class-labeled regions as a suite in the named
    directory (relative to the kernel's), which check_suite then reads."""
    run_new_cell = lab_helpers.run_new_cell
    cells = _setup_cells(digits_model_paths)
    cells[0] = cells[0].replace("limit=200", "limit=60").replace(', background="train"', "")
    page = notebook("explorer_suite_e2e", cells, timeout=120)
    tab = page.get_by_role("tab", name="Export")  # the regression export's pane
    tab.wait_for(timeout=60_000)
    tab.click()
    section = page.get_by_role("region", name="Regression tests")
    button = section.get_by_role("button", name="Export as test")
    button.wait_for(timeout=60_000)
    assert button.is_disabled()  # nothing labeled with a class yet
    run_new_cell(page, "s.label(0, s.regions.get(0).transition[0]); print('LABELED')", "LABELED")
    page.wait_for_function(
        "() => !document.querySelector('button[aria-label=\"Export as test\"]').disabled",
        timeout=15_000,
    )
    run_new_cell(page, "import os; os.makedirs('suites', exist_ok=True); print('DIR')", "DIR")
    section.get_by_role("textbox", name="Suite directory").fill("suites/digits")
    button.click()
    done = re.compile(r"Exported 1 labeled region as a test suite to .*suites/digits")
    page.get_by_text(done).wait_for(timeout=60_000)
    out = run_new_cell(
        page,
        "r = dw.check_suite(clf, 'suites/digits', device='cpu'); "
        "print('SUITE', [x.id for x in r.regions], r.passed)",
        expect="SUITE",
    )
    assert out.split()[-2:] == ["[0]", "False"]
    assert (lab_server[1] / "suites" / "digits" / "manifest.json").is_file()

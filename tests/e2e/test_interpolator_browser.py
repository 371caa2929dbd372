"""Drag the interpolator's slider in a real JupyterLab and check the painted frames and bars."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
OUTPUT = REPO / "tests" / "output"  # git-ignored

SETUP = """\
import torch, defuse_widgets as dw
from defuse_widgets.session.session import DefuseSession
torch.set_num_threads(1)
data = dw.load_dataset("digits")
clf, vae = dw.load_model(r"{classifier}"), dw.load_model(r"{vae}")
s = DefuseSession(clf, vae, data, device="cpu", seed=0, progress=False)
s.identify(limit=60)
w = next((v for v in (s.interpolator(i) for i in range(30)) if v.markers), s.interpolator(0))
w"""

ROOT = ".dw-interp"


def _state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        """(sel) => {
          const root = document.querySelector(sel);
          const canvas = root.querySelector('canvas[aria-label="Decoded image"]');
          const slider = root.querySelector('input[type=range]');
          const bars = [...root.querySelectorAll('[role=meter]')]
            .map((m) => Number(m.getAttribute('aria-valuenow')));
          const s = root.__dwStats;
          return {
            pixels: canvas.toDataURL(), bars, slider: Number(slider.value),
            paintedValues: JSON.parse(root.dataset.paintedValues || 'null'),
            paintedId: Number(root.dataset.paintedId || 0), inputId: Number(root.dataset.inputId),
            painted: s.framesPainted, dropped: s.dropped, inputs: s.inputs,
            kernel: s.kernel, status: root.querySelector('.dw-status').textContent,
            markers: root.querySelectorAll('.dw-marker').length,
            rendering: getComputedStyle(canvas).imageRendering,
          };
        }""",
        ROOT,
    )


def _wait_final(page: Any, timeout: float = 15.0) -> None:
    page.wait_for_function(
        """(sel) => {
          const root = document.querySelector(sel);
          return root && root.dataset.paintedId && root.dataset.paintedId === root.dataset.inputId;
        }""",
        arg=ROOT,
        timeout=timeout * 1000,
    )


def test_drag_paints_frames_and_ends_at_the_final_position(
    notebook: Any, digits_model_paths: dict[str, Path]
) -> None:
    """Uses the shared digits models (tests/conftest.py), loaded in the notebook's kernel."""
    setup = SETUP.format(**{k: str(v) for k, v in digits_model_paths.items()})
    page = notebook("interpolator_drag", [setup], timeout=180)
    frame = page.get_by_role("img", name="Decoded image", exact=True)
    frame.wait_for(timeout=180_000)
    slider = page.get_by_role("slider", name="Interpolation", exact=True)
    slider.wait_for(timeout=30_000)
    for name in ("Source image", "Reconstruction", "Decoded error"):
        assert page.get_by_role("img", name=name, exact=True).count() == 1
    assert page.get_by_role("meter").count() == 10
    _wait_final(page)
    first = _state(page)
    assert first["paintedValues"] == [0.0]
    assert first["rendering"] in ("pixelated", "crisp-edges")  # the widget's _css is loaded
    assert abs(sum(first["bars"]) - 1.0) < 0.01

    # drag the thumb from the left end to about 80% of the track, one mouse event at a time
    box = slider.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    x0, x1 = box["x"] + 8, box["x"] + 8 + 0.8 * (box["width"] - 16)
    page.mouse.move(x0, y)
    page.mouse.down()
    steps = 60
    for i in range(1, steps + 1):
        page.mouse.move(x0 + (x1 - x0) * i / steps, y)
        time.sleep(1 / 60)
    page.mouse.up()
    _wait_final(page)
    last = _state(page)

    assert 0.7 < last["slider"] < 0.9
    assert last["paintedValues"] == [pytest.approx(last["slider"], abs=1e-9)]
    assert last["pixels"] != first["pixels"]
    assert last["bars"] != first["bars"]
    assert abs(sum(last["bars"]) - 1.0) < 0.01
    assert last["inputs"] >= steps // 2
    assert last["painted"] >= 2
    assert last["kernel"]["peak_in_flight"] <= 2
    assert "Prediction:" in last["status"]

    # the status and bars agree: the top bar is the stated prediction
    top = max(range(10), key=lambda k: last["bars"][k])
    assert last["status"].startswith(f"Prediction: {top} ")

    # a fast burst back to about 30% (no pauses): the newest position wins and is shown
    page.mouse.move(x1, y)
    page.mouse.down()
    x2 = box["x"] + 8 + 0.3 * (box["width"] - 16)
    for i in range(1, 41):
        page.mouse.move(x1 + (x2 - x1) * i / 40, y)
    page.mouse.up()
    _wait_final(page)
    burst = _state(page)
    assert 0.2 < burst["slider"] < 0.4
    assert burst["paintedValues"] == [pytest.approx(burst["slider"], abs=1e-9)]
    assert burst["kernel"]["peak_in_flight"] <= 2
    assert burst["kernel"]["in_flight"] <= 2

    # the screenshot always goes to tests/output/; docs/interpolator.png is rewritten only when
    # missing or asked for (DEFUSE_UPDATE_DOCS=1), so a test run leaves the checkout clean
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = page.locator(ROOT).first.screenshot(path=str(OUTPUT / "interpolator.png"))
    if os.environ.get("DEFUSE_UPDATE_DOCS") == "1" or not (DOCS / "interpolator.png").exists():
        DOCS.mkdir(exist_ok=True)
        (DOCS / "interpolator.png").write_bytes(shot)
    print(json.dumps({k: last[k] for k in ("painted", "dropped", "inputs", "markers")}))

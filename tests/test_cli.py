"""The headless pipeline on digits: the issue's targets, the report, and the saved session.

The pipeline runs on a temporary ``DEFUSE_WIDGETS_CACHE`` that holds the demo models (classifier,
VAE, reference model; trained once for the test run by conftest.py's ``demo_model_cache``), once
per test module; its fine-tuning grid takes about a minute and a half on a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

import defuse_widgets as dw
from defuse_widgets.cli import main, render_report, run_pipeline
from defuse_widgets.correction.settings import AUTO_GRID

pytestmark = pytest.mark.slow

REPORT_KEYS = {
    "dataset",
    "device",
    "seed",
    "test_accuracy_before",
    "test_accuracy_after",
    "images_searched",
    "decodes",
    "errors_found",
    "regions",
    "labeled_region_accuracy_before",
    "labeled_region_accuracy_after",
    "labeled_region_real_accuracy_before",
    "labeled_region_real_accuracy_after",
    "timings",
}
REGION_KEYS = {
    "id",
    "size",
    "weight",
    "transition",
    "label",
    "accuracy_before",
    "accuracy_after",
    "real_images",
    "real_accuracy_before",
    "real_accuracy_after",
}


MODELS = Path("models") / "digits-seed0-val0.1"  # trained without the validation rows


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*")}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, demo_model_cache: Path) -> dict[str, Any]:
    """The command on a cache folder that holds the demo models already (trained once for the
    test run, see conftest.py: training them is most of a cold run's time)."""
    cache = tmp_path_factory.mktemp("model-cache")
    shutil.copytree(demo_model_cache / MODELS, cache / MODELS)
    cached = _digests(cache / MODELS)
    out = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEFUSE_WIDGETS_CACHE", str(cache))
        # 150 steps a run: the grid trains eight (its four settings, each with both updates)
        code = main(["run", "--dataset", "digits", "--out", str(out), "--device", "cpu",
                     "--steps", "150", "--quiet"])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    return {"code": code, "out": out, "cache": cache, "report": report, "cached": cached}


def test_the_command_succeeds_on_its_cached_models(pipeline: dict[str, Any]) -> None:
    """It loads the three models from the cache and leaves them as they were (the cache is
    filled by ``cli.demo_models``, which the fixture ran: a cold run trains them there)."""
    assert pipeline["code"] == 0
    assert set(pipeline["cached"]) == {
        f"{n}.safetensors" for n in ("classifier", "vae", "reference")
    }
    assert _digests(pipeline["cache"] / MODELS) == pipeline["cached"]


def test_report_json_has_every_key(pipeline: dict[str, Any]) -> None:
    report = pipeline["report"]
    assert set(report) >= REPORT_KEYS, REPORT_KEYS - set(report)
    assert report["dataset"] == "digits" and report["device"] == "cpu" and report["seed"] == 0
    assert report["images_searched"] == len(dw.load_dataset("digits").y_test)
    assert report["decodes"] >= report["errors_found"] > 0
    for row in report["regions"]:
        assert set(row) >= REGION_KEYS, REGION_KEYS - set(row)
    assert [row["id"] for row in report["regions"]] == list(range(len(report["regions"])))
    timings = report["timings"]
    for step in ("models", "identify", "distill", "label", "correct", "total"):
        assert isinstance(timings[step], (int, float)) and timings[step] >= 0, step


def test_pipeline_targets(pipeline: dict[str, Any]) -> None:
    """The issue's targets on digits with the reference labeler."""
    r = pipeline["report"]
    assert len(r["regions"]) >= 2
    before, after = r["labeled_region_accuracy_before"], r["labeled_region_accuracy_after"]
    assert after >= 0.80, r
    assert after >= before + 0.5, (before, after)
    assert r["test_accuracy_after"] >= r["test_accuracy_before"] - 0.01, (
        r["test_accuracy_before"],
        r["test_accuracy_after"],
    )


def test_region_rows_are_consistent(pipeline: dict[str, Any]) -> None:
    r = pipeline["report"]
    labeled = [row for row in r["regions"] if row["label"] is not None and row["label"] >= 0]
    assert labeled, "the reference labeler gave at least one region a class"
    for row in r["regions"]:
        if row in labeled:
            assert 0 <= row["accuracy_before"] <= 1 and 0 <= row["accuracy_after"] <= 1
            assert isinstance(row["real_images"], int) and row["real_images"] >= 0
            if row["real_images"]:
                assert 0 <= row["real_accuracy_before"] <= 1
                assert 0 <= row["real_accuracy_after"] <= 1
            else:
                assert row["real_accuracy_before"] is None
        else:
            assert row["accuracy_before"] is None and row["accuracy_after"] is None
        assert row["size"] >= 1 and 0 < row["weight"] < 1
        assert row["label"] in (None, dw.MODEL_IS_RIGHT, dw.UNRECOGNIZABLE) or row["label"] >= 0
    mean_before = sum(row["accuracy_before"] for row in labeled) / len(labeled)
    mean_after = sum(row["accuracy_after"] for row in labeled) / len(labeled)
    assert r["labeled_region_accuracy_before"] == pytest.approx(mean_before)
    assert r["labeled_region_accuracy_after"] == pytest.approx(mean_after)
    n_real = sum(row["real_images"] for row in labeled)
    if n_real:
        hits = sum(
            row["real_images"] * row["real_accuracy_after"] for row in labeled if row["real_images"]
        )
        assert r["labeled_region_real_accuracy_after"] == pytest.approx(hits / n_real)


def test_report_html(pipeline: dict[str, Any]) -> None:
    html = (pipeline["out"] / "report.html").read_text()
    assert html.startswith("<html") and "plotly" in html.lower()
    assert "Before and after" in html and "Errors by region" in html
    assert "<h1>defuse-widgets: digits</h1>" in html and html.rstrip().endswith("</html>")


def test_report_page_escapes_the_dataset_name_not_the_figures() -> None:
    html = render_report("<b>mine & yours</b>", ["<div id='a'>1</div>", "<div id='b'>2</div>"])
    assert "<h1>defuse-widgets: &lt;b&gt;mine &amp; yours&lt;/b&gt;</h1>" in html
    assert html.index("<div id='a'>1</div>") < html.index("<div id='b'>2</div>")
    assert "<title>defuse-widgets report</title>" in html


def test_the_saved_session_loads_back(pipeline: dict[str, Any]) -> None:
    r = pipeline["report"]
    folder = pipeline["cache"] / "models" / "digits-seed0-val0.1"  # trained without validation
    s = dw.DefuseSession.load(
        pipeline["out"] / "session",
        classifier=dw.load_model(folder / "classifier.safetensors"),
        generator=dw.load_model(folder / "vae.safetensors"),
        device="cpu",
    )
    assert s.errors is not None and len(s.errors) == r["errors_found"]
    assert s.regions is not None and len(s.regions) == len(r["regions"])
    assert s.labels == {row["id"]: row["label"] for row in r["regions"] if row["label"] is not None}
    assert s.rounds == 1 and s.active_round == 1
    # the CLI's round tried correct(auto=True)'s grid, each setting with the last layer and with
    # every weight (update="best"), and kept the best confirmed one
    grid = s.history[-1].grid
    expected = [(g["lam"], g["lr"], u) for g in AUTO_GRID for u in ("last", "all")]
    assert [(g["lam"], g["lr"], g["update"]) for g in grid] == expected
    ev = s.evaluate()
    assert ev.test_accuracy == pytest.approx(r["test_accuracy_after"], abs=1e-6)
    assert ev.labeled_region_accuracy == pytest.approx(r["labeled_region_accuracy_after"])
    real = r["labeled_region_real_accuracy_after"]
    assert (real is None and math.isnan(ev.labeled_region_real_accuracy)) or (
        ev.labeled_region_real_accuracy == pytest.approx(real)
    )
    s.revert()
    assert s.evaluate().test_accuracy == pytest.approx(r["test_accuracy_before"], abs=1e-6)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labeler"):
        run_pipeline("digits", tmp_path, labeler="human")
    with pytest.raises(SystemExit):
        main(["run", "--dataset", "digits", "--out", str(tmp_path), "--strategy", "magic"])
    with pytest.raises(SystemExit):
        main(["run", "--dataset", "digits"])  # --out is required

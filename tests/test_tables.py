"""Results a person can read: every result type renders as an HTML table and converts to pandas.

The HTML is parsed back (tables, header cells, body rows) and checked against the result's own
numbers; ``to_pandas`` is checked for its columns and rows; without pandas the HTML still works.
"""

from __future__ import annotations

import io
import math
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from session_fixtures import ready_session

import defuse_widgets as dw
from defuse_widgets.utils.tables import Table, Tables, percent


class _Tables(HTMLParser):
    """Collects each <table> as (header cells, body rows of cell texts), and the other text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            head, body = self.tables[-1]
            if self._in_head:
                head.extend(self._row)
            else:
                body.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        else:
            self.text.append(data)


def parse(html: str) -> _Tables:
    parser = _Tables()
    parser.feed(html)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def rounded(digits, digits_classifier, digits_vae):
    """A session over the shared errors, its largest region labeled, one short round run."""
    s = ready_session(digits_classifier, digits_vae, digits)
    assert s.regions is not None
    region = s.regions.regions[0]
    s.label(region.id, region.transition[0])
    before = s.evaluate()
    record = s.correct(steps=20, batch_size=16, early_stopping=False)
    return s, before, record


def test_a_table_escapes_its_cells_and_formats_numbers() -> None:
    table = Table(
        ["name", "share", "n"],
        [["<script>alert(1)</script>", 0.125, 3], ["a & b", math.nan, None]],
        title="<b>title</b>",
        formats={"share": percent},
    )
    html = table._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;title" in html
    parsed = parse(html)
    head, body = parsed.tables[0]
    assert head == ["name", "share", "n"]
    assert body == [["<script>alert(1)</script>", "12.5%", "3"], ["a & b", "n/a", "n/a"]]
    with pytest.raises(ValueError, match="rows: expected 3 values per row"):
        Table(["a", "b", "c"], [[1, 2]])
    with pytest.raises(KeyError, match="no column 'x'"):
        table.column("x")
    assert isinstance(Tables([table], "both").to_text(), str)


def test_error_set_renders_per_class_and_per_error(rounded, digits) -> None:
    s, _, _ = rounded
    errors = s.errors
    head, body = parse(errors._repr_html_()).tables[0]
    assert head[:3] == ["true class", "errors", "images with an error"]
    assert len(body) == len(errors.true_label.unique())
    assert sum(int(row[1]) for row in body) == len(errors)
    by_class = errors.to_pandas(digits.classes, by="class")
    assert list(by_class.columns) == head and by_class["errors"].sum() == len(errors)
    counts = torch.bincount(errors.true_label, minlength=10)
    for _, row in by_class.iterrows():
        assert row["errors"] == counts[digits.classes.index(row["true class"])]
    sources = errors.to_pandas(digits.classes, by="source")
    assert len(sources) == len(errors.source_index.unique())
    assert sources["errors"].sum() == len(errors)
    top = sources.iloc[0]
    assert top["errors"] == int((errors.source_index == top["source_index"]).sum())
    frame = errors.to_pandas()
    assert list(frame.columns) == [
        "error", "source_index", "true", "predicted", "confidence", "validity"]  # fmt: skip
    assert len(frame) == len(errors)
    assert frame["source_index"].tolist() == errors.source_index.tolist()
    assert frame["predicted"].tolist() == errors.pred_label.tolist()
    with pytest.raises(ValueError, match="by: expected one of"):
        errors.to_table(by="region")


def test_region_set_renders_size_weight_label_and_accuracy(rounded, digits) -> None:
    s, _, record = rounded
    regions = s.regions
    head, body = parse(regions._repr_html_()).tables[0]
    assert head[:3] == ["region", "size", "weight"]
    assert [int(r[0]) for r in body] == regions.ids
    assert [int(r[1]) for r in body] == [r.size for r in regions]
    frame = regions.to_pandas(digits.classes, s.labels, record.evaluation)
    assert {"label", "sample accuracy", "real images", "real accuracy"} <= set(frame.columns)
    labeled = next(iter(s.labels))
    row = frame[frame["region"] == labeled].iloc[0]
    assert row["label"] == digits.classes[s.labels[labeled]]
    assert row["sample accuracy"] == pytest.approx(
        record.evaluation.regions[labeled].sample_accuracy
    )
    assert frame[frame["region"] != labeled]["label"].isna().all()


def test_evaluation_renders_per_class_and_per_region(rounded, digits) -> None:
    s, before, record = rounded
    parsed = parse(before._repr_html_())
    assert len(parsed.tables) == 2
    (class_head, class_rows), (region_head, region_rows) = parsed.tables
    assert class_head == ["class", "accuracy"] and len(class_rows) == digits.num_classes
    assert region_head[:3] == ["region", "label", "sample accuracy"]
    assert len(region_rows) == len(before.regions)
    frame = before.to_pandas(digits.classes)
    assert frame["accuracy"].tolist() == pytest.approx(before.per_class, nan_ok=True)
    regions = before.to_pandas(by="region")
    assert list(regions.columns) == region_head and len(regions) == len(before.regions)
    compared = before.compare(record.evaluation, digits.classes).to_pandas()
    assert compared.iloc[0].tolist()[:3] == ["test accuracy", before.test_accuracy,
                                             record.evaluation.test_accuracy]  # fmt: skip
    change = compared["change (points)"].iloc[0]
    assert change == pytest.approx(100 * (record.evaluation.test_accuracy - before.test_accuracy))
    with pytest.raises(TypeError, match="after: expected an Evaluation"):
        before.compare({"test_accuracy": 1.0})


def test_round_record_renders_settings_outcome_before_after_and_harm(rounded, digits) -> None:
    s, before, record = rounded
    parsed = parse(record._repr_html_())
    text = " ".join(parsed.text)
    assert f"Round {record.round}" in text and "stopped:" in text and "harm" in text
    heads = [head for head, _ in parsed.tables]
    assert ["setting", "value"] in heads and [
        "class",
        "before",
        "after",
        "change (points)",
    ] in heads
    settings = dict(record.to_pandas(by="settings").values.tolist())
    assert settings["steps"] == 20 and settings["batch_size"] == 16
    per_class = record.to_pandas(digits.classes)
    # "before" is the round it started from: the evaluation taken just before it
    assert per_class["before"].tolist() == pytest.approx(before.per_class, abs=1e-6)
    assert per_class["after"].tolist() == pytest.approx(record.evaluation.per_class)
    harm = record.to_pandas(by="harm")
    assert list(harm.columns) == ["what", "before", "after", "change (points)"]
    assert len(harm) == len(record.harm)


def test_suite_result_renders_pass_and_fail(rounded, tmp_path: Path) -> None:
    s, _, _ = rounded
    path = s.export_tests(tmp_path / "suite", samples=16, min_accuracy=0.5)
    result = dw.check_suite(s.classifier, path, device="cpu")
    parsed = parse(result._repr_html_())
    head, body = parsed.tables[0]
    assert head[0] == "region" and head[-1] == "result"
    assert [row[-1] for row in body] == ["pass" if r.passed else "FAIL" for r in result.regions]
    assert ("passed" if result.passed else "FAILED") in " ".join(parsed.text)
    frame = result.to_pandas()
    assert frame["accuracy"].tolist() == pytest.approx([r.accuracy for r in result.regions])


def test_without_pandas_html_works_and_to_pandas_names_the_extra(rounded, monkeypatch) -> None:
    s, before, _ = rounded
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    assert parse(before._repr_html_()).tables
    with pytest.raises(ImportError, match=r"defuse-widgets\[tables\]"):
        before.to_pandas()


def test_region_images_are_saved_in_one_call(rounded, tmp_path: Path) -> None:
    s, _, _ = rounded
    paths = s.regions.save_images(tmp_path / "regions", n=12, columns=4, scale=2)
    assert [p.name for p in paths] == [f"region-{rid}.png" for rid in s.regions.ids]
    with Image.open(paths[0]) as img:  # 3 rows of 4 images of 8x8 pixels, upscaled 2x
        assert img.size == (4 * 8 * 2, 3 * 8 * 2)
    one = s.regions.save_images(tmp_path / "one", n=4, regions=[s.regions.ids[-1]])
    assert len(one) == 1
    with pytest.raises(KeyError, match="no region 999"):
        s.regions.save_images(tmp_path / "bad", regions=[999])
    grid = dw.image_grid(s.data.x_test[:10], columns=5, scale=3)
    with Image.open(io.BytesIO(grid._repr_png_())) as img:
        assert img.size == (5 * 8 * 3, 2 * 8 * 3)
    with pytest.raises(ValueError, match="columns: expected a positive integer"):
        dw.image_grid(s.data.x_test[:4], columns=0)

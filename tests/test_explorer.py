"""The explorer widget's kernel side: state, binary traits and messages, without a browser."""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import traitlets
from ipywidgets import Widget
from ipywidgets.widgets.widget import _remove_buffers

import defuse_widgets as dw
from defuse_widgets.projection import colors
from defuse_widgets.widgets.common.codec import array_from_json, array_to_json
from defuse_widgets.widgets.explorer import Explorer, region_color
from defuse_widgets.widgets.explorer.selection import cell_bound_host, reason
from defuse_widgets.widgets.interpolator import Interpolator


@pytest.fixture(scope="module")
def session(digits, digits_classifier, digits_vae) -> dw.DefuseSession:
    s = dw.DefuseSession(classifier=copy.deepcopy(digits_classifier), generator=digits_vae,
                         data=digits, device="cpu", seed=0, progress=False)  # fmt: skip
    s.identify(split="test", limit=150)
    s.distill(max_regions=10)
    assert len(s.regions) >= 2
    return s


@pytest.fixture(autouse=True)
def _close_widgets() -> Iterator[None]:
    """Explorers follow their session: close each test's, so later tests' session changes do
    not reach them."""
    yield
    Widget.close_all()


@pytest.fixture
def widget(session: dw.DefuseSession) -> Explorer:
    for rid in list(session.labels):
        session.unlabel(rid)
    if session.relabels:  # (unrelabel([]) refuses an empty list: dtype float)
        session.unrelabel(list(session.relabels))
    session.revert()
    return Explorer(session, projection="pca", steps=10, block=True)


def invoke(w: Any, name: str, msg: dict[str, Any] | None = None) -> tuple[Any, list[Any]]:
    """Send a command as the page's ``experimental.invoke`` does; return its answer and buffers."""
    sent: list[tuple[Any, Any]] = []
    send, w.send = w.send, lambda content, buffers=None: sent.append((content, buffers))
    try:
        w._handle_custom_msg(
            {"kind": "anywidget-command", "id": "c1", "name": name, "msg": msg or {}}, []
        )
    finally:
        w.send = send
    answers = [(c, b) for c, b in sent if c.get("kind") == "anywidget-command-response"]
    assert len(answers) == 1 and answers[0][0]["id"] == "c1", sent
    return answers[0][0]["response"], list(answers[0][1] or [])


def act(w: Any, name: str, **msg: Any) -> dict[str, Any]:
    """An action command's answer ({"ok": ...})."""
    return invoke(w, name, msg)[0]


def test_state_travels_as_binary_buffers(widget: Explorer, session: dw.DefuseSession) -> None:
    m = len(session.errors)
    assert widget.busy == "" and widget.error == ""
    assert widget.points.shape == (m, 2) and widget.points.dtype == np.float32
    assert widget.point_region.tolist() == session.regions.assignments.tolist()
    assert widget.thumbs.shape[0] == m and widget.thumbs.dtype == np.uint8
    state = widget.get_state()
    _, paths, buffers = _remove_buffers(state)
    sent_as_buffers = {p[0] for p in paths}
    assert {
        "points",
        "point_region",
        "point_labels",
        "point_confidence",
        "point_validity",
        "thumbs",
    } <= sent_as_buffers
    # what "Colour by" reads: true and predicted class, validity, one row per error
    assert widget.point_labels[:, 0].tolist() == session.errors.true_label.tolist()
    assert widget.point_validity.dtype == np.float32 and widget.point_validity.shape == (m,)
    assert sum(b.nbytes for b in buffers) >= m * 2 * 4
    assert widget.baseline is not None and 0 < widget.baseline["test_accuracy"] <= 1
    # regions: sorted by size, stable colors, JSON-ready
    sizes = [r["size"] for r in widget.regions]
    assert sizes == sorted(sizes, reverse=True)
    assert all(r["color"] == region_color(r["id"]) for r in widget.regions)
    assert widget.classes == [str(c) for c in session.data.classes]


def test_region_colors_stay_apart_for_every_common_vision() -> None:
    palette = [region_color(i) for i in range(256)]
    assert len(set(palette)) == 256 and region_color(256) == region_color(0)
    assert region_color(-1) == "#b8b8b8" and region_color(0) == "#1f77b4"
    rgb = colors.hex_rgb(palette)
    for n, least in ((30, 11.0), (50, 8.5)):
        i, j = np.triu_indices(n, 1)
        # delta E between every pair, for normal vision and simulated protan-, deuter- and
        # tritanopia (the smallest of the four)
        assert colors.color_distance(rgb[i], rgb[j]).min() >= least, n
    grey = colors.hex_rgb([colors.UNASSIGNED] * 50)
    assert colors.color_distance(rgb[:50], grey).min() >= 8.5  # never the unassigned grey
    lightness = colors.lab_views(rgb)[0, :, 0]
    assert lightness.min() >= 30 and lightness.max() <= 80  # visible on white
    # the former palette (tab20 first): two of its colors are one for a dichromat
    tab20 = colors.hex_rgb(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                         "#e377c2", "#bcbd22", "#17becf", "#393b79", "#e6550d", "#31a354",
                         "#843c39", "#7b4173", "#3182bd", "#fd8d3c", "#74c476", "#ad494a",
                         "#a55194", "#637939"])  # fmt: skip
    i, j = np.triu_indices(20, 1)
    assert colors.color_distance(tab20[i], tab20[j]).min() < 2


def test_the_simulated_dichromacies_keep_grey_and_merge_red_with_green() -> None:
    grey, red, green = colors.hex_rgb(["#808080", "#d62728", "#2ca02c"])
    views = colors.lab_views(np.stack([grey, red, green]))
    assert np.allclose(views[:, 0], views[0, 0], atol=1.5)  # grey looks grey to everyone
    normal, deutan = (np.linalg.norm(views[k, 1] - views[k, 2]) for k in (0, 2))
    assert deutan < 0.5 * normal  # red and green move together for a deuteranope


def test_height_presentation_and_region_orders(widget: Explorer, session: dw.DefuseSession) -> None:
    assert widget.height == 700 and widget.presentation is False
    widget.height = 900
    widget.presentation = True
    with pytest.raises(traitlets.TraitError, match="height: expected at least 400 pixels, got 120"):
        widget.height = 120
    assert widget.height == 900
    assert widget.region_sort == "size"
    assert widget.region_sorts == ["size", "real_accuracy", "recognition", "label"]
    assert all(r["recognition"] is None for r in widget.regions)  # measured on demand
    widget.region_sort = "recognition"
    widget.wait()
    measured = session.sample_recognition()
    rows = {r["id"]: r["recognition"] for r in widget.regions}
    assert rows == pytest.approx(measured)
    widget.region_sort = "shoe size"  # as the page might: refused, the order kept
    assert widget.region_sort == "recognition" and "region_sort: expected one of" in widget.error
    with pytest.raises(ValueError, match="region_sort: expected one of"):
        Explorer(session, projection="pca", region_sort="colour")
    made = Explorer(session, projection="pca", height=480, presentation=True)
    assert made.height == 480 and made.presentation
    session.sample_recognition = None  # a session that cannot measure it: no such order
    try:
        assert Explorer(session, projection="pca").region_sorts == [
            "size",
            "real_accuracy",
            "label",
        ]
        with pytest.raises(ValueError, match="region_sort: expected one of"):
            Explorer(session, projection="pca", region_sort="recognition")
    finally:
        del session.sample_recognition


def test_a_failure_without_a_message_still_says_why() -> None:
    try:
        raise AssertionError
    except AssertionError as exc:
        text = reason(exc)
    assert text.startswith("AssertionError (no message) raised at ") and "test_explorer.py:" in text
    assert reason(ValueError("bad index")) == "ValueError: bad index"
    assert cell_bound_host() is False  # not inside a running marimo app


def test_codec_round_trip() -> None:
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    wire = array_to_json(a)
    assert wire["dtype"] == "int32" and wire["shape"] == [3, 4]
    back = array_from_json({**wire, "buffer": bytes(wire["buffer"])})
    assert back.tolist() == a.tolist()
    assert array_to_json(None) is None


def test_reach_is_measured_on_the_worker_not_the_constructing_thread(
    session: dw.DefuseSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reach encodes the training split: the explorer leaves it to its worker, and a change of
    regions made in the kernel's thread is measured there too."""
    from defuse_widgets.regions import membership

    threads: list[threading.Thread] = []
    measure = membership.reach

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return measure(*args, **kwargs)

    monkeypatch.setattr(membership, "reach", spy)
    session._membership.clear()  # nothing measured yet
    widget = Explorer(session, projection="pca", block=True)
    assert threads and threading.main_thread() not in threads
    assert sum(r["reach"] for r in widget.regions) > 0
    threads.clear()
    rid = session.add_region(torch.arange(4))  # a new region: reach anew, on the worker
    widget.wait()
    assert threads and threading.main_thread() not in threads
    assert next(r for r in widget.regions if r["id"] == rid)["reach"] is not None


def test_region_click_builds_the_panel(widget: Explorer, session: dw.DefuseSession) -> None:
    rid = widget.regions[0]["id"]
    reach = session.reach().counts()  # the region list says how many real rows each reaches
    assert {r["id"]: r["reach"] for r in widget.regions} == reach and sum(reach.values()) > 0
    widget.selected_region = rid  # as the browser does
    panel = widget.panel
    assert panel["region"] == rid
    assert panel["samples"].shape[0] == 16 and panel["samples"].dtype == np.uint8
    members = session.regions.members(rid)
    assert panel["members"].shape[0] == min(16, len(members))
    assert set(panel["member_index"].tolist()) <= set(members.tolist())
    assert panel["sources"].shape == panel["members"].shape
    _, paths, _ = _remove_buffers(widget.get_state("panel"))
    assert {p[1] for p in paths} >= {"samples", "members", "sources"}
    with pytest.raises(KeyError):
        widget.select_region(10_000)


def test_label_from_the_browser(widget: Explorer, session: dw.DefuseSession) -> None:
    seen: list[tuple[int, Any]] = []
    widget.on_label(lambda rid, lab: seen.append((rid, lab)))
    rid = widget.regions[0]["id"]
    changed: list[str] = []
    widget.observe(lambda ch: changed.append(ch["name"]))
    assert act(widget, "_label_command", region=rid, label=3) == {"ok": True}
    assert session.labels == {rid: 3} and widget.labels == {str(rid): 3}
    assert seen == [(rid, 3)]
    # a label change sends only the small label map (and the status line)
    assert set(changed) <= {"labels", "status", "error"}
    assert act(widget, "_label_command", region=rid, label=dw.MODEL_IS_RIGHT)["ok"]
    assert session.labels == {rid: dw.MODEL_IS_RIGHT}
    assert act(widget, "_unlabel_command", region=rid)["ok"]
    assert session.labels == {} and seen[-1] == (rid, None)


def test_bad_labels_change_nothing(widget: Explorer, session: dw.DefuseSession) -> None:
    ack = act(widget, "_label_command", region=999, label=1)
    assert ack["ok"] is False and "999" in ack["message"]
    assert "999" in widget.error
    rid = widget.regions[0]["id"]
    assert act(widget, "_label_command", region=rid, label=42)["ok"] is False
    assert session.labels == {} and widget.labels == {}


def test_selection_syncs_and_makes_a_region(widget: Explorer, session: dw.DefuseSession) -> None:
    got: list[np.ndarray] = []
    widget.on_select(got.append)
    idx = np.array([0, 1, 2, 3, 5], np.int32)
    # the browser writes the trait as a binary buffer
    widget.set_state({"selected_indices": {"buffer": memoryview(idx.tobytes()), "dtype": "int32",
                                           "shape": [5]}})  # fmt: skip
    assert got and got[-1].tolist() == idx.tolist()
    assert widget.trait_metadata("selected_indices", "echo_update") is False
    before = len(session.regions)
    rid = widget.add_region()
    assert len(session.regions) == before + 1 and widget.selected_region == rid
    assert any(r["id"] == rid and r["user_defined"] for r in widget.regions)
    assert set(np.nonzero(widget.point_region == rid)[0].tolist()) == set(idx.tolist())
    assert got[-1].size == 0 and widget.selected_indices.size == 0  # no duplicate on a 2nd click
    with pytest.raises(ValueError, match="at least 2"):
        widget.add_region()
    widget.select([7, 8])
    widget.add_region([9, 10])  # given indices: the selection is not the user's to lose
    assert widget.selected_indices.tolist() == [7, 8]


def test_fine_tune_round_and_revert(widget: Explorer, session: dw.DefuseSession) -> None:
    with pytest.raises(RuntimeError, match="label at least one region"):
        widget.fine_tune()
    ack = act(widget, "_fine_tune_command", steps=10, lam=1.0, lr=0.01)
    assert ack["ok"] is False and "label" in widget.error
    rid = widget.regions[0]["id"]
    widget.label(rid, widget.regions[0]["transition"][0])
    updates: list[dict[str, Any]] = []
    seen_at: list[float] = []
    widget.observe(lambda ch: (updates.append(ch["new"]), seen_at.append(time.monotonic())),
                   "progress")  # fmt: skip
    widget.fine_tune(steps=30, lr=0.01, block=True)
    assert widget.error == "" and widget.busy == ""
    assert widget.progress["step"] == widget.progress["total"] == 30
    assert not widget.progress["running"]
    assert widget.progress["outcome"].startswith(f"Round {session.active_round} done")
    # throttled: the step updates between the first and the last come at most ~10 a second
    steps_at = [t for t, u in zip(seen_at, updates) if u["running"] and 0 < u["step"] < 30]
    assert steps_at and all(b - a >= 0.09 for a, b in zip(steps_at, steps_at[1:]))
    events = [h["event"] for h in widget.history]
    assert events == ["before", "round"]
    assert session.rounds >= 1 and widget.point_fixed is not None
    assert widget.point_fixed.shape == (len(session.errors),)
    region = next(r for r in widget.regions if r["id"] == rid)
    assert region["sample_accuracy"] is not None
    assert updates[0]["step"] == 0 and updates[0]["running"]  # never the last round's figures
    widget.revert(block=True)
    assert widget.progress["outcome"].startswith("Reverted to round 0")
    assert widget.progress["step"] == 0 and not widget.progress["running"]
    assert widget.history[-1]["event"] == "revert"
    assert widget.history[-1]["test_accuracy"] == pytest.approx(widget.baseline["test_accuracy"])
    assert session.active_round == 0


def test_export_as_test_from_the_browser(
    widget: Explorer, session: dw.DefuseSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "Export as test" command writes the class-labeled regions as a suite, on the worker."""
    monkeypatch.chdir(tmp_path)
    ack = act(widget, "_export_tests_command", path="suite")
    assert ack["ok"] is False and "no region is labeled with a class" in widget.error
    assert not (tmp_path / "suite").exists()
    assert act(widget, "_export_tests_command", path="  ")["ok"] is False
    assert "path: expected a directory name" in widget.error
    rid = widget.regions[0]["id"]
    widget.label(rid, widget.regions[0]["transition"][0])
    assert act(widget, "_export_tests_command", path="suite") == {"ok": True}
    widget.wait()
    assert widget.error == "" and f"to {tmp_path / 'suite'}" in widget.status
    result = dw.check_suite(session.classifier, tmp_path / "suite", device="cpu")
    assert [r.id for r in result.regions] == [rid]
    assert act(widget, "_export_tests_command", path="suite")["ok"] is True  # replaces its suite
    widget.wait()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert act(widget, "_export_tests_command", path="notes")["ok"] is False
    assert "not a defuse-widgets suite" in widget.error


def test_changes_made_on_the_session_show_in_the_widget(
    widget: Explorer, session: dw.DefuseSession
) -> None:
    seen: list[tuple[int, Any]] = []
    widget.on_label(lambda rid, lab: seen.append((rid, lab)))
    a, b = widget.regions[0]["id"], widget.regions[1]["id"]
    session.label(a, 2)
    session.import_labels({"format": "defuse-widgets-labels", "labels": {str(a): 2, str(b): 5}})
    assert widget.labels == {str(a): 2, str(b): 5}
    assert seen == [(a, 2), (b, 5)]  # one callback per region whose label changed
    session.relabel([0, 1], 3)
    assert widget.relabel_count == len(session.relabels) >= 1
    session.unrelabel([0, 1])
    assert widget.relabel_count == 0
    # a round run on the session: the widget adds it to its chart and fades the fixed errors
    record = session.correct(steps=20)
    widget.wait(60)
    assert widget.history[-1]["event"] == "round" and widget.history[-1]["round"] == record.round
    assert widget.history[-1]["test_accuracy"] == record.evaluation.test_accuracy
    assert widget.point_fixed is not None and widget.busy == ""
    session.revert()
    widget.wait(60)
    assert widget.history[-1]["event"] == "revert" and widget.point_fixed is None
    # a new mixture: the widget's regions follow; the selected region, now gone, is unselected
    widget.select_region(a)
    session.distill(max_regions=4)
    assert [r["id"] for r in widget.regions] == sorted(
        (r.id for r in session.regions), key=lambda i: (-session.regions.get(i).size, i)
    )
    assert widget.labels == {} and seen[-2:] == [(a, None), (b, None)]
    assert widget.selected_region in (-1, *(r.id for r in session.regions))
    # new errors: this widget's map no longer matches; it says so and keeps its state
    points = widget.points
    session.identify(split="test", limit=150)
    assert "identify ran again" in widget.error and widget.points is points
    session.distill(max_regions=10)  # as the module's tests expect


def test_an_explorer_without_views_catches_up_when_shown(
    widget: Explorer, session: dw.DefuseSession
) -> None:
    widget.label(widget.regions[0]["id"], widget.regions[0]["transition"][0])
    # the page reports its views through a trait (as jupyter_rfb's _has_visible_views)
    widget.set_state({"_has_visible_views": True})
    widget.set_state({"_has_visible_views": False})  # its cell re-ran: no view left
    entries = len(widget.history)
    session.correct(steps=10)
    widget.wait(60)
    assert len(widget.history) == entries and widget.point_fixed is None  # deferred
    widget.set_state({"_has_visible_views": True})  # shown again: it catches up
    widget.wait(60)
    assert widget.history[-1]["event"] == "round" and widget.point_fixed is not None
    session.revert()  # with a view shown, at once
    widget.wait(60)
    assert widget.history[-1]["event"] == "revert"


def test_fine_tune_waits_for_work_already_running(
    session: dw.DefuseSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defuse_widgets.projection import layout as projection

    fit = projection.fit

    def slow_fit(*args: Any, **kwargs: Any) -> Any:  # like a first UMAP projection
        time.sleep(0.5)
        return fit(*args, **kwargs)

    monkeypatch.setattr(projection, "fit", slow_fit)
    w = Explorer(session, projection="pca", steps=10)  # projecting in the background
    assert w.running
    w.label(w.regions[0]["id"], w.regions[0]["transition"][0])
    entry = w.fine_tune(steps=10, block=True)  # queued behind it, not refused
    assert w.error == "" and not w.running and w.points is not None
    assert entry is not None and entry["event"] == "round" and entry is w.history[-1]
    assert entry["round"] == session.active_round >= 1
    assert w.fine_tune(steps=10) is None  # not blocking: nothing to return yet
    w.cancel()
    w.wait(60)
    session.revert()


@pytest.mark.parametrize("bad", [{"lam": -1.0}, {"lr": 0}, {"lr": float("inf")}, {"steps": 0}])
def test_bad_fine_tune_settings_are_refused_before_any_job(
    widget: Explorer, session: dw.DefuseSession, bad: dict[str, Any]
) -> None:
    widget.label(widget.regions[0]["id"], widget.regions[0]["transition"][0])
    name, rounds = next(iter(bad)), session.rounds
    with pytest.raises(ValueError, match=rf"{name}: expected a"):  # lam: >= 0, the rest > 0
        widget.fine_tune(**bad)
    assert not widget.running and widget.history == [] and session.rounds == rounds
    ack = act(widget, "_fine_tune_command", **bad)
    assert ack["ok"] is False and f"{name}: expected a" in ack["message"]
    assert not widget.running and widget.finetune_params["steps"] == 10
    with pytest.raises(ValueError, match="lam: expected a finite number >= 0"):
        Explorer(session, projection="pca", lam=-1.0)
    with pytest.raises(TypeError, match="labeler: expected a ReferenceModelLabeler"):
        widget.fine_tune(labeler="reference")
    assert not widget.running and session.rounds == rounds


def test_the_fine_tune_button_vets_with_the_explorers_labeler(
    widget: Explorer, session: dw.DefuseSession, digits_classifier: torch.nn.Module
) -> None:
    with pytest.raises(TypeError, match="labeler: expected a ReferenceModelLabeler"):
        widget.labeler = "reference"
    assert widget.labeler is None
    rid = widget.regions[0]["id"]
    widget.label(rid, widget.regions[0]["transition"][0])
    widget.labeler = dw.ReferenceModelLabeler(digits_classifier)
    assert act(widget, "_fine_tune_command", steps=5, lam=1.0, lr=0.01)["ok"] is True
    widget.wait()
    assert session.history[-1].vetted
    assert widget.history[-1]["samples_note"].startswith("The labeler")


def test_wait_raises_the_error_of_a_failed_job(
    widget: Explorer, session: dw.DefuseSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    widget.label(widget.regions[0]["id"], widget.regions[0]["transition"][0])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("evaluation broke")

    rounds = session.rounds
    monkeypatch.setattr(session, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        widget.fine_tune(steps=5, block=True)
    assert "Fine-tuning failed: RuntimeError: evaluation broke" in widget.error
    assert not widget.running and widget.busy == "" and session.rounds == rounds
    widget.wait()  # reported once: a later wait has nothing to raise


def test_second_fine_tune_and_cancel(widget: Explorer, session: dw.DefuseSession) -> None:
    widget.label(widget.regions[0]["id"], 1)
    rounds = session.rounds
    widget.fine_tune(steps=5000)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            widget.fine_tune(steps=10)
        assert act(widget, "_fine_tune_command")["ok"] is False
        with pytest.raises(RuntimeError, match="running"):
            widget.revert()
    finally:
        cancelled = act(widget, "_cancel_command")
        widget.wait(60)
    assert cancelled["ok"] is True
    assert not widget.running and widget.busy == ""
    assert session.rounds == rounds
    assert "cancelled" in widget.status
    assert re.match(r"Fine-tuning cancelled after \d+ of 5000 steps", widget.progress["outcome"])


def test_thumbnail_on_demand(session: dw.DefuseSession) -> None:
    w = Explorer(session, projection="pca", max_thumbnail_bytes=0, block=True)
    assert w.thumbs is None
    answer, buffers = invoke(w, "_thumb_command", {"index": 2})
    assert answer["index"] == 2 and len(answer["shape"]) == 4 and answer["shape"][0] == 1
    assert len(buffers[0]) == int(np.prod(answer["shape"]))
    answer, buffers = invoke(w, "_thumb_command", {"index": 10**6})
    assert answer["shape"] is None and buffers == []


def test_bad_arguments(session: dw.DefuseSession, digits, digits_classifier, digits_vae) -> None:
    with pytest.raises(ValueError, match="projection"):
        Explorer(session, projection=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="projection"):
        Explorer(session, projection="tsne")
    with pytest.raises(ValueError, match="background: expected 'train'"):
        Explorer(session, projection="pca", background="validation")
    with pytest.raises(ValueError, match="background: needs projection"):
        Explorer(session, projection=np.zeros((len(session.errors), 2)), background="train")
    with pytest.raises(ValueError, match="background_limit"):
        Explorer(session, projection="pca", background="train", background_limit=0)
    empty = dw.DefuseSession(classifier=digits_classifier, generator=digits_vae, data=digits,
                             device="cpu", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="identify"):
        Explorer(empty)


def test_background_of_training_images_on_the_same_map(session: dw.DefuseSession) -> None:
    from defuse_widgets.projection import layout as projection

    x, _ = session.data.split("train")
    w = Explorer(session, projection="pca", background="train", background_limit=300, block=True)
    assert w.error == "" and "300 of" in w.status
    bg = w.background_points
    assert bg.shape == (300, 2) and bg.dtype == np.float32
    assert w.background_label == f"of {len(x):,} training images"
    assert "background_points" in {p[0] for p in _remove_buffers(w.get_state())[1]}
    # the same PCA as the errors' map: the errors' fit, applied to the subset's encoder means
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:300].sort().values
    _, place = projection.fit(session.errors.codes, "pca")
    assert np.allclose(bg, place(session.encode(x[idx])), atol=1e-4)
    whole = Explorer(session, projection="pca", background="test", block=True)
    assert whole.background_points.shape == (len(session.data.split("test")[0]), 2)
    assert whole.background_label == "test images"
    assert Explorer(session, projection="pca", block=True).background_points is None


def test_given_projection_and_redisplay(session: dw.DefuseSession) -> None:
    xy = np.random.default_rng(0).normal(size=(len(session.errors), 2)).astype(np.float32)
    w = Explorer(session, projection=xy, block=True)
    assert np.array_equal(w.points, xy)
    w.select_region(w.regions[1]["id"])
    # a new view (re-display, page reload) gets the whole current state from get_state()
    state = w.get_state()
    assert state["selected_region"] == w.regions[1]["id"] and state["panel"]["region"] >= 0


def _audited_region(widget: Explorer, session: dw.DefuseSession) -> tuple[int, int]:
    """A region and a class such that, labeled so, the region holds conflicting training images."""
    for r in widget.regions:
        for label in (r["transition"][0], *range(len(session.data.classes))):
            if len(session.audit(r["id"], label=label)):
                return r["id"], label
    pytest.skip("no region holds training images")


def test_audit_of_the_selected_region_travels_as_buffers(
    widget: Explorer, session: dw.DefuseSession
) -> None:
    rid, label = _audited_region(widget, session)
    with pytest.raises(ValueError, match="label it with a class"):
        widget.open_audit(rid)
    widget.label(rid, label)
    assert widget.audit is None  # nothing is audited before the person asks
    assert act(widget, "_audit_command", region=rid)["ok"] is True
    widget.wait()
    assert widget.error == ""
    assert widget.selected_region == rid
    audit, expected = widget.audit, session.audit(rid)
    assert audit["region"] == rid and audit["label"] == label
    shown = len(audit["indices"])  # the likeliest, at most the widget's limit
    assert shown == min(len(expected), 100) and audit["total"] == len(expected)
    assert audit["indices"].tolist() == expected.indices.tolist()[:shown]
    assert audit["images"].dtype == np.uint8 and audit["images"].shape[0] == shown
    assert audit["predictions"].tolist() == expected.predictions.tolist()[:shown]
    assert np.allclose(audit["probabilities"], expected.probabilities.numpy()[:shown])
    assert audit["original"].tolist() == expected.labels.tolist()[:shown]
    assert widget.audit_labels.tolist() == expected.labels.tolist()[:shown]
    _, paths, _ = _remove_buffers(widget.get_state("audit"))
    assert {p[1] for p in paths} >= {"images", "indices", "original", "predictions",
                                     "probabilities"}  # fmt: skip
    _, paths, _ = _remove_buffers(widget.get_state("audit_labels"))
    assert paths
    # only the selected region's audit: another region clears it (or audits that one instead)
    other = next(r["id"] for r in widget.regions if r["id"] != rid)
    widget.select_region(other)
    widget.wait()
    assert widget.audit is None  # unlabeled
    widget.select_region(rid)
    widget.wait()
    assert widget.audit is not None and widget.audit["region"] == rid


def test_relabel_and_undo_from_python_and_the_browser(
    widget: Explorer, session: dw.DefuseSession
) -> None:
    rid, label = _audited_region(widget, session)
    widget.label(rid, label)
    widget.open_audit(rid, block=True)
    first = int(widget.audit["indices"][0])
    # from Python
    widget.select_audit([first])
    assert widget.relabel_selected() == 1
    assert set(session.relabels) == {first} and session.relabels[first].new_label == label
    assert widget.relabel_count == 1
    assert widget.audit_labels[0] == label
    changed: list[str] = []
    widget.observe(lambda ch: changed.append(ch["name"]))
    assert widget.unrelabel_selected() == 1
    assert session.relabels == {} and widget.relabel_count == 0
    assert widget.audit_labels[0] == widget.audit["original"][0]
    assert "audit" not in changed  # an undo resends the small label array, not the images
    with pytest.raises(ValueError, match="not among"):
        widget.select_audit([10_000_000])
    # from the browser: the selection trait, then the buttons' messages
    wire = {"buffer": memoryview(np.array([first], np.int32).tobytes()), "dtype": "int32"}
    widget.set_state({"audit_selection": {**wire, "shape": [1]}})
    assert widget.audit_selection.tolist() == [first]
    assert act(widget, "_relabel_command", indices=[first])["ok"] is True
    assert set(session.relabels) == {first} and widget.relabel_count == 1
    # a relabeled image stays in the audit (so it can be undone), marked by its new label
    widget.refresh()
    widget.wait()
    assert first in widget.audit["indices"].tolist()
    pos = widget.audit["indices"].tolist().index(first)
    assert widget.audit_labels[pos] == label
    assert act(widget, "_unrelabel_command", indices=[first])["ok"] is True
    assert session.relabels == {} and widget.relabel_count == 0
    assert act(widget, "_relabel_command", indices=[])["ok"] is False
    assert "select" in widget.error
    # select all, and relabels made on the session directly show at once
    widget.select_audit("all")
    assert widget.audit_selection.tolist() == widget.audit["indices"].tolist()
    session.relabel([first], label)
    assert widget.relabel_count == 1 and widget.audit_labels[pos] == label


def test_fine_tune_states_and_uses_the_relabels(
    widget: Explorer, session: dw.DefuseSession
) -> None:
    rid, label = _audited_region(widget, session)
    widget.label(rid, label)
    widget.open_audit(rid, block=True)
    widget.select_audit("all")
    n = widget.relabel_selected()
    assert n == len(widget.audit["indices"]) == widget.relabel_count  # the UI states this count
    widget.refresh()  # re-audits in the background; a fine-tune click right after waits for it
    widget.fine_tune(steps=5, block=True)
    assert widget.error == ""
    assert widget.history[-1]["relabels"] == n
    assert session.history[-1].relabels == n
    # the round changed the model: the audit's predictions are fresh
    assert widget.audit is not None and widget.audit["round"] == session.active_round


def _decode_error(session: dw.DefuseSession, i: int) -> np.ndarray:
    assert session.errors is not None
    img = session.decode(session.errors.codes[i : i + 1])[0]
    return img.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_point_selection_opens_and_retargets_the_interpolator(
    widget: Explorer, session: dw.DefuseSession
) -> None:
    assert widget.interpolator is None and widget.selected_error == -1
    widget.select_error(3)
    child = widget.interpolator
    assert isinstance(child, Interpolator) and child.error_index == 3
    assert [s["label"] for s in child.sliders] == ["Interpolation"]
    assert child.title.startswith("Error 3:")
    # the child travels as an anywidget reference the explorer's front end renders
    assert widget.get_state("interpolator")["interpolator"] == f"anywidget:{child.model_id}"
    assert np.array_equal(child.frame_at([1.0]).pixels, _decode_error(session, 3))

    sent: list[dict[str, Any]] = []
    child.send = lambda content, buffers=None: sent.append(content)  # type: ignore[method-assign]
    child.show(0.7)
    # the browser clicks another point: same child, new error, slider back to 0, frame sent
    widget.selected_error = 5
    assert widget.interpolator is child and child.error_index == 5
    assert child.title.startswith("Error 5:") and child.values == [0.0]
    assert sent[-1]["type"] == "frame" and sent[-1]["values"] == [0.0]
    assert np.array_equal(child.frame_at([1.0]).pixels, _decode_error(session, 5))
    # selecting exactly one point (lasso or from Python) retargets as well
    widget.select([7])
    assert child.error_index == 7 and widget.selected_error == 7
    widget.select([1, 2])
    assert child.error_index == 7
    with pytest.raises(ValueError, match="error index"):
        widget.select_error(len(session.errors))
    with pytest.raises(ValueError):
        child.set_error(-1)
    assert child.error_index == 7  # a bad index changes nothing
    widget.selected_error = 10_000  # as a (bad) browser write: an error message, no exception
    assert "Could not interpolate error 10000" in widget.error and child.error_index == 7
    widget.close()
    assert child.closed


def test_interpolator_options_and_a_closed_child_is_replaced(
    widget: Explorer, session: dw.DefuseSession
) -> None:
    w = Explorer(session, projection="pca", interpolator_options={"scan_points": 16}, block=True)
    w.select_error(0)
    first = w.interpolator
    assert first is not None and first._scan_points == 16
    first.close()
    w.select_error(2)
    assert w.interpolator is not first and w.interpolator.error_index == 2
    w.close()


def test_first_look_is_pca_then_umap_in_place(session: dw.DefuseSession) -> None:
    from defuse_widgets.projection import layout as projection

    projection.clear_cache()
    shown: list[tuple[str, np.ndarray]] = []
    w = Explorer.__new__(Explorer)
    w.observe(lambda c: shown.append((w.map_layout, c["new"])), "points")
    Explorer.__init__(w, session, block=True)
    codes = session.errors.codes
    assert [layout for layout, _ in shown] == ["pca", "umap"]
    assert np.allclose(shown[0][1], projection.project(codes, "pca"), atol=1e-5)
    assert np.array_equal(w.points, projection.cached(codes, "umap"))
    assert "UMAP layout" in w.status and w.map_layout == "umap"
    again = Explorer(session, block=True)  # cached: UMAP at once, no PCA first
    assert again.map_layout == "umap" and np.array_equal(again.points, w.points)
    given = Explorer(session, projection=np.asarray(w.points), block=True)
    assert given.map_layout == "given" and "given layout" in given.status


def test_map_engine_is_regl_by_default_plotly_on_request(session: dw.DefuseSession) -> None:
    xy = np.zeros((len(session.errors), 2), np.float32)
    w = Explorer(session, projection=xy, block=True)
    assert w.map_engine == "regl" and w.get_state()["map_engine"] == "regl"
    p = Explorer(session, projection=xy, map_engine="plotly", block=True)
    assert p.map_engine == "plotly"
    with pytest.raises(traitlets.TraitError):
        Explorer(session, projection=xy, map_engine="deck")


def test_the_generator_tab_measures_on_request(widget: Explorer, session: dw.DefuseSession) -> None:
    assert widget.generator is None  # nothing measured until asked
    assert act(widget, "_generator_command") == {"ok": True}
    widget.wait()
    report = widget.generator
    assert [c["name"] for c in report["classes"]] == [str(c) for c in session.data.classes]
    assert all(0 <= c["real"] <= 1 for c in report["classes"] if c["real"] is not None)
    assert "Generator measured:" in widget.status
    again = session.generator_report()
    assert [c["reconstructed"] for c in report["classes"]] == pytest.approx(
        [c.reconstructed for c in again.classes], nan_ok=True
    )
    widget.measure_generator(block=True, limit=50)
    assert widget.generator["images"] <= 50


def test_live_search_shows_errors_then_quick_then_full_regions(
    digits, digits_classifier, digits_vae
) -> None:
    """``search=``: the map grows report by report (point arrays always of one length), a quick
    fit shows once enough errors are in, labels given during the search reach the full fit
    (the status line says how many), a lasso region stays, and the result is the plain
    search's."""
    s = dw.DefuseSession(classifier=copy.deepcopy(digits_classifier), generator=digits_vae,
                         data=digits, device="cpu", seed=0, progress=False)  # fmt: skip
    seen: list[tuple[str, int, str]] = []
    labeled: dict[int, int] = {}
    lasso: list[int] = []

    def on_status(change: dict[str, Any]) -> None:
        n = 0 if w.points is None else len(w.points)
        assert len(w.point_region) == len(w.point_labels) == n  # one consistent map
        seen.append((w.regions_fit, n, change["new"]))
        if w.regions_fit == "quick" and not labeled:  # label and lasso during the search
            for r in s.regions:
                labeled[r.id] = r.transition[0]
                w.label(r.id, r.transition[0])
            lasso.append(w.add_region(np.arange(5)))
            w.label(lasso[0], dw.MODEL_IS_RIGHT)

    w = Explorer(s, search={"limit": 240, "step_images": 40}, projection="pca",
                 distill={"min_errors": 60, "max_regions": 12})  # fmt: skip
    w.observe(on_status, "status")
    w.wait()
    assert w.error == "" and w.regions_fit == "full" and labeled
    searching = [(fit, n) for fit, n, text in seen if text.startswith("Searching: ")]
    sizes = [n for _, n in searching]
    assert len(sizes) >= 4 and sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert searching[0][0] == "" or sizes[0] >= 60  # no regions before the quick fit can run
    assert "quick" in {fit for fit, _ in searching}
    plain = s.search(limit=240, progress=False)
    assert torch.equal(s.errors.codes, plain.codes) and len(w.points) == len(plain)
    assert "Full fit:" in w.status and "(replaced the quick fit)" in w.status
    given = len(labeled)
    mine = [r for r in s.regions if r.user_defined]  # the lasso region, with what joined it
    assert len(mine) == 1 and set(range(5)) <= set(s.regions.members(mine[0].id).tolist())
    labels = s.labels
    assert labels.pop(mine[0].id) == dw.MODEL_IS_RIGHT
    assert f"your lasso regions kept ({lasso[0]} as {mine[0].id})" in w.status
    assert labels and set(labels.values()) <= set(labeled.values())
    assert f"of {given} labeled quick regions carried over to {len(labels)} full" in w.status
    assert w.map_layout == "pca" and w.thumbs is not None and w.baseline is not None


def test_live_search_arguments_are_checked_first(session: dw.DefuseSession) -> None:
    bad = [
        (TypeError, "search: expected a dict", dict(search="all")),
        (ValueError, "distill: sets the live search", dict(distill={"max_regions": 5})),
        (ValueError, "projection: a live search", dict(search=True, projection=np.zeros((3, 2)))),
        (ValueError, "on_errors is the explorer's own", dict(search={"on_errors": print})),
        (ValueError, "min_errors expected an integer >= 2",
         dict(search=True, distill={"min_errors": 1})),
        (ValueError, "local backend", dict(search={"backend": "ray"})),
    ]  # fmt: skip
    errors = session.errors
    for exc, match, kwargs in bad:
        with pytest.raises(exc, match=match):
            Explorer(session, **kwargs)
    assert session.errors is errors


def test_outside_a_kernel_the_umap_layout_waits_for_wait(session: dw.DefuseSession) -> None:
    """A script's explorer (no kernel, not blocking) shows PCA and fits UMAP only on wait(), so a
    script that never waits does not end inside a numba compile."""
    from defuse_widgets.projection import layout as projection

    projection.clear_cache()
    w = Explorer(session)
    w._jobs.wait()  # the first look only
    assert w.map_layout == "pca" and w._map.pending and "UMAP on wait()" in w.status
    assert projection.cached(session.errors.codes, "umap") is None
    w.wait()
    assert w.map_layout == "umap" and not w._map.pending and "UMAP layout" in w.status
    w.close()

"""The interpolator widget's kernel side: modes, frames and the frame protocol (no browser)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import defuse_widgets as dw
from defuse_widgets.imaging import to_uint8
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.widgets.interpolator import Interpolator


@pytest.fixture(scope="module")
def session(
    digits: dw.ImageDataset, digits_classifier: torch.nn.Module, digits_vae: torch.nn.Module
) -> Iterator[DefuseSession]:
    """The shared digits models (tests/conftest.py, cached) with errors and regions."""
    clf = copy.deepcopy(digits_classifier)
    s = DefuseSession(clf, digits_vae, digits, device="cpu", seed=0, progress=False)
    s.identify(limit=60)
    s.distill(max_regions=6)
    yield s


class Sent:
    """Captures the custom messages a widget sends (there is no front end in these tests)."""

    def __init__(self, widget: Interpolator) -> None:
        self.messages: list[tuple[dict[str, Any], list[Any]]] = []
        widget.send = self._send  # type: ignore[method-assign]

    def _send(self, content: dict[str, Any], buffers: list[Any] | None = None) -> None:
        self.messages.append((content, list(buffers or [])))

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [m for m, _ in self.messages if m.get("type") == "frame"]


def _widget(session: DefuseSession, *args: Any, **kw: Any) -> tuple[Interpolator, Sent]:
    w = Interpolator(session, *args, **kw)
    return w, Sent(w)


def browser_says(w: Interpolator, content: dict[str, Any]) -> None:
    """Deliver a custom message from the front end through the widget's comm, as a kernel does."""
    w.comm.handle_msg(
        {"content": {"data": {"method": "custom", "content": content}}, "buffers": []}
    )


# ---------------------------------------------------------------- modes


def test_error_mode_panels_slider_and_endpoints(session: DefuseSession) -> None:
    errors = session.errors
    assert errors is not None and len(errors.codes) > 0
    w = session.interpolator(0)
    assert isinstance(w, Interpolator)
    assert w.mode == "path"
    assert [s["label"] for s in w.sliders] == ["Interpolation"]
    assert (w.sliders[0]["min"], w.sliders[0]["max"]) == (0.0, 1.0)
    assert [p["label"] for p in w.panels] == ["Source image", "Reconstruction", "Decoded error"]
    assert w.classes == [str(c) for c in session.data.classes]
    assert "Error 0" in w.title
    # the panels are raw uint8 pixels (H, W, C) as binary buffers
    recon = w.panels[1]["image"]
    assert recon["dtype"] == "uint8" and recon["shape"] == [8, 8, 1]
    assert isinstance(recon["buffer"], memoryview)
    # position 0 decodes the source's code (its reconstruction), 1 the error's code
    start, end = w.frame_at(0.0), w.frame_at([1.0])
    assert np.array_equal(start.pixels.reshape(-1), np.frombuffer(recon["buffer"], np.uint8))
    decoded = np.frombuffer(w.panels[2]["image"]["buffer"], np.uint8)
    assert np.abs(end.pixels.reshape(-1).astype(int) - decoded.astype(int)).max() <= 1
    assert end.prediction == int(errors.pred_label[0])
    assert end.probs.shape == (10,) and math.isclose(float(end.probs.sum()), 1.0, rel_tol=1e-4)
    source = session.data.x_test[int(errors.source_index[0])]
    assert torch.allclose(w.code_at([0.0]), session.encode(source[None])[0], atol=1e-5)
    assert torch.allclose(w.code_at([1.0]), errors.codes[0], atol=1e-5)


def test_flip_markers_sit_where_the_prediction_changes(session: DefuseSession) -> None:
    errors = session.errors
    assert errors is not None
    # find an error whose path has a flip (reconstruction right, error wrong)
    for i in range(len(errors.codes)):
        w = session.interpolator(i)
        if w.markers:
            break
    else:
        pytest.skip("no error path with a prediction flip in this small session")
    half_step = 0.5 / 63
    for m in w.markers:
        assert m["slider"] == 0 and 0.0 < m["position"] < 1.0
        # positions come from a float32 scan, so a flip in the last interval sits a hair off
        # its midpoint: clamp the probes to the slider's range
        before = w.frame_at(max(0.0, m["position"] - half_step)).prediction
        after = w.frame_at(min(1.0, m["position"] + half_step)).prediction
        assert before != after
        assert f"{w.classes[before]} → {w.classes[after]}" in m["text"]


def test_pair_mode(session: DefuseSession) -> None:
    w = session.interpolator(3, 10)
    assert [p["label"] for p in w.panels] == [
        "Image A",
        "Reconstruction A",
        "Reconstruction B",
        "Image B",
    ]
    codes = session.encode(session.data.x_test[[3, 10]])
    assert torch.allclose(w.code_at([0.0]), codes[0], atol=1e-5)
    assert torch.allclose(w.code_at([1.0]), codes[1], atol=1e-5)
    wt = session.interpolator(0, 1, split="train")
    assert "train image 0" in wt.title


def test_region_mode_direction_sliders(session: DefuseSession) -> None:
    regions = session.regions
    assert regions is not None and regions.regions
    region = regions.regions[0]
    w = session.interpolator(region=region.id, k=2, limit=2.0)
    assert w.mode == "directions"
    assert [s["label"] for s in w.sliders] == ["Direction 1", "Direction 2"]
    assert all((s["min"], s["max"]) == (-2.0, 2.0) for s in w.sliders)
    assert w.values == [0.0, 0.0]
    assert [p["label"] for p in w.panels] == ["Region mean"]
    assert torch.allclose(w.code_at([0.0, 0.0]), region.mean, atol=1e-5)
    # one sd along direction 1 moves the code by that axis's standard deviation
    step = w.code_at([1.0, 0.0]) - region.mean
    eigmax = torch.linalg.eigvalsh(region.covariance.double()).max().sqrt().float()
    assert torch.isclose(step.norm(), eigmax, rtol=1e-3)
    for m in w.markers:
        assert m["slider"] in (0, 1) and -2.0 < m["position"] < 2.0


@pytest.mark.parametrize(
    ("args", "kw", "error", "match"),
    [
        ((10_000,), {}, ValueError, r"error_index: expected an index in \[0, "),
        ((-1,), {}, ValueError, "error_index: expected an index"),
        ((1.5,), {}, ValueError, "error_index: expected an integer index"),
        ((0, 5000), {}, ValueError, "b: expected an index"),
        ((0, 1), {"split": "val"}, ValueError, r"split: expected one of \('train', 'test'\)"),
        ((0,), {"split": "test"}, ValueError, "split: only used with two image indices"),
        ((), {}, ValueError, "a: expected an error index"),
        ((), {"region": 999}, ValueError, "region: expected one of the region ids"),
        ((0,), {"region": 0}, ValueError, "region: pass either"),
        ((), {"region": 0, "k": 0}, ValueError, r"k: expected an integer in \[1, 8\]"),
        ((), {"region": 0, "k": 2.0}, ValueError, r"k: expected an integer in \[1, 8\]"),
        (
            (),
            {"region": 0, "limit": 0.0},
            ValueError,
            r"limit: expected a number in \[0.001, 1000\]",
        ),
        ((0,), {"scan_points": 1}, ValueError, "scan_points: expected an integer >= 2, got 1"),
        ((0,), {"max_in_flight": 5}, ValueError, r"max_in_flight: expected one of \(1, 2\), got 5"),
        ((0,), {"ack_timeout": -1.0}, ValueError, r"ack_timeout: expected a number in \[0, inf\]"),
        ((0,), {"render_threads": -1}, ValueError, "render_threads: expected an integer >= 0"),
        ((0,), {"max_requests": 0}, ValueError, "max_requests: expected a positive integer"),
    ],
)
def test_bad_arguments(
    session: DefuseSession, args: tuple, kw: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        Interpolator(session, *args, **kw)


def test_session_without_errors_or_regions() -> None:
    class Bare:
        data = dw.load_dataset("digits")
        device = torch.device("cpu")
        classifier = generator = None
        errors = regions = None

    with pytest.raises(ValueError, match=r"no errors yet; run s.identify\(\)"):
        Interpolator(Bare(), 0)
    with pytest.raises(ValueError, match=r"no regions yet; run s.distill\(\)"):
        Interpolator(Bare(), region=0)
    with pytest.raises(TypeError, match="session: expected a DefuseSession"):
        Interpolator(object(), 0)


# ---------------------------------------------------------------- frame protocol


def test_frame_message_carries_raw_pixels_and_echoes_id_and_time(session: DefuseSession) -> None:
    w, sent = _widget(session, 0)
    assert w.submit([0.25], request_id=7, timestamp=1234.5, view="v1") is True
    (frame, buffers) = sent.messages[-1]
    assert frame["type"] == "frame"
    assert (frame["seq"], frame["id"], frame["t"], frame["view"]) == (1, 7, 1234.5, "v1")
    assert frame["values"] == [0.25]
    assert frame["image"] == {"dtype": "uint8", "shape": [8, 8, 1]}
    assert len(buffers) == 1 and len(bytes(buffers[0])) == 8 * 8
    expected = w.frame_at([0.25])
    assert bytes(buffers[0]) == expected.pixels.tobytes()
    assert frame["prediction"] == expected.prediction
    assert math.isclose(sum(frame["probs"]), 1.0, abs_tol=1e-3)
    assert frame["stats"]["rendered"] == 1


def test_at_most_two_in_flight_and_latest_wins(session: DefuseSession) -> None:
    w, sent = _widget(session, 0)
    assert w.submit([0.1], 1) and w.submit([0.2], 2)
    assert w.in_flight == 2
    # no frame slot: requests wait, and each newer one replaces the waiting one
    assert w.submit([0.3], 3) is False
    assert w.submit([0.4], 4) is False
    assert w.submit([0.5], 5) is False
    assert len(sent.frames) == 2
    assert w.stats["superseded"] == 2 and w.stats["pending"] == 1
    w.acknowledge(1)  # frees one slot: the newest request is rendered, the others never
    assert [f["values"] for f in sent.frames] == [[0.1], [0.2], [0.5]]
    assert w.in_flight == 2 and w.stats["pending"] == 0
    # acknowledging the newest frame acknowledges everything before it
    w.acknowledge(3)
    assert w.in_flight == 0
    assert w.stats["peak_in_flight"] == 2


def test_final_position_after_a_drag_is_always_sent(session: DefuseSession) -> None:
    w, sent = _widget(session, 0)
    positions = np.linspace(0, 1, 200)
    for i, t in enumerate(positions, start=1):
        w.submit([float(t)], i, timestamp=float(i))
        if i % 7 == 0 and sent.frames:  # the browser paints now and then
            w.acknowledge(sent.frames[-1]["seq"])
    assert w.in_flight <= 2
    while w.stats["pending"]:
        w.acknowledge(sent.frames[-1]["seq"])
    last = sent.frames[-1]
    assert last["values"] == [1.0] and last["id"] == 200
    assert w.last_values == (1.0,)
    stats = w.stats
    assert stats["received"] == 200
    assert stats["rendered"] + stats["superseded"] == 200
    assert stats["superseded"] > 0 and stats["peak_in_flight"] <= 2


def test_max_in_flight_one(session: DefuseSession) -> None:
    w, sent = _widget(session, 0, max_in_flight=1)
    assert w.submit([0.1], 1) is True
    assert w.submit([0.2], 2) is False
    w.acknowledge(1)
    assert [f["values"] for f in sent.frames] == [[0.1], [0.2]]


def test_stale_requests_are_dropped(session: DefuseSession) -> None:
    w, sent = _widget(session, 0)
    w.submit([0.5], 10, view="a")
    assert w.submit([0.1], 9, view="a") is False  # older id from the same view
    assert w.submit([0.1], 10, view="a") is False  # repeated id
    assert w.stats["stale"] == 2 and len(sent.frames) == 1
    assert w.submit([0.2], 1, view="b") is True  # another view counts its own ids


def test_unacknowledged_frames_time_out(session: DefuseSession) -> None:
    w, sent = _widget(session, 0, ack_timeout=0.0)
    w.submit([0.1], 1)
    w.submit([0.2], 2)
    # the view went away without acking: the next request still gets a frame
    assert w.submit([0.3], 3) is True
    assert w.stats["lost"] == 2 and w.in_flight == 1
    assert [f["values"] for f in sent.frames][-1] == [0.3]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([1.5], r"values\[0\] \(Interpolation\): expected a number in \[0, 1\], got 1.5"),
        ([-0.1], r"values\[0\] \(Interpolation\): expected a number in \[0, 1\]"),
        ([float("nan")], r"values\[0\] \(Interpolation\): expected a finite number"),
        ([float("inf")], r"expected a finite number"),
        (["0.5"], r"values\[0\] \(Interpolation\): expected a number"),
        ([0.1, 0.2], r"values: expected 1 slider position\(s\), got 2"),
        ([], r"values: expected 1 slider position\(s\), got 0"),
        (None, r"values: expected a list of 1 slider position"),
    ],
)
def test_bad_positions_raise_before_any_state_changes(
    session: DefuseSession, values: Any, match: str
) -> None:
    w, sent = _widget(session, 0)
    with pytest.raises(ValueError, match=match):
        w.submit(values, 1)
    with pytest.raises(ValueError, match=match):
        w.frame_at(values)
    assert sent.messages == [] and w.stats["received"] == 0


def test_bad_request_ids_and_acks(session: DefuseSession) -> None:
    w, _ = _widget(session, 0)
    with pytest.raises(ValueError, match="request_id: expected an integer"):
        w.submit([0.5], "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timestamp: expected a finite number"):
        w.submit([0.5], 1, timestamp=float("nan"))
    w.submit([0.5], 1)
    with pytest.raises(ValueError, match=r"ack: frame 5 was never sent \(last sent: 1\)"):
        w.acknowledge(5)
    with pytest.raises(ValueError, match="ack: expected a non-negative frame number"):
        w.acknowledge(-1)


def test_browser_messages_drive_the_protocol_and_errors_show(session: DefuseSession) -> None:
    w, sent = _widget(session, 0)
    assert w.max_requests == 2  # the browser pipelines up to 2 requests
    for i, v in enumerate((0.2, 0.3, 0.4), start=1):
        browser_says(w, {"type": "request", "id": i, "t": float(i), "values": [v], "view": "v"})
    assert [f["id"] for f in sent.frames] == [1, 2]  # the third waits for a frame slot
    # the next request acknowledges what the browser received: the waiting one is superseded
    browser_says(w, {"type": "request", "id": 4, "t": 4.0, "values": [0.5], "view": "v", "ack": 2})
    assert [f["id"] for f in sent.frames] == [1, 2, 4] and w.stats["superseded"] == 1
    assert w.last_values == (0.5,) and w.stats["acked"] == 2
    # an ack alone (no request followed the paint) frees a slot for a waiting request
    browser_says(w, {"type": "request", "id": 5, "t": 5.0, "values": [0.6], "view": "v"})
    browser_says(w, {"type": "request", "id": 6, "t": 6.0, "values": [0.7], "view": "v"})
    assert sent.frames[-1]["id"] == 5 and w.stats["pending"] == 1
    browser_says(w, {"type": "ack", "seq": 4})
    assert sent.frames[-1]["id"] == 6 and w.stats["acked"] == 4
    # a bad request from the browser does not raise in the kernel: it shows as the widget's error
    browser_says(w, {"type": "request", "id": 40, "t": 8.0, "values": [float("nan")], "view": "v"})
    assert "finite" in w.error and w.stats["rejected"] == 1
    browser_says(w, {"type": "request", "id": 50, "t": 9.0, "values": [0.9], "view": "v", "ack": 5})
    assert w.error == ""
    # a bad ack from the browser shows as an error too; other messages are ignored
    browser_says(w, {"type": "ack", "seq": 99})
    assert "ack: frame 99 was never sent" in w.error
    browser_says(w, {"type": "other"})


def test_named_constructors_match_the_session_forms(session: DefuseSession) -> None:
    region = int(session.regions.regions[0].id)  # type: ignore[union-attr]
    pairs = [
        (Interpolator.from_error(session, 2), session.interpolator(2)),
        (
            Interpolator.between(session, 0, 1, split="train"),
            session.interpolator(0, 1, split="train"),
        ),
        (
            Interpolator.along_region(session, region, k=2, limit=2.0),
            session.interpolator(region=region, k=2, limit=2.0),
        ),
    ]
    for named, legacy in pairs:
        assert (named.mode, named.title, named.sliders) == (
            legacy.mode,
            legacy.title,
            legacy.sliders,
        )
        assert named.markers == legacy.markers
        assert torch.equal(named.code_at(named.values), legacy.code_at(legacy.values))
    assert pairs[0][0].error_index == 2 and pairs[1][0].error_index is None


def test_knobs_are_checked_when_set_later_too(session: DefuseSession) -> None:
    w, _ = _widget(session, 0, max_in_flight=1, render_threads=0)
    assert (w.max_in_flight, w.render_threads) == (1, 0)
    with pytest.raises(ValueError, match=r"max_in_flight: expected one of \(1, 2\), got 3"):
        w.max_in_flight = 3
    with pytest.raises(ValueError, match="render_threads: expected an integer >= 0"):
        w.render_threads = -2
    assert (w.max_in_flight, w.render_threads) == (1, 0)


def test_show_moves_the_sliders_from_python(session: DefuseSession) -> None:
    w, sent = _widget(session, region=session.regions.regions[0].id, k=2)  # type: ignore[union-attr]
    assert w.show(1.0, -0.5) is True
    assert w.values == [1.0, -0.5]
    assert sent.frames[-1]["values"] == [1.0, -0.5]
    with pytest.raises(ValueError, match=r"values\[1\] \(Direction 2\)"):
        w.show(0.0, 9.0)


def test_closed_view_rejects_requests(session: DefuseSession) -> None:
    w, sent = _widget(session, 0)
    w.submit([0.1], 1)
    w.submit([0.2], 2)
    w.submit([0.3], 3)  # pending
    w.close()
    for call in (lambda: w.submit([0.5], 4), lambda: w.frame_at([0.5]), lambda: w.acknowledge(1)):
        with pytest.raises(RuntimeError, match="Interpolator: this view is closed"):
            call()
    assert len(sent.frames) == 2  # the pending request was dropped, not rendered


def test_set_error_retargets_any_mode_and_sends_the_new_frame(session: DefuseSession) -> None:
    w, sent = _widget(session, region=int(session.regions.regions[0].id), k=2)  # type: ignore[union-attr]
    assert w.error_index is None and w.mode == "directions"
    w.set_error(1)
    assert w.mode == "path" and w.error_index == 1 and w.values == [0.0]
    assert [s["label"] for s in w.sliders] == ["Interpolation"]
    assert [p["label"] for p in w.panels] == ["Source image", "Reconstruction", "Decoded error"]
    assert sent.frames[-1]["values"] == [0.0]
    assert np.array_equal(w.frame_at([1.0]).pixels, session_frame(session, 1))
    with pytest.raises(ValueError, match="error_index"):
        w.set_error(len(session.errors.codes))
    assert w.error_index == 1
    w.close()
    with pytest.raises(RuntimeError):
        w.set_error(0)


def session_frame(session: DefuseSession, i: int) -> np.ndarray:
    return to_uint8(session.decode(session.errors.codes[i : i + 1]))[0]

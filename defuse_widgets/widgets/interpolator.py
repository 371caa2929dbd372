"""Live latent interpolation: sliders whose frames are decoded and classified on the kernel device.

Three modes, all one widget:

- ``Interpolator(s, error_index)``: from the code of an error's real source image (encoder mean,
  position 0) to the error's code (position 1); slider ``Interpolation``.
- ``Interpolator(s, a, b, split="test")``: between two dataset images, for teaching.
- ``Interpolator(s, region=region_id, k=3)``: sliders ``Direction 1..k`` along the leading principal
  axes of a failure region's covariance, in standard deviations from the region's mean.

Frame protocol (back-pressure as in jupyter_rfb)
------------------------------------------------
The browser sends only its latest slider values, as ``{"type": "request", "id", "t", "values",
"view", "ack"}`` custom messages with at most ``max_requests`` (2) unanswered; newer values wait
in the browser, the latest replacing the rest (``transport="trait"`` writes them to the
``request`` trait instead, which ipywidgets holds while one update is unanswered). ``throttle_ms``
can space requests further.
The kernel keeps one pending request (newest wins; an older pending one is counted as
``superseded``, one older than the last seen id of its view as ``stale``) and renders it once
fewer than ``max_in_flight`` frames are unacknowledged. A frame is a custom message
``{"type": "frame", "seq", "id", "t", ...}`` with the raw pixels as one binary buffer (uint8,
(H, W, C)); ``id`` and ``t`` are echoed so the browser can measure input -> paint latency. The
browser paints the newest frame it has in ``requestAnimationFrame`` (older unpainted ones are
dropped). Each request carries ``ack``, the newest frame received, which acknowledges that frame
and every earlier one (a received frame is painted in the next animation frame unless a newer one
supersedes it, so the browser holds at most one frame and a kernel frame slot need not wait for
the paint); when no request follows a paint within 20 ms the browser sends
``{"type": "ack", "seq"}`` as a custom message instead (never through a trait, so an ack never
waits behind a request in ipywidgets' one-sync-in-flight throttle). During a drag this saves a
kernel message per frame. The final position after a drag is always rendered: the last request
stays pending until a frame slot frees up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets

from .. import interpolation as interp
from ._codec import encode as encode_array

STATIC = Path(__file__).resolve().parent.parent / "static"


@dataclass(frozen=True)
class Frame:
    """One rendered frame: ``pixels`` (H, W, C) uint8, ``probs`` (K,) float32, ``prediction``."""

    values: tuple[float, ...]
    pixels: np.ndarray
    probs: np.ndarray

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.probs))


@dataclass(frozen=True)
class _Request:
    id: int
    t: float
    values: tuple[float, ...]
    view: str
    received_ms: float


@contextmanager
def _cpu_threads(device: torch.device, n: int) -> Iterator[None]:
    """Run torch CPU ops of the calling thread on ``n`` threads inside the block (0: unchanged).

    One small frame is latency-bound: on a busy 2-core machine, waking a second OpenMP thread per
    op cost 20-30 ms a frame against under 2 ms on one thread. The OpenMP setting is per calling
    thread, so a fine-tuning loop in another thread keeps its own.
    """
    if device.type != "cpu" or n <= 0:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _to_pixels(images: torch.Tensor) -> list[np.ndarray]:
    """(N, C, H, W) in [0, 1] -> list of (H, W, C) uint8 arrays (host)."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return [np.ascontiguousarray(a) for a in x.permute(0, 2, 3, 1).cpu().numpy()]


def _panel(label: str, pixels: np.ndarray) -> dict[str, Any]:
    return {"label": label, "image": encode_array(pixels)}


class Interpolator(anywidget.AnyWidget):
    """Sliders through a generator's latent space with frames decoded live on the session device.

    Parameters
    ----------
    session : a ``DefuseSession`` (uses ``data``, ``device``, ``classifier``, ``generator``,
        ``errors``, ``regions`` and ``encode``).
    a : an error index into ``session.errors`` (with ``b`` None), or a dataset image index.
    b : a second dataset image index: interpolate between images ``a`` and ``b`` of ``split``.
    region : a region id of ``session.regions``: direction sliders instead of a path.
    split : ``"test"`` (default) or ``"train"``, for ``a``/``b`` as image indices.
    k : number of direction sliders in region mode (at most the latent size).
    limit : direction sliders run from ``-limit`` to ``+limit`` standard deviations.
    scan_points : points of the batched scan that places the prediction-flip markers.
    max_in_flight : unacknowledged frames the kernel allows (1 or 2 as in jupyter_rfb).
    ack_timeout : seconds after which unacknowledged frames count as lost (a view that went away).

    Attributes
    ----------
    render_threads : CPU threads for one frame (default 1; 0 leaves torch's setting alone).
    throttle_ms : the least time between two requests from the browser (default 0: as fast as
        the kernel answers; the frame protocol alone keeps the kernel from being flooded).
    transport : how the browser sends slider values: ``"message"`` (default; custom messages, at
        most ``max_requests`` unanswered, the latest value waiting in the browser: pipelined) or
        ``"trait"`` (the ``request`` trait: ipywidgets holds each update until the kernel is idle
        after the previous one, a full round trip; measured ~10 ms slower at the median).

    Examples
    --------
    >>> w = Interpolator(s, 0)            # doctest: +SKIP
    >>> w.frame_at([0.5]).prediction      # doctest: +SKIP
    """

    _esm = STATIC / "interpolator.js"

    mode = traitlets.Unicode("path").tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    classes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    sliders = traitlets.List(traitlets.Dict()).tag(sync=True)
    panels = traitlets.List(traitlets.Dict()).tag(sync=True)
    markers = traitlets.List(traitlets.Dict()).tag(sync=True)
    values = traitlets.List(traitlets.Float()).tag(sync=True)
    request = traitlets.Dict().tag(sync=True, echo_update=False)
    error = traitlets.Unicode("").tag(sync=True)
    throttle_ms = traitlets.Float(0.0).tag(sync=True)
    max_in_flight = traitlets.Int(2).tag(sync=True)
    render_threads = traitlets.Int(1)
    transport = traitlets.Enum(("trait", "message"), "message").tag(sync=True)
    max_requests = traitlets.Int(2).tag(sync=True)

    def __init__(
        self,
        session: Any,
        a: int | None = None,
        b: int | None = None,
        *,
        region: int | None = None,
        split: str | None = None,
        k: int = 3,
        limit: float = 3.0,
        scan_points: int = 64,
        max_in_flight: int = 2,
        ack_timeout: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if isinstance(max_in_flight, bool) or max_in_flight not in (1, 2):
            raise ValueError(f"max_in_flight: expected 1 or 2, got {max_in_flight!r}")
        for name in ("data", "device", "classifier", "generator"):
            if not hasattr(session, name):
                raise TypeError(
                    f"session: expected a DefuseSession with .{name}, got {type(session).__name__}"
                )
        self._session = session
        self._device = torch.device(session.device)
        self._closed = False
        self._pending: _Request | None = None
        self._last_ids: dict[str, int] = {}
        self._sent = 0
        self._acked = 0
        self._sent_at: dict[int, float] = {}
        self._ack_timeout = float(ack_timeout)
        self._stats = dict.fromkeys(
            ("received", "rendered", "superseded", "stale", "rejected", "lost", "peak_in_flight"), 0
        )
        self._render_ms: list[float] = []
        self._last_values: tuple[float, ...] | None = None
        self._start: torch.Tensor | None = None
        self._end: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None
        self._dirs: torch.Tensor | None = None
        self._scales: torch.Tensor | None = None
        self._scan_points = scan_points
        self._error_index: int | None = None

        state = self._setup(a, b, region, split, k, limit, scan_points)
        state["classes"] = [str(c) for c in session.data.classes]
        super().__init__(max_in_flight=max_in_flight, **state, **kwargs)
        self.observe(self._on_request, names="request")
        self.on_msg(self._on_message)

    # ------------------------------------------------------------------ setup
    def _setup(
        self,
        a: int | None,
        b: int | None,
        region: int | None,
        split: str | None,
        k: int,
        limit: float,
        scan_points: int,
    ) -> dict[str, Any]:
        s = self._session
        classes = [str(c) for c in s.data.classes]
        if region is not None:
            if a is not None or b is not None:
                raise ValueError("region: pass either region= or image/error indices, not both")
            return self._setup_region(region, k, limit, scan_points, classes)
        if a is None:
            raise ValueError(
                "a: expected an error index, two image indices (a, b) or region=; got nothing"
            )
        if b is None:
            if split is not None:
                raise ValueError(
                    "split: only used with two image indices (a, b); an error knows its split"
                )
            return self._setup_error(a, scan_points, classes)
        return self._setup_pair(a, b, split or "test", scan_points, classes)

    @staticmethod
    def _check_index(name: str, value: Any, n: int, what: str) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}: expected an integer index into {what}, got {value!r}")
        if not 0 <= int(value) < n:
            raise ValueError(f"{name}: expected an index in [0, {n - 1}] of {what}, got {value}")
        return int(value)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        mu = self._session.encode(images)
        return torch.as_tensor(mu).to(self._device, torch.float32)

    @torch.inference_mode()
    def _decode_many(self, codes: torch.Tensor) -> list[np.ndarray]:
        return _to_pixels(self._session.generator.decode(codes.to(self._device)))

    def _path_state(
        self, start: torch.Tensor, end: torch.Tensor, scan_points: int, classes: list[str]
    ) -> dict[str, Any]:
        self._start, self._end = start, end
        gen, clf = self._session.generator, self._session.classifier
        scan = interp.scan_path(gen.decode, clf, start, end, num=scan_points)
        markers = [
            {
                "slider": 0,
                "position": f.position,
                "text": f"{classes[f.before]} → {classes[f.after]} at {f.position:.2f}",
            }
            for f in scan.flips
        ]
        return {
            "mode": "path",
            "sliders": [{"label": "Interpolation", "min": 0.0, "max": 1.0, "step": 0.001}],
            "values": [0.0],
            "markers": markers,
        }

    def _setup_error(self, index: Any, scan_points: int, classes: list[str]) -> dict[str, Any]:
        errors = getattr(self._session, "errors", None)
        if errors is None:
            raise ValueError("error_index: the session has no errors yet; run s.identify() first")
        i = self._check_index(
            "error_index", index, len(errors.codes), f"{len(errors.codes)} errors"
        )
        split = str(getattr(errors, "split", "test"))
        x, _ = self._session.data.split(split)
        src = int(errors.source_index[i])
        source = x[src : src + 1]
        start = self._encode(source)[0]
        end = torch.as_tensor(errors.codes[i]).to(self._device, torch.float32)
        self._error_index = i
        recon, decoded = self._decode_many(torch.stack([start, end]))
        true, pred = int(errors.true_label[i]), int(errors.pred_label[i])
        state = self._path_state(start, end, scan_points, classes)
        state["title"] = (
            f"Error {i}: true {classes[true]}, predicted {classes[pred]} "
            f"({split} image {src} → error code)"
        )
        state["panels"] = [
            _panel("Source image", _to_pixels(source)[0]),
            _panel("Reconstruction", recon),
            _panel("Decoded error", decoded),
        ]
        return state

    def _setup_pair(
        self, a: Any, b: Any, split: str, scan_points: int, classes: list[str]
    ) -> dict[str, Any]:
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        x, y = self._session.data.split(split)
        ia = self._check_index("a", a, len(x), f"the {len(x)} {split} images")
        ib = self._check_index("b", b, len(x), f"the {len(x)} {split} images")
        images = x[[ia, ib]]
        codes = self._encode(images)
        recon_a, recon_b = self._decode_many(codes)
        real_a, real_b = _to_pixels(images)
        state = self._path_state(codes[0], codes[1], scan_points, classes)
        state["title"] = (
            f"{split} image {ia} ({classes[int(y[ia])]}) → {split} image {ib} "
            f"({classes[int(y[ib])]})"
        )
        state["panels"] = [
            _panel("Image A", real_a),
            _panel("Reconstruction A", recon_a),
            _panel("Reconstruction B", recon_b),
            _panel("Image B", real_b),
        ]
        return state

    def _setup_region(
        self, region_id: Any, k: int, limit: float, scan_points: int, classes: list[str]
    ) -> dict[str, Any]:
        regions = getattr(self._session, "regions", None)
        if regions is None:
            raise ValueError("region: the session has no regions yet; run s.distill() first")
        ids = [int(r.id) for r in regions.regions]
        if isinstance(region_id, bool) or not isinstance(region_id, (int, np.integer)):
            raise ValueError(f"region: expected an integer region id, got {region_id!r}")
        if int(region_id) not in ids:
            raise ValueError(f"region: expected one of the region ids {ids}, got {region_id}")
        reg = regions.regions[ids.index(int(region_id))]
        mean = torch.as_tensor(reg.mean).to(self._device, torch.float32)
        cov = torch.as_tensor(reg.covariance).to(self._device, torch.float32)
        d = int(mean.shape[0])
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
            raise ValueError(f"k: expected an integer in [1, {d}], got {k!r}")
        limit = interp.check_position("limit", limit, 1e-3, 1e3)
        dirs, scales = interp.principal_directions(cov, k)
        self._mean, self._dirs, self._scales = mean, dirs, scales
        gen, clf = self._session.generator, self._session.classifier
        scans = interp.scan_directions(gen.decode, clf, mean, dirs, scales, limit, scan_points)
        markers = [
            {
                "slider": j,
                "position": f.position,
                "text": f"{classes[f.before]} → {classes[f.after]} at {f.position:+.2f} sd",
            }
            for j, scan in enumerate(scans)
            for f in scan.flips
        ]
        (center,) = self._decode_many(mean[None])
        transition = getattr(reg, "transition", None)
        what = ""
        if transition is not None:
            tl, pl = (int(v) for v in transition)
            if 0 <= tl < len(classes) and 0 <= pl < len(classes):
                what = f": true {classes[tl]}, predicted {classes[pl]}"
        return {
            "mode": "directions",
            "title": f"Region {int(region_id)}{what} — principal directions (sd from the mean)",
            "sliders": [
                {"label": f"Direction {j + 1}", "min": -limit, "max": limit, "step": 0.01}
                for j in range(k)
            ],
            "values": [0.0] * k,
            "markers": markers,
            "panels": [_panel("Region mean", center)],
        }

    # ------------------------------------------------------------------ retarget
    @property
    def error_index(self) -> int | None:
        """The error shown (an index into ``session.errors``), None in pair or region mode."""
        return self._error_index

    def set_error(self, index: int) -> None:
        """Show error ``index`` of ``session.errors`` instead (any mode becomes the error path).

        The slider goes back to 0 and the frame there is sent at once (a request of the view
        ``"kernel"``, under the usual frame protocol), so an open view shows the new error
        without waiting for the person to move the slider. A request still pending for the old
        target is dropped. Raises ValueError for a bad index (nothing changes then) and
        RuntimeError once the view is closed.
        """
        self._check_open()
        classes = [str(c) for c in self._session.data.classes]
        state = self._setup_error(index, self._scan_points, classes)  # raises before any change
        self._pending = None
        self._mean = self._dirs = self._scales = None
        self.error = ""
        with self.hold_sync():
            self.mode = state["mode"]
            self.title = state["title"]
            self.sliders = state["sliders"]
            self.markers = state["markers"]
            self.panels = state["panels"]
            self.values = state["values"]
        self.submit(state["values"])

    # ------------------------------------------------------------------ frames
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Interpolator: this view is closed; create a new one")

    def check_values(self, values: Any) -> tuple[float, ...]:
        """Validate slider positions (one per slider, finite, within each slider's range)."""
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, (list, tuple, np.ndarray)):
            raise ValueError(
                f"values: expected a list of {len(self.sliders)} slider position(s), got {values!r}"
            )
        if len(values) != len(self.sliders):
            raise ValueError(
                f"values: expected {len(self.sliders)} slider position(s), got {len(values)}"
            )
        return tuple(
            interp.check_position(f"values[{j}] ({sl['label']})", v, sl["min"], sl["max"])
            for j, (v, sl) in enumerate(zip(values, self.sliders))
        )

    def code_at(self, values: Any) -> torch.Tensor:
        """The latent code (d,) on the session device for slider positions ``values``."""
        vals = self.check_values(values)
        if self.mode == "path":
            assert self._start is not None and self._end is not None
            return interp.lerp(self._start, self._end, vals[0])
        assert self._mean is not None and self._dirs is not None and self._scales is not None
        return interp.direction_codes(self._mean, self._dirs, self._scales, list(vals))

    def frame_at(self, values: Any) -> Frame:
        """Decode and classify the frame at ``values`` (one code) without sending it."""
        self._check_open()
        vals = self.check_values(values)
        pixels, probs = self._render(self.code_at(vals))
        return Frame(vals, pixels, probs)

    @torch.inference_mode()
    def _render(self, code: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with _cpu_threads(self._device, self.render_threads):
            image = self._session.generator.decode(code.unsqueeze(0))  # (1, C, H, W) on device
            probs = self._session.classifier(image).float().softmax(dim=1)[0]
            pix = image[0].float().clamp(0, 1).mul(255).round().permute(1, 2, 0).reshape(-1)
            host = torch.cat([pix, probs]).cpu().numpy()  # the one device -> host copy
        c, h, w = image.shape[1:]
        pixels = host[: pix.numel()].astype(np.uint8).reshape(h, w, c)
        return pixels, host[pix.numel() :].astype(np.float32)

    @property
    def last_values(self) -> tuple[float, ...] | None:
        """Slider positions of the newest frame sent (None before the first frame)."""
        return self._last_values

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet acknowledged."""
        return self._sent - self._acked

    @property
    def stats(self) -> dict[str, Any]:
        """Kernel-side counters of the frame protocol (and render time in ms)."""
        r = sorted(self._render_ms)
        return {
            **self._stats,
            "sent": self._sent,
            "acked": self._acked,
            "in_flight": self.in_flight,
            "pending": int(self._pending is not None),
            "render_ms_p50": r[len(r) // 2] if r else None,
        }

    def submit(
        self,
        values: Any,
        request_id: int | None = None,
        timestamp: float = 0.0,
        view: str = "kernel",
    ) -> bool:
        """Ask for the frame at ``values``; the newest request wins.

        Returns True when the frame was rendered and sent now, False when it waits for a frame
        slot (it is then replaced by any newer request) or was dropped as stale. Raises
        ValueError for bad positions or ids and RuntimeError once the view is closed.
        """
        self._check_open()
        vals = self.check_values(values)
        if request_id is None:
            request_id = self._last_ids.get(view, 0) + 1
        if isinstance(request_id, bool) or not isinstance(request_id, (int, np.integer)):
            raise ValueError(f"request_id: expected an integer, got {request_id!r}")
        if not isinstance(timestamp, (int, float)) or not np.isfinite(timestamp):
            raise ValueError(f"timestamp: expected a finite number (ms), got {timestamp!r}")
        if int(request_id) <= self._last_ids.get(view, -1):
            self._stats["stale"] += 1
            return False
        self._last_ids[view] = int(request_id)
        self._stats["received"] += 1
        if self._pending is not None:
            self._stats["superseded"] += 1
        self._pending = _Request(
            int(request_id), float(timestamp), vals, str(view), time.time() * 1e3
        )
        return self._pump()

    def acknowledge(self, seq: int) -> None:
        """The browser received frame ``seq`` (and so consumed every earlier frame)."""
        self._check_open()
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or seq < 0:
            raise ValueError(f"ack: expected a non-negative frame number, got {seq!r}")
        if seq > self._sent:
            raise ValueError(f"ack: frame {seq} was never sent (last sent: {self._sent})")
        if seq > self._acked:
            for s in range(self._acked + 1, int(seq) + 1):
                self._sent_at.pop(s, None)
            self._acked = int(seq)
        self._pump()

    def show(self, *values: float) -> bool:
        """Move the sliders to ``values`` from Python and send that frame (as a request)."""
        vals = self.check_values(list(values))
        self.values = list(vals)
        return self.submit(vals)

    def _pump(self) -> bool:
        if self._pending is None:
            return False
        if self.in_flight >= self.max_in_flight:
            oldest = self._sent_at.get(self._acked + 1)
            if oldest is None or time.monotonic() - oldest < self._ack_timeout:
                return False
            # the browser went away without acknowledging: count those frames lost, carry on
            self._stats["lost"] += self.in_flight
            self._sent_at.clear()
            self._acked = self._sent
        req, self._pending = self._pending, None
        start_ms = time.time() * 1e3
        t0 = time.perf_counter()
        pixels, probs = self._render(self.code_at(req.values))
        self._render_ms.append((time.perf_counter() - t0) * 1e3)
        if len(self._render_ms) > 1000:
            del self._render_ms[:500]
        self._sent += 1
        self._last_values = req.values
        self._sent_at[self._sent] = time.monotonic()
        self._stats["rendered"] += 1
        self._stats["peak_in_flight"] = max(self._stats["peak_in_flight"], self.in_flight)
        enc = encode_array(pixels)
        assert enc is not None
        buffer = enc.pop("buffer")
        content = {
            "type": "frame",
            "seq": self._sent,
            "id": req.id,
            "t": req.t,
            "view": req.view,
            "values": list(req.values),
            "image": enc,
            "probs": [round(float(p), 5) for p in probs],
            "prediction": int(np.argmax(probs)),
            "stats": self.stats,
            # wall-clock ms (Unix epoch): request received, render started, frame sent
            "kernel_ms": [req.received_ms, start_ms, time.time() * 1e3],
        }
        self.send(content, buffers=[buffer])
        return True

    # ------------------------------------------------------------------ browser side
    def _on_request(self, change: dict[str, Any]) -> None:
        self._handle_request(change["new"] or {})

    def _handle_request(self, req: dict[str, Any]) -> None:
        try:
            try:
                self.submit(
                    req.get("values"),
                    request_id=req.get("id"),
                    timestamp=req.get("t", 0.0),
                    view=str(req.get("view", "browser")),
                )
            finally:  # the ack (newest frame received) after the submit: a request that the
                if req.get("ack"):  # new one supersedes is then never rendered
                    self.acknowledge(req["ack"])
            if self.error:
                self.error = ""
        except (ValueError, RuntimeError) as exc:
            self._stats["rejected"] += 1
            if not self._closed:
                self.error = str(exc)

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "request":
            self._handle_request(content)
            return
        if content.get("type") != "ack":
            return
        try:
            self.acknowledge(content.get("seq"))  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as exc:
            if not self._closed:
                self.error = str(exc)

    def close(self) -> None:
        """Close the view: pending requests are dropped and later requests raise RuntimeError."""
        self._closed = True
        self._pending = None
        super().close()

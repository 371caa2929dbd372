"""Live latent interpolation: sliders whose frames are decoded and classified on the kernel device.

Three modes, one widget, each with a named constructor; ``Interpolator(session, ...)`` (and
``session.interpolator(...)``) takes the same arguments and picks the mode from them:
:meth:`Interpolator.from_error` (``Interpolator(s, i)``: error ``i``'s source image -> its code),
:meth:`Interpolator.between` (``Interpolator(s, a, b, split="test")``: two dataset images) and
:meth:`Interpolator.along_region` (``Interpolator(s, region=r, k=3)``: a region's principal axes).

Frames follow a back-pressured protocol modelled on jupyter_rfb (``docs/interpolator.md``): the
browser sends its latest slider values as ``request`` custom messages (at most ``max_requests``
unanswered), the kernel keeps the newest one pending (:class:`.frames.FrameQueue`) and renders
it once fewer than ``max_in_flight`` frames are unacknowledged; a ``frame`` custom message carries
the uint8 pixels as one binary buffer and echoes the request's ``id`` and input time ``t``; acks
are cumulative and ride on the next request (or go alone as an ``ack`` message).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets

from defuse_widgets.session.session import DefuseSession
from defuse_widgets.utils.checks import in_range, one_of, positive_int
from defuse_widgets.widgets.common import STATIC
from defuse_widgets.widgets.common.codec import array_to_json
from defuse_widgets.widgets.common.options import check_known_options
from defuse_widgets.widgets.interpolator import targets
from defuse_widgets.widgets.interpolator.frames import FrameQueue
from defuse_widgets.widgets.interpolator.targets import Frame

HERE = Path(__file__).resolve().parent

#: The knobs of the widget and their checks, each called as ``check(name, value)`` (``k`` is
#: checked against the latent size by ``interpolation.principal_directions``).
KNOBS: dict[str, Callable[[str, Any], Any]] = {
    "split": partial(one_of, choices=("train", "test")),
    "limit": partial(in_range, low=1e-3, high=1e3),
    "scan_points": partial(positive_int, minimum=2),
    "max_in_flight": partial(one_of, choices=(1, 2)),
    "max_requests": positive_int,
    "ack_timeout": partial(in_range, low=0.0, high=math.inf),
    "render_threads": partial(positive_int, minimum=0),
}


def check_knobs(**values: Any) -> None:
    """Check each given knob against :data:`KNOBS` (None and unknown names are skipped)."""
    for name, value in values.items():
        if name in KNOBS and value is not None:
            KNOBS[name](name, value)


class Interpolator(anywidget.AnyWidget):
    """Sliders through a generator's latent space with frames decoded live on the session device.

    Parameters
    ----------
    session : DefuseSession
        Uses ``data``, ``device``, ``classifier``, ``generator``, ``errors``, ``regions``,
        ``encode`` and ``decode``.
    a : int, optional
        An error index into ``session.errors`` (with ``b`` None), or a dataset image index.
    b : int, optional
        A second dataset image index: interpolate between images ``a`` and ``b`` of ``split``.
    region : int, optional
        A region id of ``session.regions``: direction sliders instead of a path.
    split : {"test", "train"}, optional
        The split of ``a`` and ``b`` as image indices (default ``"test"``).
    k : int
        Number of direction sliders in region mode (1 to the latent size).
    limit : float
        Direction sliders run from ``-limit`` to ``+limit`` standard deviations.
    scan_points : int
        Points of the batched scan that places the prediction-flip markers (>= 2).
    max_in_flight : {1, 2}
        Unacknowledged frames the kernel allows, as in jupyter_rfb.
    ack_timeout : float
        Seconds after which unacknowledged frames count as lost (a view that went away).
    **kwargs
        Other traits: ``render_threads`` (CPU threads for one frame, default 1; 0 leaves torch's
        setting alone), ``max_requests`` (requests the browser keeps unanswered, default 2).

    Examples
    --------
    >>> w = Interpolator.from_error(s, 0)      # doctest: +SKIP
    >>> w.frame_at([0.5]).prediction           # doctest: +SKIP
    """

    _esm = STATIC / "interpolator.js"
    _css = HERE / "interpolator.css"

    mode = traitlets.Unicode("path").tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    classes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    sliders = traitlets.List(traitlets.Dict()).tag(sync=True)
    panels = traitlets.List(traitlets.Dict()).tag(sync=True)
    markers = traitlets.List(traitlets.Dict()).tag(sync=True)
    values = traitlets.List(traitlets.Float()).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    max_in_flight = traitlets.Int(2).tag(sync=True)
    max_requests = traitlets.Int(2).tag(sync=True)
    ack_timeout = traitlets.Float(2.0)
    render_threads = traitlets.Int(1)

    def __init__(
        self,
        session: DefuseSession,
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
        self._closed = False
        self._frames = FrameQueue()
        check_known_options(type(self), kwargs)
        check_knobs(
            split=split,
            limit=limit,
            scan_points=scan_points,
            max_in_flight=max_in_flight,
            ack_timeout=ack_timeout,
            **kwargs,
        )
        for name in ("data", "device", "classifier", "generator"):
            if not hasattr(session, name):
                raise TypeError(
                    f"session: expected a DefuseSession with .{name}, got {type(session).__name__}"
                )
        self._session = session
        self._scan_points = scan_points
        if region is not None:
            if a is not None or b is not None:
                raise ValueError("region: pass either region= or image/error indices, not both")
            target = targets.region_directions(session, region, k, float(limit), scan_points)
        elif a is None:
            raise ValueError(
                "a: expected an error index, two image indices (a, b) or region=; got nothing"
            )
        elif b is None:
            if split is not None:
                raise ValueError(
                    "split: only used with two image indices (a, b); an error knows its split"
                )
            target = targets.error_path(session, a, scan_points)
        else:
            target = targets.image_path(session, a, b, split or "test", scan_points)
        self._target = target
        super().__init__(
            classes=[str(c) for c in session.data.classes],
            max_in_flight=max_in_flight,
            ack_timeout=ack_timeout,
            **target.traits(),
            **kwargs,
        )
        self.on_msg(self._on_message)

    # ------------------------------------------------------------------ named constructors
    @classmethod
    def from_error(cls, session: DefuseSession, error_index: int, **options: Any) -> Interpolator:
        """Interpolate from an error's source image (position 0) to the error's code (1).

        Parameters
        ----------
        session : DefuseSession
            A session with errors (``s.identify()`` done).
        error_index : int
            An index into ``session.errors``.
        **options
            ``scan_points``, ``max_in_flight``, ``ack_timeout`` and the other traits.
        """
        return cls(session, error_index, **options)

    @classmethod
    def between(
        cls, session: DefuseSession, a: int, b: int, *, split: str = "test", **options: Any
    ) -> Interpolator:
        """Interpolate between the codes of dataset images ``a`` (0) and ``b`` (1) of ``split``.

        ``split`` is ``"test"`` or ``"train"``; ``options`` as in :meth:`from_error`.
        """
        return cls(session, a, b, split=split, **options)

    @classmethod
    def along_region(
        cls,
        session: DefuseSession,
        region_id: int,
        *,
        k: int = 3,
        limit: float = 3.0,
        **options: Any,
    ) -> Interpolator:
        """``k`` sliders along a region's leading principal axes, ``-limit..limit`` sd each.

        ``region_id`` is a region id of ``session.regions``; ``options`` as in :meth:`from_error`.
        """
        return cls(session, region=region_id, k=k, limit=limit, **options)

    @traitlets.validate("max_in_flight", "max_requests", "ack_timeout", "render_threads")
    def _check_knob(self, proposal: Any) -> Any:
        check_knobs(**{proposal["trait"].name: proposal["value"]})
        return proposal["value"]

    # ------------------------------------------------------------------ retarget
    @property
    def error_index(self) -> int | None:
        """The error shown (an index into ``session.errors``), None in pair or region mode."""
        return self._target.error_index

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (requests then raise RuntimeError)."""
        return self._closed

    def set_error(self, index: int) -> None:
        """Show error ``index`` of ``session.errors`` instead (any mode becomes the error path).

        The slider goes back to 0 and the frame there is sent at once (a request of the view
        ``"kernel"``, under the usual frame protocol), so an open view shows the new error
        without waiting for the person to move the slider. A request still pending for the old
        target is dropped. Raises ValueError for a bad index (nothing changes then) and
        RuntimeError once the view is closed.
        """
        self._check_open()
        target = targets.error_path(self._session, index, self._scan_points)  # raises first
        self._target = target
        self._frames.pending = None
        self.error = ""
        with self.hold_sync():
            for name, value in target.traits().items():
                setattr(self, name, value)
        self.submit(self.values)

    # ------------------------------------------------------------------ frames
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Interpolator: this view is closed; create a new one")

    def check_values(self, values: Any) -> tuple[float, ...]:
        """Validate slider positions (one per slider, finite, within each slider's range)."""
        return self._target.check_values(values)

    def code_at(self, values: Any) -> torch.Tensor:
        """Return the latent code (d,) on the session device for slider positions ``values``."""
        return self._target.code_at(self.check_values(values))

    def frame_at(self, values: Any) -> Frame:
        """Decode and classify the frame at ``values`` (one code) without sending it."""
        self._check_open()
        vals = self.check_values(values)
        pixels, probs = self._render(self._target.code_at(vals))
        return Frame(vals, pixels, probs)

    def _render(self, code: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return targets.render(self._session, code, self.render_threads)

    @property
    def last_values(self) -> tuple[float, ...] | None:
        """Slider positions of the newest frame sent (None before the first frame)."""
        last = self._frames.last_sent
        return None if last is None else last.values

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet acknowledged."""
        return self._frames.in_flight

    @property
    def stats(self) -> dict[str, Any]:
        """Kernel-side counters of the frame protocol (and the median render time in ms)."""
        return self._frames.stats

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
        return self._frames.submit(vals, request_id, timestamp, str(view)) and self._pump()

    def acknowledge(self, seq: int) -> None:
        """Record that the browser received frame ``seq`` (and so every earlier frame)."""
        self._check_open()
        self._frames.acknowledge(seq)
        self._pump()

    def show(self, *values: float) -> bool:
        """Move the sliders to ``values`` from Python and send that frame (as a request)."""
        vals = self.check_values(list(values))
        self.values = list(vals)
        return self.submit(vals)

    def _pump(self) -> bool:
        req = self._frames.take(self.max_in_flight, self.ack_timeout)
        if req is None:
            return False
        start_ms = time.time() * 1e3
        t0 = time.perf_counter()
        pixels, probs = self._render(self._target.code_at(req.values))
        seq = self._frames.sent(req, (time.perf_counter() - t0) * 1e3)
        image = array_to_json(pixels)
        assert image is not None
        buffer = image.pop("buffer")
        content = {
            "type": "frame",
            "seq": seq,
            "id": req.id,
            "t": req.t,
            "view": req.view,
            "values": list(req.values),
            "image": image,
            "probs": [round(float(p), 5) for p in probs],
            "prediction": int(np.argmax(probs)),
            "stats": self.stats,
            # wall-clock ms (Unix epoch): request received, render started, frame sent
            "kernel_ms": [req.received_ms, start_ms, time.time() * 1e3],
        }
        self.send(content, buffers=[buffer])
        return True

    # ------------------------------------------------------------------ browser side
    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") not in ("request", "ack"):
            return
        try:
            if content["type"] == "ack":
                self.acknowledge(content.get("seq"))  # type: ignore[arg-type]
                return
            try:
                self.submit(
                    content.get("values"),
                    request_id=content.get("id"),
                    timestamp=content.get("t", 0.0),
                    view=str(content.get("view", "browser")),
                )
            finally:  # the ack (newest frame received) after the submit: a request that the
                if content.get("ack"):  # new one supersedes is then never rendered
                    self.acknowledge(content["ack"])
            if self.error:
                self.error = ""
        except (ValueError, RuntimeError) as exc:
            if content["type"] == "request":
                self._frames.reject()
            if not self._closed:
                self.error = str(exc)

    def close(self) -> None:
        """Close the view: pending requests are dropped and later requests raise RuntimeError."""
        self._closed = True
        self._frames.pending = None
        super().close()

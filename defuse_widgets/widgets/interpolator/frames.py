"""The kernel side of the interpolator's frame protocol, without a widget (as in jupyter_rfb).

The browser sends its latest slider values as requests; this queue keeps one pending request (the
newest wins: an older pending one is counted as ``superseded``, one whose id is not newer than the
last seen id of its view as ``stale``) and hands it out for rendering once fewer than
``max_in_flight`` frames are unacknowledged. Acknowledgements are cumulative (frame ``seq`` and
every earlier one); frames unacknowledged for longer than ``ack_timeout`` seconds count as
``lost``, so a view that went away cannot stall the widget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

COUNTERS = ("received", "rendered", "superseded", "stale", "rejected", "lost", "peak_in_flight")


@dataclass(frozen=True)
class Request:
    """One request for a frame: slider ``values`` from ``view``, input time ``t`` (page ms)."""

    id: int
    t: float
    values: tuple[float, ...]
    view: str
    received_ms: float  # wall clock (Unix epoch ms) when the kernel got it


class FrameQueue:
    """Back-pressure bookkeeping of one widget: pending request, frames sent and acknowledged.

    Examples
    --------
    >>> q = FrameQueue()
    >>> q.submit((0.5,), None, 0.0, "kernel")
    True
    >>> req = q.take(max_in_flight=2, ack_timeout=2.0)
    >>> q.sent(req, render_ms=1.0)
    1
    >>> q.in_flight
    1
    """

    def __init__(self) -> None:
        self.pending: Request | None = None
        self.last_sent: Request | None = None
        self._last_ids: dict[str, int] = {}
        self._sent = 0
        self._acked = 0
        self._sent_at: dict[int, float] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._render_ms: list[float] = []

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet acknowledged."""
        return self._sent - self._acked

    def submit(self, values: tuple[float, ...], request_id: Any, timestamp: Any, view: str) -> bool:
        """Make ``values`` the pending request; False when its id is stale (then dropped).

        ``request_id`` None takes the next id of ``view``. Raises ValueError for a non-integer
        id or a non-finite timestamp (nothing changes then).
        """
        if request_id is None:
            request_id = self._last_ids.get(view, 0) + 1
        if isinstance(request_id, bool) or not isinstance(request_id, (int, np.integer)):
            raise ValueError(f"request_id: expected an integer, got {request_id!r}")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise ValueError(f"timestamp: expected a finite number (ms), got {timestamp!r}")
        if not np.isfinite(timestamp):
            raise ValueError(f"timestamp: expected a finite number (ms), got {timestamp!r}")
        if int(request_id) <= self._last_ids.get(view, -1):
            self._counts["stale"] += 1
            return False
        self._last_ids[view] = int(request_id)
        self._counts["received"] += 1
        if self.pending is not None:
            self._counts["superseded"] += 1
        self.pending = Request(int(request_id), float(timestamp), values, view, time.time() * 1e3)
        return True

    def acknowledge(self, seq: Any) -> None:
        """Record that the browser received frame ``seq`` and so consumed every earlier one."""
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or seq < 0:
            raise ValueError(f"ack: expected a non-negative frame number, got {seq!r}")
        if seq > self._sent:
            raise ValueError(f"ack: frame {seq} was never sent (last sent: {self._sent})")
        for s in range(self._acked + 1, int(seq) + 1):
            self._sent_at.pop(s, None)
        self._acked = max(self._acked, int(seq))

    def take(self, max_in_flight: int, ack_timeout: float) -> Request | None:
        """Remove and return the pending request when a frame slot is free (else None)."""
        if self.pending is None:
            return None
        if self.in_flight >= max_in_flight:
            oldest = self._sent_at.get(self._acked + 1)
            if oldest is None or time.monotonic() - oldest < ack_timeout:
                return None
            # the browser went away without acknowledging: count those frames lost, carry on
            self._counts["lost"] += self.in_flight
            self._sent_at.clear()
            self._acked = self._sent
        req, self.pending = self.pending, None
        return req

    def sent(self, req: Request, render_ms: float) -> int:
        """Record that the frame for ``req`` is sent; returns its frame number ``seq``."""
        self._render_ms.append(render_ms)
        if len(self._render_ms) > 1000:
            del self._render_ms[:500]
        self._sent += 1
        self.last_sent = req
        self._sent_at[self._sent] = time.monotonic()
        self._counts["rendered"] += 1
        self._counts["peak_in_flight"] = max(self._counts["peak_in_flight"], self.in_flight)
        return self._sent

    def reject(self) -> None:
        """Count a request or ack from the browser that was refused."""
        self._counts["rejected"] += 1

    @property
    def stats(self) -> dict[str, Any]:
        """Counters of the protocol, frames sent/acknowledged and the median render time (ms)."""
        r = sorted(self._render_ms)
        return {
            **self._counts,
            "sent": self._sent,
            "acked": self._acked,
            "in_flight": self.in_flight,
            "pending": int(self.pending is not None),
            "render_ms_p50": r[len(r) // 2] if r else None,
        }

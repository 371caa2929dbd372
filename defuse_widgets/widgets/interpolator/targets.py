"""What the interpolator's sliders move through: a straight path or a region's principal axes.

One builder per mode, each returning a :class:`Target` (the codes it needs on the session's device,
and the title, sliders, flip markers and panels the widget shows). Builders check their input and
raise ValueError naming the argument before any decoding; they never touch a widget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from defuse_widgets.imaging import to_uint8
from defuse_widgets.models import interpolation as interp
from defuse_widgets.session.session import DefuseSession as Session
from defuse_widgets.widgets.common.codec import array_to_json


@dataclass(frozen=True)
class Frame:
    """One rendered frame: ``pixels`` (H, W, C) uint8, ``probs`` (K,) float32, ``prediction``."""

    values: tuple[float, ...]
    pixels: np.ndarray
    probs: np.ndarray

    @property
    def prediction(self) -> int:
        """The predicted class (index of the largest probability)."""
        return int(np.argmax(self.probs))


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


@dataclass(frozen=True)
class Target:
    """Slider specs, flip markers, panels and title of one mode, and how positions become codes.

    ``mode`` is ``"path"`` (one slider 0..1 from ``start`` to ``end``) or ``"directions"`` (one
    slider per principal axis, in standard deviations from ``mean``).
    """

    mode: str
    title: str
    sliders: list[dict[str, Any]]
    markers: list[dict[str, Any]]
    panels: list[dict[str, Any]]
    codes: dict[str, torch.Tensor] = field(repr=False)
    error_index: int | None = None

    def traits(self) -> dict[str, Any]:
        """Return the widget's synced state for this target, sliders at their start."""
        return {
            "mode": self.mode,
            "title": self.title,
            "sliders": self.sliders,
            "markers": self.markers,
            "panels": self.panels,
            "values": [0.0] * len(self.sliders),
        }

    def check_values(self, values: Any) -> tuple[float, ...]:
        """Slider positions as floats: one per slider, finite, each within its slider's range."""
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [values]
        n = len(self.sliders)
        if not isinstance(values, (list, tuple, np.ndarray)):
            raise ValueError(f"values: expected a list of {n} slider position(s), got {values!r}")
        if len(values) != n:
            raise ValueError(f"values: expected {n} slider position(s), got {len(values)}")
        return tuple(
            interp.check_position(f"values[{j}] ({sl['label']})", v, sl["min"], sl["max"])
            for j, (v, sl) in enumerate(zip(values, self.sliders))
        )

    def code_at(self, values: Sequence[float]) -> torch.Tensor:
        """Return the latent code (d,) on the session's device at checked slider ``values``."""
        c = self.codes
        if self.mode == "path":
            return interp.lerp(c["start"], c["end"], values[0])
        return interp.direction_codes(c["mean"], c["dirs"], c["scales"], list(values))


@torch.inference_mode()
def render(session: Session, code: torch.Tensor, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and classify one code (d,): pixels (H, W, C) uint8 and probabilities (K,) float32.

    One device -> host copy (the decoded image and the probabilities together); ``threads``: CPU
    threads for the frame (see :func:`_cpu_threads`).
    """
    with _cpu_threads(torch.device(session.device), threads):
        image = session.generator.decode(code.unsqueeze(0))  # (1, C, H, W) on the device
        probs = session.classifier(image).float().softmax(dim=1)[0]
        host = torch.cat([image.reshape(-1).float(), probs]).cpu().numpy()
    n = image[0].numel()
    return to_uint8(host[:n].reshape(image.shape))[0], host[n:].astype(np.float32)


def _classes(session: Session) -> list[str]:
    return [str(c) for c in session.data.classes]


def _index(name: str, value: Any, n: int, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer index into {what}, got {value!r}")
    if not 0 <= int(value) < n:
        raise ValueError(f"{name}: expected an index in [0, {n - 1}] of {what}, got {value}")
    return int(value)


def _on_device(session: Session, codes: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(codes).to(torch.device(session.device), torch.float32)


def _panels(labels: list[str], images: torch.Tensor) -> list[dict[str, Any]]:
    """Panels ``{"label", "image"}`` of images (n, C, H, W), as uint8 (H, W, C) buffers."""
    pixels = to_uint8(images)
    return [{"label": lab, "image": array_to_json(p)} for lab, p in zip(labels, pixels)]


def _markers(scans: list[interp.PathScan], classes: list[str], unit: str) -> list[dict[str, Any]]:
    """One marker per prediction flip: slider index, position and a sentence for it."""
    fmt = "{:.2f}" if unit == "" else "{:+.2f} sd"
    return [
        {
            "slider": j,
            "position": f.position,
            "text": f"{classes[f.before]} → {classes[f.after]} at {fmt.format(f.position)}",
        }
        for j, scan in enumerate(scans)
        for f in scan.flips
    ]


def _path(
    session: Session,
    start: torch.Tensor,
    end: torch.Tensor,
    scan_points: int,
    title: str,
    panels: list[dict[str, Any]],
    error_index: int | None = None,
) -> Target:
    scan = interp.scan_path(
        session.generator.decode, session.classifier, start, end, num=scan_points
    )
    return Target(
        mode="path",
        title=title,
        sliders=[{"label": "Interpolation", "min": 0.0, "max": 1.0, "step": 0.001}],
        markers=_markers([scan], _classes(session), ""),
        panels=panels,
        codes={"start": start, "end": end},
        error_index=error_index,
    )


def error_path(session: Session, error_index: Any, scan_points: int) -> Target:
    """From the code of error ``error_index``'s source image (0) to the error's code (1)."""
    errors = getattr(session, "errors", None)
    if errors is None:
        raise ValueError("error_index: the session has no errors yet; run s.identify() first")
    n = len(errors.codes)
    i = _index("error_index", error_index, n, f"{n} errors")
    split = str(getattr(errors, "split", "test"))
    x, _ = session.data.split(split)
    src = int(errors.source_index[i])
    source = x[src : src + 1]
    start = _on_device(session, session.encode(source))[0]
    end = _on_device(session, errors.codes[i])
    decoded = session.decode(torch.stack([start, end]))
    classes = _classes(session)
    true, pred = int(errors.true_label[i]), int(errors.pred_label[i])
    title = (
        f"Error {i}: true {classes[true]}, predicted {classes[pred]} "
        f"({split} image {src} → error code)"
    )
    labels = ["Source image", "Reconstruction", "Decoded error"]
    panels = _panels(labels, torch.cat([source.float(), decoded]))
    return _path(session, start, end, scan_points, title, panels, error_index=i)


def image_path(session: Session, a: Any, b: Any, split: str, scan_points: int) -> Target:
    """From the code of image ``a`` of ``split`` (0) to the code of image ``b`` (1)."""
    x, y = session.data.split(split)
    ia = _index("a", a, len(x), f"the {len(x)} {split} images")
    ib = _index("b", b, len(x), f"the {len(x)} {split} images")
    images = x[[ia, ib]]
    codes = _on_device(session, session.encode(images))
    recon = session.decode(codes)
    classes = _classes(session)
    title = (
        f"{split} image {ia} ({classes[int(y[ia])]}) → {split} image {ib} ({classes[int(y[ib])]})"
    )
    labels = ["Image A", "Reconstruction A", "Reconstruction B", "Image B"]
    panels = _panels(labels, torch.cat([images[:1].float(), recon, images[1:].float()]))
    return _path(session, codes[0], codes[1], scan_points, title, panels)


def region_directions(
    session: Session, region_id: Any, k: int, limit: float, scan_points: int
) -> Target:
    """Sliders along the ``k`` leading principal axes of a region, ``-limit..limit`` sd."""
    regions = getattr(session, "regions", None)
    if regions is None:
        raise ValueError("region: the session has no regions yet; run s.distill() first")
    ids = [int(r.id) for r in regions.regions]
    if isinstance(region_id, bool) or not isinstance(region_id, (int, np.integer)):
        raise ValueError(f"region: expected an integer region id, got {region_id!r}")
    if int(region_id) not in ids:
        raise ValueError(f"region: expected one of the region ids {ids}, got {region_id}")
    reg = regions.regions[ids.index(int(region_id))]
    mean = _on_device(session, reg.mean)
    dirs, scales = interp.principal_directions(_on_device(session, reg.covariance), k)
    gen, clf = session.generator, session.classifier
    scans = interp.scan_directions(gen.decode, clf, mean, dirs, scales, limit, scan_points)
    classes = _classes(session)
    what = ""
    transition = getattr(reg, "transition", None)
    if transition is not None:
        tl, pl = (int(v) for v in transition)
        if 0 <= tl < len(classes) and 0 <= pl < len(classes):
            what = f": true {classes[tl]}, predicted {classes[pl]}"
    return Target(
        mode="directions",
        title=f"Region {int(region_id)}{what} — principal directions (sd from the mean)",
        sliders=[
            {"label": f"Direction {j + 1}", "min": -limit, "max": limit, "step": 0.01}
            for j in range(k)
        ],
        markers=_markers(scans, classes, "sd"),
        panels=_panels(["Region mean"], session.decode(mean[None])),
        codes={"mean": mean, "dirs": dirs, "scales": scales},
    )

"""Latent interpolation: paths between codes, flip points along a path, region directions.

Pure functions over tensors (no widget imports). They run on whatever device their inputs live on;
only the scans copy to the host: their class probabilities (n, K) and a small summary of the flips.

Examples
--------
>>> start, end = torch.zeros(4), torch.ones(4)
>>> lerp(start, end, 0.25)
tensor([0.2500, 0.2500, 0.2500, 0.2500])
>>> interpolation_path(start, end, num=3)[1][:, 0]
tensor([0.0000, 0.5000, 1.0000])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from defuse_widgets.models.inference import batched
from defuse_widgets.utils.checks import in_range, is_number, positive_int, positive_number

Decode = Callable[[torch.Tensor], torch.Tensor]
Classify = Callable[[torch.Tensor], torch.Tensor]


def _as_code(name: str, code: torch.Tensor) -> torch.Tensor:
    code = torch.as_tensor(code)
    if code.ndim == 2 and code.shape[0] == 1:
        code = code[0]
    if code.ndim != 1 or code.numel() == 0:
        raise ValueError(f"{name}: expected one latent code of shape (d,), got {tuple(code.shape)}")
    if not code.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point code, got dtype {code.dtype}")
    if not bool(torch.isfinite(code).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return code


def check_position(name: str, value: float, low: float, high: float) -> float:
    """Return ``value`` as a float when it is finite and in ``[low, high]``, else raise ValueError.

    >>> check_position("t", 0.5, 0.0, 1.0)
    0.5
    """
    if is_number(value) and not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number in [{low:g}, {high:g}], got {value}")
    return in_range(name, float(value) if is_number(value) else value, low, high)


def lerp(start: torch.Tensor, end: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Codes on the straight line from ``start`` (t=0) to ``end`` (t=1).

    Parameters
    ----------
    start, end : (d,) latent codes on one device.
    t : a float, giving one code (d,), or a tensor of positions (n,), giving codes (n, d).
    """
    start, end = _as_code("start", start), _as_code("end", end)
    if start.shape != end.shape:
        raise ValueError(
            f"end: expected shape {tuple(start.shape)} like start, got {tuple(end.shape)}"
        )
    if isinstance(t, torch.Tensor):
        tt = t.to(device=start.device, dtype=start.dtype)
        if tt.ndim == 0:
            return start + tt * (end - start)
        return start.unsqueeze(0) + tt.reshape(-1, 1) * (end - start).unsqueeze(0)
    return start + float(t) * (end - start)


def interpolation_path(
    start: torch.Tensor, end: torch.Tensor, num: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` evenly spaced positions in [0, 1] and their codes, shapes (num,) and (num, d)."""
    positive_int("num", num, minimum=2)
    start = _as_code("start", start)
    t = torch.linspace(0.0, 1.0, num, device=start.device, dtype=start.dtype)
    return t, lerp(start, end, t)


def principal_directions(covariance: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``k`` leading principal axes of a covariance and their standard deviations.

    Parameters
    ----------
    covariance : (d, d) symmetric positive semi-definite matrix.
    k : number of directions, 1 <= k <= d.

    Returns
    -------
    directions : (k, d) unit vectors, largest variance first; each one's sign is fixed so that its
        largest-magnitude coordinate is positive (deterministic across runs).
    scales : (k,) standard deviations along them (square roots of the eigenvalues, >= 0).
    """
    cov = torch.as_tensor(covariance)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] == 0:
        raise ValueError(f"covariance: expected a square (d, d) matrix, got {tuple(cov.shape)}")
    if not cov.is_floating_point() or not bool(torch.isfinite(cov).all()):
        raise ValueError("covariance: expected finite floating-point values")
    d = cov.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"k: expected an integer in [1, {d}], got {k!r}")
    sym = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(sym.double())
    order = torch.argsort(evals, descending=True)[:k]
    dirs = evecs[:, order].T  # (k, d)
    pivot = dirs.abs().argmax(dim=1)
    signs = torch.sign(dirs.gather(1, pivot.unsqueeze(1)))
    signs[signs == 0] = 1.0
    dirs = dirs * signs
    scales = evals[order].clamp_min(0.0).sqrt()
    return dirs.to(cov.dtype), scales.to(cov.dtype)


def direction_codes(
    mean: torch.Tensor,
    directions: torch.Tensor,
    scales: torch.Tensor,
    coefficients: torch.Tensor | Sequence[float],
) -> torch.Tensor:
    """Codes ``mean + sum_i c_i * scale_i * direction_i``: coefficients in standard deviations.

    Parameters
    ----------
    mean : (d,) region mean.
    directions : (k, d) unit directions; scales : (k,) standard deviations along them.
    coefficients : (k,) giving one code (d,), or (n, k) giving codes (n, d).
    """
    mean = _as_code("mean", mean)
    coef = torch.as_tensor(coefficients, dtype=mean.dtype, device=mean.device)
    k = directions.shape[0]
    if directions.ndim != 2 or directions.shape[1] != mean.shape[0] or scales.shape != (k,):
        raise ValueError(
            f"directions: expected (k, {mean.shape[0]}) with scales (k,), got "
            f"{tuple(directions.shape)} and {tuple(scales.shape)}"
        )
    if coef.shape[-1:] != (k,) or coef.ndim > 2:
        raise ValueError(
            f"coefficients: expected shape ({k},) or (n, {k}), got {tuple(coef.shape)}"
        )
    steps = (coef * scales.to(coef)) @ directions.to(coef)
    return mean + steps


@dataclass(frozen=True)
class Flip:
    """A change of the predicted class between two neighbouring points of a scan.

    ``position`` is the midpoint between the two points, in the scan's own units (0..1 along a
    path, standard deviations along a direction); ``before``/``after`` are class indices.
    """

    position: float
    before: int
    after: int


@dataclass(frozen=True)
class PathScan:
    """Classifier output at evenly spaced points of a path: positions (n,), probs (n, K) (CPU)."""

    positions: torch.Tensor
    probs: torch.Tensor
    flips: tuple[Flip, ...]

    @property
    def predictions(self) -> torch.Tensor:
        """(n,) predicted class at each point."""
        return self.probs.argmax(dim=1)


def find_flips(positions: torch.Tensor, predictions: torch.Tensor) -> tuple[Flip, ...]:
    """Where consecutive predictions differ: midpoints of each change, in order.

    >>> find_flips(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([3, 3, 8]))
    (Flip(position=0.75, before=3, after=8),)
    """
    if positions.ndim != 1 or predictions.shape != positions.shape:
        raise ValueError(
            f"predictions: expected shape {tuple(positions.shape)} like positions, "
            f"got {tuple(predictions.shape)}"
        )
    pos = positions.detach().cpu().double()
    pred = predictions.detach().cpu().long()
    change = torch.nonzero(pred[1:] != pred[:-1]).flatten().tolist()
    return tuple(
        Flip(float((pos[i] + pos[i + 1]) / 2), int(pred[i]), int(pred[i + 1])) for i in change
    )


def scan_codes(
    decode: Decode, classify: Classify, codes: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Decode and classify codes (n, d) in batches on their device; probabilities (n, K) on the CPU.

    Runs under ``torch.inference_mode()`` through :func:`~defuse_widgets.models.inference.batched`.
    """
    if codes.ndim != 2 or len(codes) == 0:
        raise ValueError(f"codes: expected a non-empty (n, d) tensor, got {tuple(codes.shape)}")
    return batched(
        lambda chunk: classify(decode(chunk)).float().softmax(dim=1),
        codes,
        device=codes.device,
        batch_size=batch_size,
    )


def scan_path(
    decode: Decode,
    classify: Classify,
    start: torch.Tensor,
    end: torch.Tensor,
    num: int = 64,
) -> PathScan:
    """Classify ``num`` points of the straight path ``start`` -> ``end`` in one batched pass.

    ``decode`` maps codes (n, d) to images, ``classify`` images to logits (n, K); both run on the
    codes' device under ``torch.inference_mode()``; the scan itself is on the CPU.
    """
    t, codes = interpolation_path(start, end, num)
    probs = scan_codes(decode, classify, codes)
    t = t.cpu()
    return PathScan(t, probs, find_flips(t, probs.argmax(dim=1)))


def scan_directions(
    decode: Decode,
    classify: Classify,
    mean: torch.Tensor,
    directions: torch.Tensor,
    scales: torch.Tensor,
    limit: float = 3.0,
    num: int = 64,
) -> list[PathScan]:
    """Scan each direction alone from ``-limit`` to ``+limit`` standard deviations (others at 0).

    All ``k * num`` codes are decoded and classified in one batched pass; one :class:`PathScan`
    per direction, with positions in standard deviations.
    """
    positive_int("num", num, minimum=2)
    positive_number("limit", limit)
    mean = _as_code("mean", mean)
    k = directions.shape[0]
    pos = torch.linspace(-limit, limit, num, device=mean.device, dtype=mean.dtype)
    coef = torch.zeros(k, num, k, device=mean.device, dtype=mean.dtype)
    idx = torch.arange(k, device=mean.device)
    coef[idx, :, idx] = pos
    codes = direction_codes(mean, directions, scales, coef.reshape(k * num, k))
    probs = scan_codes(decode, classify, codes).reshape(k, num, -1)
    pos = pos.cpu()
    return [PathScan(pos, p, find_flips(pos, p.argmax(dim=1))) for p in probs]

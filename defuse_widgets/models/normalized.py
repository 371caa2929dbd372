"""Normalised input for a user's classifier: :class:`Normalized` takes images in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """A classifier that expects normalised input, wrapped to take pixels in [0, 1].

    Defuse's generator decodes, and its datasets hold, images with pixels in [0, 1]; most real
    classifiers were trained on ``(x - mean) / std`` per channel (torchvision's
    ``transforms.Normalize``). ``Normalized(model, mean, std)`` applies that normalisation
    before ``model``, so the session, search, fine-tuning rounds and regression suites all give
    it [0, 1] images. ``mean`` and ``std`` are buffers: they move with the module and are in its
    ``state_dict`` (``dw.save_weights`` / ``dw.load_weights`` round-trip them), and fine-tuning
    updates only ``model``'s parameters.

    Parameters
    ----------
    model : nn.Module
        The classifier; returns logits (N, K) for normalised images (N, C, H, W).
    mean, std : float or sequence of float
        Per-channel mean and standard deviation (length C, or one number for every channel),
        as given to ``transforms.Normalize``; ``std`` > 0.

    Examples
    --------
    >>> clf = dw.Normalized(resnet, mean=(0.485, 0.456, 0.406),
    ...                     std=(0.229, 0.224, 0.225))  # doctest: +SKIP
    >>> s = dw.DefuseSession(clf, vae, data)  # doctest: +SKIP
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, model: nn.Module, mean: float | Sequence[float], std: float | Sequence[float]
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model: expected a torch.nn.Module returning logits, got {type(model).__name__}"
            )
        m, s = _channels("mean", mean), _channels("std", std)
        if len(m) != len(s) and 1 not in (len(m), len(s)):
            raise ValueError(
                f"mean, std: expected one value per channel in each, got {len(m)} means and "
                f"{len(s)} standard deviations"
            )
        if not bool((s > 0).all()):
            raise ValueError(f"std: expected positive values, got {s.tolist()}")
        self.model = model
        self.register_buffer("mean", m.view(1, -1, 1, 1))
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of ``model`` for images ``x`` (N, C, H, W) in [0, 1]."""
        channels = self.mean.shape[1] if self.mean.shape[1] > 1 else self.std.shape[1]
        if channels > 1 and x.shape[1] != channels:
            raise ValueError(
                f"x: expected images with {channels} channels (as mean/std have), got shape "
                f"{tuple(x.shape)}"
            )
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _channels(name: str, value: float | Sequence[float]) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{name}: expected a number or one number per channel, got {value!r}"
        ) from exc
    if len(t) == 0 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite numbers, one per channel, got {value!r}")
    return t

"""Correct: fine-tuning rounds on labeled regions, evaluation, and exact weight snapshots."""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import seeded

OPTIMIZERS = ("sgd", "adam")
StepCallback = Callable[[int, int, float], None]


class CancelToken:
    """Set from any thread to stop a fine-tuning round between steps.

    Examples
    --------
    >>> token = CancelToken(); token.cancel(); token.cancelled
    True
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Cancelled(Exception):
    """Raised inside a round when its token is cancelled."""


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """An exact copy of the model's state (parameters and buffers) on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`snapshot` back, bit for bit."""
    model.load_state_dict(state, strict=True)


@dataclass
class RoundSettings:
    steps: int = 300
    lam: float = 1.0
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    scale: float | None = None
    seed: int = 0

    def check(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("lam", "lr", "scale"):
            value = getattr(self, name)
            if name == "scale" and value is None:
                continue
            if not (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and 0 < value < math.inf
            ):
                raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")


def fine_tune(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    region_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    settings: RoundSettings,
    cancel: CancelToken | None = None,
    callback: StepCallback | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a copy of ``model`` for one round and return its final state and per-step losses.

    Loss per step: CE(training batch) + ``lam`` x CE(region batch), where ``region_batch(n)``
    returns ``n`` freshly decoded region images and their labels on the model's device. The live
    model is never touched, so a cancelled round (``Cancelled`` is raised) leaves it as it was.
    """
    settings.check()
    dev = next(model.parameters()).device
    work = copy.deepcopy(model).train()
    params = [p for p in work.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
        if settings.optimizer == "sgd"
        else torch.optim.Adam(params, lr=settings.lr)
    )
    losses: list[float] = []
    with seeded(settings.seed) as gen:
        for step in range(settings.steps):
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"cancelled after {step} of {settings.steps} steps")
            idx = torch.randint(len(x_train), (settings.batch_size,), generator=gen)
            xb, yb = x_train[idx].to(dev), y_train[idx].to(dev)
            xr, yr = region_batch(settings.batch_size)
            loss = F.cross_entropy(work(xb), yb) + settings.lam * F.cross_entropy(work(xr), yr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step + 1, settings.steps, losses[-1])
    return snapshot(work), losses


def accuracy_by_class(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    """Per-class accuracy (NaN for a class without examples)."""
    out = []
    for c in range(num_classes):
        mask = y == c
        out.append(float((pred[mask] == c).float().mean()) if mask.any() else float("nan"))
    return out

"""Correct: fine-tuning rounds on labeled regions, and exact weight snapshots."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import one_of, positive_int, positive_number
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
        """Ask the round to stop before its next step."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()


def check_hooks(cancel: Any, callback: Any) -> None:
    """Refuse a ``cancel`` that is not a CancelToken-like object and a non-callable ``callback``."""
    if cancel is not None and not isinstance(getattr(cancel, "cancelled", None), bool):
        raise TypeError(
            "cancel: expected a CancelToken (make one with CancelToken() and call its cancel() "
            f"from another thread to stop the round), got {cancel!r}"
        )
    if callback is not None and not callable(callback):
        raise TypeError(
            f"callback: expected a callable(step, steps, loss) or None, got {callback!r}"
        )


class Cancelled(Exception):
    """Raised inside a round when its token is cancelled."""


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """An exact copy of the model's state (parameters and buffers) on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`snapshot` back, bit for bit."""
    model.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class RoundSettings:
    """The knobs of one fine-tuning round, checked when made (see :meth:`DefuseSession.correct`).

    ``scale`` None means :data:`~defuse_widgets.distill.DEFAULT_SCALE`.
    """

    steps: int = 300
    lam: float = 1.0
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    scale: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first knob out of range."""
        positive_int("steps", self.steps)
        positive_int("batch_size", self.batch_size)
        positive_number("lam", self.lam)
        positive_number("lr", self.lr)
        if self.scale is not None:
            positive_number("scale", self.scale)
        one_of("optimizer", self.optimizer, OPTIMIZERS)


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

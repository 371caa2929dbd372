"""Training one setting of a round: the fine-tuning loop (task loss + region loss + keep term),
the moving average and blends of its weights, cancelling, and exact weight snapshots."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from defuse_widgets.correction.samples import Batches
from defuse_widgets.correction.settings import RoundSettings
from defuse_widgets.utils.seeding import seeded

StepCallback = Callable[[int, int, float], None]
TEMPERATURE = 2.0  # softens both distributions of the keep term (Hinton et al.'s distillation)


class Checker(Protocol):
    """Checks the copy every few steps (e.g. a
    :class:`~defuse_widgets.correction.selection.EarlyStopping`)."""

    best_state: dict[str, torch.Tensor] | None

    def check(self, step: int, model: nn.Module, blend: float = 1.0) -> bool: ...


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


def fine_tune(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    region_batch: Batches,
    settings: RoundSettings,
    cancel: CancelToken | None = None,
    callback: StepCallback | None = None,
    outside: torch.Tensor | None = None,
    checker: Checker | None = None,
    blends: tuple[float, ...] = (),
    weights: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a copy of ``model`` for one round and return the state it keeps and per-step losses.

    Loss per step: CE(training batch) + ``lam`` x CE(region batch) + ``keep`` x KL(start model
    || copy) at temperature 2 on the batch's images with ``outside`` True (all but those inside
    a labeled region that carry its label; None: all). ``region_batch(n)`` returns up to
    ``n`` freshly decoded region images and their labels on the model's device (none: the step
    has no region term). ``weights`` (n,): how often each training image is drawn relative to
    the others (None: uniformly).
    With ``settings.ema`` > 0 the copy that is checked and kept is the moving average of the
    trained weights (:class:`WeightAverage`).
    ``checker.check(step, copy)`` runs every ``settings.every`` steps; when it says stop, the
    round ends, and its ``best_state`` (None: the starting weights) is what the round keeps.
    Then the last weights blended with the starting ones (``blends``: their shares) are checked.
    The live model is never touched, so a cancelled round (``Cancelled`` is raised) leaves it
    as it was.
    """
    dev = next(model.parameters()).device
    work = copy.deepcopy(model)
    if settings.update == "last":
        freeze_all_but_last(work)
    training_mode(work, settings)
    average = WeightAverage(work, settings.ema) if settings.ema > 0 else None
    teacher = copy.deepcopy(model).eval() if settings.keep > 0 else None
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
            idx = (
                torch.randint(len(x_train), (settings.batch_size,), generator=gen)
                if weights is None
                else torch.multinomial(weights, settings.batch_size, True, generator=gen)
            )
            xb, yb = x_train[idx].to(dev), y_train[idx].to(dev)
            xr, yr = region_batch(settings.batch_size) if settings.lam > 0 else (xb[:0], yb[:0])
            logits = work(xb)
            loss = F.cross_entropy(logits, yb)
            if len(yr):  # a labeler vetting the samples may have kept none
                loss = loss + settings.lam * F.cross_entropy(work(xr), yr)
            if teacher is not None:
                mask = None if outside is None else outside[idx].to(dev)
                loss = loss + settings.keep * keep_loss(logits, teacher, xb, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update(work)
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step + 1, settings.steps, losses[-1])
            done = step + 1 == settings.steps
            if checker is not None and ((step + 1) % settings.every == 0 or done):
                judged = work.eval() if average is None else average.model
                if checker.check(step + 1, judged):
                    break
                training_mode(work, settings)
    last = work.eval() if average is None else average.model
    if checker is not None:
        for share in blends:
            checker.check(len(losses), blended(model, last, share), share)
    if checker is None:
        return snapshot(last), losses
    if checker.best_state is None:
        return snapshot(model), losses
    return checker.best_state, losses


def freeze_all_but_last(model: nn.Module) -> None:
    """Leave only the parameters of ``model``'s last ``nn.Linear`` layer trainable (ValueError
    when it has none)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(
            "update: 'last' trains the classifier's last nn.Linear layer, and this classifier has "
            "none; use update='all'"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for p in layers[-1].parameters():
        p.requires_grad_(True)


def training_mode(model: nn.Module, settings: RoundSettings) -> None:
    """Put ``model`` in training mode; for ``update="last"`` its normalization layers stay in
    eval mode, so their running statistics (part of the frozen features) do not move."""
    model.train()
    if settings.update == "last":
        for module in model.modules():
            if getattr(module, "track_running_stats", False):
                module.eval()


def blended(start: nn.Module, end: nn.Module, share: float) -> nn.Module:
    """A copy of ``end`` whose parameters are ``share`` of its own and the rest ``start``'s."""
    out = copy.deepcopy(end).eval()
    with torch.no_grad():
        for mine, first in zip(out.parameters(), start.parameters()):
            mine.lerp_(first.detach(), 1.0 - share)
    return out


class WeightAverage:
    """An exponential moving average of a model's weights as it trains, with the usual warm-up
    (the decay after ``t`` updates is ``min(decay, (1 + t) / (10 + t))``, as in TensorFlow's
    ``ExponentialMovingAverage``).

    Why: a few SGD steps on a classifier move the boundaries between similar classes back and
    forth by several points from one step to the next (measured on Fashion-MNIST: +-5 to 10
    points per class on validation, step to step), so any single step judged on validation is
    mostly noise; the average keeps the drift the steps share and damps the jitter.
    Buffers (e.g. batch-norm statistics) are copied from the trained model, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.updates = float(decay), 0
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, trained: nn.Module) -> None:
        """Fold the trained model's current weights into the average."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for mine, theirs in zip(self.model.parameters(), trained.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - decay)
        for buffer, trained_buffer in zip(self.model.buffers(), trained.buffers()):
            buffer.copy_(trained_buffer)


def keep_loss(
    logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean KL(teacher || student) at ``TEMPERATURE`` over the rows of ``mask`` (x T^2, so its
    gradients keep the scale of a cross-entropy); 0 when no row is masked in."""
    with torch.no_grad():
        target = F.softmax(teacher(x) / TEMPERATURE, dim=1)
    kl = F.kl_div(F.log_softmax(logits / TEMPERATURE, dim=1), target, reduction="none").sum(1)
    weight = torch.ones_like(kl) if mask is None else mask.to(kl.dtype)
    return (kl * weight).sum() / weight.sum().clamp_min(1.0) * TEMPERATURE**2

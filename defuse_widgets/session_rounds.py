"""The session's fine-tuning rounds: correct, evaluate, revert.

A mixin of :class:`~defuse_widgets.session.DefuseSession`: the methods run on the session's
classifier, its weight snapshots (one per round, 0 the original) and its history.
"""

from __future__ import annotations

import time

import torch

from . import evaluation
from .correct import (
    Cancelled,
    CancelToken,
    RoundSettings,
    StepCallback,
    check_hooks,
    fine_tune,
    restore,
)
from .critical import deferred_interrupt
from .evaluation import Evaluation, RoundRecord
from .inference import Classes, evaluating
from .session_base import SessionBase

EVAL_SAMPLES = 200


class RoundsMixin(SessionBase):
    """Fine-tuning rounds with exact revert (see :class:`DefuseSession`)."""

    def correct(
        self,
        steps: int = 300,
        lam: float = 1.0,
        lr: float = 0.01,
        batch_size: int = 64,
        optimizer: str = "sgd",
        scale: float | None = None,
        cancel: CancelToken | None = None,
        callback: StepCallback | None = None,
    ) -> RoundRecord:
        """Run one fine-tuning round on the class-labeled regions and return its record.

        Loss = CE(training batch) + ``lam`` x CE(batch of fresh samples from the labeled regions,
        drawn from N(mean, ``scale`` x covariance)). The classifier changes only when the round
        completes; a cancelled round (``cancel.cancel()``) leaves it exactly as before, and so
        does a Ctrl-C (KeyboardInterrupt) before the round is added, after which it is added whole.
        """
        check_hooks(cancel, callback)
        mine = False
        try:
            with self._lock:
                self._check_idle("correct")
                settings = RoundSettings(
                    steps,
                    lam,
                    lr,
                    batch_size,
                    optimizer,
                    momentum=0.9,
                    scale=scale,
                    seed=self.seed + len(self.history),
                )
                targets = self.correctable()
                if not targets:
                    raise RuntimeError(
                        "no region is labeled with a class: label at least one region first"
                    )
                self._running = mine = True
            return self._run_round(settings, targets, cancel, callback)
        finally:
            if mine:
                self._running = False

    def _run_round(
        self,
        settings: RoundSettings,
        targets: dict[int, int],
        cancel: CancelToken | None,
        callback: StepCallback | None,
    ) -> RoundRecord:
        start, base = time.perf_counter(), self.active_round
        draw = self._require_regions().training_sampler(
            targets, settings.scale, settings.seed, self.device
        )

        def region_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            codes, labels = draw(n)
            with torch.no_grad():
                return self.generator.decode(codes).float(), labels

        try:
            state, losses = fine_tune(
                self.classifier,
                self.data.x_train,
                self.training_labels(),
                region_batch,
                settings,
                cancel,
                callback,
            )
        except Cancelled:
            return RoundRecord(None, True, vars(settings), [], time.perf_counter() - start)
        record = RoundRecord(
            None, False, vars(settings), losses, 0.0, None, base, dict(targets),
            len(self._relabels),
        )  # fmt: skip
        self._commit_round(state, record, start)
        return record

    def _commit_round(
        self, state: dict[str, torch.Tensor], record: RoundRecord, start: float
    ) -> None:
        """Evaluate the new weights, then add the round whole (weights, snapshot, history).

        An interrupt while evaluating puts the previous weights back; the bookkeeping itself
        runs with Ctrl-C held back, so the session never has a snapshot without its record.
        """
        with self._lock:
            record.round = self.rounds + 1
            with deferred_interrupt():
                restore(self.classifier, state)
            try:
                record.evaluation = self._evaluate(record.round, EVAL_SAMPLES)
            except BaseException:
                with deferred_interrupt():
                    restore(self.classifier, self._snapshots[self.active_round])
                raise
            record.seconds = time.perf_counter() - start
            with deferred_interrupt():
                self._snapshots.append(state)
                self.active_round = self.rounds
                self.history.append(record)
                self._emit("model")

    def evaluate(self, samples: int = EVAL_SAMPLES) -> Evaluation:
        """Test accuracy (overall, per class) and per labeled region accuracy on held-out decoded
        samples and on real test images the mixture puts in the region with probability > 0.5.

        The real-image figure is the honest measure of a fix; the held-out samples come from a
        stream that fine-tuning never trains on.
        """
        with self._lock:
            return self._evaluate(self.active_round, samples)

    def _evaluate(self, round: int | None, samples: int) -> Evaluation:
        targets = self.correctable() if self.regions is not None else {}
        codes = self.split_codes("test") if targets else None
        return evaluation.evaluate(
            self.classifier,
            self.data.x_test,
            self.data.y_test,
            self.data.num_classes,
            int(round or 0),
            self.regions,
            targets,
            codes,
            samples,
            predict=None if self._ray is None else self._test_classes,
        )

    def _test_classes(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) classes of a whole split on the Ray backend, as ``predict_labels`` gives here."""
        with evaluating(self.classifier):
            return self._run(Classes(self.classifier), images, 1024, whole=True,
                             empty_dtype=torch.long)  # fmt: skip

    @property
    def rounds(self) -> int:
        """Completed fine-tuning rounds (snapshots besides the original)."""
        return len(self._snapshots) - 1

    def revert(self, round: int | None = None, relabels: bool = False) -> None:
        """Restore the original weights (``round=None`` or 0) or a round's, bit for bit.

        Confirmed relabels of training images are kept: they record what a person decided about
        the data, not the model. ``relabels=True`` also undoes them all, so ``revert(None,
        relabels=True)`` returns the session to its exact starting point (weights and labels).
        """
        target = 0 if round is None else round
        if not isinstance(relabels, bool):
            raise TypeError(f"relabels: expected True or False, got {relabels!r}")
        with self._lock:
            if (
                isinstance(target, bool)
                or not isinstance(target, int)
                or not 0 <= target <= self.rounds
            ):
                raise ValueError(
                    f"round: expected None or an integer in [0, {self.rounds}], got {round!r}"
                )
            self._check_idle("revert")
            with deferred_interrupt():
                restore(self.classifier, self._snapshots[target])
                self.active_round = target
                if relabels:
                    self._relabels.load([], replace=True)
        self._emit("model")
        if relabels:
            self._emit("relabels")

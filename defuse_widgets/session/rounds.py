"""The session's fine-tuning rounds: correct, evaluate, revert.

A mixin of :class:`~defuse_widgets.session.session.DefuseSession`: the methods run on the session's
classifier, its weight snapshots (one per round, 0 the original) and its history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from defuse_widgets.correction import evaluation
from defuse_widgets.correction.evaluation import Evaluation, RoundRecord
from defuse_widgets.correction.round import RoundInputs, judge_on_test, run_round
from defuse_widgets.correction.settings import AUTO_GRID, DEFAULTS, EVAL_SAMPLES, RoundSettings
from defuse_widgets.correction.training import CancelToken, StepCallback, check_hooks, restore
from defuse_widgets.models.inference import Classes, evaluating
from defuse_widgets.regions.labels import Labeler, LabelerLike, as_labeler
from defuse_widgets.session.audit import AuditMixin
from defuse_widgets.session.base import LastRound
from defuse_widgets.utils.checks import (
    Boolean,
    Constraints,
    Interval,
    Options,
    check,
    validate_params,
)
from defuse_widgets.utils.critical import deferred_interrupt

CONSTRAINTS: Constraints = {
    "auto": [Boolean()],
    "relabels": [Boolean()],
    "split": [Options(("test", "validation"))],
}
"""The declared checks of the rounds' entry points (``round`` of :meth:`revert` depends on the
rounds made, so it is checked against them when called)."""


class RoundsMixin(AuditMixin):
    """Fine-tuning rounds with exact revert (see :class:`DefuseSession`); a round trains on the
    rows the audit's :meth:`reach` gives each region and on its confirmed relabels."""

    def correct(
        self,
        steps: int = DEFAULTS.steps,
        lam: float = DEFAULTS.lam,
        lr: float = DEFAULTS.lr,
        batch_size: int = DEFAULTS.batch_size,
        optimizer: str = DEFAULTS.optimizer,
        scale: float | None = DEFAULTS.scale,
        cancel: CancelToken | None = None,
        callback: StepCallback | None = None,
        *,
        keep: float = DEFAULTS.keep,
        tolerance: float = DEFAULTS.tolerance,
        early_stopping: bool = DEFAULTS.early_stopping,
        check_every: int | None = DEFAULTS.check_every,
        patience: int = DEFAULTS.patience,
        ema: float = DEFAULTS.ema,
        real_weight: float | None = DEFAULTS.real_weight,
        confidence: float = DEFAULTS.confidence,
        update: str = DEFAULTS.update,
        auto: bool = False,
        labeler: LabelerLike | None = None,
    ) -> RoundRecord:
        """Run one fine-tuning round on the class-labeled regions and return its record.

        Loss = CE(training batch) + ``lam`` x CE(batch of fresh samples from the labeled regions)
        + ``keep`` x KL(round's starting model || model) on the batch's training images, except
        the rows a labeled region reaches (:meth:`reach`) that carry its label (what the round
        means to change).
        Those real images (confirmed relabels included) are drawn as one group per region,
        together half of the draws (``real_weight=None``, as DFR balances groups), or each
        ``real_weight`` times as often as the other training images (a number, JTT's
        upweighting). ``update="last"`` trains only the classifier's last linear layer, the
        features below it frozen (DFR); ``"all"`` every weight; ``"best"`` (the default) both,
        each judged as below, and keeps the one that lifts the regions more and is confirmed
        (``record.settings["update"]`` says which; ``record.grid`` both).
        Samples come from N(mean, scale x covariance), ``scale`` measured per region on the
        validation split (None) or given; draws outside a region's 99% ellipsoid are drawn again
        and decodes the generator calls unnatural are dropped; with a ``labeler`` (a
        :class:`~defuse_widgets.regions.labels.Labeler`: a ``ReferenceModelLabeler``, a classifier
        module such as the one given to :meth:`auto_label`, or a callable ``images -> classes``)
        so are decodes it does not confidently call their region's label (see
        :mod:`~defuse_widgets.correction.samples`).

        With a validation split (see the session's ``validation``) the round trains on the other
        training images, checks every ``check_every`` steps, and keeps its best step: the one
        that most lifts the labeled regions' validation accuracy while no class is harmed: a
        class counts as harmed when its drop is real (the paired interval of McNemar's exact test
        at ``confidence``, on the same validation images before and after, lies above zero) and
        above ``tolerance`` points (on a class of fewer than 41 validation images, too few for an
        interval, when its plain drop is above ``tolerance`` and one image), the overall
        accuracy when its drop is real and above 0.5 point; it stops after
        ``patience`` checks without a better one (``early_stopping=False``: every step, keep the
        last). What is checked and kept is the moving average of the trained weights (decay
        ``ema``; 0: each step's own weights), which damps SGD's step-to-step jitter between
        similar classes; the round's last weights blended with its starting weights
        (:data:`~defuse_widgets.correction.settings.BLENDS`) are judged too. ``auto=True`` runs
        the round once per setting of a small grid of ``lam`` and ``lr`` (``AUTO_GRID``) and
        keeps the best by the same rule. The record says why it stopped, and ``record.harm``
        what it broke on the test split.

        The classifier changes only when the round completes; a cancelled round
        (``cancel.cancel()``) leaves it exactly as before, and so does a Ctrl-C
        (KeyboardInterrupt) before the round is added, after which it is added whole.
        """
        check_hooks(cancel, callback)
        validate_params(CONSTRAINTS, auto=auto)
        judge = None if labeler is None else as_labeler(labeler, "images")
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
                    scale=scale,
                    seed=self.seed + len(self.history),
                    keep=keep,
                    tolerance=tolerance,
                    early_stopping=early_stopping,
                    check_every=check_every,
                    patience=patience,
                    ema=ema,
                    real_weight=real_weight,
                    confidence=confidence,
                    update=update,
                )
                if auto and self.validation is None:
                    raise ValueError(
                        "auto: choosing settings needs a validation split; make the session "
                        "with validation=0.1 (the default) or your own (images, labels)"
                    )
                targets = self.correctable()
                if not targets:
                    raise RuntimeError(
                        "no region is labeled with a class: label at least one region first"
                    )
                self._running = mine = True
            grid = [replace(settings, **g) for g in AUTO_GRID] if auto else [settings]
            return self._run_round(grid, targets, cancel, callback, judge)
        finally:
            if mine:
                self._running = False

    def _run_round(
        self,
        grid: list[RoundSettings],
        targets: dict[int, int],
        cancel: CancelToken | None,
        callback: StepCallback | None,
        labeler: Labeler | None = None,
    ) -> RoundRecord:
        base = self.active_round
        result = run_round(self._round_inputs(targets, labeler), grid, cancel, callback)
        record = result.record
        if result.state is None:
            return record
        record.base_round, record.relabels = base, len(self._relabels)
        before = self._test_scores(base)
        tolerance = RoundSettings(**record.settings).tolerance
        counts = torch.bincount(self.data.y_test, minlength=self.data.num_classes).tolist()

        def judge() -> None:
            assert record.evaluation is not None
            after = (record.evaluation.test_accuracy, list(record.evaluation.per_class))
            for key, value in judge_on_test(
                before, after, tolerance, self.data.classes, counts
            ).items():
                setattr(record, key, value)

        self._commit_round(result.state, record, record.seconds, judge)
        assert record.round is not None  # committed
        moved = result.refused is not None or record.best_step != 0
        self._last_round = LastRound(record.round, base, result.refused, moved)
        return record

    def _round_inputs(self, targets: dict[int, int], labeler: Labeler | None) -> RoundInputs:
        """What a round works with: the training rows outside the validation split, the
        validation images, their codes (encodes each split once) and the rows each region
        reaches (:meth:`reach`)."""
        regions = self._require_regions()
        v = self.validation
        rows = torch.arange(len(self.data.y_train)) if v is None else v.fit_rows
        ids = list(targets)
        validation = validation_reached = None
        if v is not None:
            x_val, y_val = self.validation_data()
            validation = (x_val, y_val, self.split_codes("validation"))
            validation_reached = self.reach("validation", ids).matrix(ids)
        return RoundInputs(
            classifier=self.classifier,
            generator=self.generator,
            regions=regions,
            targets=dict(targets),
            x_fit=self.data.x_train[rows],
            y_fit=self.training_labels()[rows],
            fit_codes=self.split_codes("train")[rows],
            validation=validation,
            num_classes=self.data.num_classes,
            device=self.device,
            seed=self.seed,
            labeler=labeler,
            relabeled=self._relabels.mask()[rows],
            reached=self.reach("train", ids).matrix(ids)[rows],
            validation_reached=validation_reached,
            classes=self.data.classes,
        )

    def _test_scores(self, round: int) -> tuple[float, list[float]]:
        """Overall and per-class test accuracy of a round's weights (the live ones if needed)."""
        for r in self.history:
            if r.round == round and r.evaluation is not None:
                return r.evaluation.test_accuracy, list(r.evaluation.per_class)
        ev = self._evaluate(round, 0, regions=False)
        return ev.test_accuracy, list(ev.per_class)

    def _commit_round(
        self,
        state: dict[str, torch.Tensor],
        record: RoundRecord,
        trained_seconds: float,
        complete: Callable[[], None],
    ) -> None:
        """Evaluate the new weights, ``complete()`` the record, then add the round whole
        (weights, snapshot, history) and tell the listeners, who so see a finished record.

        Either all of it happens or none: an interrupt (or error) before the round is added,
        loading its weights included, puts the previous weights back; the adding runs with
        Ctrl-C held back, and an interrupt held there is raised once the round is added whole.
        """
        start = time.perf_counter() - trained_seconds
        with self._lock:
            record.round = self.rounds + 1
            added = False
            try:
                with deferred_interrupt():  # an interrupt held here is raised inside the try
                    restore(self.classifier, state)
                record.evaluation = self._evaluate(record.round, EVAL_SAMPLES)
                complete()
                record.seconds = time.perf_counter() - start
                with deferred_interrupt():
                    self._snapshots.append(state)
                    self.active_round = self.rounds
                    self.history.append(record)
                    added = True
                    self._emit("model")
            except BaseException:
                if not added:
                    with deferred_interrupt():
                        restore(self.classifier, self._snapshots[self.active_round])
                raise

    def evaluate(self, samples: int = EVAL_SAMPLES, split: str = "test") -> Evaluation:
        """Accuracy (overall, per class) and per labeled region accuracy on held-out decoded
        samples and on real images the mixture puts in the region with probability > 0.5.

        ``split``: "test" (the final report) or "validation" (what rounds are judged by; its
        labels are the training labels with confirmed relabels applied). The real-image figure
        is the honest measure of a fix; the held-out samples come from a stream that fine-tuning
        never trains on.
        """
        validate_params(CONSTRAINTS, split=split)
        with self._lock:
            return self._evaluate(self.active_round, samples, split=split)

    def _evaluate(
        self, round: int | None, samples: int, regions: bool = True, split: str = "test"
    ) -> Evaluation:
        targets = self.correctable() if self.regions is not None and regions else {}
        codes = self.split_codes(split) if targets else None
        x, y = self.validation_data() if split == "validation" else self.data.split("test")
        whole_split = self._ray is not None and split == "test"
        return evaluation.evaluate(
            self.classifier,
            x,
            y,
            self.data.num_classes,
            int(round or 0),
            self.regions,
            targets,
            codes,
            samples,
            predict=self._test_classes if whole_split else None,
        )

    def _test_classes(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) classes of a whole split on the Ray backend, as ``predict_labels`` gives here."""
        with evaluating(self.classifier):
            return self._run(
                Classes(self.classifier), images, 1024, whole=True, empty_dtype=torch.long
            )

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
        validate_params(CONSTRAINTS, relabels=relabels)
        with self._lock:
            check("round", round, [None, Interval(int, 0, self.rounds)])
            target = 0 if round is None else round
            self._check_idle("revert")
            with deferred_interrupt():
                restore(self.classifier, self._snapshots[target])
                self.active_round = target
                if relabels:
                    self._relabels.load([], replace=True)
        self._emit("model")
        if relabels:
            self._emit("relabels")

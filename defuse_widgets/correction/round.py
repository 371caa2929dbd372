"""One fine-tuning round, from its inputs to its result: :func:`run_round` is the entry point.

The caller (the session) gathers a :class:`RoundInputs` once: the classifier and generator, the
regions and their labels, the training rows the round may use with their codes, and the
validation images with their codes. :func:`run_round` works out what stays fixed over the round
(which training images the keep term holds to the starting model, which validation images lie
in each region, the sampling scales, the validity floor), trains each setting of the grid, keeps
the best by validation and returns a :class:`RoundResult`: the weights to keep and the record of
how they were chosen. It never changes the classifier it is given.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from defuse_widgets.correction.evaluation import RoundRecord, accuracy_by_class
from defuse_widgets.correction.samples import (
    REPLAY_BYTES,
    Batches,
    Replay,
    measured_scales,
    region_batches,
    validity_floor,
)
from defuse_widgets.correction.selection import (
    EarlyStopping,
    Score,
    changes,
    class_drops,
    harm,
    paired_harm,
)
from defuse_widgets.correction.settings import BLENDS, GROUP_SHARE, RoundSettings
from defuse_widgets.correction.statistics import holm
from defuse_widgets.correction.training import (
    Cancelled,
    CancelToken,
    StepCallback,
    fine_tune,
    snapshot,
)
from defuse_widgets.correction.validation import halves
from defuse_widgets.models.generative import GeneratorAdapter
from defuse_widgets.models.inference import predict_labels
from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.regions.labels import Labeler
from defuse_widgets.regions.membership import COVERAGE, inside_regions

MIN_VALIDATION_IMAGES = 10
"""A round's score on the labeled regions is the mean of its accuracy on held-out decoded samples
of them (what an exported suite checks) and on the validation images they reach that carry their
label (the real rows), or the samples' alone below this many such images. On the README tour
the real rows alone scored the last-layer and every-weight rounds alike (25 of 34 images each);
the every-weight round fixed 7 of the exported suite's 8 regions where the last layer fixed 1."""
CHECK_SAMPLES = 100


@dataclass
class RoundInputs:
    """Everything a round works with, gathered once by its caller.

    Attributes
    ----------
    classifier : the model to correct (never changed here: rounds train a copy).
    generator : the generator adapter; ``decode`` maps codes (n, d) to images on ``device``.
    regions, targets : the regions and the class each labeled region is corrected to.
    x_fit, y_fit, fit_codes : the training images (n, C, H, W) a round may train on, their labels
        (relabels applied) and encoder means (n, d).
    reached, validation_reached : which training and validation rows each region reaches (the
        session's one rule for a region's real rows, see
        :func:`~defuse_widgets.regions.membership.reach`).
    validation : (images, labels, codes) of the validation split, or None without one.
    num_classes, device, seed : the task's class count, the device, the session's seed.
    labeler : the :class:`~defuse_widgets.regions.labels.Labeler` whose ``label_images`` vets the
        decoded region samples (those it does not call their region's label are dropped), or None.
    relabeled : (n,) bool, the rows of ``x_fit`` with a confirmed relabel; None: none.
    """

    classifier: nn.Module
    generator: GeneratorAdapter
    regions: RegionSet
    targets: dict[int, int]
    x_fit: torch.Tensor
    y_fit: torch.Tensor
    fit_codes: torch.Tensor
    validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    num_classes: int
    device: torch.device
    seed: int = 0
    labeler: Labeler | None = None
    relabeled: torch.Tensor | None = None
    """(n,) bool: the rows whose label a person or labeler confirmed (see the audit)."""
    reached: torch.Tensor | None = None
    """(n, T) bool, a column per region of ``targets`` in its order: the rows of ``x_fit`` the
    region reaches (:meth:`~defuse_widgets.session.session.DefuseSession.reach`); None: none."""
    validation_reached: torch.Tensor | None = None
    """The same for the validation images (None: none)."""
    classes: tuple[str, ...] = ()
    """The class names, for the round's refusal in words."""


@dataclass
class RoundResult:
    """What :func:`run_round` chose: ``state`` (the weights to keep, CPU tensors) and ``record``
    (settings, losses, why it stopped; its test evaluation is the caller's to add). ``state`` is
    None for a cancelled round."""

    state: dict[str, torch.Tensor] | None
    record: RoundRecord
    refused: Refusal | None = None
    """When the round kept its starting weights because its best check harmed a class."""


@dataclass(frozen=True)
class Refusal:
    """The weights of a round's best refused check (CPU tensors) and the classes it harmed."""

    state: dict[str, torch.Tensor]
    harmed: tuple[int, ...]


def run_round(
    inputs: RoundInputs,
    grid: Sequence[RoundSettings],
    cancel: CancelToken | None = None,
    callback: StepCallback | None = None,
) -> RoundResult:
    """Train each setting of ``grid`` on ``inputs`` and keep the best by validation.

    One setting is a plain round; several (``correct(auto=True)``, and ``update="best"``: the
    last layer, then every weight) are tried in turn and judged best first, by their kept step's
    score on the labeled regions (then overall): the first that its confirmation keeps wins (the
    best when none is kept). A cancel stops between steps and returns a cancelled record with no
    state.
    """
    start = time.perf_counter()
    grid = expand_updates(grid, inputs.classifier)
    fixed = _FixedParts.of(inputs, grid[0])
    tried = []
    try:
        for i, settings in enumerate(grid):
            tried.append(fixed.train(settings, cancel, _offset(callback, i, len(grid))))
    except Cancelled:
        return RoundResult(
            None, RoundRecord(None, True, vars(grid[0]), [], time.perf_counter() - start)
        )
    order = sorted(range(len(tried)), key=lambda i: tried[i][0], reverse=True)
    judged = {}
    for i in order:
        judged[i] = fixed.judge(grid[i], *tried[i][1:])
        if judged[i][3]:  # kept
            break
    best = next((i for i in judged if judged[i][3]), order[0])
    record, state, refused, _ = judged[best]
    if len(grid) > 1:
        record.grid = [
            {"lam": g.lam, "lr": g.lr, "update": g.update, "region": t[0][0], "overall": t[0][1]}
            for g, t in zip(grid, tried)
        ]
    record.seconds = time.perf_counter() - start
    return RoundResult(state, record, refused)


def _refusal(checker: EarlyStopping | None) -> Refusal | None:
    """The refused check of a round that kept its starting weights (None otherwise)."""
    if checker is None or checker.best_state is not None or checker.refused_state is None:
        return None
    assert checker.refused is not None
    harmed = tuple(int(e["class"]) for e in checker.refused[1] if e["class"] is not None)
    return Refusal(checker.refused_state, harmed) if harmed else None


def group_weights(members: torch.Tensor, share: float) -> torch.Tensor:
    """(n,) draw weights summing to 1: each column of ``members`` (n, T) bool one group (a row in
    several counts in its first), the groups that have rows splitting ``share`` of the draws
    equally, the rows in none the rest (all of it when no group has rows)."""
    n = len(members)
    owner = torch.where(members.any(1), members.float().argmax(1), -1)
    groups = [owner == g for g in range(members.shape[1]) if bool((owner == g).any())]
    rest = owner < 0
    if not groups or not rest.any():
        return torch.full((n,), 1.0 / n)
    out = torch.zeros(n)
    for group in groups:
        out[group] = share / len(groups) / int(group.sum())
    out[rest] = (1.0 - share) / int(rest.sum())
    return out


def expand_updates(grid: Sequence[RoundSettings], classifier: nn.Module) -> list[RoundSettings]:
    """``grid`` with each ``update="best"`` setting as two: the last layer, then every weight
    (every weight alone for a classifier without an ``nn.Linear`` layer)."""
    has_linear = any(isinstance(m, nn.Linear) for m in classifier.modules())
    both = ("last", "all") if has_linear else ("all",)
    return [
        replace(g, update=u) for g in grid for u in (both if g.update == "best" else (g.update,))
    ]


def _share(tally: dict[str, int]) -> float | None:
    """The share of drawn region samples kept (None when none was drawn)."""
    return tally["kept"] / tally["drawn"] if tally.get("drawn") else None


def _reached(reached: torch.Tensor | None, n: int, t: int) -> torch.Tensor:
    """(n, t) bool: ``reached``, or no row reached when it is None."""
    if reached is None:
        return torch.zeros(n, t, dtype=torch.bool)
    if reached.shape != (n, t) or reached.dtype != torch.bool:
        raise ValueError(
            f"reached: expected ({n}, {t}) bool (a row per image, a column per target region), "
            f"got {tuple(reached.shape)} {reached.dtype}"
        )
    return reached


def _offset(callback: StepCallback | None, i: int, n: int) -> StepCallback | None:
    """Report the steps of run ``i`` of ``n`` as part of one progress of n runs."""
    if callback is None or n == 1:
        return callback
    return lambda step, steps, loss: callback(i * steps + step, n * steps, loss)


@dataclass
class _FixedParts:
    """What stays fixed over a round's settings (see :meth:`of`)."""

    inputs: RoundInputs
    members: torch.Tensor
    """(n, T) bool: training rows each labeled region reaches that carry its label, and the
    confirmed relabels to its label."""
    outside: torch.Tensor | None
    scales: dict[int, float]
    min_validity: float
    val_members: torch.Tensor | None
    """(v, T) bool: the validation images each labeled region reaches that carry its label (the
    rows its score is measured on)."""
    choose: torch.Tensor | None = None
    """(n,) bool: the validation images a round's step is chosen on (the rest confirm it)."""
    held_out: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    """Each labeled region's held-out decoded samples and label (decoded once, see
    :meth:`_measure`)."""
    tally: dict[str, int] = field(default_factory=dict)
    """Region samples ``"drawn"`` and ``"kept"`` (natural and, with ``vet``, vetted)."""
    streams: dict[tuple[int, int], Replay] = field(default_factory=dict)
    """The region batches of each (seed, batch size), replayed to every setting that draws them."""

    @classmethod
    def of(cls, inputs: RoundInputs, settings: RoundSettings) -> _FixedParts:
        ids = list(inputs.targets)
        labels = torch.tensor([inputs.targets[r] for r in ids], dtype=torch.long)
        carries = inputs.y_fit[:, None] == labels
        members = _reached(inputs.reached, len(inputs.y_fit), len(ids)) & carries
        if inputs.relabeled is not None:  # confirmed for a region: a member wherever it lies
            members |= inputs.relabeled[:, None] & carries
        # the keep term holds every image but those a region's label is meant to change
        outside = ~members.any(1) if settings.keep > 0 else None
        val_codes = val_members = val_inside = None
        if inputs.validation is not None:
            _, y_val, val_codes = inputs.validation
            reached = _reached(inputs.validation_reached, len(y_val), len(ids))
            val_members = reached & (y_val[:, None] == labels)
            if settings.scale is None:  # the sampling scale is the Gaussian's own measure
                val_inside = inside_regions(inputs.regions, val_codes, ids)
        scales = (
            {r: settings.scale for r in inputs.targets}
            if settings.scale is not None
            else measured_scales(inputs.regions, inputs.targets, val_codes, val_inside)
        )
        floor = validity_floor(inputs.generator, inputs.fit_codes, inputs.seed, inputs.device)
        choose = None if inputs.validation is None else halves(inputs.validation[1], inputs.seed)[0]
        return cls(inputs, members, outside, scales, floor, val_members, choose)

    def judge(
        self,
        settings: RoundSettings,
        state: dict[str, torch.Tensor],
        losses: list[float],
        checker: EarlyStopping | None,
    ) -> tuple[RoundRecord, dict[str, torch.Tensor], Refusal | None, bool]:
        """The record of one trained setting, the state it keeps, its refusal, and whether it
        keeps weights of its own (chosen on one half of validation and confirmed on the other)."""
        inputs = self.inputs
        record = RoundRecord(
            None,
            False,
            vars(settings),
            losses,
            0.0,
            None,
            None,
            dict(inputs.targets),
            scales=dict(self.scales),
            min_validity=self.min_validity,
            vetted=inputs.labeler is not None,
            samples_kept=_share(self.tally),
            real_images=self.real_images(),
            generated_images=self.tally.get("kept", 0),
        )
        if checker is None:
            return record, state, None, True
        refused = _refusal(checker)
        record.stopped = checker.finish(len(losses))
        record.best_step = checker.best.step
        record.checks = [c.to_dict() for c in checker.checks]
        record.validation = {"before": checker.start.to_dict(), "after": checker.best.to_dict()}
        if checker.start.correct is not None:  # on the half it was chosen on
            found = changes(checker.start, checker.best, settings.confidence)
            record.validation["changes"] = [c.to_dict() for c in found[:-1]]
            record.validation["overall_change"] = found[-1].to_dict()
        if checker.best_state is None:
            return record, state, refused, False
        state, refused = self.confirm(state, settings, record)
        return record, state, refused, refused is None and record.best_step != 0

    def real_images(self) -> dict[int, int]:
        """Region id -> its real training images that carry its label (drawn ``real_weight``
        times as often)."""
        counts = self.members.sum(0).tolist()
        return {rid: int(n) for rid, n in zip(self.inputs.targets, counts)}

    def weights(self, settings: RoundSettings) -> torch.Tensor | None:
        """(n,) draw weights of the training rows (None: uniform)."""
        if settings.real_weight == 1.0 or not self.members.any():
            return None
        if settings.real_weight is None:
            return group_weights(self.members, GROUP_SHARE)
        return 1.0 + (settings.real_weight - 1.0) * self.members.any(1).float()

    def train(
        self, settings: RoundSettings, cancel: CancelToken | None, callback: StepCallback | None
    ) -> tuple[tuple[float, float], dict[str, torch.Tensor], list[float], EarlyStopping | None]:
        """Train one setting; returns its (region, overall) validation score ((0, 0) without a
        validation split), the state it keeps, its losses and its early stopping."""
        inputs = self.inputs
        batch = self.region_samples(settings)
        checker = None
        if inputs.validation is not None and settings.early_stopping:
            assert self.choose is not None
            checker = EarlyStopping(
                self._measure(self.choose),
                inputs.classifier,
                settings.tolerance,
                settings.patience,
                settings.confidence,
                inputs.classes,
            )
        state, losses = fine_tune(
            inputs.classifier,
            inputs.x_fit,
            inputs.y_fit,
            batch,
            settings,
            cancel,
            callback,
            self.outside,
            checker,
            BLENDS,
            self.weights(settings),
        )
        score = (0.0, 0.0) if checker is None else (checker.best.region, checker.best.overall)
        return score, state, losses, checker

    def region_samples(self, settings: RoundSettings) -> Batches:
        """``n -> (images, labels)``: the region batches ``settings`` trains on, replayed from
        the round's stream of its seed and batch size (decoded afresh where they would take more
        than ``REPLAY_BYTES``)."""
        inputs = self.inputs

        def stream() -> Batches:
            draw = inputs.regions.training_sampler(
                inputs.targets, self.scales, settings.seed, inputs.device, coverage=COVERAGE
            )
            vet = None if inputs.labeler is None else inputs.labeler.label_images
            return region_batches(draw, inputs.generator, self.min_validity, vet, self.tally)

        size = settings.steps * settings.batch_size * inputs.x_fit[0].numel() * 4
        if size > REPLAY_BYTES:
            return stream()
        key = (settings.seed, settings.batch_size)
        if key not in self.streams:
            self.streams[key] = Replay(stream())
        return self.streams[key].reader()

    def _measure(self, rows: torch.Tensor) -> Callable[[nn.Module, int], Score]:
        """``(model, step) -> Score`` on the validation images of ``rows`` ((n,) bool)."""
        inputs = self.inputs
        assert inputs.validation is not None and self.val_members is not None
        x_val, y_val = inputs.validation[0][rows], inputs.validation[1][rows]
        any_inside = self.val_members[rows].any(1)
        counts = torch.bincount(y_val, minlength=inputs.num_classes).tolist()
        real = int(any_inside.sum()) >= MIN_VALIDATION_IMAGES
        if not self.held_out:  # the same seeded samples for every setting and the confirmation
            self.held_out = [(self._decode(r), label) for r, label in inputs.targets.items()]
        samples = self.held_out

        def measure(model: nn.Module, step: int) -> Score:
            pred = predict_labels(model, x_val)
            hits = [(predict_labels(model, x) == label).float().mean() for x, label in samples]
            region = float(sum(hits)) / len(samples)
            if real:  # the real rows the regions reach and their held-out samples, equally
                rows_right = pred[any_inside] == y_val[any_inside]
                region = (region + float(rows_right.float().mean())) / 2
            per_class = accuracy_by_class(pred, y_val, inputs.num_classes)
            right = pred == y_val
            overall = float(right.float().mean())
            return Score(step, overall, per_class, region, counts, correct=right, labels=y_val)

        return measure

    def confirm(
        self, state: dict[str, torch.Tensor], settings: RoundSettings, record: RoundRecord
    ) -> tuple[dict[str, torch.Tensor], Refusal | None]:
        """Judge the weights chosen on one half of the validation split on the other half (per
        class, paired, Holm over the classes), and on the whole split: ``state`` and no refusal
        when nothing is harmed on that half and neither that half nor the whole split has fewer
        images right, else the starting weights and a :class:`Refusal` naming the harmed classes
        (those that lost more images than they gained, for a round that lowered a count). A round
        that cannot help so keeps its starting weights, where no class's drop alone is real on a
        split as small as digits' (on the digits suite, each of the three kept rounds of sixteen
        that lowered test accuracy had lowered its validation split). The half counts on its own:
        the whole split includes the half the step was chosen on, which flatters it
        (``benchmarks/clean_model_rounds.py``: three kept rounds that lowered test accuracy lost
        an image on the half and none on the whole split).
        ``record.validation["confirm"]`` keeps each class's change on the half (interval,
        Holm-adjusted p-value, negative flips), the images gained on the half (``half_net``) and
        on the whole split (``net``), and ``record.stopped`` the verdict."""
        inputs = self.inputs
        assert self.choose is not None and record.validation is not None
        assert inputs.validation is not None
        measure = self._measure(~self.choose)
        chosen = copy.deepcopy(inputs.classifier)
        chosen.load_state_dict(state)
        before, after = measure(inputs.classifier, 0), measure(chosen, record.best_step or 0)
        found = changes(before, after, settings.confidence)
        adjusted = holm([c.p for c in found[:-1]])
        harmed = paired_harm(before, after, settings.tolerance, inputs.classes, settings.confidence)
        net = self._net_gain(chosen)
        half_net = [c.gained - c.lost for c in found[:-1]]
        record.validation["confirm"] = {
            "images": int((~self.choose).sum()),
            "before": before.to_dict(),
            "after": after.to_dict(),
            "changes": [{**c.to_dict(), "p_holm": p} for c, p in zip(found[:-1], adjusted)],
            "overall_change": found[-1].to_dict(),
            "negative_flips": found[-1].lost,
            "harm": harmed,
            "net": sum(net),
            "half_net": sum(half_net),
            "confirmed": not harmed and sum(net) >= 0 and sum(half_net) >= 0,
        }
        record.validation["changes"] = record.validation["confirm"]["changes"]
        record.validation["overall_change"] = found[-1].to_dict()
        images = record.validation["confirm"]["images"]
        if record.validation["confirm"]["confirmed"]:
            record.stopped += f"; confirmed on {images} validation images it was not chosen on"
            return state, None
        if harmed:
            worst = harmed[0]
            record.stopped += (
                f"; refused on the {images} validation images it was not chosen on: it cost "
                f"{worst['name']} {worst['drop']:.1f} points there (interval {worst['low']:.1f} "
                f"to {worst['high']:.1f}), so the round keeps its starting weights"
            )
            classes = tuple(int(e["class"]) for e in harmed if e["class"] is not None)
        elif sum(half_net) < 0:
            record.stopped += (
                f"; refused: it got {-sum(half_net)} fewer of the {images} validation images it "
                "was not chosen on right, so the round keeps its starting weights"
            )
            classes = tuple(c for c, n in enumerate(half_net) if n < 0)
        else:
            record.stopped += (
                f"; refused: it got {-sum(net)} fewer of the {len(inputs.validation[1])} "
                "validation images right, so the round keeps its starting weights"
            )
            classes = tuple(c for c, n in enumerate(net) if n < 0)
        record.best_step = 0
        return snapshot(inputs.classifier), Refusal(state, classes) if classes else None

    def _net_gain(self, chosen: nn.Module) -> list[int]:
        """Per class: the validation images (the whole split) ``chosen`` gets right, minus those
        the starting weights get right."""
        inputs = self.inputs
        assert inputs.validation is not None
        x_val, y_val, _ = inputs.validation
        before = predict_labels(inputs.classifier, x_val) == y_val
        after = predict_labels(chosen, x_val) == y_val
        gain = after.long() - before.long()
        return torch.zeros(inputs.num_classes, dtype=torch.long).index_add_(0, y_val, gain).tolist()

    def _decode(self, region_id: int) -> torch.Tensor:
        """Held-out decoded samples of a region, on the CPU (the score's fallback)."""
        inputs = self.inputs
        codes = inputs.regions.sample_codes(region_id, CHECK_SAMPLES, purpose="eval")
        with torch.inference_mode():
            return inputs.generator.decode(codes.to(inputs.device).float()).float().cpu()


def judge_on_test(
    before: tuple[float, list[float]],
    after: tuple[float, list[float]],
    tolerance: float,
    classes: Sequence[str],
    counts: Sequence[int],
) -> dict[str, Any]:
    """``class_deltas`` (points each class moved, positive up) and ``harm`` (what the round broke)
    of a round's test accuracy ``after`` against the round it started from (``before``)."""
    return {
        "class_deltas": [-d for d in class_drops(before[1], after[1])],
        "harm": harm(before[0], before[1], after[0], after[1], tolerance, classes, counts),
    }

"""The session's audit of the training data through the regions, and its relabels.

A mixin of :class:`~defuse_widgets.session.session.DefuseSession`: the methods run on the session's
state (its regions, labels, :class:`~defuse_widgets.regions.relabels.RelabelStore` and membership
cache).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from defuse_widgets.correction.training import restore
from defuse_widgets.models.inference import batched, predict_labels
from defuse_widgets.regions import audit as audit_step
from defuse_widgets.regions import membership
from defuse_widgets.regions.labels import (
    UNRECOGNIZABLE,
    LabelerLike,
    as_labeler,
    check_label,
    label_name,
)
from defuse_widgets.regions.membership import Reach, within_ellipsoid
from defuse_widgets.regions.relabels import Relabel, read_relabel_source
from defuse_widgets.session.base import SessionBase
from defuse_widgets.utils.checks import Options, check


class AuditMixin(SessionBase):
    """Audit, relabel, confirm, export and import relabels (see :class:`DefuseSession`)."""

    def region_probability(self, split: str = "train", batch_size: int = 4096) -> torch.Tensor:
        """(N, R) probability that the mixture puts each image of ``split`` in each region
        (columns in ``regions.regions`` order); batched and cached until the regions change."""
        regions = self._require_regions()
        if split not in self._membership:
            self._membership[split] = batched(
                regions.predict_proba,
                self.split_codes(split),
                device="cpu",
                batch_size=batch_size,
                empty_shape=(0, len(regions)),
                progress=self.progress,
                desc=f"regions of {split} images",
            )
        return self._membership[split]

    def reach(self, split: str = "train", region_ids: Sequence[int] | None = None) -> Reach:
        """The real rows of ``split`` ("train", validation rows included where they are carved
        from it, or "validation") each region points to: the
        :data:`~defuse_widgets.regions.membership.NEAREST` rows nearest, in the generator's latent
        space, to each source image of the region's errors (see
        :func:`~defuse_widgets.regions.membership.reach`). Cached until the regions change; the
        audit, the rounds' real rows and the explorer use it."""
        regions = self._require_regions()
        if split not in ("train", "validation"):
            raise ValueError(f"split: expected 'train' or 'validation', got {split!r}")
        ids = regions.ids if region_ids is None else [regions.get(r).id for r in region_ids]
        key = _reach_key(split)
        if key not in self._membership:
            errors = self.errors
            assert errors is not None  # regions come from errors
            found = membership.reach(
                regions,
                errors.source_index,
                self.split_codes(errors.split),
                self.split_codes(split),
            )
            self._membership[key] = found.matrix(regions.ids)
        matrix = self._membership[key]
        rows = {rid: matrix[:, regions.column(rid)].nonzero().flatten() for rid in ids}
        return Reach(rows, len(matrix))

    def reach_ready(self, split: str = "train") -> bool:
        """Whether :meth:`reach` of ``split`` is cached (so it answers without encoding)."""
        return _reach_key(split) in self._membership

    def _audit_label(self, region_id: int, label: int | None) -> int:
        if label is not None:
            value = check_label(label, self.data.num_classes)
            if value < 0:
                raise ValueError(f"label: expected a class index to audit against, got {value}")
            return value
        given = self._labels.get(int(region_id))
        if given is None or given < 0:
            what = (
                "no label"
                if given is None
                else f"the label {label_name(given, self.data.classes)!r}"
            )
            raise ValueError(
                f"region_id: region {region_id} has {what}; auditing needs a region labeled "
                "with a class (label it first, or pass label=)"
            )
        return given

    def _audit_probability(self, region_id: int, coverage: float | None) -> torch.Tensor:
        regions = self._require_regions()
        region = regions.get(region_id)
        prob = self.region_probability("train")[:, regions.column(region_id)]
        inside = (
            None
            if coverage is None
            else within_ellipsoid(
                self.split_codes("train"), region.mean, region.covariance, coverage
            )
        )
        return audit_step.gate(prob, inside)

    def audit(
        self,
        region_id: int,
        min_probability: float = 0.0,
        label: int | None = None,
        coverage: float | None = None,
    ) -> audit_step.AuditResult:
        """The training images the region reaches (:meth:`reach`) whose training label (relabels
        applied) differs from the region's label.

        ``label`` audits against another class than the region's label (needed for a region
        without a class label). ``min_probability`` also requires the mixture to put a row in
        the region with at least that probability, ``coverage`` its code to lie inside the
        ellipsoid holding that share of the region's Gaussian (None: no such requirement); the
        defaults require neither, because the real rows of a bug mostly lie outside the
        Gaussian fitted to perturbed codes.
        Returns an :class:`~defuse_widgets.regions.audit.AuditResult`, the likeliest mistakes first.
        """
        self._require_regions().get(region_id)
        audit_step.check_probability(min_probability)
        target = self._audit_label(region_id, label)
        return audit_step.audit_region(
            region_id,
            target,
            self._audit_probability(region_id, coverage),
            self.data.x_train,
            self.training_labels(),
            self.predict,
            min_probability,
            self.reach("train", [region_id]).mask(region_id),
        )

    def audit_summary(
        self, min_probability: float = 0.0, coverage: float | None = None
    ) -> dict[int, dict[str, Any]]:
        """Per class-labeled region: its label, the training images it reaches (``inside``; with
        ``min_probability`` and ``coverage`` as in :meth:`audit`), those whose label conflicts
        with the region's (``conflicts``) and the relabels among them."""
        audit_step.check_probability(min_probability)
        labels, relabeled = self.training_labels(), self._relabels.mask()
        reach = self.reach("train", sorted(self.correctable()))
        return {
            rid: audit_step.count_inside(
                self._audit_probability(rid, coverage),
                labels,
                relabeled,
                lab,
                min_probability,
                reach.mask(rid),
            )
            for rid, lab in sorted(self.correctable().items())
        }

    @property
    def relabels(self) -> dict[int, Relabel]:
        """Training index -> confirmed :class:`~defuse_widgets.regions.relabels.Relabel`; a copy."""
        return dict(self._relabels.records)

    def relabel(self, indices: Sequence[int] | torch.Tensor, label: int, who: str = "user") -> int:
        """Confirm that the training images ``indices`` are class ``label``; returns how many
        records changed. Relabeling an image to its dataset label removes its relabel."""
        value = check_label(label, self.data.num_classes)
        with self._lock:
            changed = self._relabels.set(indices, value, who)
        if changed:
            self._emit("relabels")
        return changed

    def unrelabel(self, indices: Sequence[int] | torch.Tensor) -> int:
        """Undo the relabels of the training images ``indices``; returns how many went."""
        with self._lock:
            undone = self._relabels.remove(indices)
        if undone:
            self._emit("relabels")
        return undone

    def confirm_audit(
        self,
        region_id: int,
        labeler: LabelerLike,
        min_probability: float = 0.0,
        who: str | None = None,
        coverage: float | None = None,
        stop_after: int | None = None,
    ) -> dict[str, Any]:
        """Let ``labeler`` decide image by image on the region's :meth:`audit` and relabel the
        images it confirms as the region's label.

        The labeler goes down the audit's ranking (strongest evidence of a wrong label first);
        ``stop_after`` ends the walk after that many images in a row it does not confirm (None:
        it looks at every candidate).

        ``labeler``: a :class:`~defuse_widgets.regions.labels.Labeler` (its ``label_images(images)
        -> (n,)`` classes decide, ``UNRECOGNIZABLE`` to abstain), a classifier module or a callable
        ``images -> classes`` (see ``as_labeler``); ``who`` defaults to its name.
        Returns ``{"region", "label", "candidates", "confirmed" (indices), "abstained",
        "disagreed"}``.
        """
        judge = as_labeler(labeler, "images")
        name = who if who is not None else judge.name
        with self._lock:  # the audit and its relabels see the same regions
            result = self.audit(region_id, min_probability, coverage=coverage)
            votes = audit_step.ask_labeler(judge, result.images)
            yes = audit_step.walk_down(votes == result.region_label, stop_after)
            confirmed = result.indices[yes]
            self.relabel(confirmed, result.region_label, who=name)
        seen = (
            len(votes) if stop_after is None else audit_step.looked_at(yes, stop_after, len(votes))
        )
        abstained = int((votes[:seen] == UNRECOGNIZABLE).sum())
        return {
            "region": int(region_id),
            "label": result.region_label,
            "candidates": len(result),
            "looked_at": seen,
            "confirmed": confirmed.tolist(),
            "abstained": abstained,
            "disagreed": seen - len(confirmed) - abstained,
        }

    def disputes(self) -> dict[str, Any]:
        """The training images (validation rows included) that the last round moved from their
        label to a class a labeled region was corrected to, and that the weights it started from
        got right. For a round that kept its starting weights for harming a class: the images of
        the harmed classes, moved by its best refused check; for a kept round: those of every
        other class, moved by the weights it kept. Where labels carry the bug these are its rows,
        and the harm they show is the fix.

        Returns ``{"rows": (n,) training indices, "labels": (n,) the class the round gives each,
        "classes": the names of the classes looked at}``; empty when the round kept its starting
        weights without a refused check. Raises when no round has run on the live weights (see
        :meth:`confirm_disputes`).
        """
        with self._lock:  # the weights and labels of one moment
            last = self._last_round
            if last is None or last.round != self.active_round:
                raise RuntimeError(
                    "disputes: no round has run on the live weights (none yet, or a revert or a "
                    "load changed them since); run a round first"
                )
            refusal = last.refusal
            targets = sorted(set(self.correctable().values()))
            if not last.moved or not targets:  # the weights are the ones it started from
                return {
                    "rows": torch.zeros(0, dtype=torch.long),
                    "labels": torch.zeros(0, dtype=torch.long),
                    "classes": [],
                }
            looked = (
                list(refusal.harmed)
                if refusal is not None
                else [c for c in range(self.data.num_classes) if c not in targets]
            )
            stored = self.training_labels()
            rows = torch.isin(stored, torch.tensor(looked)).nonzero().flatten()
            x = self.data.x_train[rows]
            live = self.classifier
            after = live if refusal is None else self._with_weights(refusal.state)
            before = live if refusal is not None else self._with_weights(self._snapshots[last.base])
            moved = predict_labels(after, x)
            right = predict_labels(before, x) == stored[rows]
            keep = right & torch.isin(moved, torch.tensor(targets))
            return {
                "rows": rows[keep],
                "labels": moved[keep],
                "classes": [label_name(c, self.data.classes) for c in looked],
            }

    def _with_weights(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A copy of the classifier holding ``state``."""
        model = copy.deepcopy(self.classifier)
        restore(model, state)
        return model

    def confirm_disputes(self, labeler: LabelerLike, who: str | None = None) -> dict[str, Any]:
        """Let ``labeler`` decide on the last round's :meth:`disputes` and relabel each image it
        confirms as the class the round gave it (recorded like any relabel, undone by
        ``revert(relabels=True)``). Run the round again after it: it is judged by the settled
        labels.

        ``labeler`` as for :meth:`confirm_audit`. Returns ``{"classes", "candidates", "disputed"
        (the indices decided on), "confirmed" (indices), "abstained", "disagreed"}``.
        """
        judge = as_labeler(labeler, "images")
        name = who if who is not None else judge.name
        with self._lock:
            found = self.disputes()
            rows, moved = found["rows"], found["labels"]
            votes = audit_step.ask_labeler(judge, self.data.x_train[rows])
            yes = votes == moved
            for label in moved[yes].unique().tolist():
                self.relabel(rows[yes & (moved == label)], label, who=name)
        abstained = int((votes == UNRECOGNIZABLE).sum())
        return {
            "classes": found["classes"],
            "candidates": len(rows),
            "disputed": rows.tolist(),
            "confirmed": rows[yes].tolist(),
            "abstained": abstained,
            "disagreed": len(rows) - int(yes.sum()) - abstained,
        }

    def export_relabels(
        self, path: str | os.PathLike | None = None, format: str | None = None
    ) -> dict[str, Any]:
        """The relabels as a JSON-ready dict; written to ``path`` when given, as CSV when ``format``
        is "csv" or the path ends in ``.csv`` (columns index, old_label, new_label, who, when),
        else as JSON."""
        check("format", format, [None, Options(("json", "csv"))])
        doc = self._relabels.document(self.data.name, self.data.classes)
        if path is not None:
            self._relabels.write(path, doc, format)
        return doc

    def import_relabels(
        self, source: str | os.PathLike | Mapping[str, Any], replace: bool = True
    ) -> int:
        """Load relabels from :meth:`export_relabels` output (a dict, a JSON or a CSV file),
        replacing the current ones (or merging over them when ``replace=False``); every record is
        checked first. Returns the number of relabels afterwards."""
        records = read_relabel_source(source)
        with self._lock:
            count = self._relabels.load(records, replace)
        self._emit("relabels")
        return count


def _reach_key(split: str) -> str:
    """Where :meth:`AuditMixin.reach` of ``split`` is cached in the session's membership cache."""
    return f"reach:{split}"

"""DefuseSession: the facade that holds one debugging session's state and runs its steps."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defuse_widgets.correction.snapshots import (
    DEFAULT_IN_MEMORY,
    DEFAULT_MAX_BYTES,
    SnapshotReport,
    SnapshotStore,
)
from defuse_widgets.correction.training import restore
from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.data.fingerprint import dataset_fingerprint
from defuse_widgets.models.generative import as_generator
from defuse_widgets.models.generator_report import (
    MIN_RATIO,
    GeneratorReport,
    generator_report,
    recognition,
)
from defuse_widgets.persist.read import fail, read_session
from defuse_widgets.persist.write import save_state
from defuse_widgets.regions.distill import RegionSet, fit_regions, user_region
from defuse_widgets.regions.labels import (
    LabelerLike,
    as_labeler,
    check_label,
    check_labels,
    labels_document,
    read_labels,
)
from defuse_widgets.regions.relabels import RelabelStore
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.search.identify import identify
from defuse_widgets.search.strategies import DEFAULT_STRATEGY
from defuse_widgets.session.base import EVENTS  # noqa: F401  (the event names, public here too)
from defuse_widgets.session.rounds import RoundsMixin
from defuse_widgets.suite.export import SuiteSource, check_export, export_suite
from defuse_widgets.utils.checks import Constraints, Interval, validate_params
from defuse_widgets.utils.critical import deferred_interrupt

CONSTRAINTS: Constraints = {
    "limit": [None, Interval(int, 1, None)],
    "samples": [Interval(int, 1, None)],
}
"""The declared checks of the session's own arguments (the steps it runs check theirs)."""

VIEWS: dict[str, Callable[..., Any]] = {}
"""The widgets a session builds (``s.explorer()``, ``s.interpolator()``), registered by the
package's ``__init__``: the widgets sit above the session, which never imports them."""


def _view(name: str) -> Callable[..., Any]:
    if name not in VIEWS:
        raise RuntimeError(f"the {name} widget is not registered; import defuse_widgets first")
    return VIEWS[name]


class DefuseSession(RoundsMixin):
    """One Defuse debugging session: identify -> distill -> label -> correct, with revert and save.

    Parameters
    ----------
    classifier : torch module returning logits (N, K); it is fine-tuned in place, and
        :meth:`revert` restores its original weights bit for bit.
    generator : a VAE (see :func:`~defuse_widgets.models.generative.as_generator`).
    data : the :class:`~defuse_widgets.data.dataset.ImageDataset` the classifier was trained on.
    device : "auto" (CUDA, MPS, CPU) or a device; both models are moved there.
    seed : seeds every random step, so a session repeats exactly on the CPU.
    progress : show progress bars for long steps.
    backend : keyword-only; "local" (default), "ray" or a
        :class:`~defuse_widgets.distributed.backend.RayBackend`: where whole-split inference runs
        (``split_codes``, the audit's training codes, ``evaluate()``'s test predictions, and
        ``predict``/``encode`` on at least ``ray_min_images`` images, 8192 by default; smaller
        calls stay on ``device``) and where ``identify`` searches unless told otherwise. Also
        settable later, ``s.backend = RayBackend(...)``.
    validation : keyword-only; the split fine-tuning rounds are judged by and never train on: a
        fraction of the training split (default 0.1; seeded, stratified), the user's own pair
        ``(images, labels)``, or None (rounds train on every training image, run every step and
        report no validation figures). See :meth:`correct`.

    Examples
    --------
    >>> s = DefuseSession(classifier=clf, generator=vae, data=data, seed=0)  # doctest: +SKIP
    >>> errors = s.identify(split="test")  # the default strategy, "gaussian"  # doctest: +SKIP
    >>> regions = s.distill()  # doctest: +SKIP
    """

    # ----- identify and distill -----

    def identify(
        self,
        strategy: Any = DEFAULT_STRATEGY,
        split: str = "test",
        limit: int | None = None,
        **options: Any,
    ) -> ErrorSet:
        """Search the latent space around the ``split``'s images (at most ``limit`` of them).

        ``limit`` picks a seeded sample stratified by class (every class in its share), or with
        ``limit_order="first"`` the split's first ``limit`` images; the errors' ``source_index``
        is the image's position in the whole split either way.
        ``strategy`` and ``options`` are those of :func:`~defuse_widgets.search.identify.identify`,
        e.g. ``backend="ray"`` (with ``ray_options``) to shard the search over a Ray cluster;
        ``backend`` defaults to the session's :attr:`backend`, and ``ray_options`` alone then
        override its fields. Replaces earlier errors, regions and labels (only once the search
        has succeeded).
        """
        with self._lock:
            self._check_idle("identify")
            errors = self.search(strategy, split, limit, **options)
            self.errors, self.regions, self._labels = errors, None, {}
        self._emit("errors", "regions", "labels")
        return errors

    def search(
        self,
        strategy: Any = DEFAULT_STRATEGY,
        split: str = "test",
        limit: int | None = None,
        **options: Any,
    ) -> ErrorSet:
        """The search of :meth:`identify`, returning the errors without making them the
        session's: its errors, regions and labels stay as they are (:meth:`adopt` makes them
        the session's). With ``on_errors`` (see :func:`~defuse_widgets.search.identify.identify`)
        it reports the errors found so far step by step, as the explorer's live search does.
        """
        validate_params(CONSTRAINTS, limit=limit)
        x, y = self.data.split(split)
        options.setdefault("seed", self.seed)
        options.setdefault("progress", self.progress)
        if "backend" not in options:
            options["backend"] = self.backend
            if self._ray is not None and options.get("ray_options"):
                options["backend"] = "ray"
                options["ray_options"] = {**vars(self._ray), **options["ray_options"]}
        return identify(
            self.classifier,
            self.generator,
            x,
            y,
            strategy,
            limit=limit,
            device=self.device,
            split=split,
            **options,
        )

    def adopt(
        self,
        errors: ErrorSet,
        regions: RegionSet | None = None,
        labels: Mapping[int, int] | str | None = None,
    ) -> None:
        """Make ``errors`` (from :meth:`search`) the session's errors, with ``regions`` over
        them (None: none yet) and ``labels`` for those regions: a mapping of region id to label,
        ``"keep"`` (the current labels of the region ids ``regions`` still has: the regions of a
        live search growing step by step) or None (no labels). Checked before anything changes.
        """
        if not isinstance(errors, ErrorSet):
            raise TypeError(f"errors: expected an ErrorSet, got {type(errors).__name__}")
        if errors.latent_dim != self.generator.latent_dim:
            raise ValueError(
                f"errors: expected errors with the generator's {self.generator.latent_dim}-d "
                f"codes, got {errors.latent_dim}-d codes"
            )
        if regions is not None and len(regions.assignments) != len(errors):
            raise ValueError(
                f"regions: expected regions over the {len(errors)} errors, got regions over "
                f"{len(regions.assignments)}"
            )
        if labels is not None and labels != "keep" and regions is None:
            raise ValueError("labels: regions to label are needed, got regions=None")
        if isinstance(labels, str) and labels != "keep":
            raise ValueError(f"labels: expected a mapping, 'keep' or None, got {labels!r}")
        given = dict(labels) if isinstance(labels, Mapping) else {}
        for region_id, label in given.items():
            assert regions is not None
            regions.get(int(region_id))
            check_label(label, self.data.num_classes)
        with self._lock:
            self._check_idle("adopt")
            if labels == "keep":
                ids = set(regions.ids) if regions is not None else set()
                given = {k: v for k, v in self._labels.items() if k in ids}
            self.errors, self.regions = errors, regions
            self._labels = {int(k): int(v) for k, v in given.items()}
        self._emit("errors", "regions", "labels")

    def distill(
        self,
        max_regions: int = 100,
        min_weight: float = 0.01,
        covariance_type: str = "full",
        max_fit: int = 10_000,
        **options: Any,
    ) -> RegionSet:
        """Fit the Dirichlet-process mixture to the errors' codes; see
        :func:`~defuse_widgets.regions.distill.fit_regions`. Replaces earlier regions and labels."""
        options.setdefault("seed", self.seed)
        with self._lock:
            self._check_idle("distill")
            if self.errors is None:
                raise RuntimeError("no errors yet: call identify() before distill()")
            regions = fit_regions(
                self.errors,
                max_regions,
                min_weight,
                covariance_type,
                max_fit,
                decode=self.decode,
                predict=self.predict,
                **options,
            )
            self.regions, self._labels = regions, {}
        self._emit("regions", "labels")
        return regions

    def add_region(self, error_indices: Sequence[int] | torch.Tensor) -> int:
        """Make a user-defined region of the errors ``error_indices``; returns its id."""
        with self._lock:
            regions = self._require_regions()
            assert self.errors is not None
            region_id = user_region(regions, self.errors, torch.as_tensor(error_indices)).id
        self._emit("regions")
        return region_id

    # ----- labels -----

    def label(self, region_id: int, label: int) -> None:
        """Give a region one label: a class index, ``MODEL_IS_RIGHT`` or ``UNRECOGNIZABLE``."""
        with self._lock:
            self._require_regions().get(region_id)
            self._labels[int(region_id)] = check_label(label, self.data.num_classes)
        self._emit("labels")

    def unlabel(self, region_id: int) -> None:
        """Remove a region's label (no error if it had none)."""
        with self._lock:
            self._require_regions().get(region_id)
            removed = self._labels.pop(int(region_id), None) is not None
        if removed:
            self._emit("labels")

    def export_labels(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Labels as a JSON-ready dict (also written to ``path`` when given)."""
        doc = labels_document(self._labels, self.data.classes)
        if path is not None:
            Path(path).write_text(json.dumps(doc, indent=2))
        return doc

    def import_labels(self, source: str | os.PathLike | Mapping[str, Any]) -> None:
        """Replace the labels with those of :meth:`export_labels` output (a dict or a JSON file)."""
        with self._lock:
            self._labels = read_labels(source, self.data.classes, self._require_regions().ids)
        self._emit("labels")

    def auto_label(self, labeler: LabelerLike, overwrite: bool = False) -> dict[int, int]:
        """Label every region (unlabeled ones unless ``overwrite``) with an automatic labeler.

        ``labeler``: a :class:`~defuse_widgets.regions.labels.Labeler` (see ``as_labeler``); a
        classifier module is wrapped in a ``ReferenceModelLabeler`` with its defaults.
        """
        judge = as_labeler(labeler, "regions")
        with self._lock:
            regions, new = self._require_regions(), dict(self._labels)
            for region in regions:
                if region.id not in new or overwrite:
                    sample = regions.sample(region.id, judge.samples, purpose="label")
                    new[region.id] = judge.label_region(sample.images, sample.predictions)
            self._labels = new
        self._emit("labels")
        return self.labels

    def export_tests(
        self,
        path: str | os.PathLike,
        regions: Sequence[int] | None = None,
        samples: int = 200,
        min_accuracy: float | Mapping[int, float] = 0.8,
        include_real: bool = True,
        **options: Any,
    ) -> Path:
        """Write the class-labeled regions as a regression suite for :func:`check_suite`; see
        :func:`~defuse_widgets.suite.export.export_suite` (``min_real_accuracy``, ``scale``,
        ``overwrite``). Returns the suite directory."""
        check_export(
            self.regions,
            self._labels,
            path,
            regions,
            samples,
            min_accuracy,
            options.get("min_real_accuracy"),
            options.get("overwrite", False),
        )
        source = SuiteSource(
            regions=self._require_regions(),
            labels=self.correctable(),
            decode=self.decode,
            predict=self.predict,
            data=self.data,
            test_codes=self.split_codes("test") if include_real else None,
            test_probability=self.region_probability("test") if include_real else None,
            round=self.active_round,
        )
        return export_suite(source, path, regions, samples, min_accuracy, include_real, **options)

    # ----- state, persistence and widgets -----

    def state_dict(self) -> dict[str, Any]:
        """The session's state: everything :meth:`save` writes (the models' weights per round).

        Keys: ``seed``, ``errors``, ``regions``, ``labels``, ``relabels`` (index -> Relabel),
        ``snapshots`` (one classifier state dict per round, 0 the original; those spilled to
        disk are read back, see :meth:`limit_snapshots`), ``active_round`` and ``history``
        (RoundRecord per round).
        """
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "errors": self.errors,
            "regions": self.regions,
            "labels": self.labels,
            "relabels": self.relabels,
            "snapshots": list(self._snapshots),  # spilled ones read back from disk
            "active_round": self.active_round,
            "history": list(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the session's state with a :meth:`state_dict`; all of it is checked first."""
        errors, regions = state["errors"], state["regions"]
        if regions is not None and errors is None:
            raise ValueError("state: it has regions but no errors")
        if regions is not None and len(regions.assignments) != len(errors):
            raise ValueError(
                f"state: {len(regions.assignments)} region assignments for {len(errors)} errors"
            )
        ids = regions.ids if regions is not None else []
        labels = check_labels(state["labels"], self.data.num_classes, ids)
        relabels = RelabelStore(self.data.y_train, self.data.num_classes)
        relabels.load([r.to_dict() for r in state["relabels"].values()])
        snapshots = list(state["snapshots"])
        expected = {k: v.shape for k, v in self.classifier.state_dict().items()}
        for i, snap in enumerate(snapshots):
            if {k: v.shape for k, v in snap.items()} != expected:
                raise ValueError(f"state: snapshot {i} does not match the classifier's parameters")
        active = state["active_round"]
        if not snapshots or not 0 <= active < len(snapshots):
            raise ValueError(f"state: active round {active!r} out of range for {len(snapshots)}")
        old = self._snapshots
        store = SnapshotStore(
            snapshots, max_in_memory=old.max_in_memory, max_bytes=old.max_bytes, parent=old.parent
        )
        if regions is not None:
            regions.decode, regions.predict = self.decode, self.predict
        with self._lock:
            self._check_idle("load_state_dict")
            with deferred_interrupt():
                self.seed, self.errors, self.regions = int(state["seed"]), errors, regions
                self._labels, self._relabels, self._snapshots = labels, relabels, store
                self.history = list(state["history"])
                restore(self.classifier, snapshots[active])
                self.active_round = active
        old.close()
        self._emit("errors", "regions", "labels", "relabels", "model")

    def limit_snapshots(
        self,
        in_memory: int | None = DEFAULT_IN_MEMORY,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        folder: str | os.PathLike | None = None,
    ) -> None:
        """Bound the memory the weight snapshots (one per round, for :meth:`revert`) hold.

        Beyond ``in_memory`` snapshots or ``max_bytes`` bytes (None: no bound), the oldest
        rounds (never the original nor the newest) spill to a folder of their own inside
        ``folder`` (default: the system's temporary folder) as safetensors files, written
        atomically and read back bit for bit on :meth:`revert`. The folder is removed by
        :meth:`close`, or when the session is garbage-collected or Python exits. See
        :meth:`memory_report`.
        """
        with self._lock:
            self._snapshots.configure(in_memory, max_bytes, folder)

    def memory_report(self) -> SnapshotReport:
        """What the weight snapshots hold: counts and bytes in memory and on disk, the folder."""
        with self._lock:
            return self._snapshots.report()

    def close(self) -> None:
        """Remove the snapshots' spill folder now; the session keeps working, but rounds whose
        snapshot had spilled can no longer be reverted to or saved."""
        with self._lock:
            self._check_idle("close")
            self._snapshots.close()

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to a directory (safetensors + JSON); see
        :func:`~defuse_widgets.persist.write.save_state`.

        The save is kill-safe: until it completes, the directory still holds the earlier save.
        The session's lock is held throughout, so a save never sees a half-made change.
        """
        with self._lock:
            return save_state(
                path,
                self._state(),
                dataset=dataset_fingerprint(self.data),
                latent_dim=self.generator.latent_dim,
                validation=None if self.validation is None else self.validation.fraction,
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        classifier: nn.Module,
        generator: Any,
        data: ImageDataset | None = None,
        device: str | torch.device = "auto",
        validation: Any = "saved",
    ) -> DefuseSession:
        """Load a saved session; ``data`` defaults to the named bundled dataset (digits).

        ``validation``: "saved" carves the fraction the save recorded again (the same rows, as
        it is seeded; a save made with the user's own pair recorded none, so pass it again);
        anything else as for the session. Everything is read and checked (see
        :func:`~defuse_widgets.persist.read.read_session`) before the session is made, so a
        refused directory leaves ``classifier`` as it was."""
        saved = read_session(path, classifier, as_generator(generator).latent_dim, data)
        if isinstance(validation, str) and validation == "saved":
            validation = saved.validation
        session = cls(
            classifier,
            generator,
            saved.data,
            device=device,
            seed=saved.state["seed"],
            progress=False,
            validation=validation,
        )
        try:
            session.load_state_dict(saved.state)
        except (ValueError, KeyError) as exc:
            raise fail(saved.path, f"session.json is incomplete or inconsistent ({exc})") from exc
        saved.warn_stale()
        return session

    def explorer(self, **options: Any) -> Any:
        """The error explorer widget for this session
        (:class:`~defuse_widgets.widgets.explorer.Explorer`)."""
        return _view("explorer")(self, **options)

    def interpolator(self, *args: Any, **options: Any) -> Any:
        """The live latent interpolation widget
        (:class:`~defuse_widgets.widgets.interpolator.Interpolator`)."""
        return _view("interpolator")(self, *args, **options)

    # ----- the generator: can it draw each class? -----

    def generator_report(
        self,
        labeler: LabelerLike | None = None,
        limit: int | None = 2000,
        min_ratio: float = MIN_RATIO,
    ) -> GeneratorReport:
        """How well the generator draws each class, before any search: see
        :func:`~defuse_widgets.models.generator_report.generator_report`.

        Measured on the validation split (the test split when the session has none), its first
        ``limit`` images (None: all). ``labeler``: a labeler or a classifier module to judge with;
        None judges with the session's classifier, on the images it classifies right. A class
        whose reconstructions are recognised at less than ``min_ratio`` of its real images' rate
        is flagged (``report.flagged``, ``report.messages``): its regions will look like another
        class, so fix the generator first.
        """
        validate_params(CONSTRAINTS, limit=limit)
        judge, is_classifier = self._judge(labeler)
        x, y = self.validation_data() if self.validation is not None else self.data.split("test")
        with self._lock:
            return generator_report(
                self.generator,
                judge,
                x[:limit],
                y[:limit],
                self.data.classes,
                judge_is_classifier=is_classifier,
                min_ratio=min_ratio,
                device=self.device,
            )

    def sample_recognition(
        self, labeler: LabelerLike | None = None, samples: int = 32
    ) -> dict[int, float]:
        """Region id -> the share of the region's decoded samples that ``labeler`` (None: the
        session's classifier) calls the region's class: its label when it has a class label,
        else its majority true class. A low share means the generator does not draw that class
        there: a person (or labeler) will not recognise the region.

        The samples are the ``purpose="label"`` draws (those a labeler looks at), ``samples``
        per region. Without a labeler the classifier judges its own errors' neighbourhood, so
        the share is the region's sample accuracy; pass a labeler to judge the generator.
        """
        validate_params(CONSTRAINTS, samples=samples)
        judge, _ = self._judge(labeler)
        with self._lock:
            regions, labels = self._require_regions(), dict(self._labels)
            out = {}
            for region in regions:
                label = labels.get(region.id)
                expected = label if label is not None and label >= 0 else region.transition[0]
                codes = regions.sample_codes(region.id, samples, purpose="label")
                out[region.id] = recognition(judge, self.decode(codes), expected)
        return out

    def _judge(self, labeler: LabelerLike | None) -> tuple[nn.Module, bool]:
        """The model that judges the generator (the labeler's; None: the session's classifier),
        and whether it is the session's classifier."""
        if labeler is None:
            return self.classifier, True
        model = as_labeler(labeler, "model").model
        assert model is not None  # as_labeler refuses a labeler without one
        return model, False

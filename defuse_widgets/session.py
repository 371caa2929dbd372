"""DefuseSession: holds the models, data and results of one debugging session and runs its steps."""

from __future__ import annotations

import json
import os
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .audit import (
    AuditResult,
    Relabel,
    apply_relabels,
    audit_region,
    check_indices,
    check_probability,
    now_iso,
    read_relabel_source,
    relabels_csv,
    relabels_document,
    validate_records,
    within_region,
)
from .correct import (
    Cancelled,
    CancelToken,
    RoundSettings,
    StepCallback,
    accuracy_by_class,
    fine_tune,
    restore,
    snapshot,
)
from .data import ImageDataset
from .device import resolve_device
from .distill import DEFAULT_SCALE, RegionSet, fit_regions, robust_cholesky, user_region
from .generative import as_classifier, as_generator, check_logits
from .identify import ErrorSet, identify
from .inference import predict_labels
from .jsonio import nan_to_none  # noqa: F401  (moved; re-exported until callers move)
from .labels import UNRECOGNIZABLE, ReferenceModelLabeler, check_label, label_name

EVAL_SAMPLES = 200
EVENTS = ("errors", "regions", "labels", "relabels", "model")


class DefuseSession:
    """One Defuse debugging session: identify -> distill -> label -> correct, with revert and save.

    Parameters
    ----------
    classifier : torch module returning logits (N, K); it is fine-tuned in place, and
        :meth:`revert` restores its original weights bit for bit.
    generator : a VAE (see :func:`~defuse_widgets.generative.as_generator`).
    data : the :class:`~defuse_widgets.data.ImageDataset` the classifier was trained on.
    device : "auto" (CUDA, MPS, CPU) or a device; both models are moved there.
    seed : seeds every random step, so a session repeats exactly on the CPU.

    Examples
    --------
    >>> s = DefuseSession(classifier=clf, generator=vae, data=data, seed=0)  # doctest: +SKIP
    >>> errors = s.identify(strategy="reference", split="test")  # doctest: +SKIP
    >>> regions = s.distill()  # doctest: +SKIP
    """

    def __init__(
        self,
        classifier: nn.Module,
        generator: Any,
        data: ImageDataset,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress: bool = True,
    ):
        if not isinstance(data, ImageDataset):
            raise TypeError(
                f"data: expected an ImageDataset (see load_dataset), got {type(data).__name__}"
            )
        self.device = resolve_device(device)
        self.classifier = as_classifier(classifier).to(self.device).eval()
        self.generator = as_generator(generator).to(self.device)
        self.data = data
        self.seed = int(seed)
        self.progress = progress
        self._check_models()
        self.errors: ErrorSet | None = None
        self.regions: RegionSet | None = None
        self._labels: dict[int, int] = {}
        self.history: list[dict[str, Any]] = []
        self._snapshots: list[dict[str, torch.Tensor]] = [snapshot(self.classifier)]
        self.active_round = 0
        self._codes: dict[str, torch.Tensor] = {}
        self._codes_generator: Any = self.generator
        self._probability_cache: dict[str, tuple[tuple[Any, ...], torch.Tensor]] = {}
        self._relabels: dict[int, Relabel] = {}
        self._lock = threading.RLock()
        self._running = False
        self._observers: list[Callable[[], Callable[[str], Any] | None]] = []

    def __repr__(self) -> str:
        return (
            f"DefuseSession(data={self.data.name!r}, device={str(self.device)!r}, "
            f"errors={len(self.errors) if self.errors is not None else None}, "
            f"regions={len(self.regions) if self.regions is not None else None}, "
            f"labels={len(self._labels)}, rounds={len(self._snapshots) - 1})"
        )

    # ----- change events (the widgets follow the session through them) -----

    def observe(self, callback: Callable[[str], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` after each change of the session's state; returns a function
        that stops the calls.

        Events (see ``EVENTS``): ``"errors"`` (identify), ``"regions"`` (distill, add_region),
        ``"labels"``, ``"relabels"``, ``"model"`` (a completed correction round, revert). The call
        comes from the thread that made the change. A method of a Python object is held weakly (a
        widget that is gone stops listening); an exception in a callback becomes a warning.
        """
        if not callable(callback):
            raise TypeError(f"callback: expected a callable, got {callback!r}")
        ref: Callable[[], Any] = (
            weakref.WeakMethod(callback)
            if isinstance(callback, types.MethodType)
            else (lambda: callback)
        )
        self._observers.append(ref)
        return lambda: self._observers.remove(ref) if ref in self._observers else None

    def _emit(self, *events: str) -> None:
        for ref in list(self._observers):
            callback = ref()
            if callback is None:
                self._observers.remove(ref)
                continue
            for event in events:
                try:
                    callback(event)
                except Exception as exc:  # a broken view must not break the session
                    warnings.warn(f"session observer failed on {event!r}: {exc!r}", stacklevel=2)

    def _check_models(self) -> None:
        x = self.data.x_test[:2].to(self.device)
        with torch.inference_mode():
            mu, _ = self.generator.encode(x)
            try:
                decoded = self.generator.decode(mu)
            except RuntimeError as exc:
                raise ValueError(
                    f"generator: decoding the encoder's {tuple(mu.shape)} codes failed ({exc}); "
                    "does encode return (mu, logvar) and is latent_dim right?"
                ) from exc
            if decoded.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"generator: decodes to images of shape {tuple(decoded.shape[1:])}, but the "
                    f"data's images are {tuple(x.shape[1:])}"
                )
            check_logits(self.classifier(x), len(x), self.data.num_classes)

    # ----- model helpers (CPU in, CPU out, batched, on the session's device) -----

    @torch.inference_mode()
    def encode(
        self, images: torch.Tensor, batch_size: int = 1024, progress: bool = False
    ) -> torch.Tensor:
        """(n, d) encoder means of images (n, C, H, W), on the CPU (a progress bar after 2 s
        when ``progress``)."""
        from tqdm.auto import tqdm

        batches = tqdm(
            images.split(batch_size),
            desc="encode",
            unit="batch",
            delay=2,
            disable=not progress,
            leave=False,
        )
        parts = [self.generator.encode(x.to(self.device))[0].float().cpu() for x in batches]
        return torch.cat(parts) if parts else torch.zeros(0, self.generator.latent_dim)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """(n, C, H, W) decoded images of codes (n, d), on the CPU."""
        parts = [
            self.generator.decode(z.to(self.device).float()).float().cpu()
            for z in codes.split(batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, *self.data.image_shape)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """(n, K) class probabilities of the current classifier, on the CPU."""
        with self._lock:
            parts = [
                self.classifier(x.to(self.device)).float().softmax(1).cpu()
                for x in images.split(batch_size)
            ]
        return torch.cat(parts) if parts else torch.zeros(0, self.data.num_classes)

    def split_codes(self, split: str) -> torch.Tensor:
        """Encoder means of a whole split (cached per generator), (N, d) on the CPU."""
        if self._codes_generator is not self.generator:  # a new generator: cached codes are stale
            self._codes, self._codes_generator = {}, self.generator
            self._probability_cache = {}
        if split not in self._codes:
            self._codes[split] = self.encode(self.data.split(split)[0], progress=self.progress)
        return self._codes[split]

    # ----- identify and distill -----

    def identify(
        self,
        strategy: str = "reference",
        split: str = "test",
        limit: int | None = None,
        **options: Any,
    ) -> ErrorSet:
        """Search the latent space around the ``split``'s images (the first ``limit`` of them).

        Options are those of :func:`~defuse_widgets.identify.identify`. Replaces earlier errors,
        regions and labels (only once the search has succeeded).
        """
        x, y = self.data.split(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        options.setdefault("seed", self.seed)
        options.setdefault("progress", self.progress)
        with self._lock:
            errors = identify(
                self.classifier,
                self.generator,
                x,
                y,
                strategy,
                device=self.device,
                split=split,
                **options,
            )
            self.errors, self.regions, self._labels = errors, None, {}
        self._emit("errors", "regions", "labels")
        return errors

    def distill(
        self,
        max_regions: int = 100,
        min_weight: float = 0.01,
        covariance_type: str = "full",
        max_fit: int = 10_000,
        **options: Any,
    ) -> RegionSet:
        """Fit the Dirichlet-process mixture to the errors' codes; see
        :func:`~defuse_widgets.distill.fit_regions`. Replaces earlier regions and labels."""
        if self.errors is None:
            raise RuntimeError("no errors yet: call identify() before distill()")
        options.setdefault("seed", self.seed)
        regions = fit_regions(
            self.errors, max_regions, min_weight, covariance_type, max_fit, **options
        )
        self._bind(regions)
        self.regions, self._labels = regions, {}
        self._emit("regions", "labels")
        return regions

    def _bind(self, regions: RegionSet) -> None:
        regions.decode = self.decode
        regions.predict = self.predict

    def _require_regions(self) -> RegionSet:
        if self.regions is None:
            raise RuntimeError("no regions yet: call identify() and distill() first")
        return self.regions

    def add_region(self, error_indices: Sequence[int] | torch.Tensor) -> int:
        """Make a user-defined region of the errors ``error_indices``; returns its id."""
        regions = self._require_regions()
        assert self.errors is not None
        region_id = user_region(regions, self.errors, torch.as_tensor(error_indices)).id
        self._emit("regions")
        return region_id

    # ----- labels -----

    @property
    def labels(self) -> dict[int, int]:
        """Region id -> label (class index, MODEL_IS_RIGHT or UNRECOGNIZABLE); a copy."""
        return dict(self._labels)

    def label(self, region_id: int, label: int) -> None:
        """Give a region one label: a class index, ``MODEL_IS_RIGHT`` or ``UNRECOGNIZABLE``."""
        self._require_regions().get(region_id)
        self._labels[int(region_id)] = check_label(label, self.data.num_classes)
        self._emit("labels")

    def unlabel(self, region_id: int) -> None:
        """Remove a region's label (no error if it had none)."""
        self._require_regions().get(region_id)
        if self._labels.pop(int(region_id), None) is not None:
            self._emit("labels")

    def export_labels(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Labels as a JSON-ready dict (also written to ``path`` when given)."""
        out = {
            "format": "defuse-widgets-labels",
            "classes": list(self.data.classes),
            "labels": {str(k): v for k, v in sorted(self._labels.items())},
        }
        if path is not None:
            Path(path).write_text(json.dumps(out, indent=2))
        return out

    def import_labels(self, source: str | os.PathLike | Mapping[str, Any]) -> None:
        """Replace the labels with those of :meth:`export_labels` output (a dict or a JSON file)."""
        if isinstance(source, Mapping):
            doc: Any = source
        else:
            try:
                doc = json.loads(Path(source).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"labels: {source} is not a JSON file ({exc})") from exc
        if (
            not isinstance(doc, Mapping)
            or doc.get("format") != "defuse-widgets-labels"
            or not isinstance(doc.get("labels"), dict)
        ):
            raise ValueError(
                "labels: expected export_labels() output with format 'defuse-widgets-labels'"
            )
        classes = doc.get("classes")
        if classes is not None and list(classes) != list(self.data.classes):
            raise ValueError(
                f"labels: they were made for the classes {list(classes)}, but this session's "
                f"data has {list(self.data.classes)}"
            )
        regions = self._require_regions()
        new = {}
        for key, value in doc["labels"].items():
            try:
                region_id = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"labels: expected integer region ids, got {key!r}") from None
            regions.get(region_id)
            new[region_id] = check_label(value, self.data.num_classes)
        self._labels = new
        self._emit("labels")

    def auto_label(self, labeler: ReferenceModelLabeler, overwrite: bool = False) -> dict[int, int]:
        """Label every region (unlabeled ones unless ``overwrite``) with an automatic labeler."""
        regions = self._require_regions()
        new = dict(self._labels)
        for region in regions:
            if region.id in new and not overwrite:
                continue
            sample = regions.sample(region.id, labeler.samples, purpose="label")
            new[region.id] = labeler.label_region(sample.images, sample.predictions)
        self._labels = new
        self._emit("labels")
        return self.labels

    def correctable(self) -> dict[int, int]:
        """The labeled regions that correction trains on: those labeled with a class."""
        return {rid: lab for rid, lab in self._labels.items() if lab >= 0}

    # ----- audit the training data through the regions, and relabels -----

    def region_probability(self, split: str = "train", batch_size: int = 4096) -> torch.Tensor:
        """(N, R) probability that the mixture puts each image of ``split`` in each region
        (columns in ``regions.regions`` order); batched and cached until the regions change."""
        regions = self._require_regions()
        codes = self.split_codes(split)
        key = (regions, regions.mixture, tuple(r.component for r in regions.regions), codes)
        cached = self._probability_cache.get(split)
        if (
            cached is not None
            and len(cached[0]) == len(key)
            and all(a is b for a, b in zip(cached[0], key))
        ):
            return cached[1]
        from tqdm.auto import tqdm

        chunks = tqdm(
            codes.split(batch_size),
            desc=f"regions of {split} images",
            unit="batch",
            delay=2,
            disable=not self.progress,
            leave=False,
        )
        parts = [regions.region_probability(c) for c in chunks]
        prob = torch.cat(parts) if parts else torch.zeros(0, len(regions), dtype=torch.float32)
        self._probability_cache[split] = (key, prob)
        return prob

    def _region_column(self, region_id: int) -> int:
        regions = self._require_regions()
        regions.get(region_id)
        return [r.id for r in regions.regions].index(region_id)

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

    def training_labels(self) -> torch.Tensor:
        """(N_train,) the training labels with the confirmed relabels applied (a new tensor;
        ``data.y_train`` is never changed). Correction trains on these."""
        return apply_relabels(self.data.y_train, self._relabels.values())

    def audit(
        self,
        region_id: int,
        min_probability: float = 0.5,
        label: int | None = None,
        coverage: float | None = 0.99,
    ) -> AuditResult:
        """The training images the mixture puts in the region with probability at least
        ``min_probability`` whose training label (relabels applied) differs from the region's label.

        ``label`` audits against another class than the region's label (needed for a region
        without a class label). ``coverage`` also requires a code to lie inside the ellipsoid
        holding that share of the region's Gaussian (None: membership probability only; a code
        far from every error otherwise lands in its nearest region with probability ~1).

        Returns an :class:`~defuse_widgets.audit.AuditResult`: index, image, training label, the
        classifier's prediction and the probability of each, the likeliest mistakes first.
        """
        self._require_regions().get(region_id)
        check_probability(min_probability)
        target = self._audit_label(region_id, label)
        prob = self._audit_probability(region_id, coverage)
        return audit_region(
            region_id,
            target,
            prob,
            self.data.x_train,
            self.training_labels(),
            lambda x: self.predict(x).argmax(1),
            min_probability,
        )

    def _audit_probability(self, region_id: int, coverage: float | None) -> torch.Tensor:
        prob = self.region_probability("train")[:, self._region_column(region_id)]
        if coverage is None:
            return prob
        region = self._require_regions().get(region_id)
        inside = within_region(self.split_codes("train"), region.mean, region.covariance, coverage)
        return torch.where(inside, prob, torch.zeros_like(prob))

    def audit_summary(
        self, min_probability: float = 0.5, coverage: float | None = 0.99
    ) -> dict[int, dict[str, Any]]:
        """Per class-labeled region: its label, the training images inside it (``inside``), those
        whose label conflicts with the region's (``conflicts``, relabels applied) and the confirmed
        relabels inside it (``relabeled``)."""
        check_probability(min_probability)
        targets = self.correctable()
        if not targets:
            return {}
        labels = self.training_labels()
        relabeled = torch.zeros(len(labels), dtype=torch.bool)
        if self._relabels:
            relabeled[torch.tensor(list(self._relabels))] = True
        out = {}
        for rid, lab in sorted(targets.items()):
            inside = self._audit_probability(rid, coverage) >= min_probability
            out[rid] = {
                "label": lab,
                "inside": int(inside.sum()),
                "conflicts": int((inside & (labels != lab)).sum()),
                "relabeled": int((inside & relabeled).sum()),
            }
        return out

    @property
    def relabels(self) -> dict[int, Relabel]:
        """Training index -> confirmed :class:`~defuse_widgets.audit.Relabel`; a copy."""
        return dict(self._relabels)

    def relabel(self, indices: Sequence[int] | torch.Tensor, label: int, who: str = "user") -> int:
        """Confirm that the training images ``indices`` are class ``label``; returns how many
        records changed. Relabeling an image to its dataset label removes its relabel."""
        idx = check_indices(indices, len(self.data.y_train))
        value = check_label(label, self.data.num_classes)
        if value < 0:
            raise ValueError(
                f"label: expected a class index in [0, {self.data.num_classes - 1}], got {value}"
            )
        if not isinstance(who, str):
            raise ValueError(f"who: expected a string naming the person or labeler, got {who!r}")
        when, changed = now_iso(), 0
        with self._lock:
            for i in idx.tolist():
                old = int(self.data.y_train[i])
                current = self._relabels.get(i)
                if value == old:
                    changed += self._relabels.pop(i, None) is not None
                elif current is None or current.new_label != value:
                    self._relabels[i] = Relabel(i, old, value, who, when)
                    changed += 1
        if changed:
            self._emit("relabels")
        return changed

    def unrelabel(self, indices: Sequence[int] | torch.Tensor) -> int:
        """Undo the relabels of the training images ``indices`` (no error for images without one);
        returns how many were removed."""
        idx = check_indices(indices, len(self.data.y_train))
        with self._lock:
            undone = sum(self._relabels.pop(i, None) is not None for i in idx.tolist())
        if undone:
            self._emit("relabels")
        return undone

    def confirm_audit(
        self,
        region_id: int,
        labeler: Any,
        min_probability: float = 0.5,
        who: str | None = None,
        coverage: float | None = 0.99,
    ) -> dict[str, Any]:
        """Let ``labeler`` decide image by image on the region's :meth:`audit` and relabel the
        images it confirms as the region's label.

        ``labeler`` has ``label_images(images) -> (n,)`` classes (``UNRECOGNIZABLE`` to abstain),
        like :class:`~defuse_widgets.labels.ReferenceModelLabeler`, or is such a callable.
        Returns ``{"region", "label", "candidates", "confirmed" (indices), "abstained",
        "disagreed"}``.
        """
        decide = getattr(labeler, "label_images", labeler)
        if not callable(decide):
            raise TypeError(
                "labeler: expected an object with label_images(images) or a callable, "
                f"got {labeler!r}"
            )
        result = self.audit(region_id, min_probability, coverage=coverage)
        votes = (
            torch.as_tensor(decide(result.images)).cpu().long().flatten()
            if len(result)
            else torch.zeros(0)
        )
        if votes.shape != result.indices.shape:
            raise ValueError(
                f"labeler: returned {tuple(votes.shape)} labels for {len(result)} images"
            )
        confirmed = result.indices[votes == result.region_label]
        name = who if who is not None else str(getattr(labeler, "name", type(labeler).__name__))
        self.relabel(confirmed, result.region_label, who=name)
        abstained = int((votes == UNRECOGNIZABLE).sum())
        return {
            "region": int(region_id),
            "label": result.region_label,
            "candidates": len(result),
            "confirmed": confirmed.tolist(),
            "abstained": abstained,
            "disagreed": len(result) - len(confirmed) - abstained,
        }

    def export_relabels(
        self, path: str | os.PathLike | None = None, format: str | None = None
    ) -> dict[str, Any]:
        """The relabels as a JSON-ready dict; written to ``path`` when given, as CSV when ``format``
        is "csv" or the path ends in ``.csv`` (columns index, old_label, new_label, who, when),
        else as JSON."""
        doc = relabels_document(
            self._relabels.values(), self.data.name, len(self.data.y_train), self.data.classes
        )
        if format not in (None, "json", "csv"):
            raise ValueError(f"format: expected 'json', 'csv' or None, got {format!r}")
        if path is not None:
            as_csv = format == "csv" or (format is None and str(path).lower().endswith(".csv"))
            text = relabels_csv(self._relabels.values()) if as_csv else json.dumps(doc, indent=1)
            Path(path).write_text(text)
        return doc

    def import_relabels(
        self, source: str | os.PathLike | Mapping[str, Any], replace: bool = True
    ) -> int:
        """Load relabels from :meth:`export_relabels` output (a dict, a JSON or a CSV file),
        replacing the current ones (or merging over them when ``replace=False``). Every record is
        checked against this dataset's training labels before anything changes. Returns the
        number of relabels afterwards."""
        records = validate_records(
            read_relabel_source(source), self.data.y_train, self.data.num_classes
        )
        with self._lock:
            self._relabels = records if replace else {**self._relabels, **records}
        self._emit("relabels")
        return len(self._relabels)

    # ----- correct, evaluate, revert -----

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
    ) -> dict[str, Any]:
        """Run one fine-tuning round on the class-labeled regions and return its record.

        Loss = CE(training batch) + ``lam`` x CE(batch of fresh samples from the labeled regions,
        drawn from N(mean, ``scale`` x covariance)). The classifier changes only when the round
        completes; a cancelled round (``cancel.cancel()``) leaves it exactly as before.
        Returns ``{"round", "settings", "losses", "cancelled", "evaluation", "seconds"}``.
        """
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
        settings.check()
        targets = self.correctable()
        if not targets:
            raise RuntimeError("no region is labeled with a class: label at least one region first")
        with self._lock:
            if self._running:
                raise RuntimeError("a fine-tuning round is already running; cancel it or wait")
            self._running = True
        try:
            return self._run_round(settings, targets, cancel, callback)
        finally:
            self._running = False

    def _run_round(
        self,
        settings: RoundSettings,
        targets: dict[int, int],
        cancel: CancelToken | None,
        callback: StepCallback | None,
    ) -> dict[str, Any]:
        start = time.perf_counter()
        base = self.active_round
        sampler = self._region_sampler(targets, settings.scale, settings.seed)
        try:
            state, losses = fine_tune(
                self.classifier,
                self.data.x_train,
                self.training_labels(),
                sampler,
                settings,
                cancel,
                callback,
            )
        except Cancelled:
            return {
                "round": None,
                "cancelled": True,
                "losses": [],
                "evaluation": None,
                "settings": vars(settings),
                "seconds": time.perf_counter() - start,
            }
        with self._lock:
            restore(self.classifier, state)
            self._snapshots.append(state)
            self.active_round = len(self._snapshots) - 1
        record = {
            "round": self.active_round,
            "base_round": base,
            "cancelled": False,
            "settings": vars(settings),
            "labels": dict(targets),
            "losses": losses,
            "relabels": len(self._relabels),
        }
        record["evaluation"] = self.evaluate()
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self._emit("model")
        return record

    def _region_sampler(
        self, targets: dict[int, int], scale: float | None, seed: int
    ) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
        regions = self._require_regions()
        scale = DEFAULT_SCALE if scale is None else scale
        ids = list(targets)
        means = torch.stack([regions.get(r).mean for r in ids]).to(self.device)
        chols = torch.stack(
            [robust_cholesky(regions.get(r).covariance.double() * scale).float() for r in ids]
        ).to(self.device)
        labels = torch.tensor([targets[r] for r in ids], device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)

        def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            pick = torch.randint(len(ids), (n,), generator=gen, device=self.device)
            eps = torch.randn(n, means.shape[1], generator=gen, device=self.device)
            z = means[pick] + (chols[pick] @ eps[..., None])[..., 0]
            with torch.no_grad():
                return self.generator.decode(z).float(), labels[pick]

        return batch

    def evaluate(self, samples: int = EVAL_SAMPLES) -> dict[str, Any]:
        """Test accuracy (overall, per class) and per labeled region accuracy on held-out decoded
        samples and on real test images the mixture puts in the region with probability > 0.5.

        The real-image figure is the honest measure of a fix; the held-out samples are drawn from
        a stream that fine-tuning never trains on.
        """
        x, y = self.data.x_test, self.data.y_test
        with self._lock:
            pred = predict_labels(self.classifier, x)
        out: dict[str, Any] = {
            "round": self.active_round,
            "test_accuracy": float((pred == y).float().mean()),
            "per_class": accuracy_by_class(pred, y, self.data.num_classes),
            "regions": {},
        }
        targets = self.correctable()
        if self.regions is not None and targets:
            out["regions"] = self._region_accuracies(targets, pred, samples)
        rows = out["regions"].values()
        hits = sum(r["real_hits"] for r in rows)
        n_real = sum(r["real_images"] for r in rows)
        out["labeled_region_accuracy"] = (
            sum(r["sample_accuracy"] for r in rows) / len(rows) if rows else float("nan")
        )
        out["labeled_region_real_accuracy"] = hits / n_real if n_real else float("nan")
        out["labeled_region_real_images"] = n_real
        return out

    def _region_accuracies(
        self, targets: dict[int, int], test_pred: torch.Tensor, samples: int
    ) -> dict[int, dict[str, Any]]:
        regions = self._require_regions()
        prob = regions.region_probability(self.split_codes("test"))
        column = {r.id: i for i, r in enumerate(regions.regions)}
        out = {}
        for rid, label in targets.items():
            sample = regions.sample(rid, samples, purpose="eval")
            inside = prob[:, column[rid]] > 0.5
            hits = int((test_pred[inside] == self.data.y_test[inside]).sum())
            n = int(inside.sum())
            out[rid] = {
                "label": label,
                "sample_accuracy": float((sample.predictions == label).float().mean()),
                "real_images": n,
                "real_hits": hits,
                "real_accuracy": hits / n if n else float("nan"),
            }
        return out

    @property
    def rounds(self) -> int:
        """Completed fine-tuning rounds (snapshots besides the original)."""
        return len(self._snapshots) - 1

    def revert(self, round: int | None = None) -> None:
        """Restore the original weights (``round=None`` or 0) or a round's, bit for bit."""
        target = 0 if round is None else round
        if (
            isinstance(target, bool)
            or not isinstance(target, int)
            or not 0 <= target < len(self._snapshots)
        ):
            raise ValueError(
                f"round: expected None or an integer in [0, {self.rounds}], got {round!r}"
            )
        with self._lock:
            if self._running:
                raise RuntimeError("a fine-tuning round is running; cancel it before reverting")
            restore(self.classifier, self._snapshots[target])
            self.active_round = target
        self._emit("model")

    # ----- persistence and widgets -----

    def save(self, path: str | os.PathLike) -> Path:
        """Write the session to a directory (safetensors + JSON); see ``persist``."""
        from .persist import save_session

        return save_session(self, Path(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        classifier: nn.Module,
        generator: Any,
        data: ImageDataset | None = None,
        device: str | torch.device = "auto",
    ) -> DefuseSession:
        """Load a saved session; ``data`` defaults to the named bundled dataset (digits)."""
        from .persist import load_session

        return load_session(cls, Path(path), classifier, generator, data, device)

    def explorer(self, **options: Any) -> Any:
        """The error explorer widget for this session."""
        from .widgets.explorer import Explorer

        return Explorer(self, **options)

    def interpolator(self, *args: Any, **options: Any) -> Any:
        """The live latent interpolation widget (see ``widgets.interpolator.Interpolator``)."""
        from .widgets.interpolator import Interpolator

        return Interpolator(self, *args, **options)

"""The core of a :class:`~defuse_widgets.DefuseSession`: its state, change events and
batched model helpers, shared by the session's step mixins (audit, rounds)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from psygnal import EmitLoopError, Signal
from torch import nn

from defuse_widgets.correction.evaluation import RoundRecord
from defuse_widgets.correction.round import Refusal
from defuse_widgets.correction.settings import DEFAULTS
from defuse_widgets.correction.snapshots import SnapshotStore
from defuse_widgets.correction.training import snapshot
from defuse_widgets.correction.validation import (
    DEFAULT_FRACTION,
    ValidationSplit,
    ValidationWarning,
    leak_note,
    make_validation,
    resolution_note,
)
from defuse_widgets.data.dataset import ImageDataset
from defuse_widgets.distributed import map_model as ray_map
from defuse_widgets.distributed.backend import RayBackend
from defuse_widgets.models.generative import (
    GeneratorAdapter,
    as_classifier,
    as_generator,
    check_materialized,
    check_models,
)
from defuse_widgets.models.inference import EncoderMeans, Probabilities, batched
from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.regions.relabels import RelabelStore
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.search.inputs import check_backend
from defuse_widgets.utils.device import resolve_device

EVENTS = ("errors", "regions", "labels", "relabels", "model")
RAY_MIN_IMAGES = 8192
"""With a Ray backend, ``predict``/``encode`` on fewer images stay local: starting an actor pool
takes seconds, a batch of thumbnails or a panel takes milliseconds here. Whole splits always go."""


@dataclass(frozen=True)
class LastRound:
    """What the last round left for :meth:`~defuse_widgets.DefuseSession.disputes`.

    Attributes
    ----------
    round : its number.
    base : the round it started from.
    refusal : its best refused check, when it kept its starting weights for harming a class.
    moved : whether it moved any weights (a refused check counts).
    """

    round: int
    base: int
    refusal: Refusal | None
    moved: bool


class SessionBase:
    """State, events and model helpers of a session; see :class:`DefuseSession` for its
    parameters."""

    changed = Signal(str)
    """Emitted with one of ``EVENTS`` after each change of the session's state."""

    ray_min_images = RAY_MIN_IMAGES
    """With a Ray backend: ``predict``/``encode`` calls on at least this many images go to Ray."""

    def __init__(
        self,
        classifier: nn.Module,
        generator: Any,
        data: ImageDataset,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress: bool = True,
        *,
        backend: str | RayBackend = "local",
        validation: Any = DEFAULT_FRACTION,
    ):
        if not isinstance(data, ImageDataset):
            raise TypeError(
                f"data: expected an ImageDataset (see load_dataset), got {type(data).__name__}"
            )
        self.backend = backend  # checked before any work
        classifier, generator = as_classifier(classifier), as_generator(generator)
        check_materialized("classifier", [classifier])
        check_materialized("generator", generator.modules)
        self.device = resolve_device(device)
        self.classifier = classifier.to(self.device).eval()
        self.generator: GeneratorAdapter = generator.to(self.device)
        self.data = data
        self.seed = int(seed)
        self.validation: ValidationSplit | None = make_validation(data, validation, self.seed)
        self.progress = progress
        check_models(
            self.generator, self.classifier, data.x_test[:2].to(self.device), data.num_classes
        )
        self.validation_notes: list[str] = []
        """What limits the validation split as a judge of rounds (too small, or probably seen in
        training); each is also warned once when the session is made."""
        self.errors: ErrorSet | None = None
        self.regions: RegionSet | None = None
        self.history: list[RoundRecord] = []
        self.active_round = 0
        self._labels: dict[int, int] = {}
        self._relabels = RelabelStore(data.y_train, data.num_classes)
        self._snapshots = SnapshotStore([snapshot(self.classifier)])
        self._last_round: LastRound | None = None
        self._codes: dict[str, torch.Tensor] = {}
        self._codes_of: GeneratorAdapter = self.generator
        self._membership: dict[str, torch.Tensor] = {}
        self._lock = threading.RLock()
        self._running = False
        if self.validation is not None:
            self._check_validation()

    def _check_validation(self) -> None:
        """Note and warn when the validation split is too small to resolve the default
        tolerance, or when the classifier probably trained on it (see ``validation_notes``)."""
        x_val, y_val = self.validation_data()
        resolution = resolution_note(
            y_val, self.data.num_classes, DEFAULTS.tolerance, DEFAULTS.confidence
        )
        x_test, y_test = self.data.split("test")
        assert self.validation is not None
        fit = self.validation.fit_rows
        pick = torch.randperm(len(fit), generator=torch.Generator().manual_seed(self.seed))
        trained = fit[pick[: len(y_val)]]  # as many training rows as validation rows
        leak = leak_note(
            self.predict(x_val).argmax(1) == y_val,
            self.predict(x_test).argmax(1) == y_test,
            self.predict(self.data.x_train[trained]).argmax(1) == self.data.y_train[trained],
            labels=(y_val, y_test),
            class_names=self.data.classes,
        )
        self.validation_notes = [note for note in (leak, resolution) if note]
        for note in self.validation_notes:
            warnings.warn(note, ValidationWarning, stacklevel=3)

    def __repr__(self) -> str:
        return (
            f"DefuseSession(data={self.data.name!r}, device={str(self.device)!r}, "
            f"errors={len(self.errors) if self.errors is not None else None}, "
            f"regions={len(self.regions) if self.regions is not None else None}, "
            f"labels={len(self._labels)}, rounds={len(self._snapshots) - 1})"
        )

    # ----- change events (the widgets follow the session through them) -----

    def observe(self, callback: Callable[[str], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` after each change; returns a function that stops the calls.

        Events (``EVENTS``): "errors" (identify), "regions" (distill, add_region), "labels",
        "relabels", "model" (a completed round, revert). Same as ``session.changed.connect``:
        the call comes from the thread that made the change, a bound method is held weakly, and
        an exception in a callback becomes a warning.
        """
        if not callable(callback):
            raise TypeError(f"callback: expected a callable, got {callback!r}")
        self.changed.connect(callback)
        return lambda: self.changed.disconnect(callback, missing_ok=True)

    def _emit(self, *events: str) -> None:
        if "errors" in events or "regions" in events:
            self._membership = {}
        for event in events:
            try:
                self.changed.emit(event)
            except EmitLoopError as exc:  # a broken view must not break the session
                cause = exc.__cause__ or exc
                warnings.warn(f"session observer failed on {event!r}: {cause!r}", stacklevel=2)

    # ----- where the models run: the session's device, or a Ray actor pool -----

    @property
    def backend(self) -> str | RayBackend:
        """Where whole-split inference runs and ``identify`` searches by default: ``"local"``
        (the session's device) or a :class:`~defuse_widgets.distributed.backend.RayBackend`.

        Settable: ``"local"``, ``"ray"`` (a default ``RayBackend()``) or a ``RayBackend``; checked
        before it is kept (Ray must be installed). With Ray, ``split_codes``, the test-set
        predictions of ``evaluate()`` and ``predict``/``encode`` on at least ``ray_min_images``
        images run on the pool; smaller calls stay local.
        """
        return "local" if self._ray is None else self._ray

    @backend.setter
    def backend(self, value: str | RayBackend) -> None:
        self._ray = check_backend(value, None)

    def _run(
        self,
        module: nn.Module,
        inputs: torch.Tensor,
        batch_size: int,
        *,
        whole: bool = False,
        empty_shape: tuple[int, ...] = (0,),
        empty_dtype: torch.dtype = torch.float32,
        progress: bool = False,
        desc: str = "",
    ) -> torch.Tensor:
        """``module`` over ``inputs`` in batches: on Ray for a whole split (``whole``) or a large
        input, else on the session's device; (n, ...) on the CPU."""
        ray = self._ray
        if ray is not None and len(inputs) and (whole or len(inputs) >= self.ray_min_images):
            return ray_map.map_model(
                module, inputs, ray, batch_size=batch_size, progress=progress, desc=desc
            )
        return batched(
            module,
            inputs,
            device=self.device,
            batch_size=batch_size,
            empty_shape=empty_shape,
            empty_dtype=empty_dtype,
            progress=progress,
            desc=desc,
        )

    # ----- models, batched (CPU in, CPU out) -----

    def encode(
        self, images: torch.Tensor, batch_size: int = 1024, progress: bool = False
    ) -> torch.Tensor:
        """(n, d) encoder means of images (n, C, H, W), on the CPU (on Ray for a large input)."""
        return self._encode(images, batch_size, progress, whole=False)

    def _encode(
        self, images: torch.Tensor, batch_size: int, progress: bool, whole: bool
    ) -> torch.Tensor:
        return self._run(
            EncoderMeans(self.generator),
            images,
            batch_size,
            whole=whole,
            empty_shape=(0, self.generator.latent_dim),
            progress=progress,
            desc="encode",
        )

    def decode(self, codes: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """(n, C, H, W) decoded images of codes (n, d), on the CPU."""
        return batched(
            lambda z: self.generator.decode(z.float()).float(),
            codes,
            device=self.device,
            batch_size=batch_size,
            empty_shape=(0, *self.data.image_shape),
        )

    def predict(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """(n, K) class probabilities of the current classifier, on the CPU (on Ray for a
        large input)."""
        with self._lock:
            return self._run(
                Probabilities(self.classifier),
                images,
                batch_size,
                empty_shape=(0, self.data.num_classes),
            )

    def split_codes(self, split: str) -> torch.Tensor:
        """Encoder means of a whole split (cached per generator), (N, d) on the CPU.

        ``split``: "train", "test" or "validation" (see :meth:`validation_data`)."""
        if self._codes_of is not self.generator:  # a new generator: cached codes are stale
            self._codes, self._membership, self._codes_of = {}, {}, self.generator
        if split == "validation" and self._require_validation().rows is not None:
            return self.split_codes("train")[self._require_validation().rows]
        if split not in self._codes:
            x = self.validation_data()[0] if split == "validation" else self.data.split(split)[0]
            self._codes[split] = self._encode(x, 1024, self.progress, whole=True)
        return self._codes[split]

    def _require_validation(self) -> ValidationSplit:
        if self.validation is None:
            raise RuntimeError(
                "this session has no validation split (it was made with validation=None)"
            )
        return self.validation

    def validation_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the validation split: carved training images with their training
        labels (confirmed relabels applied), or the user's own pair."""
        v = self._require_validation()
        if v.rows is None:
            return v.images, v.labels  # type: ignore[return-value]
        return self.data.x_train[v.rows], self.training_labels()[v.rows]

    def _check_idle(self, action: str) -> None:
        """Refuse ``action`` while a fine-tuning round runs (call with ``_lock`` held)."""
        if not self._running:
            return
        if action == "correct":
            raise RuntimeError("a fine-tuning round is already running; cancel it or wait")
        if action == "revert":
            raise RuntimeError("a fine-tuning round is running; cancel it before reverting")
        raise RuntimeError(
            f"{action}: the session is busy with a fine-tuning round (in another thread); "
            "cancel it or wait for it to finish, then call it again"
        )

    def _require_regions(self) -> RegionSet:
        if self.regions is None:
            raise RuntimeError("no regions yet: call identify() and distill() first")
        return self.regions

    @property
    def labels(self) -> dict[int, int]:
        """Region id -> label (class index, MODEL_IS_RIGHT or UNRECOGNIZABLE); a copy."""
        return dict(self._labels)

    def correctable(self) -> dict[int, int]:
        """The labeled regions that correction trains on: those labeled with a class."""
        return {rid: lab for rid, lab in self._labels.items() if lab >= 0}

    def training_labels(self) -> torch.Tensor:
        """(N_train,) the training labels with the confirmed relabels applied (a new tensor;
        ``data.y_train`` is never changed). Correction trains on these."""
        return self._relabels.apply()

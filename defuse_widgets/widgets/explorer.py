"""The error explorer: map of the errors, region list and panel, labeling and live fine-tuning.

The widget is a thin view over a :class:`~defuse_widgets.session.DefuseSession`: every action of
the UI is a public method here (so it can be scripted and tested without a browser), state the UI
shows lives in traits (arrays as binary buffers, see :mod:`._codec`), and long work (the UMAP
projection, thumbnails, fine-tuning, re-evaluation, the audit) runs in one background thread, one
job after the other (a job asked for while another runs waits in a queue), so the kernel stays
responsive. The explorer follows the session (``session.observe``): labels, regions, relabels and
model changes made on the session directly (``s.label``, ``s.auto_label``, ``s.correct``,
``s.revert``...) show in the widget as they happen.

The audit shows the training images inside the selected class-labeled region that carry another
label (``session.audit``); the person confirms relabels, which the next fine-tuning round uses.
Only the selected region's audit travels (trait ``audit``, arrays as buffers); a relabel or undo
resends only ``audit_labels`` and ``relabel_count``.

Clicking an error point (or :meth:`Explorer.select_error`, or :meth:`Explorer.select` of one
point) opens the interpolation panel for that error: the explorer holds one
:class:`~.interpolator.Interpolator` child widget in the trait ``interpolator`` (made on the first
selection, retargeted with :meth:`~.interpolator.Interpolator.set_error` on later ones; it travels
as an ``"anywidget:<model_id>"`` reference), and the explorer's front end renders the child's own
view inside its panel (anywidget's ``host.getWidget``), so frames use the interpolator's frame
protocol unchanged.

Browser -> kernel: traits ``selected_region``, ``selected_indices``, ``selected_error``,
``audit_selection``,
``finetune_params`` and custom messages ``{"kind": "label" | "unlabel" | "add_region" |
"finetune" | "cancel" | "revert" | "audit" | "relabel" | "unrelabel" | "thumb", "id": n, ...}``;
each action is answered ``{"kind": "ack", "id": n, "ok", "message"}`` so the page never waits on
a kernel that is gone. Each view says ``{"kind": "hello"}`` when shown and ``{"kind": "bye"}`` when
removed (its cell re-ran or was cleared): an explorer with no view left defers re-evaluating after
a model change until it is shown again, so explorers of earlier cell runs cost nothing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets as t

from .. import projection as proj
from ..imaging import downsample, to_uint8
from ..jsonio import nan_to_none
from ._audit import audit_payload, current_labels
from ._codec import array_serialization, array_to_json
from .interpolator import Interpolator

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#3182bd", "#fd8d3c",
    "#74c476", "#ad494a", "#a55194", "#637939",
)  # fmt: skip
UNASSIGNED = "#b8b8b8"
PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress updates per second reach the browser


def region_color(region_id: int) -> str:
    """Stable color of a region: the palette entry ``region_id % 20`` (grey for -1)."""
    return UNASSIGNED if region_id < 0 else PALETTE[region_id % len(PALETTE)]


def _nested_to_json(value: Any, widget: Any = None) -> Any:
    """Like :func:`array_to_json`, but for dicts/lists holding arrays anywhere."""
    if isinstance(value, dict):
        return {k: _nested_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nested_to_json(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return array_to_json(value)
    return value


def _ints(value: Any) -> list[int] | None:
    """Training indices from a message (a list of integers), None when absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"indices: expected a list of training indices, got {value!r}")
    return value


class Explorer(anywidget.AnyWidget):
    """Interactive map of a session's errors and failure regions, with labeling and fine-tuning.

    Parameters
    ----------
    session : DefuseSession
        A session on which :meth:`identify` has run (and usually :meth:`distill`).
    projection : "umap" or "pca", or an array (M, 2)
        How the error codes are laid out in 2-D. UMAP runs in the background (the map shows once
        it is ready) and is cached per error set; an array is used as given.
    background : "train", "test" or None
        Show that split's images (their encoder means, placed on the errors' map by the fitted
        projection) as faint grey points beneath the errors: where real data lies. Needs
        ``projection="umap"`` or ``"pca"``.
    background_limit : int
        At most this many images of the split (a seeded random subset) make the background.
    samples, members : int
        Fresh region samples and real member errors shown in the region panel.
    thumbnail_side : int
        Hover thumbnails are shrunk to at most this many pixels a side.
    max_thumbnail_bytes : int
        Up to this size, all thumbnails travel once as one binary buffer; above it, the browser
        asks for the hovered point's thumbnail only.
    steps, lam, lr : fine-tuning defaults (editable in the UI).
    min_probability : float
        The audit shows training images the region holds with at least this probability.
    audit_limit : int
        The audit shows at most this many images (the likeliest mistakes).
    who : str
        Names the person in the relabel records made here.
    interpolator_options : dict, optional
        Keyword arguments for the :class:`~.interpolator.Interpolator` of the selected error
        (e.g. ``{"scan_points": 32}``).
    on_select, on_label : optional callbacks, see :meth:`on_select` and :meth:`on_label`.
    block : bool
        Wait for the projection and thumbnails before returning (tests, scripts).
    """

    _esm = Path(__file__).parent.parent / "static" / "explorer.js"

    classes = t.List(t.Unicode()).tag(sync=True)
    points = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    point_region = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    point_labels = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    point_confidence = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    point_fixed = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    thumbs = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    background_points = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    background_label = t.Unicode("").tag(sync=True)
    regions = t.List(t.Dict()).tag(sync=True)
    labels = t.Dict().tag(sync=True)
    selected_region = t.Int(-1).tag(sync=True)
    selected_indices = t.Any(None, allow_none=True).tag(
        sync=True, echo_update=False, **array_serialization
    )
    panel = t.Any(None, allow_none=True).tag(sync=True, to_json=_nested_to_json)
    status = t.Unicode("").tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    busy = t.Unicode("").tag(sync=True)
    progress: t.Dict[str, Any] = t.Dict(
        {"running": False, "step": 0, "total": 0, "loss": None}
    ).tag(sync=True)
    history = t.List(t.Dict()).tag(sync=True)
    baseline = t.Dict(allow_none=True, default_value=None).tag(sync=True)
    finetune_params = t.Dict({"steps": 100, "lam": 1.0, "lr": 0.01}).tag(sync=True)
    audit = t.Any(None, allow_none=True).tag(sync=True, to_json=_nested_to_json)
    audit_labels = t.Any(None, allow_none=True).tag(sync=True, **array_serialization)
    audit_selection = t.Any(None, allow_none=True).tag(
        sync=True, echo_update=False, **array_serialization
    )
    relabel_count = t.Int(0).tag(sync=True)
    selected_error = t.Int(-1).tag(sync=True)
    interpolator = anywidget.WidgetTrait().tag(sync=True)

    def __init__(
        self,
        session: Any,
        projection: str | np.ndarray = "umap",
        background: str | None = None,
        background_limit: int = 5000,
        samples: int = 16,
        members: int = 16,
        thumbnail_side: int = 32,
        max_thumbnail_bytes: int = 8_000_000,
        steps: int = 100,
        lam: float = 1.0,
        lr: float = 0.01,
        min_probability: float = 0.5,
        audit_limit: int = 100,
        who: str = "user",
        interpolator_options: dict[str, Any] | None = None,
        on_select: Callable[[np.ndarray], Any] | None = None,
        on_label: Callable[[int, int | None], Any] | None = None,
        block: bool = False,
        **kwargs: Any,
    ) -> None:
        errors = getattr(session, "errors", None)
        if errors is None:
            raise ValueError("session: has no errors yet; run session.identify() first")
        if not isinstance(projection, str):
            xy = np.asarray(projection, dtype=np.float32)
            if xy.shape != (len(errors), 2):
                raise ValueError(
                    f"projection: expected 'umap', 'pca' or an array of shape ({len(errors)}, 2), "
                    f"got shape {xy.shape}"
                )
        elif projection not in proj.METHODS:
            raise ValueError(f"projection: expected one of {proj.METHODS}, got {projection!r}")
        if background not in (None, "train", "test"):
            raise ValueError(f"background: expected 'train', 'test' or None, got {background!r}")
        if background is not None and not isinstance(projection, str):
            raise ValueError(
                "background: needs projection='umap' or 'pca' (a given array cannot place new "
                "codes); pass background=None"
            )
        if (
            isinstance(background_limit, bool)
            or not isinstance(background_limit, int)
            or (background_limit < 1)
        ):
            raise ValueError(
                f"background_limit: expected a positive integer, got {background_limit!r}"
            )
        for name, value in (("samples", samples), ("members", members)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
        if not isinstance(audit_limit, int) or audit_limit < 1:
            raise ValueError(f"audit_limit: expected a positive integer, got {audit_limit!r}")
        if not isinstance(min_probability, (int, float)) or not 0 <= min_probability <= 1:
            raise ValueError(
                f"min_probability: expected a number in [0, 1], got {min_probability!r}"
            )
        super().__init__(**kwargs)
        self.session = session
        self._errors = errors
        self._projection = projection
        self._background = background
        self._background_limit = background_limit
        self._n_samples = samples
        self._n_members = members
        self._thumb_side = thumbnail_side
        self._max_thumb_bytes = max_thumbnail_bytes
        self._select_callbacks: list[Callable[[np.ndarray], Any]] = []
        self._label_callbacks: list[Callable[[int, int | None], Any]] = []
        self._panel_cache: dict[tuple[int, int], dict[str, Any]] = {}
        self._job: threading.Thread | None = None
        self._queue: list[tuple[str, Callable[[], None]]] = []  # jobs waiting for the running one
        self._views = 0  # views shown in the page ("hello" / "bye" from the front end)
        self._views_seen = False
        self._deferred: tuple[str, dict[str, Any] | None] | None = None  # a model change to show
        self._job_lock = threading.Lock()
        self._token: Any = None
        self._region_eval: dict[int, dict[str, Any]] = {}
        self._evaluated_labels: dict[int, int] | None = None
        self._min_probability = float(min_probability)
        self._audit_limit = audit_limit
        self._who = str(who)
        self._audit_on = False  # set by the first open_audit(): then each labeled region audits
        self._interp_options = dict(interpolator_options or {})
        if on_select is not None:
            self.on_select(on_select)
        if on_label is not None:
            self.on_label(on_label)

        self.finetune_params = {"steps": int(steps), "lam": float(lam), "lr": float(lr)}
        self.classes = [str(c) for c in session.data.classes]
        labels = np.stack([errors.true_label.numpy(), errors.pred_label.numpy()], 1)
        self.point_labels = labels.astype(np.int16)
        self.point_confidence = errors.confidence.numpy().astype(np.float32)
        self.selected_indices = np.zeros(0, np.int32)
        self.audit_selection = np.zeros(0, np.int32)
        self._sync_regions()
        self._sync_labels()
        self._sync_relabels()
        self.observe(self._on_selected_region, "selected_region")
        self.observe(self._on_selected_indices, "selected_indices")
        self.observe(self._on_selected_error, "selected_error")
        self.on_msg(self._on_custom_msg)
        self._unobserve_session = session.observe(self._on_session_event)
        self._start("projecting", self._prepare_map)
        if block:
            self.wait()

    # ----- public API (everything the UI does) -----

    def on_select(self, callback: Callable[[np.ndarray], Any]) -> None:
        """Call ``callback(indices)`` (int array of error indices) on each selection change."""
        self._select_callbacks.append(callback)

    def on_label(self, callback: Callable[[int, int | None], Any]) -> None:
        """Call ``callback(region_id, label)`` on each label change (None when cleared)."""
        self._label_callbacks.append(callback)

    def select_region(self, region_id: int) -> None:
        """Show a region in the panel (and outline it on the map); -1 clears."""
        if region_id != -1:
            self._require_regions().get(region_id)
        self.selected_region = int(region_id)

    def select(self, indices: Sequence[int] | np.ndarray | None) -> None:
        """Set the map selection (error indices); ``None`` clears it."""
        idx = np.zeros(0, np.int32) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(self._errors))):
            raise ValueError(
                f"indices: expected error indices in [0, {len(self._errors) - 1}], got {idx[:5]}..."
            )
        self.selected_indices = np.unique(idx).astype(np.int32)

    def select_error(self, index: int | None) -> None:
        """Show error ``index`` in the interpolation panel (``None`` or -1 hides the panel).

        The first selection makes the child :class:`~.interpolator.Interpolator` (trait
        ``interpolator``); later ones retarget it (``set_error``). Raises ValueError for an index
        outside ``session.errors`` (nothing changes then).
        """
        if index is None:
            index = -1
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"index: expected an integer error index, got {index!r}")
        if not -1 <= int(index) < len(self._errors):
            raise ValueError(
                f"index: expected an error index in [0, {len(self._errors) - 1}] (or -1), "
                f"got {index}"
            )
        self.selected_error = int(index)

    def label(self, region_id: int, label: int) -> None:
        """Label a region (class index, ``MODEL_IS_RIGHT`` or ``UNRECOGNIZABLE``) in the session."""
        self.session.label(region_id, label)  # raises before any change; the event syncs
        self._note(f"Region {region_id} labeled: {self._label_name(int(label))}.")

    def unlabel(self, region_id: int) -> None:
        """Clear a region's label."""
        self.session.unlabel(region_id)
        self._note(f"Region {region_id}: label cleared.")

    def add_region(self, indices: Sequence[int] | np.ndarray | None = None) -> int:
        """Make a user-defined region of ``indices`` (default: the selection); returns its id."""
        if indices is None:
            sel = self.selected_indices
            indices = np.zeros(0, np.int64) if sel is None else np.asarray(sel)
        if len(indices) < 2:
            raise ValueError("indices: select at least 2 points (lasso or box) to make a region")
        region_id = int(self.session.add_region(np.asarray(indices, dtype=np.int64)))
        self.selected_region = region_id
        self._note(f"New region {region_id} from {len(indices)} selected points.")
        return region_id

    def fine_tune(
        self,
        steps: int | None = None,
        lam: float | None = None,
        lr: float | None = None,
        block: bool = False,
    ) -> dict[str, Any] | None:
        """Start one fine-tuning round in the background (after work already running, such as
        the first projection). ``block=True`` waits for it and returns its entry of ``history``
        (None when it was cancelled or failed: see ``error``).

        Raises RuntimeError when a round is already running or no region is labeled with a class,
        and ValueError on bad settings, in both cases before anything starts.
        """
        p = dict(self.finetune_params)
        p.update({k: v for k, v in (("steps", steps), ("lam", lam), ("lr", lr)) if v is not None})
        steps_, lam_, lr_ = p["steps"], p["lam"], p["lr"]
        if not isinstance(steps_, int) or isinstance(steps_, bool) or steps_ < 1:
            raise ValueError(f"steps: expected a positive integer, got {steps_!r}")
        for name, value in (("lam", lam_), ("lr", lr_)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if not self.session.correctable():
            raise RuntimeError("no region is labeled with a class: label at least one region first")
        self.finetune_params = {"steps": steps_, "lam": float(lam_), "lr": float(lr_)}
        from ..correct import CancelToken

        if self._scheduled("fine-tuning"):
            raise RuntimeError("a fine-tuning round is already running: wait for it or cancel it")
        self._token = CancelToken()
        rounds = len(self.history)
        self._start("fine-tuning", lambda: self._run_round(steps_, float(lam_), float(lr_)))
        if not block:
            return None
        self.wait()
        new = [e for e in self.history[rounds:] if e["event"] == "round"]
        return new[-1] if new else None

    def cancel(self) -> None:
        """Cancel a running fine-tuning round (the model stays as it was before the round)."""
        if self._token is None or not self._scheduled("fine-tuning"):
            self._note("Nothing to cancel.")
            return
        self._token.cancel()
        self._note("Cancelling fine-tuning…")

    def revert(self, round: int | None = None, block: bool = False) -> None:
        """Restore the original weights (or those after ``round``) and re-evaluate."""
        if self._scheduled("fine-tuning"):
            raise RuntimeError("a fine-tuning round is running: cancel it before reverting")
        self.session.revert(round)  # raises before any change; its event re-evaluates
        if block:
            self.wait()

    def open_audit(self, region_id: int | None = None, block: bool = False) -> None:
        """Show the training images inside a class-labeled region (default: the selected one)
        whose label differs from the region's, likeliest mistakes first; from then on, selecting a
        labeled region audits it. Runs in the background (the first audit encodes the training
        set); ``block=True`` waits. Raises ValueError for a region without a class label."""
        rid = self.selected_region if region_id is None else int(region_id)
        if rid < 0:
            raise ValueError("region_id: select a region (or pass region_id) to audit")
        self._require_regions().get(rid)
        label = self.session.labels.get(rid)
        if label is None or label < 0:
            what = "no label" if label is None else f"the label {self._label_name(label)!r}"
            raise ValueError(
                f"region {rid} has {what}: label it with a class to audit its training images"
            )
        self._audit_on = True
        if self.selected_region != rid:
            self.selected_region = rid  # its observer starts the audit
        else:
            self._refresh_audit(force=True)
        if block:
            self.wait()

    def select_audit(self, indices: Sequence[int] | np.ndarray | str | None) -> None:
        """Select audit images by training index (``"all"``: every image shown; None: none)."""
        shown = self._audit_indices()
        if isinstance(indices, str):
            if indices != "all":
                raise ValueError(
                    f"indices: expected training indices, 'all' or None, got {indices!r}"
                )
            idx = shown
        elif indices is None:
            idx = np.zeros(0, np.int32)
        else:
            idx = np.unique(np.asarray(indices, dtype=np.int64)).astype(np.int32)
            extra = np.setdiff1d(idx, shown)
            if idx.ndim != 1 or len(extra):
                raise ValueError(
                    f"indices: not among the audit's images: {extra[:5].tolist()} (see "
                    "explorer.audit['indices'])"
                )
        self.audit_selection = np.ascontiguousarray(idx, dtype=np.int32)

    def relabel_selected(
        self, indices: Sequence[int] | np.ndarray | None = None, label: int | None = None
    ) -> int:
        """Confirm that the selected audit images (or training ``indices``) are the audited
        region's class (or ``label``); returns how many relabels changed. The next fine-tuning
        round trains on the relabeled images."""
        idx = self._audit_targets(indices)
        if label is None:
            if self.audit is None:
                raise ValueError("label: no audit is open; pass label= or call open_audit() first")
            label = int(self.audit["label"])
        changed = int(self.session.relabel(idx, int(label), who=self._who))
        name = self._label_name(int(label))
        self._note(
            f"Relabeled {changed} training image{'s' * (changed != 1)} as {name}; "
            f"{self.relabel_count} confirmed relabel{'s' * (self.relabel_count != 1)} in all."
        )
        return changed

    def unrelabel_selected(self, indices: Sequence[int] | np.ndarray | None = None) -> int:
        """Undo the relabels of the selected audit images (or training ``indices``); returns how
        many were undone."""
        idx = self._audit_targets(indices)
        undone = int(self.session.unrelabel(idx))
        self._note(
            f"Undid {undone} relabel{'s' * (undone != 1)}; "
            f"{self.relabel_count} confirmed relabel{'s' * (self.relabel_count != 1)} in all."
        )
        return undone

    def refresh(self) -> None:
        """Re-read regions, labels and relabels from the session and rebuild the panel and audit
        (rarely needed: the explorer follows the session's change events)."""
        self._panel_cache.clear()
        self._sync_regions()
        self._sync_labels()
        self._sync_relabels()
        if self.selected_region >= 0:
            self._send_panel(self.selected_region)
        self._refresh_audit(force=True)

    @property
    def running(self) -> bool:
        """Whether background work (projection, fine-tuning, evaluation, audit) is in progress."""
        job = self._job
        return job is not None and job.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background work (and the jobs queued behind it) to end; re-raise nothing
        (errors are in ``self.error``)."""
        job = self._job
        if job is not None and job is not threading.current_thread():
            job.join(timeout)

    # ----- state from the session -----

    def _on_session_event(self, event: str) -> None:
        """Follow a change made on the session (by this widget or directly)."""
        if self.session.errors is not self._errors:
            self._note("", "The session has new errors (identify ran again): this explorer shows "
                       "the old ones; show s.explorer() again.")  # fmt: skip
            return
        if event == "regions":
            self._panel_cache.clear()
            self._sync_regions()
            rid = self.selected_region
            if rid >= 0 and rid not in {r["id"] for r in self.regions}:
                self.selected_region = -1
            elif rid >= 0:
                self._send_panel(rid)
        elif event == "labels":
            before = {int(k): v for k, v in self.labels.items()}
            self._sync_labels()
            after = self.session.labels
            self._refresh_audit()
            for rid in sorted(before.keys() | after.keys()):
                if before.get(rid) != after.get(rid):
                    for cb in self._label_callbacks:
                        cb(rid, after.get(rid))
        elif event == "relabels":
            self._sync_relabels()
        elif event == "model" and threading.current_thread() is not self._job:
            s = self.session
            last = s.history[-1] if s.history else {}
            if s.active_round and last.get("round") == s.active_round:  # a round just ended
                what, ev = "round", last.get("evaluation")  # measured by the round: reuse it
            else:
                what, ev = "revert", None
            self._panel_cache.clear()
            if self._views_seen and not self._views:  # not shown (its cell re-ran): on next show
                self._deferred = (what, ev)
                return
            self._start("evaluating", lambda: self._after_model_change(what, ev))

    def _require_regions(self) -> Any:
        regions = getattr(self.session, "regions", None)
        if regions is None:
            raise RuntimeError("no regions yet: call session.distill() first")
        return regions

    def _label_name(self, label: int) -> str:
        from ..labels import label_name

        return label_name(label, self.session.data.classes)

    def _sync_regions(self) -> None:
        regions = getattr(self.session, "regions", None)
        if regions is None:
            self.point_region = np.full(len(self._errors), -1, np.int32)
            self.regions = []
            return
        rows = []
        for r in regions.regions:
            ev = self._region_eval.get(r.id, {})
            rows.append(
                nan_to_none(
                    {
                        "id": int(r.id),
                        "color": region_color(int(r.id)),
                        "size": int(r.size),
                        "weight": float(r.weight),
                        "transition": [int(r.transition[0]), int(r.transition[1])],
                        "transition_share": float(r.transition_share),
                        "validity": float(r.mean_validity),
                        "confidence": float(r.mean_confidence),
                        "user_defined": bool(r.user_defined),
                        "sample_accuracy": ev.get("sample_accuracy"),
                        "real_accuracy": ev.get("real_accuracy"),
                        "real_images": ev.get("real_images"),
                    }
                )
            )
        rows.sort(key=lambda row: (-row["size"], row["id"]))
        self.point_region = regions.assignments.numpy().astype(np.int32)
        self.regions = rows

    def _sync_labels(self) -> None:
        self.labels = {str(k): int(v) for k, v in sorted(self.session.labels.items())}

    def _sync_relabels(self) -> None:
        self.relabel_count = len(self.session.relabels)
        audit = self.audit
        if audit is not None:
            self.audit_labels = current_labels(self.session, audit["indices"])

    def _note(self, message: str, error: str = "") -> None:
        self.status = message
        self.error = error

    # ----- panel -----

    def _on_selected_region(self, change: dict[str, Any]) -> None:
        rid = int(change["new"])
        self._refresh_audit()
        if rid < 0:
            self.panel = None
            return
        try:
            self._send_panel(rid)
        except Exception as exc:  # shown in the widget; never a half-drawn panel
            self.panel = None
            self._note("", f"Could not show region {rid}: {exc}")

    # ----- audit -----

    def _audit_indices(self) -> np.ndarray:
        audit = self.audit
        return np.zeros(0, np.int32) if audit is None else np.asarray(audit["indices"], np.int32)

    def _audit_targets(self, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if indices is None:
            sel = self.audit_selection
            indices = np.zeros(0, np.int32) if sel is None else np.asarray(sel)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(idx):
            raise ValueError("indices: select at least one audit image first")
        return idx

    def _audit_key(self) -> tuple[int, int, int] | None:
        """(region, label, model round) the audit should show now, None when it shows nothing."""
        rid = int(self.selected_region)
        label = self.session.labels.get(rid, -1) if rid >= 0 else -1
        if not self._audit_on or label < 0:
            return None
        return rid, int(label), int(getattr(self.session, "active_round", 0))

    def _refresh_audit(self, force: bool = False) -> None:
        """Bring the audit in line with the selected region (in the background when it needs
        computing; inline when already on the background thread)."""
        key = self._audit_key()
        audit = self.audit
        if key is None:
            self._clear_audit()
            return
        if (
            not force
            and audit is not None
            and (audit["region"], audit["label"], audit["round"]) == key
        ):
            return
        if audit is not None and audit["region"] != key[0]:
            self._clear_audit()
        if self._job is threading.current_thread():
            self._run_audit()
            return
        self._start("auditing", self._run_audit)

    def _clear_audit(self) -> None:
        if self.audit is not None:
            self.audit = None
            self.audit_labels = None
            self.audit_selection = np.zeros(0, np.int32)

    def _run_audit(self) -> None:
        for _ in range(3):  # the selection may move on while a slow first audit runs
            key = self._audit_key()
            if key is None:
                self._clear_audit()
                return
            rid = key[0]
            self._note(f"Auditing the training images of region {rid}…")
            payload = audit_payload(self.session, rid, self._min_probability, self._audit_limit)
            if self._audit_key() != key:
                continue
            keep = self.audit_selection if self.audit and self.audit["region"] == rid else None
            self.audit = payload
            self._sync_relabels()
            shown = payload["indices"]
            if keep is None or not np.isin(keep, shown).all():
                self.audit_selection = np.zeros(0, np.int32)
            n, total = len(shown), payload["total"]
            more = f" (the likeliest {n} shown)" if total > n else ""
            self._note(
                f"Region {rid}: {payload['conflicts']} of {payload['inside']} training images "
                f"inside carry another label{more}."
            )
            return

    def _send_panel(self, region_id: int) -> None:
        key = (region_id, int(getattr(self.session, "active_round", 0)))
        panel = self._panel_cache.get(key)
        if panel is None:
            panel = self._build_panel(region_id)
            self._panel_cache[key] = panel
        self.panel = panel

    def _build_panel(self, region_id: int) -> dict[str, Any]:
        s, errors = self.session, self._errors
        regions = self._require_regions()
        regions.get(region_id)
        out: dict[str, Any] = {"region": int(region_id)}
        if self._n_samples:
            smp = regions.sample(region_id, self._n_samples, purpose="label")
            out["samples"] = to_uint8(smp.images)
            out["sample_pred"] = smp.predictions.numpy().astype(np.int32)
            out["sample_conf"] = smp.confidence.numpy().astype(np.float32)
        idx = regions.members(region_id)
        if self._n_members and len(idx):
            # most confident errors first: the clearest examples of the bug
            idx = idx[errors.confidence[idx].argsort(descending=True)][: self._n_members]
            images = s.decode(errors.codes[idx])
            conf, pred = s.predict(images).max(1)
            out["members"] = to_uint8(images)
            out["member_index"] = idx.numpy().astype(np.int32)
            out["member_pred"] = pred.numpy().astype(np.int32)
            out["member_conf"] = conf.numpy().astype(np.float32)
            out["member_true"] = errors.true_label[idx].numpy().astype(np.int32)
            x, _ = s.data.split(errors.split)
            out["sources"] = to_uint8(x[errors.source_index[idx]])
        return out

    # ----- selection -----

    def _on_selected_indices(self, change: dict[str, Any]) -> None:
        value = change["new"]
        idx = np.zeros(0, np.int32) if value is None else np.asarray(value).astype(np.int32)
        if len(idx) == 1:  # one point selected: interpolate it
            self.selected_error = int(idx[0])
        for cb in self._select_callbacks:
            cb(idx)

    def _on_selected_error(self, change: dict[str, Any]) -> None:
        i = int(change["new"])
        if i < 0:
            return
        try:
            if not 0 <= i < len(self._errors):
                raise ValueError(f"expected an error index in [0, {len(self._errors) - 1}]")
            child = self.interpolator
            if child is None or child._closed:
                self.interpolator = Interpolator(self.session, i, **self._interp_options)
            else:
                child.set_error(i)
        except Exception as exc:  # shown in the widget
            self._note("", f"Could not interpolate error {i}: {exc}")
        else:
            self._note(f"Error {i}: interpolation from its source image.")

    def _count_view(self, shown: bool) -> None:
        """Count the page's views; a model change while none was shown is caught up on now."""
        self._views = self._views + 1 if shown else max(0, self._views - 1)
        self._views_seen = True
        if shown and self._deferred is not None:
            (what, ev), self._deferred = self._deferred, None
            self._start("evaluating", lambda: self._after_model_change(what, ev))

    def close(self) -> None:
        """Close the explorer and its interpolation panel's widget."""
        child = self.interpolator
        if child is not None:
            child.close()
        stop = getattr(self, "_unobserve_session", None)  # absent when __init__ refused its input
        if stop is not None:
            stop()
        super().close()

    # ----- background work -----

    def _scheduled(self, what: str) -> bool:
        """Whether a job named ``what`` runs or waits in the queue."""
        with self._job_lock:
            return (self.running and self.busy == what) or any(w == what for w, _ in self._queue)

    def _start(self, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the background thread now, or after the work already there (a job of
        the same name already waiting is replaced: it would redo the same work)."""
        with self._job_lock:
            if self._job is not None:  # the runner is alive: it takes the job when free
                self._queue = [(w, f) for w, f in self._queue if w != what] + [(what, fn)]
                return
            self.busy = what
            self.error = ""
            self._job = threading.Thread(target=self._run_jobs, args=(what, fn), daemon=True)
            self._job.start()

    def _run_jobs(self, what: str, fn: Callable[[], None]) -> None:
        while True:
            try:
                fn()
            except Exception as exc:
                self._note("", f"{what.capitalize()} failed: {type(exc).__name__}: {exc}")
            finally:
                if self.progress.get("running"):
                    self.progress = {**self.progress, "running": False}
            with self._job_lock:
                if not self._queue:
                    self._job = None
                    self.busy = ""
                    return
                what, fn = self._queue.pop(0)
                self.busy = what

    def _prepare_map(self) -> None:
        codes = self._errors.codes
        m = len(codes)
        place = None
        if isinstance(self._projection, str):
            method = self._projection
            if proj.cached(codes, method) is None:
                self._note(f"Projecting {m:,} errors ({method.upper()})…")
            xy, place = proj.fit(codes, method, progress=lambda msg: self._note(msg.capitalize()))
        else:
            xy = np.asarray(self._projection, dtype=np.float32)
        self.points = np.ascontiguousarray(xy, dtype=np.float32)
        self._note(f"{m:,} errors, {len(self.regions)} regions.")
        self._send_thumbnails()
        self._baseline()
        if self._background is not None and place is not None:
            self._place_background(self._background, place)

    def _place_background(self, split: str, place: Callable[[Any], np.ndarray]) -> None:
        x, _ = self.session.data.split(split)
        n = min(len(x), self._background_limit)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n].sort().values
        name = "training images" if split == "train" else f"{split} images"
        what = name if n == len(x) else f"of {len(x):,} {name}"
        self._note(f"Placing {n:,} {what} on the map…")
        xy = place(self.session.encode(x[idx]))
        self.background_label = what
        self.background_points = np.ascontiguousarray(xy, dtype=np.float32)
        self._note(f"{len(self._errors):,} errors, {len(self.regions)} regions; {n:,} {what} "
                   "in faint grey.")  # fmt: skip

    def _send_thumbnails(self) -> None:
        c, h, w = self.session.data.image_shape
        f = max(1, -(-max(h, w) // self._thumb_side))
        per = (h // f) * (w // f) * min(c, 3)
        if per * len(self._errors) > self._max_thumb_bytes:
            return  # on demand, one hovered point at a time
        parts = []
        for chunk in self._errors.codes.split(4096):
            parts.append(downsample(to_uint8(self.session.decode(chunk)), self._thumb_side))
        n = len(self._errors)
        self.thumbs = np.concatenate(parts) if parts else np.zeros((n, h, w, min(c, 3)), np.uint8)

    def _thumb(self, index: int) -> np.ndarray:
        img = self.session.decode(self._errors.codes[index : index + 1])
        return downsample(to_uint8(img), self._thumb_side)

    def _evaluation_entry(self, event: str, ev: dict[str, Any]) -> dict[str, Any]:
        return nan_to_none(
            {
                "event": event,
                "round": int(ev.get("round", getattr(self.session, "active_round", 0))),
                "test_accuracy": float(ev["test_accuracy"]),
                "labeled_region_accuracy": float(ev.get("labeled_region_accuracy", math.nan)),
                "labeled_region_real_accuracy": float(
                    ev.get("labeled_region_real_accuracy", math.nan)
                ),
                "labels": len(self.session.correctable()),
                "relabels": len(self.session.relabels),
                "time": time.time(),
            }
        )

    def _baseline(self) -> None:
        if self.baseline is None:
            ev = self.session.evaluate()
            self._absorb(ev)
            self.baseline = self._evaluation_entry("start", ev)

    def _absorb(self, ev: dict[str, Any]) -> None:
        self._region_eval = {int(k): v for k, v in ev.get("regions", {}).items()}
        self._evaluated_labels = self.session.correctable()
        self._sync_regions()

    def _run_round(self, steps: int, lam: float, lr: float) -> None:
        if self._evaluated_labels != self.session.correctable():
            # "before" numbers for the labels in use, so the chart compares like with like
            self._note("Evaluating the model on the labeled regions…")
            ev = self.session.evaluate()
            self._absorb(ev)
            self.history = [*self.history, self._evaluation_entry("before", ev)]
        last = [0.0]
        total = steps

        def callback(step: int, total_: int, loss: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or step >= total_:
                last[0] = now
                self.progress = {"running": True, "step": int(step), "total": int(total_),
                                 "loss": float(loss)}  # fmt: skip

        self.progress = {"running": True, "step": 0, "total": total, "loss": None}
        self._note(f"Fine-tuning for {steps} steps…")
        record = self.session.correct(steps=steps, lam=lam, lr=lr, cancel=self._token,
                                      callback=callback)  # fmt: skip
        if record.get("cancelled"):
            self.progress = {**self.progress, "running": False}
            self._note("Fine-tuning cancelled; the model is unchanged.")
            return
        losses = record.get("losses") or [None]
        self.progress = {"running": False, "step": total, "total": total, "loss": losses[-1]}
        self._after_model_change("round", record.get("evaluation"))

    def _after_model_change(self, event: str, ev: dict[str, Any] | None = None) -> None:
        if ev is None:
            self._note("Evaluating the model…")
            ev = self.session.evaluate()
        self._panel_cache.clear()
        self._absorb(ev)
        entry = self._evaluation_entry(event, ev)
        self.history = [*self.history, entry]
        self.point_fixed = self._fixed_points()
        if self.selected_region >= 0:
            self._send_panel(self.selected_region)
        self._refresh_audit()  # predictions changed
        acc = entry["test_accuracy"]
        verb = "Reverted" if event == "revert" else f"Round {entry['round']} done"
        self._note(f"{verb}: test accuracy {100 * acc:.1f}%.")

    def _fixed_points(self) -> np.ndarray | None:
        """uint8 (M,): 1 where the current model no longer makes the error (the map fades them)."""
        if int(getattr(self.session, "active_round", 1)) == 0:
            return None
        errors, labels = self._errors, self.session.labels
        target = errors.true_label.clone()
        regions = getattr(self.session, "regions", None)
        if regions is not None:
            for rid, lab in labels.items():
                if lab >= 0:
                    target[regions.assignments == rid] = lab
        preds = []
        for chunk in errors.codes.split(4096):
            preds.append(self.session.predict(self.session.decode(chunk)).argmax(1))
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        return (pred == target).numpy().astype(np.uint8)

    # ----- messages from the browser -----

    def _on_custom_msg(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("kind")
        if kind in ("hello", "bye"):
            self._count_view(kind == "hello")
            return
        if kind == "thumb":
            index = int(content.get("index", -1))
            if 0 <= index < len(self._errors):
                img = self._thumb(index)
                self.send(
                    {"kind": "thumb", "index": index, "shape": list(img.shape)}, [img.tobytes()]
                )
            return
        actions: dict[str, Callable[[], Any]] = {
            "label": lambda: self.label(int(content["region"]), int(content["label"])),
            "unlabel": lambda: self.unlabel(int(content["region"])),
            "add_region": lambda: self.add_region(),
            "finetune": lambda: self.fine_tune(
                int(content.get("steps", self.finetune_params["steps"])),
                float(content.get("lam", self.finetune_params["lam"])),
                float(content.get("lr", self.finetune_params["lr"])),
            ),
            "cancel": self.cancel,
            "revert": lambda: self.revert(),
            "audit": lambda: self.open_audit(int(content.get("region", self.selected_region))),
            "relabel": lambda: self.relabel_selected(_ints(content.get("indices"))),
            "unrelabel": lambda: self.unrelabel_selected(_ints(content.get("indices"))),
        }
        if kind not in actions:
            return
        try:
            actions[kind]()
        except Exception as exc:
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            self.error = message
            self.send({"kind": "ack", "id": content.get("id"), "ok": False, "message": message})
        else:
            self.send({"kind": "ack", "id": content.get("id"), "ok": True})

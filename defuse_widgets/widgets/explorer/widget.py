"""The error explorer: map of the errors, region list and panel, labeling and live fine-tuning.

A thin trait-and-command layer over a
:class:`~defuse_widgets.session.session.DefuseSession`: every UI action is a public method
(scriptable without a browser); what the UI shows lives in traits
(arrays as binary buffers, built by :mod:`.panels`); long work runs on one
background worker (:mod:`.jobs`); the explorer follows the session's change events.

Browser -> kernel: traits ``selected_region``, ``selected_indices``, ``selected_error``,
``audit_selection``, ``finetune_params``, ``_has_visible_views`` (whether a view is shown; see
:mod:`.tuning`), and anywidget commands for actions and thumbnails (:mod:`.commands`).

The explorer owns its traits and the session's events; each part of its work is a helper object
given only what it touches (its traits as a small protocol, the session, a note and a job
starter): :class:`~.map.MapLayout` (positions, thumbnails, baseline, background),
:class:`~.selection.Selection` (map selection and interpolation panel),
:class:`~.tuning.Tuner` (fine-tuning rounds and reverts), :class:`~.audit.AuditPane` (the
training-label audit), :func:`~.export.export_in_background` and the page's commands
(:mod:`.commands`, which call only the public methods here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import torch
import traitlets as t

from defuse_widgets.correction.settings import RoundSettings
from defuse_widgets.projection import points
from defuse_widgets.projection.colors import region_color
from defuse_widgets.regions.labels import LabelerLike, label_name
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.suite.export import DEFAULT_MIN_ACCURACY, DEFAULT_SAMPLES
from defuse_widgets.utils.jsonio import nan_to_none
from defuse_widgets.widgets.common import STATIC
from defuse_widgets.widgets.common.codec import array_serialization, array_to_json
from defuse_widgets.widgets.common.options import check_known_options
from defuse_widgets.widgets.explorer import commands, panels
from defuse_widgets.widgets.explorer.audit import AuditPane
from defuse_widgets.widgets.explorer.export import export_in_background
from defuse_widgets.widgets.explorer.jobs import Jobs
from defuse_widgets.widgets.explorer.live import LiveSearch, check_live, no_errors
from defuse_widgets.widgets.explorer.map import MapLayout
from defuse_widgets.widgets.explorer.options import ExplorerOptions
from defuse_widgets.widgets.explorer.panels import require_regions
from defuse_widgets.widgets.explorer.selection import Selection
from defuse_widgets.widgets.explorer.tuning import Tuner

__all__ = ["Explorer", "region_color"]
DEFAULT_HEIGHT = 700  # pixels: the whole explorer fits a 1,400 x 900 JupyterLab window
MIN_HEIGHT = 400
SORTS = ("size", "real_accuracy", "label")  # and "recognition" where the session measures it
IDLE: dict[str, Any] = {"running": False, "step": 0, "total": 0, "loss": None, "outcome": ""}


def _nested_to_json(value: Any, widget: Any = None) -> Any:
    """Like :func:`array_to_json`, but for dicts/lists holding arrays anywhere."""
    if isinstance(value, dict):
        return {k: _nested_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nested_to_json(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return array_to_json(value)
    return value


def _array(**tags: Any) -> Any:
    """A synced numpy-array trait (None until set), sent as a binary buffer."""
    return t.Instance(np.ndarray, allow_none=True).tag(sync=True, **array_serialization, **tags)


class Explorer(anywidget.AnyWidget):
    """Interactive map of a session's errors and failure regions, with labeling and fine-tuning.

    Parameters
    ----------
    session : DefuseSession
        A session on which :meth:`identify` has run (and usually :meth:`distill`); with
        ``search``, any session.
    search : dict or True, optional
        Search live instead (:mod:`.live`): the explorer opens at once, shows the errors on
        the map as the search finds them, regions from a quick fit as soon as there are enough
        errors, then the full fit in their place, with the labels given meanwhile carried over;
        the status line and ``regions_fit`` ("quick", "full") say which regions are shown. The
        dict holds ``session.search`` arguments (``limit``, ``strategy``, ``split``,
        ``step_images``, knobs); True searches the whole test split with the defaults.
    distill : dict, optional
        With ``search``: arguments of the full fit (those of ``session.distill``), and
        ``min_errors``, the errors the quick fit waits for (default 200).
    projection : "umap" or "pca", or an array (M, 2)
        How the error codes are laid out in 2-D. UMAP runs in the background (the map shows once
        it is ready) and is cached per error set; an array is used as given.
    background : "train", "test" or None
        Show that split's images (their encoder means, placed on the errors' map by the fitted
        projection) as faint grey points beneath the errors. Needs ``projection="umap"``/``"pca"``.
    background_limit : int
        At most this many images of the split (a seeded random subset) make the background.
    samples, members : int
        Fresh region samples and real member errors shown in the region panel.
    thumbnail_side : int
        Hover thumbnails are shrunk to at most this many pixels a side.
    max_thumbnail_bytes : int
        Up to this size, all thumbnails travel once as one binary buffer; above it, the page asks
        for the hovered point's thumbnail only.
    steps, lam, lr : fine-tuning defaults (editable in the UI).
    min_probability : float
        The audit shows the training images the region reaches (``session.reach``) that the
        mixture also puts in it with at least this probability (default 0: every one).
    audit_limit : int
        The audit shows at most this many images (the likeliest mistakes).
    who : str
        Names the person in the relabel records made here.
    interpolator_options : dict, optional
        Keyword arguments for the :class:`Interpolator` of the selected error.
    on_select, on_label : optional callbacks, see :meth:`on_select` and :meth:`on_label`.
    height : int
        (a trait, as a keyword) The view's height in pixels (default 700, at least 400): the
        map, the region list and the region's panes share it side by side; a view narrower
        than 900 pixels stacks them instead and grows to fit.
    presentation : bool
        (a trait, as a keyword) Larger thumbnails and text, for a projector.
    region_sort : str
        (a trait, as a keyword) The region list's order, one of ``region_sorts``: "size"
        (largest first), "real_accuracy" (the classifier's accuracy on the region's real test
        images, lowest first), "recognition" (share of its samples recognised as its class,
        lowest first; offered where the session has ``sample_recognition``) or "label"
        (unlabeled first).
    block : bool
        Wait for the projection and thumbnails before returning (tests, scripts).
    map_engine : "regl" or "plotly"
        (a trait, as a keyword) The map's drawing library: regl-scatterplot by default (WebGL,
        interactive at a million points), plotly scattergl on request; without WebGL the page
        uses plotly's SVG scatter.
    """

    _esm = STATIC / "explorer.js"
    _css = Path(__file__).parent / "explorer.css"

    classes = t.List(t.Unicode()).tag(sync=True)
    points = _array()
    point_region = _array()
    point_labels = _array()
    point_confidence = _array()
    point_validity = _array()
    point_fixed = _array()
    thumbs = _array()
    background_points = _array()
    background_label = t.Unicode("").tag(sync=True)
    map_layout = t.Unicode("").tag(sync=True)  # "pca" (first look), "umap" or "given"
    # which regions a live search shows: "" (none yet), "quick" (a first fit), "full"
    regions_fit = t.Unicode("").tag(sync=True)
    # the map's drawing library: "regl" (regl-scatterplot, WebGL, millions of points) or "plotly"
    # (scattergl; the page falls back to it without WebGL); chosen by benchmarks/explorer.py
    map_engine = t.Enum(("regl", "plotly"), "regl").tag(sync=True)
    regions = t.List(t.Dict()).tag(sync=True)
    labels = t.Dict(value_trait=t.Int(), key_trait=t.Unicode()).tag(sync=True)
    selected_region = t.Int(-1).tag(sync=True)
    selected_indices = _array(echo_update=False)
    selected_error = t.Int(-1).tag(sync=True)
    panel = t.Instance(dict, allow_none=True).tag(sync=True, to_json=_nested_to_json)
    status = t.Unicode("").tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    busy = t.Unicode("").tag(sync=True)
    progress = t.Dict(IDLE).tag(sync=True)
    history = t.List(t.Dict()).tag(sync=True)
    baseline = t.Dict(allow_none=True, default_value=None).tag(sync=True)
    finetune_params = t.Dict({"steps": 300, "lam": 1.0, "lr": 0.003}).tag(sync=True)
    audit = t.Instance(dict, allow_none=True).tag(sync=True, to_json=_nested_to_json)
    audit_labels = _array()
    audit_selection = _array(echo_update=False)
    relabel_count = t.Int(0).tag(sync=True)
    interpolator = anywidget.WidgetTrait().tag(sync=True)
    # the view's height in CSS pixels: map, region list and panes share it (a narrow view stacks
    # them and grows instead); larger thumbnails and text for projectors with `presentation`
    height = t.Int(DEFAULT_HEIGHT).tag(sync=True)
    presentation = t.Bool(False).tag(sync=True)
    # the region list's order (written by the page too) and the orders offered: "recognition"
    # where the session measures how recognisable a region's samples are (measured on demand)
    region_sort = t.Unicode("size").tag(sync=True)
    # the generator's report (session.generator_report().to_dict()), once asked for
    generator = t.Dict(allow_none=True, default_value=None).tag(sync=True)
    region_sorts = t.List(t.Unicode()).tag(sync=True)
    # written by the page: None until a view reports, then whether one is shown
    _has_visible_views = t.Bool(None, allow_none=True).tag(sync=True)

    # the page's buttons and hover (anywidget finds commands on the class; see .commands)
    _label_command = commands.label
    _unlabel_command = commands.unlabel
    _add_region_command = commands.add_region
    _fine_tune_command = commands.fine_tune
    _cancel_command = commands.cancel
    _revert_command = commands.revert
    _audit_command = commands.audit
    _relabel_command = commands.relabel
    _unrelabel_command = commands.unrelabel
    _export_tests_command = commands.export_tests
    _thumb_command = commands.thumb
    _generator_command = commands.generator

    def __init__(
        self,
        session: DefuseSession,
        projection: str | np.ndarray = "umap",
        background: str | None = None,
        background_limit: int = 5000,
        samples: int = 16,
        members: int = 16,
        thumbnail_side: int = 32,
        max_thumbnail_bytes: int = 8_000_000,
        steps: int = 300,
        lam: float = 1.0,
        lr: float = 0.003,
        min_probability: float = 0.0,
        audit_limit: int = 100,
        who: str = "user",
        interpolator_options: dict[str, Any] | None = None,
        on_select: Callable[[np.ndarray], Any] | None = None,
        on_label: Callable[[int, int | None], Any] | None = None,
        search: Mapping[str, Any] | bool | None = None,
        distill: Mapping[str, Any] | None = None,
        block: bool = False,
        **kwargs: Any,
    ) -> None:
        check_known_options(type(self), kwargs)
        live = check_live(search, distill, projection)
        errors = getattr(session, "errors", None)
        if live is not None:
            errors = no_errors(session.generator.latent_dim, live[0].get("split", "test"))
        if errors is None:
            raise ValueError(
                "session: has no errors yet; run session.identify() first, or "
                "search live with s.explorer(search={'limit': ...})"
            )
        self.options = ExplorerOptions(
            projection,
            background,
            background_limit,
            samples,
            members,
            thumbnail_side,
            max_thumbnail_bytes,
            min_probability,
            audit_limit,
            who,
        ).check(len(errors))
        RoundSettings(steps=steps, lam=lam, lr=lr).check()
        recognises = getattr(session, "sample_recognition", None) is not None
        sorts = [*SORTS[:2], *(["recognition"] if recognises else []), SORTS[2]]
        if kwargs.get("region_sort", "size") not in sorts:
            raise ValueError(f"region_sort: expected one of {sorts}, got {kwargs['region_sort']!r}")
        super().__init__(**kwargs)
        self.session = session
        self._errors = errors
        self._label_callbacks: list[Callable[[int, int | None], Any]] = []
        self._panel_cache: dict[tuple[int, int], dict[str, Any]] = {}
        self._region_eval: dict[int, Any] = {}
        self._recognition: dict[int, float] | None = None  # None: not measured (or no API)
        self._jobs = Jobs(
            on_busy=self._set_busy,
            on_error=self._job_failed,
            name="explorer",
            on_stop=self._stop_round,
        )
        # what background work writes reaches the widget on the kernel's loop (see .jobs)
        self._ui = self._jobs.view(self)
        opts = self.options
        self._selection = Selection(
            self, session, errors, dict(interpolator_options or {}), self._note
        )
        ui = self._ui
        self._audit = AuditPane(ui, session, opts, self._start, self._jobs.in_worker, self._note)
        self._tuner = Tuner(
            ui, session, self._jobs, self._start, self._note, self._absorb, self._refresh_views
        )
        # outside a kernel nobody sees the map: its UMAP fit waits for wait() (see MapLayout)
        defer = not self._jobs.in_kernel and not block
        self._map = MapLayout(ui, session, errors, opts, self._note, self._tuner.absorb, defer)
        if on_select is not None:
            self.on_select(on_select)
        if on_label is not None:
            self.on_label(on_label)

        self.finetune_params = {"steps": int(steps), "lam": float(lam), "lr": float(lr)}
        self.region_sorts = sorts
        self.classes = [str(c) for c in session.data.classes]
        self._bind_errors(errors)
        self.selected_indices = np.zeros(0, np.int32)
        self.audit_selection = np.zeros(0, np.int32)
        self._sync_regions()
        self._sync_labels()
        self._audit.sync_relabels()
        self.observe(self._on_selected_region, "selected_region")
        self.observe(self._selection.indices_changed, "selected_indices")
        self.observe(self._selection.error_changed, "selected_error")
        self.observe(self._tuner.views_changed, "_has_visible_views")
        self._unobserve_session = session.observe(self._session_changed)
        self._selection.make_child_now()
        if live is None:
            self._start("projecting", self._map.prepare)
        else:
            self._live = LiveSearch(ui, session, *live, self._show_live, self._note)
            self._start("searching", self._search_live)
        self.observe(self._on_region_sort, "region_sort")
        if block:
            self.wait()

    # ----- public API (everything the UI does) -----

    def on_label(self, callback: Callable[[int, int | None], Any]) -> None:
        """Call ``callback(region_id, label)`` on each label change (None when cleared)."""
        self._label_callbacks.append(callback)

    def select_region(self, region_id: int) -> None:
        """Show a region in the panel (and outline it on the map); -1 clears."""
        if region_id != -1:
            require_regions(self.session).get(region_id)
        self.selected_region = int(region_id)

    def label(self, region_id: int, label: int) -> None:
        """Label a region (class index, ``MODEL_IS_RIGHT`` or ``UNRECOGNIZABLE``) in the session."""
        self.session.label(region_id, label)  # raises before any change; the event syncs
        self._note(f"Region {region_id} labeled: {self._label_name(int(label))}.")

    def unlabel(self, region_id: int) -> None:
        """Clear a region's label."""
        self.session.unlabel(region_id)
        self._note(f"Region {region_id}: label cleared.")

    def add_region(self, indices: Sequence[int] | np.ndarray | None = None) -> int:
        """Make a user-defined region of ``indices`` (default: the selection, which is then
        cleared so a second click cannot make a duplicate); returns its id."""
        from_selection = indices is None
        if indices is None:
            sel = self.selected_indices
            indices = np.zeros(0, np.int64) if sel is None else np.asarray(sel)
        if len(indices) < 2:
            raise ValueError("indices: select at least 2 points (lasso or box) to make a region")
        region_id = int(self.session.add_region(torch.as_tensor(np.asarray(indices, np.int64))))
        if from_selection:
            self.select(None)
        self.selected_region = region_id
        self._note(f"New region {region_id} from {len(indices)} selected points.")
        return region_id

    def refresh(self) -> None:
        """Re-read regions, labels and relabels from the session and rebuild the panel and audit
        (rarely needed: the explorer follows the session's change events)."""
        self._panel_cache.clear()
        self._sync_regions()
        self._sync_labels()
        self._audit.sync_relabels()
        if self.selected_region >= 0:
            self._send_panel(self.selected_region)
        self._audit.refresh(force=True)

    def on_select(self, callback: Callable[[np.ndarray], Any]) -> None:
        """Call ``callback(indices)`` (int array of error indices) on each selection change."""
        self._selection.callbacks.append(callback)

    def select(self, indices: Sequence[int] | np.ndarray | None) -> None:
        """Set the map selection (error indices); ``None`` clears it."""
        self._selection.select(indices)

    def select_error(self, index: int | None) -> None:
        """Show error ``index`` in the interpolation panel (``None`` or -1 hides the panel).

        The first selection makes the child :class:`Interpolator` (trait
        ``interpolator``); later ones retarget it. Raises ValueError for an index outside
        ``session.errors`` (nothing changes then).
        """
        self._selection.select_error(index)

    @property
    def labeler(self) -> LabelerLike | None:
        """Vets the region samples of every round started here, the Fine-tune button's too (see
        ``DefuseSession.correct``); None (the default): not vetted. A labeler that cannot vet
        is refused with a TypeError when set."""
        return self._tuner.labeler

    @labeler.setter
    def labeler(self, value: LabelerLike | None) -> None:
        self._tuner.labeler = value

    def fine_tune(
        self,
        steps: int | None = None,
        lam: float | None = None,
        lr: float | None = None,
        block: bool = False,
        labeler: LabelerLike | None = None,
    ) -> dict[str, Any] | None:
        """Start one fine-tuning round in the background (after work already running).

        Parameters
        ----------
        steps, lam, lr : optional
            The round's settings (default: ``finetune_params``); a positive integer and two
            positive finite numbers.
        block : bool
            Wait for the round (re-raising its error) and return its entry of ``history``
            (None when it was cancelled).
        labeler : optional
            Vets the round's region samples (see ``DefuseSession.correct``); default:
            :attr:`labeler`.

        Raises
        ------
        ValueError
            On bad settings; RuntimeError when a round is already running or no region is
            labeled with a class. Both before anything starts.
        """
        rounds = len(self.history)
        self._tuner.start_round(steps, lam, lr, labeler)
        if not block:
            return None
        self.wait()
        new = [e for e in self.history[rounds:] if e["event"] == "round"]
        return new[-1] if new else None

    def cancel(self) -> None:
        """Cancel a running fine-tuning round (the model stays as it was before the round)."""
        self._tuner.cancel()

    def revert(self, round: int | None = None, block: bool = False, relabels: bool = False) -> None:
        """Restore the original weights (or those after ``round``) and re-evaluate; with
        ``relabels`` also undo the confirmed relabels (see ``DefuseSession.revert``)."""
        self._tuner.revert(round, relabels)
        if block:
            self.wait()

    def open_audit(self, region_id: int | None = None, block: bool = False) -> None:
        """Show the training images inside a class-labeled region whose label differs.

        Likeliest mistakes first; from then on, selecting a labeled region audits it. Runs in the
        background (the first audit encodes the training set).

        Parameters
        ----------
        region_id : int, optional
            The region (default: the selected one).
        block : bool
            Wait for the audit (re-raising its error).

        Raises
        ------
        ValueError
            For no region or a region without a class label (nothing changes).
        """
        self._audit.open(region_id)
        if block:
            self.wait()

    def select_audit(self, indices: Sequence[int] | np.ndarray | str | None) -> None:
        """Select audit images by training index (``"all"``: every image shown; None: none)."""
        self._audit.select(indices)

    def relabel_selected(
        self, indices: Sequence[int] | np.ndarray | None = None, label: int | None = None
    ) -> int:
        """Confirm that the selected audit images (or training ``indices``) are the audited
        region's class (or ``label``); returns how many relabels changed. The next fine-tuning
        round trains on the relabeled images."""
        return self._audit.relabel(indices, label)

    def unrelabel_selected(self, indices: Sequence[int] | np.ndarray | None = None) -> int:
        """Undo the relabels of the selected audit images (or training ``indices``); returns how
        many were undone."""
        return self._audit.unrelabel(indices)

    def export_tests(
        self,
        path: str | os.PathLike,
        regions: Sequence[int] | None = None,
        samples: int = DEFAULT_SAMPLES,
        min_accuracy: float | Mapping[int, float] = DEFAULT_MIN_ACCURACY,
        include_real: bool = True,
        block: bool = False,
    ) -> Path:
        """Export the class-labeled regions as a regression suite in the background.

        Parameters
        ----------
        path : the suite directory, relative to the kernel's working directory; an earlier
            suite there is replaced (a directory holding other files is refused).
        regions, samples, min_accuracy, include_real : as for
            :meth:`~defuse_widgets.session.session.DefuseSession.export_tests`.
        block : wait for the export (re-raising its error).

        Returns
        -------
        Path
            The suite directory (written once the job is done).

        Raises
        ------
        ValueError, RuntimeError
            For a bad argument or no class-labeled region, before anything starts.
        """
        target = export_in_background(
            self.session,
            self._start,
            self._note,
            path,
            regions,
            samples,
            min_accuracy,
            include_real,
        )
        if block:
            self.wait()
        return target

    def measure_generator(self, block: bool = False, **options: Any) -> None:
        """Measure how well the generator draws each class (``session.generator_report``, in
        the background) and show it in the Generator tab (trait ``generator``).

        Parameters
        ----------
        block : bool
            Wait for the report (re-raising its error).
        **options
            ``labeler``, ``limit``, ``min_ratio`` of ``DefuseSession.generator_report``
            (default labeler: :attr:`labeler` when it holds a model).

        Raises
        ------
        RuntimeError
            When the session cannot measure its generator (no ``generator_report``).
        """
        report = getattr(self.session, "generator_report", None)
        if report is None:
            raise RuntimeError("this session cannot measure its generator (no generator_report)")
        options.setdefault("labeler", self._judge())

        def job() -> None:
            self._note("Measuring how well the generator draws each class…")
            result = report(**options)
            self._ui.generator = nan_to_none(result.to_dict())
            flagged = len(result.flagged)
            self._note(f"Generator measured: {flagged} class{'es' * (flagged != 1)} flagged.")

        self._start("measuring the generator", job)
        if block:
            self.wait()

    def error_thumbnail(self, index: int) -> np.ndarray | None:
        """Error ``index``'s map thumbnail, uint8 (1, h, w, c); None for an index off the map."""
        return self._map.thumbnail(index)

    @property
    def running(self) -> bool:
        """Whether background work (projection, fine-tuning, evaluation, audit) is in progress."""
        return self._jobs.running

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the background work and the jobs queued behind it.

        Raises
        ------
        Exception
            The first error of a job started since the previous ``wait()`` (also shown in
            ``error``).
        TimeoutError
            When work still runs after ``timeout`` seconds.
        """
        self._jobs.wait(timeout)
        if self._map.pending:  # a script's explorer: the UMAP layout it deferred, now
            self._start("projecting", self._map.finish)
            self._jobs.wait(timeout)

    def close(self) -> None:
        """Close the explorer, its interpolation panel's widget and its background worker."""
        child = self.interpolator
        if child is not None:
            child.close()
        stop = getattr(self, "_unobserve_session", None)  # absent when __init__ refused its input
        if stop is not None:
            stop()
        jobs = getattr(self, "_jobs", None)
        if jobs is not None:
            jobs.shutdown()
        super().close()

    # ----- following the session -----

    def _session_changed(self, event: str) -> None:
        """The session's observer: follow ``event`` on the kernel's loop (a job may emit it)."""
        self._jobs.post(partial(self._on_session_event, event, self._jobs.in_worker()))

    def _on_session_event(self, event: str, from_job: bool = False) -> None:
        """Follow a change made on the session (by this widget or directly)."""
        if self.session.errors is not self._errors:
            self._note(
                "",
                "The session has new errors (identify ran again): this explorer shows "
                "the old ones; show s.explorer() again.",
            )
            return
        if event == "regions":
            self._panel_cache.clear()
            self._sync_regions()
            if not self.session.reach_ready():
                self._start("measuring reach", self._sync_regions)
            self._start_recognition()
            rid = self.selected_region
            if rid >= 0 and rid not in {r["id"] for r in self.regions}:
                self.selected_region = -1
            elif rid >= 0:
                self._send_panel(rid)
        elif event == "labels":
            before = {int(k): v for k, v in self.labels.items()}
            self._sync_labels()
            self._start_recognition()  # judged against the new labels
            after = self.session.labels
            self._audit.refresh()
            for rid in sorted(before.keys() | after.keys()):
                if before.get(rid) != after.get(rid):
                    for cb in self._label_callbacks:
                        cb(rid, after.get(rid))
        elif event == "relabels":
            self._audit.sync_relabels()
        elif event == "model" and not from_job:
            self._panel_cache.clear()
            self._tuner.model_changed()

    def _bind_errors(self, errors: Any) -> None:
        """Show ``errors`` (the session's, or a live search's latest report) on the map."""
        self._errors = self._map.errors = self._selection.errors = errors
        labels = np.stack([errors.true_label.numpy(), errors.pred_label.numpy()], 1)
        self._ui.point_labels = labels.astype(np.int16)
        self._ui.point_confidence = errors.confidence.numpy().astype(np.float32)
        self._ui.point_validity = errors.validity.numpy().astype(np.float32)

    def _show_live(self, errors: Any, xy: np.ndarray) -> None:
        """A live search's report: its errors at ``xy`` (inside the report's ``hold_sync``)."""
        self._bind_errors(errors)
        self._ui.map_layout = "pca"
        self._ui.points = np.ascontiguousarray(xy, dtype=np.float32)

    def _search_live(self) -> None:
        """The live search, then the map's usual preparation (thumbnails, baseline, UMAP)."""
        self._live.run()
        self._map.prepare()
        self._note(f"{self._live.summary} {self._ui.status}")

    def _label_name(self, label: int) -> str:
        return label_name(label, self.session.data.classes)

    def _sync_regions(self) -> None:
        regions = self.session.regions
        if regions is None:
            self._ui.point_region = np.full(len(self._errors), -1, np.int32)
            self._ui.regions = []
            return
        self._ui.point_region = regions.assignments.numpy().astype(np.int32)
        self._ui.regions = panels.region_rows(
            regions, self._region_eval, self._recognition, self._reach_counts()
        )

    def _reach_counts(self) -> dict[int, int] | None:
        """Region id -> the real training rows it reaches (None while the regions are not the
        session's errors' own, as during a live search, or until the worker measured it: reach
        encodes the training split, too slow for the kernel's thread)."""
        s = self.session
        if s.errors is None or s.regions is None or len(s.regions.assignments) != len(s.errors):
            return None
        if not (s.reach_ready() or self._jobs.in_worker()):
            return None  # the map's preparation measures it, or _on_session_event's job
        return s.reach().counts()

    def _absorb(self, ev: Any) -> None:
        """Show evaluation ``ev``'s per-region figures in the region list."""
        self._region_eval = panels.region_evaluation(ev)
        self._sync_regions()

    def _refresh_views(self) -> None:
        """After a model change: fixed errors, the open panel and the audit anew."""
        self._panel_cache.clear()
        s = self.session
        if int(s.active_round) == 0:
            self._ui.point_fixed = None  # before any round, nothing is fixed
        else:
            self._ui.point_fixed = points.fixed_points(
                self._errors, s.regions, s.labels, lambda z: s.predict(s.decode(z))
            )
        if self.selected_region >= 0:
            self._send_panel(self.selected_region)
        self._audit.refresh()
        self._recognise()  # when sorted by it: the model changed, so did what it recognises

    def _on_region_sort(self, change: dict[str, Any]) -> None:
        if change["new"] not in self.region_sorts:  # from the page: keep the order, say why
            self.region_sort = change["old"]
            self._note(
                "", f"region_sort: expected one of {self.region_sorts}, got {change['new']!r}"
            )
            return
        self._start_recognition()

    def _start_recognition(self) -> None:
        """Measure recognition in the background while the list is sorted by it."""
        if self.region_sort == "recognition":
            self._start("measuring recognition", self._recognise)

    def _recognise(self) -> None:
        """How recognisable each region's samples are (the list's "recognition" order): the
        share its labeler (when it holds a model), else the classifier, calls its class."""
        measure = getattr(self.session, "sample_recognition", None)
        if measure is None or self.session.regions is None or self.region_sort != "recognition":
            return
        self._recognition = {int(k): float(v) for k, v in measure(self._judge()).items()}
        self._sync_regions()

    def _judge(self) -> LabelerLike | None:
        """The labeler when it holds a model (it judges the generator), else None (the
        classifier judges)."""
        judge = self.labeler
        held = judge if isinstance(judge, torch.nn.Module) else getattr(judge, "model", None)
        return judge if isinstance(held, torch.nn.Module) else None

    @t.validate("height")
    def _check_height(self, proposal: dict[str, Any]) -> int:
        value = proposal["value"]
        if value < MIN_HEIGHT:
            raise t.TraitError(f"height: expected at least {MIN_HEIGHT} pixels, got {value}")
        return int(value)

    def _sync_labels(self) -> None:
        self._ui.labels = {str(k): int(v) for k, v in sorted(self.session.labels.items())}

    def _note(self, message: str, error: str = "") -> None:
        self._ui.status = message
        self._ui.error = error

    # ----- selection and panel -----

    def _on_selected_region(self, change: dict[str, Any]) -> None:
        rid = int(change["new"])
        self._audit.refresh()
        if rid < 0:
            self.panel = None
            return
        try:
            self._send_panel(rid)
        except Exception as exc:  # shown in the widget; never a half-drawn panel
            self.panel = None
            self._note("", f"Could not show region {rid}: {exc}")

    def _send_panel(self, region_id: int) -> None:
        key = (region_id, int(self.session.active_round))
        panel = self._panel_cache.get(key)
        if panel is None:
            opts = self.options
            panel = panels.region_panel(
                self.session, self._errors, region_id, opts.samples, opts.members
            )
            self._panel_cache[key] = panel
        self._ui.panel = panel

    # ----- background work -----

    def _start(self, what: str, fn: Callable[[], None]) -> Any:
        """Queue ``fn`` on the background worker (see :class:`.jobs.Jobs`)."""
        if not self._jobs.running:
            self.error = ""

        def job() -> None:
            try:
                fn()
            finally:
                if self._ui.progress.get("running"):
                    self._ui.progress = {**self._ui.progress, "running": False}

        return self._jobs.submit(what, job)

    def _stop_round(self) -> None:
        """Cancel a running round (the worker stops: the explorer closes or Python exits)."""
        if self._jobs.scheduled("fine-tuning"):
            self._tuner.cancel()

    def _set_busy(self, what: str) -> None:
        self.busy = what

    def _job_failed(self, what: str, exc: BaseException) -> None:
        message = f"{what.capitalize()} failed: {type(exc).__name__}: {exc}"
        self._note("", message)
        if what == "fine-tuning":  # said next to the Fine-tune controls too
            self.progress = {**self.progress, "running": False, "outcome": message}

"""The explorer's audit: the training images inside the selected class-labeled region that carry
another label, and the relabels a person confirms there.

:class:`AuditMixin` is the audit half of :class:`~.explorer.Explorer` (its public methods are
the explorer's). Only the selected region's audit travels (trait ``audit``, arrays as buffers,
built by :func:`defuse_widgets.widgets.panels.audit_payload`); a relabel or undo resends only
``audit_labels`` and ``relabel_count``. After the first :meth:`~AuditMixin.open_audit`, selecting
a class-labeled region audits it (in the background: the first audit encodes the training set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from defuse_widgets.widgets._options import ExplorerOptions
from defuse_widgets.widgets.panels import audit_payload, current_labels

if TYPE_CHECKING:
    from defuse_widgets.session.session import DefuseSession
    from defuse_widgets.widgets._jobs import Jobs


class AuditMixin:
    """Audit traits' logic and public methods; mixed into the explorer (its traits live there)."""

    session: DefuseSession
    options: ExplorerOptions
    selected_region: int
    audit: dict[str, Any] | None
    audit_labels: np.ndarray | None
    audit_selection: np.ndarray | None
    relabel_count: int
    _jobs: Jobs
    _audit_on: bool
    _note: Callable[..., None]
    _label_name: Callable[[int], str]
    _require_regions: Callable[[], Any]
    _start: Callable[[str, Callable[[], None]], Any]
    wait: Callable[..., None]

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
        changed = int(self.session.relabel(idx.tolist(), int(label), who=self.options.who))
        name = self._label_name(int(label))
        self._note(
            f"Relabeled {changed} training image{'s' * (changed != 1)} as {name}; "
            f"{self._relabels_in_all()}."
        )
        return changed

    def unrelabel_selected(self, indices: Sequence[int] | np.ndarray | None = None) -> int:
        """Undo the relabels of the selected audit images (or training ``indices``); returns how
        many were undone."""
        idx = self._audit_targets(indices)
        undone = int(self.session.unrelabel(idx.tolist()))
        self._note(f"Undid {undone} relabel{'s' * (undone != 1)}; {self._relabels_in_all()}.")
        return undone

    # ----- internals -----

    def _relabels_in_all(self) -> str:
        n = self.relabel_count
        return f"{n} confirmed relabel{'s' * (n != 1)} in all"

    def _sync_relabels(self) -> None:
        self.relabel_count = len(self.session.relabels)
        if self.audit is not None:
            self.audit_labels = current_labels(self.session, self.audit["indices"])

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
        return rid, int(label), int(self.session.active_round)

    def _refresh_audit(self, force: bool = False) -> None:
        """Bring the audit in line with the selected region (a background job when it needs
        computing; inline when already in one)."""
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
        if self._jobs.in_worker():
            self._run_audit()
        else:
            self._start("auditing", self._run_audit)

    def _clear_audit(self) -> None:
        if self.audit is not None:
            self.audit = None
            self.audit_labels = None
            self.audit_selection = np.zeros(0, np.int32)

    def _run_audit(self) -> None:
        key = self._audit_key()
        if key is None:
            self._clear_audit()
            return
        rid = key[0]
        self._note(f"Auditing the training images of region {rid}…")
        opts = self.options
        payload = audit_payload(self.session, rid, opts.min_probability, opts.audit_limit)
        if self._audit_key() != key:
            return  # the selection moved on meanwhile: the audit job it queued shows that one
        audit = self.audit
        keep = self.audit_selection if audit is not None and audit["region"] == rid else None
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

"""The explorer's audit: the training images inside the selected class-labeled region that carry
another label, and the relabels a person confirms there.

:class:`AuditPane` holds the audit's logic for :class:`~.widget.Explorer`, whose public audit
methods delegate here. Only the selected region's audit travels (trait ``audit``, arrays as
buffers, built by :func:`.panels.audit_payload`); a relabel or undo resends
only ``audit_labels`` and ``relabel_count``. After the first :meth:`AuditPane.open`, selecting a
class-labeled region audits it (in the background: the first audit encodes the training set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from defuse_widgets.regions.labels import label_name
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.widgets.explorer.options import ExplorerOptions
from defuse_widgets.widgets.explorer.panels import audit_payload, require_regions


class AuditTraits(Protocol):
    """The explorer's traits the audit reads (``selected_region``) and writes (the rest)."""

    selected_region: int
    audit: dict[str, Any] | None
    audit_labels: np.ndarray | None
    audit_selection: np.ndarray | None
    relabel_count: int


class AuditPane:
    """The audit of the selected region.

    Parameters
    ----------
    traits : AuditTraits
        The explorer, for the five traits above.
    session : DefuseSession
        Audits and relabels go through its public API.
    options : ExplorerOptions
        ``min_probability``, ``audit_limit`` and ``who``.
    start : callable
        ``start(name, fn)`` queues ``fn`` on the explorer's background worker.
    in_worker : callable
        Whether the caller already runs on that worker (then the audit runs inline).
    note : callable
        ``note(status, error="")`` writes the explorer's status line.
    """

    def __init__(
        self,
        traits: AuditTraits,
        session: DefuseSession,
        options: ExplorerOptions,
        start: Callable[[str, Callable[[], None]], Any],
        in_worker: Callable[[], bool],
        note: Callable[..., None],
    ) -> None:
        self.traits = traits
        self.session = session
        self.options = options
        self._start = start
        self._in_worker = in_worker
        self._note = note
        self.on = False  # set by the first open(): then each selected labeled region audits

    def open(self, region_id: int | None = None) -> None:
        """Audit ``region_id`` (default: the selected region) and every labeled region selected
        from now on (see :meth:`~.widget.Explorer.open_audit`); ValueError before any change
        for no region or a region without a class label."""
        rid = self.traits.selected_region if region_id is None else int(region_id)
        if rid < 0:
            raise ValueError("region_id: select a region (or pass region_id) to audit")
        require_regions(self.session).get(rid)
        label = self.session.labels.get(rid)
        if label is None or label < 0:
            name = None if label is None else label_name(label, self.session.data.classes)
            what = "no label" if name is None else f"the label {name!r}"
            raise ValueError(
                f"region {rid} has {what}: label it with a class to audit its training images"
            )
        self.on = True
        if self.traits.selected_region != rid:
            self.traits.selected_region = rid  # its observer starts the audit
        else:
            self.refresh(force=True)

    def select(self, indices: Sequence[int] | np.ndarray | str | None) -> None:
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
        self.traits.audit_selection = np.ascontiguousarray(idx, dtype=np.int32)

    def relabel(
        self, indices: Sequence[int] | np.ndarray | None = None, label: int | None = None
    ) -> int:
        """Confirm that the selected audit images (or training ``indices``) are the audited
        region's class (or ``label``); returns how many relabels changed. The next fine-tuning
        round trains on the relabeled images."""
        idx = self._audit_targets(indices)
        if label is None:
            if self.traits.audit is None:
                raise ValueError("label: no audit is open; pass label= or call open_audit() first")
            label = int(self.traits.audit["label"])
        changed = int(self.session.relabel(idx.tolist(), int(label), who=self.options.who))
        name = label_name(int(label), self.session.data.classes)
        self._note(
            f"Relabeled {changed} training image{'s' * (changed != 1)} as {name}; "
            f"{self._relabels_in_all()}."
        )
        return changed

    def unrelabel(self, indices: Sequence[int] | np.ndarray | None = None) -> int:
        """Undo the relabels of the selected audit images (or training ``indices``); returns how
        many were undone."""
        idx = self._audit_targets(indices)
        undone = int(self.session.unrelabel(idx.tolist()))
        self._note(f"Undid {undone} relabel{'s' * (undone != 1)}; {self._relabels_in_all()}.")
        return undone

    # ----- internals -----

    def _relabels_in_all(self) -> str:
        n = self.traits.relabel_count
        return f"{n} confirmed relabel{'s' * (n != 1)} in all"

    def sync_relabels(self) -> None:
        self.traits.relabel_count = len(self.session.relabels)
        if self.traits.audit is not None:
            rows = torch.as_tensor(self.traits.audit["indices"], dtype=torch.long)
            labels = self.session.training_labels()[rows]
            self.traits.audit_labels = labels.numpy().astype(np.int32)

    def _audit_indices(self) -> np.ndarray:
        audit = self.traits.audit
        return np.zeros(0, np.int32) if audit is None else np.asarray(audit["indices"], np.int32)

    def _audit_targets(self, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if indices is None:
            sel = self.traits.audit_selection
            indices = np.zeros(0, np.int32) if sel is None else np.asarray(sel)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(idx):
            raise ValueError("indices: select at least one audit image first")
        return idx

    def _audit_key(self) -> tuple[int, int, int] | None:
        """(region, label, model round) the audit should show now, None when it shows nothing."""
        rid = int(self.traits.selected_region)
        label = self.session.labels.get(rid, -1) if rid >= 0 else -1
        if not self.on or label < 0:
            return None
        return rid, int(label), int(self.session.active_round)

    def refresh(self, force: bool = False) -> None:
        """Bring the audit in line with the selected region (a background job when it needs
        computing; inline when already in one)."""
        key = self._audit_key()
        audit = self.traits.audit
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
        if self._in_worker():
            self._run_audit()
        else:
            self._start("auditing", self._run_audit)

    def _clear_audit(self) -> None:
        if self.traits.audit is not None:
            self.traits.audit = None
            self.traits.audit_labels = None
            self.traits.audit_selection = np.zeros(0, np.int32)

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
        audit = self.traits.audit
        keep = self.traits.audit_selection if audit is not None and audit["region"] == rid else None
        self.traits.audit = payload
        self.sync_relabels()
        shown = payload["indices"]
        if keep is None or not np.isin(keep, shown).all():
            self.traits.audit_selection = np.zeros(0, np.int32)
        n, total = len(shown), payload["total"]
        more = f" (the likeliest {n} shown)" if total > n else ""
        self._note(
            f"Region {rid}: {payload['conflicts']} of the {payload['inside']} training images "
            f"it reaches carry another label{more}."
        )

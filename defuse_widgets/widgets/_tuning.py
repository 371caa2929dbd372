"""Fine-tuning in the explorer: starting, cancelling and reverting rounds, and showing what a
model change did (history entry, region accuracies, faded fixed errors, fresh panel and audit).

:class:`TuningMixin` is mixed into :class:`~.explorer.Explorer`. A model change made while no view
of the explorer is shown (``_has_visible_views`` false: its cell re-ran) is remembered and shown
when a view comes back, so explorers of earlier cell runs cost nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from defuse_widgets.correction.samples import sample_vetter
from defuse_widgets.correction.training import CancelToken, RoundSettings
from defuse_widgets.widgets import panels

if TYPE_CHECKING:
    from defuse_widgets.session.session import DefuseSession
    from defuse_widgets.widgets._jobs import Jobs

PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress updates per second reach the browser


class TuningMixin:
    """Fine-tuning methods and model-change handling of the explorer (its traits live there)."""

    session: DefuseSession
    finetune_params: dict[str, Any]
    history: list[dict[str, Any]]
    progress: dict[str, Any]
    point_fixed: Any
    selected_region: int
    _has_visible_views: bool | None
    _errors: Any
    _jobs: Jobs
    _token: CancelToken | None
    _deferred: tuple[str, Any, Any] | None
    _panel_cache: dict[tuple[int, int], dict[str, Any]]
    _region_eval: dict[int, Any]
    _evaluated_labels: dict[int, int] | None
    _note: Callable[..., None]
    _start: Callable[[str, Callable[[], None]], Any]
    _send_panel: Callable[[int], None]
    _sync_regions: Callable[[], None]
    _refresh_audit: Callable[..., None]
    wait: Callable[..., None]
    _labeler: Any = None

    @property
    def labeler(self) -> Any:
        """Vets the region samples of every round started here, the Fine-tune button's too (see
        ``DefuseSession.correct``); None (the default): not vetted. A labeler that cannot vet
        is refused with a TypeError when set."""
        return self._labeler

    @labeler.setter
    def labeler(self, value: Any) -> None:
        if value is not None:
            sample_vetter(value)
        self._labeler = value

    def fine_tune(
        self,
        steps: int | None = None,
        lam: float | None = None,
        lr: float | None = None,
        block: bool = False,
        labeler: Any = None,
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
        p = dict(self.finetune_params)
        p.update({k: v for k, v in (("steps", steps), ("lam", lam), ("lr", lr)) if v is not None})
        settings = RoundSettings(steps=p["steps"], lam=p["lam"], lr=p["lr"])
        settings.check()  # the round's own check, before any job starts
        if labeler is None:
            labeler = self.labeler
        else:
            sample_vetter(labeler)  # TypeError now rather than in the job
        if not self.session.correctable():
            raise RuntimeError("no region is labeled with a class: label at least one region first")
        if self._jobs.scheduled("fine-tuning"):
            raise RuntimeError("a fine-tuning round is already running: wait for it or cancel it")
        steps_, lam_, lr_ = int(settings.steps), float(settings.lam), float(settings.lr)
        self.finetune_params = {"steps": steps_, "lam": lam_, "lr": lr_}
        self._token = CancelToken()
        rounds = len(self.history)
        # at once, so the page never shows the previous round's "300/300" as if it were this one
        self.progress = {"running": True, "step": 0, "total": steps_, "loss": None,
                         "outcome": "Waiting to start…"}  # fmt: skip
        self._start("fine-tuning", lambda: self._run_round(steps_, lam_, lr_, labeler))
        if not block:
            return None
        self.wait()
        new = [e for e in self.history[rounds:] if e["event"] == "round"]
        return new[-1] if new else None

    def cancel(self) -> None:
        """Cancel a running fine-tuning round (the model stays as it was before the round)."""
        if self._token is None or not self._jobs.scheduled("fine-tuning"):
            self._note("Nothing to cancel.")
            return
        self._token.cancel()
        self._note("Cancelling fine-tuning…")

    def revert(self, round: int | None = None, block: bool = False, relabels: bool = False) -> None:
        """Restore the original weights (or those after ``round``) and re-evaluate; with
        ``relabels`` also undo the confirmed relabels (see ``DefuseSession.revert``)."""
        if self._jobs.scheduled("fine-tuning"):
            raise RuntimeError("a fine-tuning round is running: cancel it before reverting")
        self.session.revert(round, relabels=relabels)  # raises before any change; re-evaluates
        if block:
            self.wait()

    def _on_model_changed(self) -> None:
        """The session's model changed (a round or a revert made outside this explorer's jobs)."""
        s = self.session
        last = s.history[-1] if s.history else None
        record = None
        if s.active_round and last is not None and last["round"] == s.active_round:
            what, ev, record = "round", last["evaluation"], last  # measured by the round
        else:
            what, ev = "revert", None
        self._panel_cache.clear()
        if self._has_visible_views is False:  # not shown (its cell re-ran): on next show
            self._deferred = (what, ev, record)
            return
        self._start("evaluating", lambda: self._after_model_change(what, ev, record))

    def _on_views(self, change: dict[str, Any]) -> None:
        """A view was shown again: catch up on a model change made while none was."""
        if change["new"] and self._deferred is not None:
            (what, ev, record), self._deferred = self._deferred, None
            self._start("evaluating", lambda: self._after_model_change(what, ev, record))

    def _absorb(self, ev: Any) -> None:
        self._region_eval = panels.region_evaluation(ev)
        self._evaluated_labels = self.session.correctable()
        self._sync_regions()

    def _run_round(self, steps: int, lam: float, lr: float, labeler: Any = None) -> None:
        s = self.session
        if self._evaluated_labels != s.correctable():
            # "before" numbers for the labels in use, so the chart compares like with like
            self._note("Evaluating the model on the labeled regions…")
            ev = s.evaluate()
            self._absorb(ev)
            self.history = [*self.history, panels.history_entry(s, "before", ev)]
        last = [0.0]

        def callback(step: int, total: int, loss: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or step >= total:
                last[0] = now
                self.progress = {"running": True, "step": int(step), "total": int(total),
                                 "loss": float(loss), "outcome": "Fine-tuning…"}  # fmt: skip

        self.progress = {"running": True, "step": 0, "total": steps, "loss": None,
                         "outcome": "Fine-tuning…"}  # fmt: skip
        self._note(f"Fine-tuning for {steps} steps…")
        record = s.correct(steps=steps, lam=lam, lr=lr, cancel=self._token, callback=callback,
                           labeler=labeler)  # fmt: skip
        if record["cancelled"]:
            done = self.progress.get("step", 0)
            message = (
                f"Fine-tuning cancelled after {done} of {steps} steps; the model is unchanged."
            )
            self.progress = {**self.progress, "running": False, "outcome": message}
            self._note(message)
            return
        losses = record["losses"] or [None]
        self.progress = {"running": False, "step": steps, "total": steps, "loss": losses[-1],
                         "outcome": "Evaluating the new model…"}  # fmt: skip
        self._after_model_change("round", record["evaluation"], record)

    def _after_model_change(self, event: str, ev: Any = None, record: Any = None) -> None:
        if ev is None:
            self._note("Evaluating the model…")
            ev = self.session.evaluate()
        self._panel_cache.clear()
        self._absorb(ev)
        entry = panels.history_entry(self.session, event, ev, record)
        self.history = [*self.history, entry]
        self.point_fixed = panels.fixed_points(self.session, self._errors)
        if self.selected_region >= 0:
            self._send_panel(self.selected_region)
        self._refresh_audit()  # predictions changed
        verb = f"Reverted to round {entry['round']}" if event == "revert" else (
            f"Round {entry['round']} done")  # fmt: skip
        message = f"{verb}: test accuracy {100 * entry['test_accuracy']:.1f}%."
        if entry.get("harm"):
            hurt = ", ".join(f"{h['name']} -{h['drop']:.1f} points" for h in entry["harm"])
            message += f" It hurt: {hurt}; revert is one click away."
        self._note(message)
        if event == "revert":
            self.progress = {"running": False, "step": 0, "total": 0, "loss": None,
                             "outcome": message}  # fmt: skip
        else:
            self.progress = {**self.progress, "running": False, "outcome": message}

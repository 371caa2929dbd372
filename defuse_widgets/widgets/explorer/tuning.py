"""Fine-tuning in the explorer: starting, cancelling and reverting rounds, and showing what a
model change did (history entry, region accuracies, then the explorer's fresh views).

:class:`Tuner` holds this for :class:`~.widget.Explorer`, whose ``fine_tune``, ``cancel`` and
``revert`` delegate here. A model change made while no view of the explorer is shown
(``_has_visible_views`` false: its cell re-ran) is remembered and shown when a view comes back,
so explorers of earlier cell runs cost nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from defuse_widgets.correction.settings import RoundSettings
from defuse_widgets.correction.training import CancelToken
from defuse_widgets.regions.labels import LabelerLike, as_labeler
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.widgets.explorer import panels
from defuse_widgets.widgets.explorer.jobs import Jobs

PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress updates per second reach the browser


def progress(
    running: bool, step: int, total: int, loss: float | None, outcome: str
) -> dict[str, Any]:
    """The ``progress`` trait: whether a round runs, its step of ``total``, loss and outcome."""
    return {"running": running, "step": step, "total": total, "loss": loss, "outcome": outcome}


class TuningTraits(Protocol):
    """The explorer's traits fine-tuning writes (and ``_has_visible_views``, read)."""

    finetune_params: dict[str, Any]
    history: list[dict[str, Any]]
    progress: dict[str, Any]
    _has_visible_views: bool | None


class Tuner:
    """Fine-tuning rounds, reverts and the evaluation shown after each model change.

    Parameters
    ----------
    traits : TuningTraits
        The explorer, for the four traits above.
    session : DefuseSession
        Runs the rounds (``correct``), reverts and evaluations.
    jobs : Jobs
        The explorer's background worker (asked whether a round is scheduled).
    start : callable
        ``start(name, fn)`` queues ``fn`` on that worker.
    note : callable
        ``note(status)`` writes the status line.
    absorb : callable
        ``absorb(evaluation)`` shows an evaluation's per-region figures in the region list.
    refresh_views : callable
        ``refresh_views()`` rebuilds what a model change alters (panel, fixed points, audit).
    """

    def __init__(
        self,
        traits: TuningTraits,
        session: DefuseSession,
        jobs: Jobs,
        start: Callable[[str, Callable[[], None]], Any],
        note: Callable[..., None],
        absorb: Callable[[Any], None],
        refresh_views: Callable[[], None],
    ) -> None:
        self.traits = traits
        self.session = session
        self._jobs = jobs
        self._start = start
        self._note = note
        self._absorb = absorb
        self._refresh_views = refresh_views
        self._token: CancelToken | None = None
        self._deferred: tuple[str, Any, Any] | None = None  # a model change to show once shown
        self._evaluated_labels: dict[int, int] | None = None  # the labels last evaluated for
        self._labeler: LabelerLike | None = None

    @property
    def labeler(self) -> LabelerLike | None:
        """Vets the samples of every round started here (None: not vetted)."""
        return self._labeler

    @labeler.setter
    def labeler(self, value: LabelerLike | None) -> None:
        if value is not None:
            as_labeler(value, "images")  # TypeError for a labeler that cannot vet
        self._labeler = value

    def start_round(
        self, steps: int | None, lam: float | None, lr: float | None, labeler: LabelerLike | None
    ) -> None:
        """Check the settings and queue one round (see :meth:`~.widget.Explorer.fine_tune`)."""
        p = dict(self.traits.finetune_params)
        p.update({k: v for k, v in (("steps", steps), ("lam", lam), ("lr", lr)) if v is not None})
        settings = RoundSettings(steps=p["steps"], lam=p["lam"], lr=p["lr"])
        settings.check()  # the round's own check, before any job starts
        if labeler is None:
            labeler = self.labeler
        else:
            as_labeler(labeler, "images")  # TypeError now rather than in the job
        if not self.session.correctable():
            raise RuntimeError("no region is labeled with a class: label at least one region first")
        if self._jobs.scheduled("fine-tuning"):
            raise RuntimeError("a fine-tuning round is already running: wait for it or cancel it")
        steps_, lam_, lr_ = int(settings.steps), float(settings.lam), float(settings.lr)
        self.traits.finetune_params = {"steps": steps_, "lam": lam_, "lr": lr_}
        self._token = CancelToken()
        # at once, so the page never shows the previous round's "300/300" as if it were this one
        self.traits.progress = progress(True, 0, steps_, None, "Waiting to start…")
        self._start("fine-tuning", lambda: self._run_round(steps_, lam_, lr_, labeler))

    def absorb(self, ev: Any) -> None:
        """Show evaluation ``ev`` in the region list and remember which labels it was for."""
        self._evaluated_labels = self.session.correctable()
        self._absorb(ev)

    def cancel(self) -> None:
        """Cancel a running fine-tuning round (the model stays as it was before the round)."""
        if self._token is None or not self._jobs.scheduled("fine-tuning"):
            self._note("Nothing to cancel.")
            return
        self._token.cancel()
        self._note("Cancelling fine-tuning…")

    def revert(self, round: int | None = None, relabels: bool = False) -> None:
        """Restore the original weights (or those after ``round``) and re-evaluate; with
        ``relabels`` also undo the confirmed relabels (see ``DefuseSession.revert``)."""
        if self._jobs.scheduled("fine-tuning"):
            raise RuntimeError("a fine-tuning round is running: cancel it before reverting")
        self.session.revert(round, relabels=relabels)  # raises before any change; re-evaluates

    def model_changed(self) -> None:
        """The session's model changed (a round or a revert made outside this explorer's jobs)."""
        s = self.session
        last = s.history[-1] if s.history else None
        record = None
        if s.active_round and last is not None and last.round == s.active_round:
            what, ev, record = "round", last.evaluation, last  # measured by the round
        else:
            what, ev = "revert", None
        if self.traits._has_visible_views is False:  # not shown (its cell re-ran): on next show
            self._deferred = (what, ev, record)
            return
        self._start("evaluating", lambda: self._after_model_change(what, ev, record))

    def views_changed(self, change: dict[str, Any]) -> None:
        """A view was shown again: catch up on a model change made while none was."""
        if change["new"] and self._deferred is not None:
            (what, ev, record), self._deferred = self._deferred, None
            self._start("evaluating", lambda: self._after_model_change(what, ev, record))

    def _run_round(
        self, steps: int, lam: float, lr: float, labeler: LabelerLike | None = None
    ) -> None:
        s = self.session
        if self._evaluated_labels != s.correctable():
            # "before" numbers for the labels in use, so the chart compares like with like
            self._note("Evaluating the model on the labeled regions…")
            ev = s.evaluate()
            self.absorb(ev)
            self.traits.history = [*self.traits.history, panels.history_entry(s, "before", ev)]
        last = [0.0]

        def callback(step: int, total: int, loss: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or step >= total:
                last[0] = now
                self.traits.progress = progress(
                    True, int(step), int(total), float(loss), "Fine-tuning…"
                )

        self.traits.progress = progress(True, 0, steps, None, "Fine-tuning…")
        self._note(f"Fine-tuning for {steps} steps…")
        record = s.correct(
            steps=steps, lam=lam, lr=lr, cancel=self._token, callback=callback, labeler=labeler
        )
        if record.cancelled:
            done = self.traits.progress.get("step", 0)
            message = (
                f"Fine-tuning cancelled after {done} of {steps} steps; the model is unchanged."
            )
            self.traits.progress = {**self.traits.progress, "running": False, "outcome": message}
            self._note(message)
            return
        last_loss = record.losses[-1] if record.losses else None
        self.traits.progress = progress(False, steps, steps, last_loss, "Evaluating the new model…")
        self._after_model_change("round", record.evaluation, record)

    def _after_model_change(self, event: str, ev: Any = None, record: Any = None) -> None:
        if ev is None:
            self._note("Evaluating the model…")
            ev = self.session.evaluate()
        self.absorb(ev)
        entry = panels.history_entry(self.session, event, ev, record)
        self.traits.history = [*self.traits.history, entry]
        self._refresh_views()  # predictions changed
        verb = (
            f"Reverted to round {entry['round']}"
            if event == "revert"
            else f"Round {entry['round']} done"
        )
        message = f"{verb}: test accuracy {100 * entry['test_accuracy']:.1f}%."
        if entry.get("harm"):
            hurt = ", ".join(f"{h['name']} -{h['drop']:.1f} points" for h in entry["harm"])
            message += f" It hurt: {hurt}; revert is one click away."
        self._note(message)
        if event == "revert":
            self.traits.progress = progress(False, 0, 0, None, message)
        else:
            self.traits.progress = {**self.traits.progress, "running": False, "outcome": message}

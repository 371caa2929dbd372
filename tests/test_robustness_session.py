"""Ctrl-C during a correction round, and several threads calling one session at once.

The interrupts are real SIGINTs sent to this process by a timer thread; Python's default
handler raises KeyboardInterrupt in the main thread, wherever the round happens to be.
"""

from __future__ import annotations

import copy
import inspect
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from session_fixtures import IDENTIFY, label_true_class, ready_session, state_equal, weights
from torch import nn

import defuse_widgets as dw

ROUND = {"steps": 30, "batch_size": 32}
REFUSALS = ("already running", "is running", "busy", "no regions yet", "no region is labeled")


def check_invariants(s: dw.DefuseSession) -> None:
    """What a usable session always satisfies, whatever was interrupted or raced."""
    assert not s._running
    assert len(s.history) == s.rounds, (len(s.history), s.rounds)
    assert 0 <= s.active_round <= s.rounds
    assert [r.round for r in s.history] == list(range(1, s.rounds + 1))
    assert state_equal(weights(s.classifier), s._snapshots[s.active_round])
    ids = set(s.regions.ids) if s.regions is not None else set()
    assert set(s.labels) <= ids, (s.labels, ids)
    if s.regions is not None:
        assert s.errors is not None and len(s.regions.assignments) == len(s.errors)


@pytest.fixture(autouse=True)
def python_sigint_handler() -> Any:
    """Python's own Ctrl-C handler, whatever the runner was started with (a shell starts a
    background job with SIGINT ignored, and Python then keeps it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture()
def session(
    digits_classifier: nn.Module, digits_vae: nn.Module, digits: dw.ImageDataset
) -> dw.DefuseSession:
    s = ready_session(digits_classifier, digits_vae, digits)
    label_true_class(s, 0)
    return s


# ----- Ctrl-C -----


def interrupted_round(
    s: dw.DefuseSession, delay: float | None, after_last_step: float | None
) -> str:
    """Run a round with a SIGINT ``delay`` s after it starts or ``after_last_step`` s after its
    last training step; returns where the KeyboardInterrupt surfaced."""
    pid, timers = os.getpid(), []

    def fire(seconds: float) -> None:
        timers.append(threading.Timer(seconds, os.kill, (pid, signal.SIGINT)))
        timers[-1].start()

    def callback(step: int, total: int, loss: float) -> None:
        if after_last_step is not None and step == total:
            fire(after_last_step)

    where = "in the round"
    try:
        if delay is not None:
            fire(delay)
        s.correct(**ROUND, callback=callback)
        where = "after the round returned"
        for timer in timers:
            timer.join()
        time.sleep(0.2)  # the signal arrives here at the latest
        where = "never"
    except KeyboardInterrupt:
        for timer in timers:
            timer.join()
    return where


def test_ctrl_c_during_correct_leaves_the_weights_before_or_after_the_round(
    session: dw.DefuseSession,
) -> None:
    s = session
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    s.correct(**ROUND)  # the first round also warms up autograd and encodes the test split
    start = time.perf_counter()
    s.correct(**ROUND)
    duration = time.perf_counter() - start
    start = time.perf_counter()
    s.evaluate()
    commit = time.perf_counter() - start
    trials = [(duration * i / 5, None) for i in range(6)]
    trials += [(None, 1.5 * commit * i / 6) for i in range(7)]
    outcomes = []
    for delay, after in trials:
        before, rounds = weights(s.classifier), s.rounds
        where = interrupted_round(s, delay, after)
        check_invariants(s)
        if s.rounds == rounds:
            assert state_equal(weights(s.classifier), before), "half-updated weights"
            outcomes.append(("before", where))
        else:
            assert s.rounds == rounds + 1 and s.active_round == s.rounds
            assert state_equal(weights(s.classifier), s._snapshots[-1])
            outcomes.append(("after", where))
    print(f"round {duration:.2f} s, evaluation {commit * 1e3:.0f} ms; outcomes {outcomes}")
    assert all(where != "never" for _, where in outcomes), outcomes
    assert any(o == ("before", "in the round") for o in outcomes), outcomes
    # and the session goes on: another round, a revert, a save
    record = s.correct(**ROUND)
    assert record.round == s.rounds and len(s.history) == s.rounds
    s.revert()
    assert state_equal(weights(s.classifier), s._snapshots[0])
    check_invariants(s)


def test_ctrl_c_while_the_round_loads_its_weights_puts_the_previous_ones_back(
    session: dw.DefuseSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT that arrives while ``_commit_round`` loads a finished round's weights is held
    back until the load ends: the round is then rolled back whole, weights and record."""
    s = session
    first = s.correct(**ROUND)
    before, rounds, active = weights(s.classifier), s.rounds, s.active_round
    load, fired = nn.Module.load_state_dict, []

    def load_then_interrupt(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = load(self, *args, **kwargs)
        committing = any(f.function == "_commit_round" for f in inspect.stack(0))
        if self is s.classifier and committing and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C came during the load
            time.sleep(0.05)
        return out

    monkeypatch.setattr(nn.Module, "load_state_dict", load_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        s.correct(**ROUND)
    monkeypatch.undo()
    assert fired, "the round never loaded its weights into the classifier"
    assert s.rounds == rounds and s.active_round == active
    assert state_equal(weights(s.classifier), before), "the model kept the refused round's weights"
    check_invariants(s)
    assert s.history[-1] is first
    assert s.correct(**ROUND).round == rounds + 1  # and the session goes on


def test_ctrl_c_inside_a_deferred_block_arrives_after_it() -> None:
    from defuse_widgets.utils.critical import deferred_interrupt

    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        done.append("the whole block")
    assert done == ["the whole block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_outside_the_main_thread_is_not_deferred() -> None:
    from defuse_widgets.utils.critical import deferred_interrupt

    seen: list[Any] = []

    def work() -> None:
        with deferred_interrupt():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


# ----- threads -----


def test_readers_never_see_a_half_added_round(session: dw.DefuseSession, tmp_path: Path) -> None:
    """state_dict() and save() from one thread while rounds are added in another."""
    s = session
    done, failures = threading.Event(), []

    def rounds() -> None:
        try:
            for _ in range(2):
                s.correct(steps=10, batch_size=16)
        except Exception as exc:  # reported below, in the test's thread
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=rounds)
    thread.start()
    reads = 0
    while not done.is_set():
        state = s.state_dict()
        assert len(state["history"]) == len(state["snapshots"]) - 1, "half-added round"
        assert 0 <= state["active_round"] < len(state["snapshots"])
        reads += 1
        time.sleep(0.002)  # let the rounds run: a reader spinning on the GIL slowed them ~4x
    thread.join()
    assert not failures and reads > 0
    check_invariants(s)


def test_identify_and_distill_are_refused_while_a_round_runs(session: dw.DefuseSession) -> None:
    s = session
    in_round, release = threading.Event(), threading.Event()

    def callback(step: int, total: int, loss: float) -> None:
        in_round.set()
        assert release.wait(60)

    thread = threading.Thread(target=lambda: s.correct(steps=3, callback=callback))
    thread.start()
    try:
        assert in_round.wait(60)
        errors, regions = s.errors, s.regions
        for call in (
            lambda: s.identify(limit=5),
            s.distill,
            lambda: s.load_state_dict(s.state_dict()),
        ):
            with pytest.raises(RuntimeError, match="busy with a fine-tuning round"):
                call()
        assert s.errors is errors and s.regions is regions
        s.label(1, 2)  # labels may change meanwhile: the round trains on those it started with
    finally:
        release.set()
        thread.join()
    assert s.rounds == 1 and s.history[0].labels == {0: s.labels[0]}
    check_invariants(s)


def refused_or_done(call: Callable[[], Any], refusals: list[str]) -> None:
    try:
        call()
    except RuntimeError as exc:
        if not any(word in str(exc) for word in REFUSALS):
            raise
        refusals.append(str(exc))


def race(calls: list[Callable[[], Any]], refusals: list[str]) -> list[BaseException]:
    """Run ``calls`` in threads released together by a barrier; returns what they raised."""
    barrier, failures = threading.Barrier(len(calls)), []

    def run(call: Callable[[], Any]) -> None:
        try:
            barrier.wait(30)
            refused_or_done(call, refusals)
        except Exception as exc:  # reported in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return failures


def contenders(s: dw.DefuseSession, out: Path, delay: float) -> list[Callable[[], Any]]:
    """label, correct, revert, save and (``delay`` s later) identify, on one session."""
    return [
        lambda: (s.label(0, s.labels.get(0, 1)), s.label(1, dw.MODEL_IS_RIGHT)),
        lambda: s.correct(steps=10, batch_size=16),
        lambda: s.revert(0),
        lambda: s.save(out),
        lambda: (time.sleep(delay), s.identify(limit=30, **IDENTIFY)),
    ]


def test_five_threads_at_once_leave_a_consistent_session(
    session: dw.DefuseSession,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
    tmp_path: Path,
) -> None:
    """label, correct, revert, save and identify started together by a barrier, three times
    (identify once at once, then a little later, so it finds a round running)."""
    s = session
    refusals: list[str] = []
    for iteration, delay in enumerate((0.0, 0.05, 0.2)):
        if s.regions is None:
            s.distill(max_regions=6)
            label_true_class(s, 0)
        out = tmp_path / f"save{iteration}"
        failures = race(contenders(s, out, delay), refusals)
        assert not failures, failures
        check_invariants(s)
        saved = dw.DefuseSession.load(out, copy.deepcopy(digits_classifier), digits_vae)
        check_invariants(saved)
        again = dw.DefuseSession.load(
            s.save(tmp_path / f"again{iteration}"), copy.deepcopy(digits_classifier), digits_vae
        )
        check_invariants(again)
        assert again.labels == s.labels and again.rounds == s.rounds
        assert state_equal(weights(again.classifier), weights(s.classifier))
    print(f"refusals: {refusals}")

"""The explorer's background worker (widgets/explorer/jobs.py): its queue, and the one path
every widget change a job makes takes to the kernel's event loop (issue 44)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import traitlets
from ipywidgets import Widget
from session_fixtures import new_session, ready_session

import defuse_widgets as dw
from defuse_widgets.widgets.explorer import Explorer, jobs
from defuse_widgets.widgets.explorer.jobs import Jobs


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on its own thread, standing in for a kernel's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def run_cell(cell: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run ``cell()`` on an event loop of its own in a new thread, as a kernel runs a cell, and
    return that thread's id. Not on the test's thread: Playwright's sync API (the browser tests'
    session-wide browser) keeps a loop running there, and asyncio.run refuses to nest."""

    def run() -> int:
        asyncio.run(cell())
        return threading.get_ident()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def test_replacing_a_waiting_job_of_the_same_name_raises_nothing() -> None:
    """Issue 44: cancelling the waiting job ran its done-callback at once, which already took it
    out of the queue, and submit() then removed it again: ValueError('list.remove(x)')."""
    release = threading.Event()
    ran: list[str] = []
    q = Jobs()
    q.submit("projecting", release.wait)
    first = q.submit("evaluating", lambda: ran.append("first"))
    second = q.submit("evaluating", lambda: ran.append("second"))  # replaces the waiting one
    assert first.cancelled() and q.scheduled("evaluating") and q.running
    release.set()
    q.wait(30)
    assert ran == ["second"] and second.done() and not q.running and q.busy == ""


def test_wait_raises_a_jobs_error_and_reports_it_once() -> None:
    errors: list[tuple[str, str]] = []
    q = Jobs(on_error=lambda name, exc: errors.append((name, str(exc))))
    q.submit("broken", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        q.wait(30)
    assert errors == [("broken", "division by zero")]
    q.wait(30)  # seen once


def test_the_worker_thread_lives_only_while_there_is_work() -> None:
    q = Jobs(name="dw-test-worker")
    assert not _threads("dw-test-worker")
    q.submit("a", lambda: time.sleep(0.1))
    assert all(t.daemon for t in _threads("dw-test-worker"))  # never keeps Python alive
    q.wait(30)
    _until(lambda: not _threads("dw-test-worker"))


def test_shutdown_drops_waiting_jobs_stops_the_running_one_and_refuses_new_ones() -> None:
    started, stop = threading.Event(), threading.Event()
    ran: list[str] = []
    q = Jobs(name="dw-test-shutdown", on_stop=stop.set)
    q.submit("long", lambda: (started.set(), stop.wait(30), ran.append("long")))
    waiting = q.submit("next", lambda: ran.append("next"))
    assert started.wait(30)
    q.shutdown()
    assert waiting.cancelled()
    q.wait(30)
    assert ran == ["long"]  # asked to stop (on_stop), it ended early
    with pytest.raises(RuntimeError, match="closed"):
        q.submit("more", lambda: None)
    _until(lambda: not _threads("dw-test-shutdown"))


def test_a_job_posts_its_changes_to_the_loop_in_order(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    """Changes a job posts run on the loop's thread, in the order posted, and wait() (from
    another thread) returns once they are applied; on_busy runs there too."""
    applied: list[tuple[int, str]] = []
    busy: list[tuple[int, str]] = []
    q = Jobs(on_busy=lambda name: busy.append((threading.get_ident(), name)), loop=loop_thread)

    def job() -> None:
        for i in range(50):
            q.post(lambda i=i: applied.append((threading.get_ident(), str(i))))

    q.submit("posting", job)
    q.wait(30)
    loop_id = _ident(loop_thread)
    assert [v for _, v in applied] == [str(i) for i in range(50)]
    assert {t for t, _ in applied} == {loop_id}
    assert {t for t, _ in busy} == {loop_id} and busy[-1][1] == ""


def test_wait_on_the_loops_thread_applies_the_changes_itself() -> None:
    """A cell that waits for the work (ex.wait(), block=True) blocks the kernel's loop: wait()
    applies the posted changes there, as they come, so the cell sees them when it returns."""
    applied: list[int] = []

    async def cell() -> None:
        q = Jobs(loop=asyncio.get_running_loop())
        seen_during: list[int] = []

        def job() -> None:
            q.post(lambda: applied.append(threading.get_ident()))
            time.sleep(0.3)
            seen_during.append(len(applied))  # the first change applied while the job runs
            q.post(lambda: applied.append(threading.get_ident()))

        q.submit("job", job)
        q.wait(30)  # blocks the loop, as a cell does
        assert seen_during == [1]

    loop_id = run_cell(cell)
    assert applied == [loop_id] * 2


def test_hold_sync_inside_a_job_sends_its_changes_together(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    class Pair(Widget):
        a = traitlets.Int(0).tag(sync=True)
        b = traitlets.Int(0).tag(sync=True)

    w = Pair()
    seen: list[tuple[int, int]] = []
    w.observe(lambda ch: seen.append((w.a, w.b)), ["a", "b"])
    q = Jobs(loop=loop_thread)
    ui = q.view(w)

    def job() -> None:
        with ui.hold_sync():
            ui.a = 1
            assert ui.a == 1  # the job reads its own write before the loop applies it
            ui.b = 2

    q.submit("pair", job)
    q.wait(30)
    assert (w.a, w.b) == (1, 2) and seen[-1] == (1, 2)
    w.close()


def test_a_script_exits_at_once_with_a_job_still_running(tmp_path: Path) -> None:
    """Jobs are daemon work and dropped at exit: a script whose last line leaves a long job
    running (the explorer's UMAP, say) exits within a couple of seconds."""
    script = tmp_path / "leave.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            from defuse_widgets.widgets.explorer.jobs import Jobs
            q = Jobs()
            q.submit("long", lambda: time.sleep(60))
            q.submit("queued", lambda: time.sleep(60))
            time.sleep(0.2)
            print("last line", time.monotonic(), flush=True)
            """
        )
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    end = time.monotonic()
    assert out.returncode == 0, out.stderr
    last = float(out.stdout.split()[-1])
    assert end - last < 10, f"exited {end - last:.1f} s after its last line"  # 60 s if it waited
    assert end - start < 60


def test_the_last_exit_handler_freezes_what_is_alive() -> None:
    """The interpreter's teardown skips its full garbage collections (see utils/shutdown.py): a
    handler registered before the package's import runs after the package's and finds the
    objects frozen; without the package's handler nothing is."""
    probe = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n"
        "import defuse_widgets\n"
    )
    unregister = (
        "from defuse_widgets.utils import shutdown\n"
        "atexit.unregister(shutdown.skip_exit_collections)\n"
    )
    for source, expected in ((probe, "frozen True"), (probe + unregister, "frozen False")):
        out = subprocess.run(
            [sys.executable, "-c", source], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


@pytest.fixture(scope="module")
def session(digits, digits_classifier, digits_vae) -> dw.DefuseSession:
    return ready_session(digits_classifier, digits_vae, digits)


def test_every_trait_change_of_the_explorers_background_work_is_made_on_the_loop(
    session: dw.DefuseSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a kernel, every trait the explorer's jobs change (map layout, rounds, revert, audit,
    export, generator report, session events) changes on the kernel's loop thread, never on
    the worker: here a loop on the test's thread stands in for the kernel's."""
    monkeypatch.setattr(jobs, "kernel_loop", asyncio.get_running_loop)
    changes: list[tuple[str, int]] = []

    async def cell() -> None:
        ex = Explorer(session, projection="pca", steps=5)
        ex.observe(lambda ch: changes.append((ch["name"], threading.get_ident())))
        labels: list[tuple[int, int | None]] = []
        ex.on_label(lambda rid, label: labels.append((rid, threading.get_ident())))
        ex.wait(300)
        rid = ex.regions[0]["id"]
        ex.select_region(rid)
        ex.label(rid, ex.regions[0]["transition"][0])
        ex.fine_tune(block=True)
        ex.open_audit(rid, block=True)
        ex.export_tests(tmp_path / "suite", samples=8, block=True)
        ex.measure_generator(block=True, limit=30)
        ex.revert(block=True)
        await asyncio.sleep(0.1)
        assert ex.error == "" and ex.history[-1]["event"] == "revert"
        assert labels and {t for _, t in labels} == {threading.get_ident()}
        ex.close()  # ends its worker (none runs now: the thread lives only while there is work)
        _until(lambda: not _threads("explorer"))

    try:
        loop_id = run_cell(cell)
    finally:
        for rid in list(session.labels):
            session.unlabel(rid)
        session.revert()
    names = {name for name, _ in changes}
    assert {"points", "thumbs", "baseline", "progress", "history", "audit", "generator"} <= names
    off_loop = sorted({name for name, ident in changes if ident != loop_id})
    assert not off_loop, f"traits changed off the loop's thread: {off_loop}"


def test_a_live_search_reports_on_the_loop_one_message_per_report(
    digits, digits_classifier, digits_vae, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live search adopts each report into the session from the worker: the session's
    events and the map's arrays reach the explorer on the loop, each report in one batch (the
    point arrays always of one length)."""
    monkeypatch.setattr(jobs, "kernel_loop", asyncio.get_running_loop)
    s = new_session(digits_classifier, digits_vae, digits)
    off_loop: set[str] = set()
    sizes: list[tuple[int, int]] = []

    async def cell() -> None:
        ex = Explorer(
            s,
            search={"limit": 160, "step_images": 40},
            projection="pca",
            distill={"min_errors": 30, "max_regions": 6},
        )
        me = threading.get_ident()

        def seen(change: dict[str, Any]) -> None:
            if threading.get_ident() != me:
                off_loop.add(change["name"])
            if change["name"] == "points":
                sizes.append((len(ex.points), len(ex.point_labels)))

        ex.observe(seen)
        while ex.running:
            await asyncio.sleep(0.05)  # the loop runs: posted changes apply as a kernel's would
        ex.wait(30)
        assert ex.error == "" and ex.regions_fit == "full" and s.regions is not None
        ex.close()

    run_cell(cell)
    assert not off_loop, f"traits changed off the loop's thread: {sorted(off_loop)}"
    assert sizes and all(a == b for a, b in sizes)


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def _ident(loop: asyncio.AbstractEventLoop) -> int:
    got: list[int] = []
    done = threading.Event()
    loop.call_soon_threadsafe(lambda: (got.append(threading.get_ident()), done.set()))
    done.wait(5)
    return got[0]


def _until(check: Callable[[], Any], seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)

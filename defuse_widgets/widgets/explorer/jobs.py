"""A widget's long work on one background thread, and the one path its results take back.

:class:`Jobs` runs named jobs one after the other on a daemon thread, so the kernel stays
responsive while a projection, a fine-tuning round or an audit runs, and a job asked for while
another runs waits its turn. A job of the same name still waiting is replaced (it would redo the
same work). Futures keep the job's exception: :meth:`Jobs.wait` re-raises the first error of the
jobs it waited for.

**One path back.** ipywidgets and anywidget are not thread-safe: a trait set, or a comm message
sent, from a worker thread while a cell runs carries that cell's parent header and races the
kernel's own messages. So background work never touches the widget itself: every change it makes
goes through :meth:`Jobs.post`, which hands it to the kernel's event loop
(``call_soon_threadsafe``, in order); :meth:`Jobs.view` gives a job the widget with its trait
writes posted. A :meth:`Jobs.wait` on the loop's thread (a cell waiting for the work) applies the
posted changes as they come. Outside a kernel (a script, the tests) there is no loop and no comm:
changes apply at once, on the job's thread.

**Ending.** The thread exists only while jobs wait or run. :meth:`Jobs.shutdown` drops the waiting
jobs and refuses new ones; at interpreter exit every :class:`Jobs` is shut down and, being a daemon,
a job still running (a UMAP fit, say) does not keep the interpreter alive.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import wait as wait_all
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import partial
from typing import Any, TypeVar, cast

W = TypeVar("W")
EXIT_GRACE_S = 1.0  # at interpreter exit, how long a running job gets to end by itself
_LIVE: weakref.WeakSet[Jobs] = weakref.WeakSet()


def kernel_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of the IPython kernel running on the calling thread; None outside one."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Jobs:
    """A queue of named jobs on one background thread, and the path of their widget changes.

    Parameters
    ----------
    on_busy : callable, optional
        Called (on the loop, see :meth:`post`) with the running job's name when it starts and
        with ``""`` when the queue is empty.
    on_error : callable, optional
        Called (on the loop) with ``(name, exception)`` when a job raises; the future keeps the
        exception for :meth:`wait`.
    name : str
        The worker thread's name.
    on_stop : callable, optional
        Called by :meth:`shutdown` to ask a running job to stop early (a round's cancel token).
    loop : asyncio event loop, optional
        Where :meth:`post` sends changes; default: the kernel's loop when created in a kernel,
        else none (changes apply at once).
    """

    def __init__(
        self,
        on_busy: Callable[[str], Any] | None = None,
        on_error: Callable[[str, BaseException], Any] | None = None,
        name: str = "defuse-widget",
        on_stop: Callable[[], Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._name = name
        self._loop = loop if loop is not None else kernel_loop()
        self._lock = threading.RLock()  # a done-callback may run inside submit()
        self._queue: deque[tuple[str, Callable[[], Any], Future[None]]] = deque()
        self._pending: list[tuple[str, Future[None]]] = []  # submitted, not finished
        self._unwaited: list[Future[None]] = []  # finished or not, not yet seen by wait()
        self._has_work = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._current = ""
        self._updates: deque[Callable[[], Any]] = deque()  # posted, not yet applied
        self._unapplied = 0  # posted and not yet done applying
        self._applied = threading.Condition(self._lock)
        self._stirred = threading.Event()  # a post or a finished job: wakes wait() on the loop
        self._batch = threading.local()
        self._on_busy = on_busy or (lambda name: None)
        self._on_error = on_error or (lambda name, exc: None)
        self._on_stop = on_stop or (lambda: None)
        _LIVE.add(self)

    @property
    def in_kernel(self) -> bool:
        """Whether changes go to a kernel's loop (else they apply at once: a script, the tests)."""
        return self._loop is not None

    @property
    def busy(self) -> str:
        """The name of the running job, ``""`` when none runs."""
        return self._current

    @property
    def running(self) -> bool:
        """Whether a job runs or waits."""
        with self._lock:
            return bool(self._pending)

    def in_worker(self) -> bool:
        """Whether the caller runs on the worker thread (inside a job)."""
        return threading.current_thread() is self._thread

    def scheduled(self, name: str) -> bool:
        """Whether a job called ``name`` runs or waits."""
        with self._lock:
            return any(n == name for n, _ in self._pending)

    def submit(self, name: str, fn: Callable[[], Any]) -> Future[None]:
        """Run ``fn()`` after the jobs already there; a waiting job called ``name`` is dropped.

        Raises
        ------
        RuntimeError
            After :meth:`shutdown` (the widget was closed).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: closed, it runs no more background work")
            for n, _, waiting in self._queue:
                if n == name:
                    _drop(waiting)  # its done-callback takes it out of _pending
            self._queue = deque(job for job in self._queue if job[0] != name)
            future: Future[None] = Future()
            self._queue.append((name, fn, future))
            self._pending.append((name, future))
            self._unwaited.append(future)
            future.add_done_callback(self._finished)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._has_work.notify()
            return future

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every job submitted so far (and those they queue) to end, and for the widget
        changes they posted to be applied.

        Raises
        ------
        Exception
            The first error of a job submitted since the previous ``wait()`` (it was also shown
            through ``on_error``).
        TimeoutError
            When jobs still run after ``timeout`` seconds.
        """
        if self.in_worker():
            return  # a job cannot wait for itself
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                futures, self._unwaited = self._unwaited, []
            if not futures:
                break
            if not self._wait_for(futures, deadline):
                with self._lock:
                    self._unwaited = futures + self._unwaited
                raise TimeoutError(f"background work still running after {timeout} s")
            self._settle(deadline)  # the error's note shows before the error is raised
            for fut in futures:
                try:
                    fut.result()
                except CancelledError:
                    continue  # replaced by a newer job of the same name, or shut down
        self._settle(deadline)

    def shutdown(self) -> None:
        """Stop taking jobs and drop the waiting ones; ask the running one to stop early
        (``on_stop``); the thread ends once it has."""
        with self._lock:
            self._closed = True
            waiting = [fut for _, _, fut in self._queue]
            self._queue.clear()
            self._has_work.notify_all()
        for fut in waiting:
            _drop(fut)
        self._on_stop()

    def post(self, fn: Callable[[], Any]) -> None:
        """Apply a widget change: on the kernel's loop, after those posted before it.

        Called on the loop's thread, or outside a kernel, ``fn()`` runs at once (after any
        changes still queued); from a job, it is queued and the loop is woken. A change that
        raises is reported as a RuntimeWarning (the job that posted it has moved on).
        """
        if self._loop is None or self._on_loop():
            self.apply_posted()
            self._apply(fn)
            return
        calls = getattr(self._batch, "calls", None)
        if calls is not None:
            calls.append(fn)  # sent together when the batch ends
            return
        with self._lock:
            self._updates.append(fn)
            self._unapplied += 1
        self._stirred.set()
        with suppress(RuntimeError):  # a closed loop: the kernel, and the widget, are going away
            self._loop.call_soon_threadsafe(self.apply_posted)

    def apply_posted(self) -> None:
        """Apply the changes posted so far, in order (what the loop runs)."""
        while True:
            with self._lock:
                if not self._updates:
                    return
                fn = self._updates.popleft()
            try:
                self._apply(fn)
            finally:
                with self._lock:
                    self._unapplied -= 1
                    self._applied.notify_all()

    @contextmanager
    def batch(self, hold: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
        """Post the changes made inside the block as one, applied inside ``hold()`` (a widget's
        ``hold_sync``: one message for them all)."""
        if self._loop is None or self._on_loop() or getattr(self._batch, "calls", None) is not None:
            with hold():
                yield
            return
        calls: list[Callable[[], Any]] = []
        self._batch.calls = calls
        try:
            yield
        finally:
            self._batch.calls = None

            def apply() -> None:
                with hold():
                    for fn in calls:
                        fn()

            self.post(apply)

    def view(self, widget: W) -> W:
        """``widget`` as a job should see it: trait writes go through :meth:`post`; reads see
        the job's own writes even before they are applied; ``hold_sync()`` batches."""
        return cast(W, _PostedWrites(widget, self))

    # ----- internals -----

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _apply(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:
            message = f"{self._name}: a widget change from background work failed: {exc!r}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _wait_for(self, futures: list[Future[None]], deadline: float | None) -> bool:
        """Wait until ``futures`` are done (False on the deadline), applying posted changes
        meanwhile when the caller is the loop's thread (nothing else would)."""
        if self._loop is None or not self._on_loop():
            _, not_done = wait_all(futures, None if deadline is None else _left(deadline))
            return not not_done
        while True:
            self._stirred.clear()
            self.apply_posted()
            if all(f.done() for f in futures):
                return True
            if deadline is not None and _left(deadline) == 0:
                return False
            self._stirred.wait(None if deadline is None else _left(deadline))

    def _settle(self, deadline: float | None) -> None:
        """Have the posted changes applied: here on the loop's thread, else by the loop."""
        if self._loop is None or self._on_loop():
            self.apply_posted()
            return
        with self._lock:
            while self._unapplied and (deadline is None or _left(deadline) > 0):
                self._applied.wait(None if deadline is None else _left(deadline))
            if self._unapplied:
                raise TimeoutError("background work ended, its widget changes still queued")

    def _work(self) -> None:
        """The worker thread: run queued jobs until none waits (or the queue is shut down)."""
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None  # a later submit() starts a new thread
                    return
                name, fn, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            self._current = name
            self.post(partial(self._on_busy, name))
            try:
                fn()
            except BaseException as exc:
                self.post(partial(self._on_error, name, exc))
                future.set_exception(exc)
            else:
                future.set_result(None)

    def _finished(self, future: Future[None]) -> None:
        with self._lock:
            self._pending = [(n, f) for n, f in self._pending if f is not future]
            idle = not self._pending
            if idle:
                self._current = ""
        self._stirred.set()
        if idle:
            self.post(partial(self._on_busy, ""))


class _PostedWrites:
    """A widget whose trait writes go through :meth:`Jobs.post` (see :meth:`Jobs.view`)."""

    def __init__(self, widget: Any, jobs: Jobs) -> None:
        object.__setattr__(self, "_widget", widget)
        object.__setattr__(self, "_jobs", jobs)
        object.__setattr__(self, "_written", {})  # name -> value posted, not yet applied

    def __getattr__(self, name: str) -> Any:
        written = self.__dict__["_written"]
        return written[name] if name in written else getattr(self._widget, name)

    def __setattr__(self, name: str, value: Any) -> None:
        widget, written = self._widget, self._written
        written[name] = value

        def apply() -> None:
            setattr(widget, name, value)
            if written.get(name) is value:
                del written[name]

        self._jobs.post(apply)

    def hold_sync(self) -> AbstractContextManager[None]:
        return self._jobs.batch(self._widget.hold_sync)


def _drop(future: Future[None]) -> None:
    """Cancel a job that has not started, and tell those waiting for it (as an executor does)."""
    if future.cancel():
        future.set_running_or_notify_cancel()


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: drop every waiting job, ask running ones to stop, give them a moment."""
    jobs = list(_LIVE)
    for j in jobs:
        j.shutdown()
    end = time.monotonic() + EXIT_GRACE_S
    for j in jobs:
        thread = j._thread
        if thread is not None:
            thread.join(_left(end))

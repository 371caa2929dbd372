"""One background worker for a widget's long work: named jobs, run one after the other.

A :class:`Jobs` holds a single-worker :class:`~concurrent.futures.ThreadPoolExecutor`, so the
kernel stays responsive while a projection, a fine-tuning round or an audit runs, and a job asked
for while another runs waits its turn (fine-tuning during the first projection starts after it).
A job of the same name still waiting is replaced (it would redo the same work). Futures keep the
job's exception: :meth:`Jobs.wait` re-raises the first error of the jobs it waited for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any


class Jobs:
    """A queue of named jobs on one background thread.

    Parameters
    ----------
    on_busy : callable, optional
        Called with the running job's name when it starts and with ``""`` when the queue is empty.
    on_error : callable, optional
        Called with ``(name, exception)`` when a job raises (in the worker thread); the future
        keeps the exception for :meth:`wait`.
    name : str
        Prefix of the worker thread's name.
    """

    def __init__(
        self,
        on_busy: Callable[[str], Any] | None = None,
        on_error: Callable[[str, BaseException], Any] | None = None,
        name: str = "defuse-widget",
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.RLock()  # a done-callback may run inside submit()
        self._pending: list[tuple[str, Future[None]]] = []  # submitted, not finished
        self._unwaited: list[Future[None]] = []  # finished or not, not yet seen by wait()
        self._current = ""
        self._worker: threading.Thread | None = None
        self._on_busy = on_busy or (lambda name: None)
        self._on_error = on_error or (lambda name, exc: None)

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
        return threading.current_thread() is self._worker

    def scheduled(self, name: str) -> bool:
        """Whether a job called ``name`` runs or waits."""
        with self._lock:
            return any(n == name for n, _ in self._pending)

    def submit(self, name: str, fn: Callable[[], Any]) -> Future[None]:
        """Run ``fn()`` after the jobs already there; a waiting job called ``name`` is dropped."""
        with self._lock:
            for n, fut in list(self._pending):
                if n == name and fut.cancel():
                    self._pending.remove((n, fut))
            future: Future[None] = self._executor.submit(self._run, name, fn)
            self._pending.append((name, future))
            self._unwaited.append(future)
            future.add_done_callback(self._finished)
            return future

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every job submitted so far (and those they queue) to end.

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
        while True:
            with self._lock:
                futures, self._unwaited = self._unwaited, []
            if not futures:
                return
            _, not_done = wait_all(futures, timeout)
            if not_done:
                with self._lock:
                    self._unwaited = futures + self._unwaited
                raise TimeoutError(f"background work still running after {timeout} s")
            for fut in futures:
                try:
                    fut.result()
                except CancelledError:
                    continue  # replaced by a newer job of the same name

    def shutdown(self) -> None:
        """Stop taking jobs; the running one finishes, waiting ones are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, name: str, fn: Callable[[], Any]) -> None:
        self._worker = threading.current_thread()
        self._current = name
        self._on_busy(name)
        try:
            fn()
        except BaseException as exc:
            self._on_error(name, exc)
            raise

    def _finished(self, future: Future[None]) -> None:
        with self._lock:
            self._pending = [(n, f) for n, f in self._pending if f is not future]
            idle = not self._pending
            if idle:
                self._current = ""
        if idle:
            self._on_busy("")

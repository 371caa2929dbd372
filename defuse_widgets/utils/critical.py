"""Hold Ctrl-C (SIGINT) back while a few assignments that must happen together are made."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block whole: a SIGINT that arrives meanwhile is delivered once it ends.

    Python runs signal handlers only in the main thread, so elsewhere the block cannot be
    interrupted by Ctrl-C and nothing is changed. In the main thread the SIGINT handler is
    swapped for one that only records the signal; on exit the original handler is put back and
    the recorded signal raised again, so a notebook's "interrupt kernel" still takes effect
    (as a ``KeyboardInterrupt`` after the block) instead of splitting it.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # a handler set from C: leave it alone
    ):
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # no signal handling in this interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)

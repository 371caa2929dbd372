"""Run notebooks under nbclient for the tests and benchmarks: a kernel of this Python, no lost
wake-ups, and a stall that fails fast with the kernel's threads.

**The stall this avoids** (issue 44: 900 s between one cell's reply and the next cell's start).
nbclient waits for a cell's reply with ``shell_channel.get_msg(timeout=cell_timeout)``, an asyncio
poll on the shell socket's file descriptor. Its stand-in for an ``ipywidgets.Output`` widget
(``nbclient.output_widget.OutputWidget``) answers every output the kernel routes into the widget
(``with out: print(...)``, as the teaching notebook's ``on_label`` callback does) by sending the
widget's new state back on that same shell socket, and jupyter_client's ``Session.send`` sends it
on a plain ``zmq.Socket`` shadow of the asyncio socket. ZeroMQ signals a socket's file descriptor
edge-triggered: a send processes the socket's pending commands, the one that announces the
arrived reply included, so the descriptor never turns readable and the asyncio wrapper, bypassed,
does not re-check. The reply then sits in the socket until the poll's timeout (the cell timeout)
ends the wait, and the cell carries on as if nothing happened. The kernel is idle all the while.
:class:`NotebookRunner` sends the widget's state through the asyncio socket, whose send re-checks
the socket's events, so the reply is read at once. The bug is the client's, not the package's:
a browser front end has no such stand-in.

**Stalls fail fast.** The kernel starts with :mod:`faulthandler` registered on ``SIGUSR1``
(:func:`write_kernelspec`). A cell that runs longer than the cell timeout fails with the kernel's
threads in the error; a reply read more than ``LATE_REPLY_S`` after the kernel sent it (a missed
wake-up) fails the same way instead of costing the cell timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zmq.asyncio
from nbclient import NotebookClient
from nbclient.output_widget import OutputWidget
from nbformat import NotebookNode

KERNEL = "defuse-widgets-tests"
CELL_TIMEOUT_S = int(os.environ.get("DEFUSE_WIDGETS_TEST_CELL_TIMEOUT", "120"))
LATE_REPLY_S = 10.0  # a reply read this long after the kernel sent it sat unread in the socket
DUMPS_ENV = "DEFUSE_WIDGETS_TEST_DUMPS"  # the kernels' thread dumps go to <folder>/kernel-<pid>.txt

# The kernel's start: faulthandler dumps every thread on SIGUSR1, then ipykernel as usual.
_BOOT = (
    "import faulthandler, os, signal\n"
    f"folder = os.environ.get({DUMPS_ENV!r})\n"
    "if folder:\n"
    "    dump = open(os.path.join(folder, f'kernel-{os.getpid()}.txt'), 'w')\n"
    "    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)\n"
    "from ipykernel.kernelapp import launch_new_instance\n"
    "launch_new_instance()\n"
)


class StallError(AssertionError):
    """A cell waited past its limit, or its reply sat unread; the message holds the kernel's
    threads."""


def write_kernelspec(root: Path) -> dict[str, str]:
    """Write the ``KERNEL`` kernelspec (this interpreter, faulthandler on SIGUSR1) under
    ``root/kernels``; return the environment that puts it first and collects thread dumps."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", _BOOT, "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "defuse-widgets tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    dumps = root / "dumps"
    dumps.mkdir(exist_ok=True)
    path = os.environ.get("JUPYTER_PATH")
    return {
        "JUPYTER_PATH": os.pathsep.join([str(root), *filter(None, [path])]),
        DUMPS_ENV: str(dumps),
    }


class _OutputWidget(OutputWidget):
    """nbclient's Output-widget stand-in, sending its state through the asyncio socket."""

    def _publish_msg(
        self,
        msg_type: str,
        data: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
        **keys: Any,
    ) -> None:
        socket = self.kernel_client.shell_channel.socket
        if not isinstance(socket, zmq.asyncio.Socket):
            super()._publish_msg(msg_type, data, metadata, buffers, **keys)
            return
        session = self.kernel_client.session
        content = {"data": data or {}, "comm_id": self.comm_id, **keys}
        msg = session.msg(msg_type, content, parent=self.parent_header, metadata=metadata or {})
        # the asyncio socket's send re-checks its events, so a reply that arrived is not lost
        socket.send_multipart(session.serialize(msg))


class NotebookRunner(NotebookClient):
    """A :class:`~nbclient.NotebookClient` without the lost wake-up, whose stalls fail fast.

    Takes NotebookClient's arguments; ``timeout`` defaults to ``CELL_TIMEOUT_S``. Run it with
    the environment of :func:`write_kernelspec` and ``kernel_name=KERNEL``.
    """

    def __init__(self, nb: NotebookNode, **kw: Any) -> None:
        kw.setdefault("timeout", CELL_TIMEOUT_S)
        kw.setdefault("on_cell_executed", self._check_reply)
        super().__init__(nb, **kw)
        self.widget_registry["@jupyter-widgets/output"]["OutputModel"] = _OutputWidget

    async def _async_handle_timeout(
        self, timeout: int, cell: NotebookNode | None = None
    ) -> None | dict[str, Any]:
        where = "" if cell is None else f" (cell {self.nb.cells.index(cell)})"
        raise StallError(
            f"a cell waited more than {timeout} s for its reply{where}; the kernel's threads:\n"
            + await self.kernel_threads()
        )

    async def _check_reply(self, cell: NotebookNode, cell_index: int, execute_reply: Any) -> None:
        sent = execute_reply["header"]["date"]
        late = (datetime.now(timezone.utc) - sent).total_seconds()
        if late > LATE_REPLY_S:
            raise StallError(
                f"cell {cell_index}'s reply was read {late:.1f} s after the kernel sent it (a "
                "missed wake-up); the kernel's threads:\n" + await self.kernel_threads()
            )

    async def kernel_threads(self) -> str:
        """The kernel's threads as faulthandler dumps them (SIGUSR1), or why there are none."""
        folder = os.environ.get(DUMPS_ENV)
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        if not folder or process is None:
            return f"(no dump: ${DUMPS_ENV} unset or no local kernel process)"
        path = Path(folder) / f"kernel-{process.pid}.txt"
        os.kill(process.pid, signal.SIGUSR1)
        await asyncio.sleep(1.0)
        return path.read_text() if path.is_file() else f"(no dump at {path})"


def cell_gaps(nb: NotebookNode) -> list[tuple[int, float]]:
    """(index, seconds) from each code cell's reply to the next code cell's start, from the
    ``execution`` timings nbclient records (``shell.execute_reply``, ``iopub.execute_input``)."""
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    gaps = []
    for (i, a), (_, b) in zip(code, code[1:]):
        reply = a.metadata.get("execution", {}).get("shell.execute_reply")
        start = b.metadata.get("execution", {}).get("iopub.execute_input")
        if reply and start:
            gaps.append((i, (_stamp(start) - _stamp(reply)).total_seconds()))
    return gaps


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))

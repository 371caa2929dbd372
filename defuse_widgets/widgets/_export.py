"""Exporting the explorer's labeled regions as a regression suite ("Export as test").

:class:`ExportMixin` is mixed into :class:`~.explorer.Explorer`: the arguments are checked on the
kernel's thread, the export (decoding and writing the samples) runs on the background worker,
after any work already queued (a fine-tuning round, say), and the status line says where the
suite went.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defuse_widgets.suite.export import (
    DEFAULT_MIN_ACCURACY,
    DEFAULT_SAMPLES,
    check_export,
    export_suite,
)

if TYPE_CHECKING:
    from defuse_widgets.session.session import DefuseSession


class ExportMixin:
    """The explorer's "Export as test" action (its traits live in the explorer)."""

    session: DefuseSession
    _note: Callable[..., None]
    _start: Callable[[str, Callable[[], None]], Any]
    wait: Callable[..., None]

    def export_tests(
        self,
        path: str | os.PathLike,
        regions: Sequence[int] | None = None,
        samples: int = DEFAULT_SAMPLES,
        min_accuracy: float | Mapping[int, float] = DEFAULT_MIN_ACCURACY,
        include_real: bool = True,
        block: bool = False,
    ) -> Path:
        """Export the class-labeled regions as a regression suite in the background.

        Parameters
        ----------
        path : the suite directory, relative to the kernel's working directory; an earlier
            suite there is replaced (a directory holding other files is refused).
        regions, samples, min_accuracy, include_real : as for
            :meth:`~defuse_widgets.session.session.DefuseSession.export_tests`.
        block : wait for the export (re-raising its error).

        Returns
        -------
        Path
            The suite directory (written once the job is done).

        Raises
        ------
        ValueError, RuntimeError
            For a bad argument or no class-labeled region, before anything starts.
        """
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise ValueError(f"path: expected a directory name for the suite, got {path!r}")
        target = Path(str(path).strip()).expanduser().absolute()
        chosen = check_export(self.session, target, regions, samples, min_accuracy, None, True)

        what = f"{len(chosen)} labeled region{'s' if len(chosen) != 1 else ''}"

        def job() -> None:
            self._note(f"Exporting {what} as a test suite…")
            export_suite(self.session, target, list(chosen), samples, min_accuracy,
                         include_real, overwrite=True)  # fmt: skip
            self._note(f"Exported {what} as a test suite to {target}; check a "
                       f"model with dw.check_suite(model, {str(target)!r}).")  # fmt: skip

        self._start("exporting tests", job)
        if block:
            self.wait()
        return target

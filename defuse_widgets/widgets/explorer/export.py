"""Exporting the explorer's labeled regions as a regression suite ("Export as test").

:func:`export_in_background` checks the arguments on the kernel's thread and queues the export
(decoding and writing the samples) on the explorer's background worker, after any work already
queued (a fine-tuning round, say); the status line says where the suite went.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from defuse_widgets.session.session import DefuseSession
from defuse_widgets.suite.export import check_export


def export_in_background(
    session: DefuseSession,
    start: Callable[[str, Callable[[], None]], Any],
    note: Callable[..., None],
    path: str | os.PathLike,
    regions: Sequence[int] | None,
    samples: int,
    min_accuracy: float | Mapping[int, float],
    include_real: bool,
) -> Path:
    """Check the export's arguments, then queue it with ``start(name, fn)``; returns the suite's
    absolute directory (see :meth:`~.widget.Explorer.export_tests` for the arguments).
    ``note(status)`` reports progress on the status line."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ValueError(f"path: expected a directory name for the suite, got {path!r}")
    target = Path(str(path).strip()).expanduser().absolute()
    chosen = check_export(
        session.regions, session.labels, target, regions, samples, min_accuracy, None, True
    )
    what = f"{len(chosen)} labeled region{'s' if len(chosen) != 1 else ''}"

    def job() -> None:
        note(f"Exporting {what} as a test suite…")
        session.export_tests(
            target, list(chosen), samples, min_accuracy, include_real, overwrite=True
        )
        note(
            f"Exported {what} as a test suite to {target}; check a model with "
            f"dw.check_suite(model, {str(target)!r})."
        )

    start("exporting tests", job)
    return target

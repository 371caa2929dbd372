"""A prompt interpreter exit.

While it tears the modules down at exit, CPython garbage-collects every tracked object several
times; with torch, numba and umap loaded (millions of objects) those passes kept a script alive
1-3 s after its last line (``benchmarks/exit_time.py``). The objects alive when the exit
handlers run are about to go anyway (and Python does not promise to finalize them), so the last
exit handler moves them to the permanent generation (:func:`gc.freeze`), which those passes skip;
they are still freed by reference counting as their modules are cleared. To keep the full passes:
``atexit.unregister(defuse_widgets.utils.shutdown.skip_exit_collections)``.
"""

from __future__ import annotations

import atexit
import gc


def skip_exit_collections() -> None:
    """Move every object alive now out of the garbage collector's reach (see the module)."""
    gc.freeze()


# registered on the package's first import, so it runs after the exit handlers registered later
# (atexit runs them last in, first out): the explorer's jobs are stopped before it
atexit.register(skip_exit_collections)

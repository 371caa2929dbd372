"""Execute the notebooks and keep copies with their outputs for the docs site.

``make docs-notebooks`` runs this: each notebook of ``notebooks/`` runs top to bottom on a kernel
of this Python, with its own defaults (``teaching`` in quick mode: its checkpoint waits for a
person to label a region, and quick mode's simulated student does that), and the executed copy
goes to ``docs/notebooks/``. The site (``docs/hooks.py``) shows each notebook's cells from
``notebooks/`` with the outputs of its copy, as long as their code cells are the same;
``tests/test_docs.py`` checks that they are.

A static page has no kernel to draw widgets: a widget's output becomes a line saying so (tqdm's
progress bars go), and the notebooks display tables and images beside their widgets for the site
to show; a plotly figure gets an HTML form (plotly.js from its CDN). ``--restyle`` redoes only
that on existing copies.

Usage::

    python docs/scripts/run_notebooks.py [NAME ...] [--cache DIR] [--quick] [--out DIR]

``--cache``: the package's cache folder for the run (``DEFUSE_WIDGETS_CACHE``: trained models,
datasets, maps; an empty folder measures a cold run). Prints each notebook's time, its kernel's
CPU time, the load average and its slowest cells.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
import plotly.io

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from notebook_harness import KERNEL, NotebookRunner, write_kernelspec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "notebooks"
OUT = ROOT / "docs" / "notebooks"
ORDER = ["quickstart", "teaching", "bring_your_own_model", "fashion_mnist"]
NEEDS_QUICK = {"teaching"}  # its checkpoint waits for a person unless quick mode stands in
WIDGET = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET_REPR = re.compile(r"^<[\w.]+ object at 0x[0-9a-f]+>$")  # anywidget's text form
PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar's text form
WIDGET_NOTE = "(a widget: it needs a live kernel, so run the notebook to use it)"
CELL_TIMEOUT_S = 3600


def cell_seconds(cell: nbformat.NotebookNode) -> float:
    """How long a code cell ran, from nbclient's timing metadata (0 when it did not run)."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return (datetime.fromisoformat(end[:26]) - datetime.fromisoformat(start[:26])).total_seconds()


def kernel_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (the kernels), user and system."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def static_outputs(nb: nbformat.NotebookNode) -> None:
    """Keep what a static page can show: a widget becomes a line saying so (a progress bar goes),
    a plotly figure gets an HTML form, timings go. Running it again changes nothing."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [out for out in map(static_output, cell.outputs) if out is not None]


def static_output(out: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """One output as a static page shows it (None: leave it out)."""
    data = out.get("data", {})
    text = data.get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    if WIDGET in data or WIDGET_REPR.match(text) or PROGRESS.search(text):
        data.pop(WIDGET, None)
        if PROGRESS.search(text):  # a tqdm bar, frozen at its start
            return None
        data["text/plain"] = WIDGET_NOTE
    if PLOTLY in data and "text/html" not in data:
        figure = plotly.io.from_json(json.dumps(data[PLOTLY]))
        data["text/html"] = figure.to_html(include_plotlyjs="cdn", full_html=False)
    return out


def run(name: str, env: dict[str, str], out: Path) -> float:
    """Execute ``notebooks/<name>.ipynb`` in a scratch folder; write its copy to ``out``."""
    nb = nbformat.read(SOURCE / f"{name}.ipynb", as_version=4)
    # widget state is kept while it runs (nbclient's Output-widget stand-in writes into it) and
    # dropped from the copy by static_outputs
    client = NotebookRunner(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S)
    start, cpu = time.perf_counter(), kernel_cpu_seconds()
    with tempfile.TemporaryDirectory() as cwd:
        client.resources = {"metadata": {"path": cwd}}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the kernel inherits this process's environment
        try:
            client.execute()
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    seconds, cpu = time.perf_counter() - start, kernel_cpu_seconds() - cpu
    code = [(cell_seconds(c), i) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    slowest = ", ".join(f"cell {i}: {t:.0f} s" for t, i in sorted(code, reverse=True)[:4])
    print(
        f"{name}: {seconds:.0f} s ({seconds / 60:.1f} min), kernel CPU {cpu:.0f} s, load average "
        f"{os.getloadavg()[1]:.1f} (5 min); slowest: {slowest}",
        flush=True,
    )
    static_outputs(nb)
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / f"{name}.ipynb")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=ORDER, help=f"notebooks (default {ORDER})")
    parser.add_argument(
        "--cache", help="DEFUSE_WIDGETS_CACHE for the run (an empty folder: a cold run)"
    )
    parser.add_argument("--quick", action="store_true", help="every notebook in quick mode")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where copies go ({OUT})")
    parser.add_argument(
        "--restyle", action="store_true", help="only redo the static outputs of existing copies"
    )
    args = parser.parse_args(argv)
    if args.restyle:
        for path in sorted(args.out.glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            static_outputs(nb)
            nbformat.write(nb, path)
        return 0
    unknown = sorted(set(args.names) - set(ORDER))
    if unknown:
        parser.error(f"names: expected some of {ORDER}, got {unknown}")
    with tempfile.TemporaryDirectory() as specs:
        # the tests' kernelspec and client (tests/notebook_harness.py): this Python, no stall
        base = {**write_kernelspec(Path(specs)), "PYTHONUNBUFFERED": "1"}
        if args.cache:
            base["DEFUSE_WIDGETS_CACHE"] = str(Path(args.cache).resolve())
        for name in [n for n in ORDER if n in args.names]:
            quick = args.quick or name in NEEDS_QUICK
            run(name, {**base, "DEFUSE_WIDGETS_QUICK": "1" if quick else "0"}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

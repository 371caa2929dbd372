"""Execute every notebook in ``notebooks/`` top to bottom on a kernel of this test's Python.

Each notebook reads ``DEFUSE_WIDGETS_QUICK`` in its first code cell (tagged ``parameters``); these
tests set it to ``1`` so the notebooks run at a smoke-test size (fewer images, draws, epochs and
steps, a PCA map instead of UMAP). The notebooks' cache folder is conftest.py's
``demo_model_cache``, with the digits demo models trained into it before any kernel starts, so no
cell trains them under the cell limit.

The notebooks run under :class:`notebook_harness.NotebookRunner` (see that module: nbclient
without the lost wake-up that left a cell waiting 900 s, issue 44): the kernel is this
interpreter through a kernelspec that ``JUPYTER_PATH`` puts first, so neither an installed
``python3`` kernelspec nor a user's own one can send the notebooks to another Python; a cell
that waits more than ``CELL_TIMEOUT_S`` (120 s, ``$DEFUSE_WIDGETS_TEST_CELL_TIMEOUT``) fails with
a dump of the kernel's threads, and no notebook may wait more than ``MAX_GAP_S`` between one
cell's reply and the next cell's start. The kernel runs torch on ``$DEFUSE_WIDGETS_TEST_THREADS``
threads (default 1, as the unit tests). Executed copies are written to ``tests/output/notebooks/``
(git-ignored) for inspection.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from notebook_harness import KERNEL, NotebookRunner, cell_gaps, write_kernelspec

import defuse_widgets as dw
from defuse_widgets.data.loaders import DEBIAN_FASHION_DIR, IDX_FILES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUTPUT = ROOT / "tests" / "output" / "notebooks"
PACKAGE = Path(dw.__file__).parent
MAX_GAP_S = 10.0  # from one cell's reply to the next cell's start; a lost wake-up costs a timeout
# quickstart first: it trains (or loads) the digits demo models the teaching notebook reuses
ORDER = ["quickstart", "teaching", "bring_your_own_model", "fashion_mnist"]
QUICK_FLAG = 'os.environ.get("DEFUSE_WIDGETS_QUICK") == "1"'


def _notebooks() -> list[Path]:
    rank = {stem: i for i, stem in enumerate(ORDER)}
    return sorted(NOTEBOOKS.glob("*.ipynb"), key=lambda p: (rank.get(p.stem, len(ORDER)), p.stem))


def _fashion_files() -> bool:
    return all((DEBIAN_FASHION_DIR / f"{f}.gz").is_file() for f in IDX_FILES) or all(
        (DEBIAN_FASHION_DIR / f).is_file() for f in IDX_FILES
    )


@pytest.fixture(scope="module")
def kernel_spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment that puts our kernelspec (this interpreter) first."""
    import ipykernel  # noqa: F401  (the kernel runs ipykernel from this interpreter)

    return write_kernelspec(tmp_path_factory.mktemp("jupyter"))


@pytest.fixture(scope="module")
def kernel_env(kernel_spec: dict[str, str], demo_model_cache: Path) -> dict[str, str]:
    """Environment for the notebook kernels: our kernelspec first, quick mode, the model cache
    (the digits demo models trained into it before any cell's time limit, see conftest.py)."""
    return {
        **kernel_spec,
        "DEFUSE_WIDGETS_QUICK": "1",
        "DEFUSE_WIDGETS_CACHE": str(demo_model_cache),
        "PYTHONUNBUFFERED": "1",
        # like the unit tests (conftest.py): one torch thread unless told otherwise; the models
        # are tiny, and on a shared 2-core machine oversubscribed threads made training ~8x slower
        "OMP_NUM_THREADS": os.environ.get("DEFUSE_WIDGETS_TEST_THREADS", "1"),
    }


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path: Path) -> None:
    """No outputs or execution counts; the first code cell is the quick-mode parameters cell."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name}: no code cells"
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, f"{path.name}: has outputs"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: no parameters cell"
    assert QUICK_FLAG in first.source, f"{path.name}: parameters cell does not read QUICK"


def test_every_notebook_is_listed() -> None:
    stems = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert set(ORDER) <= stems, f"missing notebooks: {set(ORDER) - stems}"


@pytest.mark.slow
@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(
    path: Path,
    kernel_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if path.stem == "fashion_mnist" and not _fashion_files():
        pytest.skip(
            f"Fashion-MNIST files not in {DEBIAN_FASHION_DIR} "
            "(install them: sudo apt-get install -y dataset-fashion-mnist)"
        )
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)  # the kernel process inherits this environment
    nb = nbformat.read(path, as_version=4)
    client = NotebookRunner(
        nb,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, OUTPUT / path.name)
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in {seconds:.1f} s")
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: error outputs {errors}"
    gaps = [(i, round(g, 2)) for i, g in cell_gaps(nb) if g > MAX_GAP_S]
    assert not gaps, f"{path.name}: (cell, seconds) from a reply to the next cell's start: {gaps}"
    assert not list(tmp_path.iterdir()) or all(
        p.name.startswith(".") for p in tmp_path.iterdir()
    ), f"{path.name}: wrote files into its working directory: {list(tmp_path.iterdir())}"


def test_output_widget_cells_never_wait(
    kernel_spec: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 44's stall: output routed into an ``ipywidgets.Output`` (the teaching notebook's
    ``on_label`` log) made stock nbclient miss a cell's reply until the cell timeout (4-12 cells
    in 100 with a 2 s timeout). 80 such cells under NotebookRunner: every reply read at once."""
    for key, value in kernel_spec.items():
        monkeypatch.setenv(key, value)
    cells = ["import sys\nimport ipywidgets as w\nout = w.Output()\ndisplay(out)"]
    cells += ["with out:\n    print('a')\n    sys.stdout.flush()\n    print('b')"] * 80
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    runner = NotebookRunner(
        nb, kernel_name=KERNEL, timeout=30, resources={"metadata": {"path": str(tmp_path)}}
    )
    runner.execute()  # a reply read late (a missed wake-up) raises StallError
    slow = [(i, round(g, 2)) for i, g in cell_gaps(nb) if g > 5]
    assert not slow, f"(cell, seconds) from a reply to the next cell's start: {slow}"
    outputs = [o for s in runner.widget_state.values() for o in s.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert text.count("a\nb\n") == 80, "the cells' output did not all reach the Output widget"

"""Execute every notebook in ``notebooks/`` top to bottom on a kernel of this test's Python.

Each notebook reads ``DEFUSE_WIDGETS_QUICK`` in its first code cell (tagged ``parameters``); these
tests set it to ``1`` so the notebooks run at a smoke-test size (fewer images, draws, epochs and
steps, a PCA map instead of UMAP). The trained models the notebooks cache go to
``$DEFUSE_WIDGETS_TEST_CACHE/notebooks-<hash>`` (default ``~/.cache/defuse-widgets/test-models``),
keyed by the torch version and the code and settings that train them, so only the first run
trains.

The kernel is this interpreter (``sys.executable -m ipykernel_launcher``) through a kernelspec
written to a temporary folder that ``JUPYTER_PATH`` puts first, so neither an installed
``python3`` kernelspec nor a user's own one can send the notebooks to another Python. The kernel
runs torch on ``$DEFUSE_WIDGETS_TEST_THREADS`` threads (default 1, as the unit tests). Executed
copies are written to ``tests/output/notebooks/`` (git-ignored) for inspection.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import defuse_widgets as dw
from defuse_widgets import cli
from defuse_widgets.data.loaders import DEBIAN_FASHION_DIR, IDX_FILES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUTPUT = ROOT / "tests" / "output" / "notebooks"
PACKAGE = Path(dw.__file__).parent
KERNEL = "defuse-widgets-tests"
CELL_TIMEOUT_S = 900
# quickstart first: it trains (or loads) the digits demo models the teaching notebook reuses
ORDER = ["quickstart", "teaching", "bring_your_own_model", "fashion_mnist"]
QUICK_FLAG = 'os.environ.get("DEFUSE_WIDGETS_QUICK") == "1"'


def _notebooks() -> list[Path]:
    rank = {stem: i for i, stem in enumerate(ORDER)}
    return sorted(NOTEBOOKS.glob("*.ipynb"), key=lambda p: (rank.get(p.stem, len(ORDER)), p.stem))


def _model_cache() -> Path:
    digest = hashlib.sha256(torch.__version__.encode())
    for name in ("models/demo.py", "data/dataset.py", "data/loaders.py"):
        digest.update((PACKAGE / name).read_bytes())
    # of cli.py only what decides the demo models, so other CLI changes do not retrain them
    digest.update(repr((cli.DEMO_CLASSIFIER, cli.REFERENCE_CLASSIFIER)).encode())
    digest.update(inspect.getsource(cli.demo_models).encode())
    env = os.environ.get("DEFUSE_WIDGETS_TEST_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "defuse-widgets" / "test-models"
    return base / f"notebooks-{digest.hexdigest()[:16]}"


def _fashion_files() -> bool:
    return all((DEBIAN_FASHION_DIR / f"{f}.gz").is_file() for f in IDX_FILES) or all(
        (DEBIAN_FASHION_DIR / f).is_file() for f in IDX_FILES
    )


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the notebook kernels: our kernelspec first, quick mode, the model cache."""
    import ipykernel  # noqa: F401  (the kernel runs ipykernel from this interpreter)

    specs = tmp_path_factory.mktemp("jupyter") / "kernels" / KERNEL
    specs.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "defuse-widgets tests",
        "language": "python",
    }
    (specs / "kernel.json").write_text(json.dumps(spec))
    try:
        cache = _model_cache()
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = tmp_path_factory.mktemp("models")
    return {
        "JUPYTER_PATH": os.pathsep.join(
            [str(specs.parent.parent), *filter(None, [os.environ.get("JUPYTER_PATH")])]
        ),
        "DEFUSE_WIDGETS_QUICK": "1",
        "DEFUSE_WIDGETS_CACHE": str(cache),
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
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
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
    assert not list(tmp_path.iterdir()) or all(
        p.name.startswith(".") for p in tmp_path.iterdir()
    ), f"{path.name}: wrote files into its working directory: {list(tmp_path.iterdir())}"

"""Shared fixtures for the unit tests.

Fixtures (all session-scoped)
-----------------------------
digits : the bundled 8x8 digits dataset, ``dw.load_dataset("digits")``.
digits_classifier : a :class:`~defuse_widgets.models.demo.SmallCNN` trained on ``digits`` (seed 0),
    in eval mode, on the CPU.
digits_vae : a :class:`~defuse_widgets.models.demo.ConvVAE` trained on ``digits`` (seed 0), in eval
    mode, on the CPU.
digits_model_paths : ``{"classifier": Path, "vae": Path}``, the two models as written by
    ``dw.save_model``.
sessions : (module-scoped) the robustness tests' session, its saved "old" directory and the
    signatures of its old and new states (``robustness_fixtures.make_sessions``).

The whole test session runs torch on ``$DEFUSE_WIDGETS_TEST_THREADS`` CPU threads (default 1): the
test models are tiny, and on a shared 2-core machine oversubscribed torch threads made training
about 8x slower. The models are trained once and cached under
``$DEFUSE_WIDGETS_TEST_CACHE`` (default ``~/.cache/defuse-widgets/test-models``) in a folder keyed
by a hash of ``models/demo.py``, the training images and labels and the torch version, so a change
to the trainer or the data retrains. They are shared by every test: a test that changes weights
(fine-tuning) must work on a copy, ``copy.deepcopy(digits_classifier)`` or
``dw.load_model(digits_model_paths["classifier"])``.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import defuse_widgets as dw
from defuse_widgets import cli
from defuse_widgets.correction.validation import carve
from defuse_widgets.utils.cache import cache_root

PACKAGE = Path(dw.__file__).parent
torch.set_num_threads(int(os.environ.get("DEFUSE_WIDGETS_TEST_THREADS", "1")))
# One cache root for the run, so maps cached on disk by one run do not skip UMAP in the next;
# its models and datasets link to the user's (trained and unpacked once). Set here, before any
# JupyterLab the tests start, so their kernels inherit it.
USER_CACHE = cache_root()
_run_cache = Path(tempfile.mkdtemp(prefix="dw-cache-"))
for _kind in ("models", "datasets"):
    (USER_CACHE / _kind).mkdir(parents=True, exist_ok=True)
    (_run_cache / _kind).symlink_to(USER_CACHE / _kind, target_is_directory=True)
os.environ["DEFUSE_WIDGETS_CACHE"] = str(_run_cache)
# the models the tests train, kept across runs (a variable moves them)
os.environ.setdefault("DEFUSE_WIDGETS_TEST_CACHE", str(USER_CACHE / "test-models"))
atexit.register(shutil.rmtree, _run_cache, True)


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock file: the test workers (``pytest -n 2``) train a missing model once,
    one after the other, and never read a model another worker is writing."""
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) a module's tests stay on
    one worker, which builds its module fixtures once, and every browser test on the same worker,
    which starts the one JupyterLab and Chromium; the groups run side by side."""
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        path = Path(str(item.fspath))
        group = "browser" if e2e in path.parents else path.stem
        item.add_marker(pytest.mark.xdist_group(group))


def _cache_dir(digits: dw.ImageDataset) -> Path:
    digest = hashlib.sha256(torch.__version__.encode())
    digest.update((PACKAGE / "models" / "demo.py").read_bytes())
    digest.update(digits.x_train.numpy().tobytes() + digits.y_train.numpy().tobytes())
    return Path(os.environ["DEFUSE_WIDGETS_TEST_CACHE"]) / digest.hexdigest()[:16]


def _train_and_save(digits: dw.ImageDataset, paths: dict[str, Path]) -> None:
    models = {
        # like demo_models: never trained on the validation rows a session (seed 0) carves
        "classifier": dw.train_classifier(
            digits, seed=0, device="cpu", progress=False, rows=carve(digits, 0.1, 0).fit_rows
        ),
        "vae": dw.train_vae(digits, seed=0, device="cpu", progress=False),
    }
    for key, model in models.items():
        part = paths[key].with_suffix(f".{os.getpid()}.part")
        dw.save_model(model, part)
        part.replace(paths[key])  # atomic: concurrent test runs never read a half-written file


@pytest.fixture(scope="session")
def digits() -> dw.ImageDataset:
    return dw.load_dataset("digits")


@pytest.fixture(scope="session")
def digits_model_paths(
    digits: dw.ImageDataset, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    try:
        folder = _cache_dir(digits)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = tmp_path_factory.mktemp("digits-models")
    paths = {"classifier": folder / "classifier.safetensors", "vae": folder / "vae.safetensors"}
    with _exclusive(folder):
        if not all(p.is_file() for p in paths.values()):
            _train_and_save(digits, paths)
    return paths


@pytest.fixture(scope="session")
def demo_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package cache folder (for ``DEFUSE_WIDGETS_CACHE``) holding the digits demo models
    (``cli.demo_models``, seed 0), trained once per version of the code and settings that train
    them and kept under ``$DEFUSE_WIDGETS_TEST_CACHE``; the notebooks and the CLI's pipeline
    load them. Tests copy what they change."""
    digest = hashlib.sha256(torch.__version__.encode())
    for name in ("models/demo.py", "data/dataset.py", "data/loaders.py"):
        digest.update((PACKAGE / name).read_bytes())
    # of cli.py only what decides the demo models, so other CLI changes do not retrain them
    digest.update(repr((cli.DEMO_CLASSIFIER, cli.REFERENCE_CLASSIFIER)).encode())
    digest.update(inspect.getsource(cli.demo_models).encode())
    try:
        cache = (
            Path(os.environ["DEFUSE_WIDGETS_TEST_CACHE"]) / f"notebooks-{digest.hexdigest()[:16]}"
        )
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = tmp_path_factory.mktemp("demo-models")
    with _exclusive(cache), pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEFUSE_WIDGETS_CACHE", str(cache))
        cli.demo_models(dw.load_dataset("digits"), seed=0, progress=False)
    return cache


@pytest.fixture(scope="session")
def digits_classifier(digits_model_paths: dict[str, Path]) -> torch.nn.Module:
    return dw.load_model(digits_model_paths["classifier"])


@pytest.fixture(scope="session")
def digits_vae(digits_model_paths: dict[str, Path]) -> torch.nn.Module:
    return dw.load_model(digits_model_paths["vae"])


@pytest.fixture(scope="module")
def sessions(
    digits_classifier: torch.nn.Module,
    digits_vae: torch.nn.Module,
    digits: dw.ImageDataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple:
    """The robustness tests' saved "old" session and its later "new" state (one per module;
    see ``robustness_fixtures.make_sessions``)."""
    from robustness_fixtures import make_sessions

    return make_sessions(digits_classifier, digits_vae, digits, tmp_path_factory)

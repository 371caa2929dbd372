"""identify(..., backend="ray"): the same errors as the local run, from one shared local Ray cluster
(2 CPUs, a 512 MiB object store, actors of 0.5 CPU); faults surface as one clear error."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_identify import SETTINGS, assert_same_errors
from torch import nn

import defuse_widgets as dw
from defuse_widgets import distributed
from defuse_widgets.distributed import RayBackend
from defuse_widgets.ray_address import check_reachable

ray = pytest.importorskip("ray")
N = 60
# wait at most this long for any Ray search in these tests (a hang fails instead of blocking)
TIMEOUT_S = 120.0


@pytest.fixture(scope="module", autouse=True)
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=512 << 20, log_to_driver=False)  # fmt: skip
    # the test's own modules travel by value (the workers cannot import the tests folder)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


def search(clf: nn.Module, vae: nn.Module, data: dw.ImageDataset, strategy: str, **kw):
    options = {**SETTINGS[strategy], "device": "cpu", "progress": False, **kw}
    return dw.identify(clf, vae, data.x_test[:N], data.y_test[:N], strategy, **options)


def on_ray(**options) -> RayBackend:
    return RayBackend(**{"timeout_s": TIMEOUT_S, **options})


def test_session_on_ray_equals_the_local_run(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", progress=False)
    local = s.identify("reference", limit=N, samples=30, max_per_image=3)
    ray_options = {"actors": 1, "batch_size": 16, "timeout_s": TIMEOUT_S}
    on = s.identify("reference", limit=N, samples=30, max_per_image=3, backend="ray",
                    ray_options=ray_options)  # fmt: skip
    assert len(local) > 10 and s.errors is on
    assert_same_errors(on, local)
    assert on.settings["backend"] == "ray" and on.settings["device"] == "ray:cpu"
    assert local.settings["backend"] == "local"


@pytest.mark.parametrize("strategy", ["gaussian", "gradient"])
def test_two_actors_and_a_permuted_order_equal_the_local_run(
    strategy: str, digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    local = search(digits_classifier, digits_vae, digits, strategy)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    # the gradient run's pool takes both CPUs: the batches start in the object store, so no
    # read task waits for a CPU (with ray.data.range, it hung)
    cpus = 1.0 if strategy == "gradient" else 0.5
    on = search(digits_classifier, digits_vae, digits, strategy, indices=perm, chunk_size=7,
                backend=on_ray(actors=2, cpus_per_actor=cpus, batch_size=7))  # fmt: skip
    assert len(local) > 10
    assert_same_errors(on, local)


# ---------------------------------------------------------------- faults


class FailsInActors(nn.Module):
    """The classifier, except that it raises in any process but the driver."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.driver = inner, os.getpid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.getpid() != self.driver:
            raise FloatingPointError("boom in the classifier")
        return self.inner(x)


class Slow(nn.Module):
    """The classifier, slowed down in the actors, which leave their process ids in ``folder``."""

    def __init__(self, inner: nn.Module, folder: Path):
        super().__init__()
        self.inner, self.driver, self.folder = inner, os.getpid(), str(folder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.getpid() != self.driver:
            Path(self.folder, str(os.getpid())).touch()
            time.sleep(0.05)
        return self.inner(x)


def test_an_actor_error_names_the_batch_and_leaves_the_session_unchanged(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = dw.DefuseSession(FailsInActors(digits_classifier), digits_vae, digits, device="cpu",
                         progress=False)  # fmt: skip
    before = s.identify("reference", limit=20, samples=20, max_per_image=2)
    with pytest.raises(RuntimeError) as info:
        s.identify("reference", limit=20, samples=20, max_per_image=2, backend="ray",
                   ray_options={"actors": 1, "batch_size": 10, "timeout_s": TIMEOUT_S})  # fmt: skip
    message = str(info.value)
    assert message.startswith("backend='ray': the search of image batch rows ")
    assert "(10 images, split indices" in message
    assert "FloatingPointError: boom in the classifier" in message
    assert "no errors were kept" in message
    assert s.errors is before, "a failed Ray search leaves the session's errors as they were"


def test_a_killed_actor_is_restarted_and_the_result_is_unchanged(
    tmp_path: Path, digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    local = search(digits_classifier, digits_vae, digits, "reference")
    killed: list[int] = []

    def kill_the_first_actor() -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and not killed:
            pids = [int(p.name) for p in tmp_path.iterdir()]
            if pids:
                time.sleep(0.2)  # mid-batch
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_actor, daemon=True)
    killer.start()
    on = search(Slow(digits_classifier, tmp_path), digits_vae, digits, "reference",
                backend=on_ray(actors=1, batch_size=8, max_restarts=2))  # fmt: skip
    killer.join(timeout=10)
    assert killed and killed[0] != os.getpid()
    assert len(list(tmp_path.iterdir())) >= 2, "a new actor process took over"
    assert_same_errors(on, local)


@pytest.fixture()
def silent_server():
    """A local TCP server that accepts connections and never answers (not a Ray server)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


def test_an_unreachable_cluster_is_a_clear_error_within_seconds(
    silent_server: str,
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    start = time.monotonic()
    # refused here; on a real network TEST-NET-1 (192.0.2.0/24) does not answer: the timeout path
    for address in ("127.0.0.1:1", "ray://192.0.2.1:10001"):
        backend = RayBackend(address=address, connect_timeout_s=2.0)
        with pytest.raises(ConnectionError, match=rf"address: expected a reachable Ray cluster "
                           rf"at '{address}'"):  # fmt: skip
            search(digits_classifier, digits_vae, digits, "reference", backend=backend)
    # accepts TCP but is no Ray server (ray.init itself waited over a minute on one)
    backend = RayBackend(address=silent_server, connect_timeout_s=1.0)
    with pytest.raises(ConnectionError, match=r"got a server that does not speak gRPC"):
        search(digits_classifier, digits_vae, digits, "reference", backend=backend)
    assert time.monotonic() - start < 30, "not a hang"


def test_the_address_of_the_connected_cluster_is_accepted_and_another_refused() -> None:
    current = ray.get_runtime_context().gcs_address
    check_reachable(current, 2.0)  # Ray's GCS answers the probe
    distributed._check_same_cluster(current)
    with pytest.raises(ValueError, match=r"address: expected the cluster this process is conn"):
        distributed._check_same_cluster("10.1.2.3:6379")


# ---------------------------------------------------------------- options


def test_backend_options_are_checked_before_any_work(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    def attempt(**kw):
        return search(digits_classifier, digits_vae, digits, "reference", **kw)

    with pytest.raises(TypeError, match=r"ray_options: expected keys among .*got acters"):
        attempt(backend="ray", ray_options={"acters": 2})
    with pytest.raises(ValueError, match=r"actors: expected a positive integer, got 0"):
        attempt(backend="ray", ray_options={"actors": 0})
    with pytest.raises(ValueError, match=r"cpus_per_actor: expected a number > 0, got 0"):
        RayBackend(cpus_per_actor=0)
    with pytest.raises(TypeError, match=r"ray_options: expected None with a RayBackend"):
        attempt(backend=RayBackend(), ray_options={"actors": 1})
    with pytest.raises(ValueError, match=r"expected actors \* cpus_per_actor <= the cluster's 2 "):
        attempt(backend=RayBackend(actors=3, cpus_per_actor=1))
    with pytest.raises(ValueError, match=r"expected actors \* gpus_per_actor <= the cluster's 0"):
        attempt(backend=RayBackend(actors=1, gpus_per_actor=1))


def test_without_ray_the_backend_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install defuse-widgets\[ray\]"):
        search(digits_classifier, digits_vae, digits, "reference", backend="ray")


def test_only_the_distributed_module_imports_ray() -> None:
    package = Path(dw.__file__).parent
    importers = sorted(
        p.name
        for p in package.rglob("*.py")
        if any(line.strip().startswith(("import ray", "from ray"))
               for line in p.read_text().splitlines())
    )  # fmt: skip
    assert importers == ["distributed.py"]
    # and importing the package (RayBackend included) does not import ray
    code = "import sys, defuse_widgets as dw; dw.RayBackend(); assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""identify(..., backend="ray") and a Ray-backed session's whole-split inference: the same errors,
codes and predictions as the local run, from one shared local Ray cluster (2 CPUs, a 512 MiB
object store, actors of 0.5 CPU); faults surface as one clear error."""

from __future__ import annotations

import contextlib
import copy
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
from session_fixtures import label_true_class, ready_session
from test_identify import SETTINGS, assert_same_errors
from torch import nn

import defuse_widgets as dw
import defuse_widgets.session.session as session_module
from defuse_widgets.distributed import backend as distributed
from defuse_widgets.distributed import map_model as ray_map
from defuse_widgets.distributed.address import check_reachable
from defuse_widgets.distributed.backend import RayBackend
from defuse_widgets.models.inference import Probabilities

ray = pytest.importorskip("ray")
N = 60
# wait at most this long for any Ray search in these tests (a hang fails instead of blocking)
TIMEOUT_S = 300.0


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


def test_only_the_ray_modules_import_ray() -> None:
    package = Path(dw.__file__).parent
    importers = sorted(
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if any(line.strip().startswith(("import ray", "from ray"))
               for line in p.read_text().splitlines())
    )  # fmt: skip
    assert importers == ["distributed/backend.py", "distributed/map_model.py", "search/on_ray.py"]
    # and importing the package (RayBackend included) does not import ray
    code = "import sys, defuse_widgets as dw; dw.RayBackend(); assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- whole-split inference


@pytest.fixture()
def ray_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the inputs map_model got (it runs on Ray), in call order."""
    calls: list[int] = []
    real = ray_map.map_model

    def counted(module, inputs, backend, **kw):
        calls.append(len(inputs))
        return real(module, inputs, backend, **kw)

    monkeypatch.setattr(ray_map, "map_model", counted)
    return calls


def test_a_ray_session_predicts_encodes_audits_and_evaluates_as_the_local_one(
    ray_calls: list[int],
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    local = ready_session(digits_classifier, digits_vae, digits)
    rid = 0
    label_true_class(local, rid)
    on = dw.DefuseSession(copy.deepcopy(digits_classifier), digits_vae, digits, device="cpu",
                          progress=False, backend=on_ray(actors=1))  # fmt: skip
    on.load_state_dict(local.state_dict())
    on.ray_min_images = 1000
    x, n_train, n_test = digits.x_train, len(digits.x_train), len(digits.x_test)
    p_local, p_ray = local.predict(x), on.predict(x)
    assert ray_calls == [n_train] and p_ray.shape == p_local.shape
    a_local, a_ray = local.audit(rid, coverage=None), on.audit(rid, coverage=None)
    # the training codes, and the searched split's codes the region's reach starts from
    assert len(a_local) > 0 and ray_calls == [n_train, n_train, n_test]
    e_local, e_ray = local.evaluate(), on.evaluate()
    assert ray_calls[3:] == [n_test]  # the test split's classes (its codes are cached)
    on.predict(x[:999])  # below ray_min_images: local
    on.split_codes("train")  # cached
    assert len(ray_calls) == 4
    for split in ("train", "test"):
        torch.testing.assert_close(on.split_codes(split), local.split_codes(split), atol=1e-5,
                                   rtol=0)  # fmt: skip
    torch.testing.assert_close(p_ray, p_local, atol=1e-5, rtol=0)
    # the same batches (rows i // 1024, the driver's strides) on one torch thread: the same bits
    assert torch.equal(p_ray, p_local) and torch.equal(on.split_codes("train"),
                                                       local.split_codes("train"))  # fmt: skip
    assert torch.equal(a_ray.indices, a_local.indices) and a_ray.inside == a_local.inside
    assert torch.equal(a_ray.predictions, a_local.predictions)
    torch.testing.assert_close(a_ray.probabilities, a_local.probabilities, atol=1e-5, rtol=0)
    assert repr(e_ray.to_dict()) == repr(e_local.to_dict()) and len(e_ray.regions) == 1


class EncodeFailsInActors(nn.Module):
    """The VAE, except that its encoder raises in any process but the driver."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.driver, self.latent_dim = inner, os.getpid(), inner.latent_dim

    def encode(self, x: torch.Tensor):
        if os.getpid() != self.driver:
            raise FloatingPointError("boom in the encoder")
        return self.inner.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(z)


def test_an_actor_error_during_inference_is_one_clear_error_and_changes_nothing(
    digits: dw.ImageDataset, digits_classifier: nn.Module, digits_vae: nn.Module
) -> None:
    s = dw.DefuseSession(digits_classifier, EncodeFailsInActors(digits_vae), digits,
                         device="cpu", progress=False, backend=on_ray(actors=1))  # fmt: skip
    with pytest.raises(RuntimeError) as info:
        s.split_codes("test")
    message = str(info.value)
    assert message.startswith("backend='ray': the inference of image batch rows ")
    assert "(450 images) failed: FloatingPointError: boom in the encoder" in message
    assert message.endswith("; nothing was changed")
    assert s._codes == {}, "no codes were cached"
    s.backend = "local"
    assert s.split_codes("test").shape == (len(digits.x_test), s.generator.latent_dim)


def test_map_model_and_the_session_backend_are_checked_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
    digits: dw.ImageDataset,
    digits_classifier: nn.Module,
    digits_vae: nn.Module,
) -> None:
    module, x, backend = Probabilities(digits_classifier), digits.x_test[:4], on_ray()
    with pytest.raises(TypeError, match=r"module: expected a torch.nn.Module .*got function"):
        ray_map.map_model(lambda t: t, x, backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"inputs: expected a tensor \(n, ...\) with n >= 1, got"):
        ray_map.map_model(module, x[:0], backend)
    with pytest.raises(TypeError, match=r"backend: expected a RayBackend, got 'ray'"):
        ray_map.map_model(module, x, "ray")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_size: expected a positive integer, got 0"):
        ray_map.map_model(module, x, backend, batch_size=0)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"address: expected a reachable Ray cluster"):
        ray_map.map_model(module, x, RayBackend(address="127.0.0.1:1", connect_timeout_s=2.0))
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match=r"backend: expected 'local', 'ray' or a RayBackend"):
        dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", backend="rey")
    # identify searches on the session's backend unless told otherwise; ray_options override it
    seen: list[object] = []
    monkeypatch.setattr(session_module, "identify", lambda *a, **kw: seen.append(kw) or 1 / 0)
    s = dw.DefuseSession(digits_classifier, digits_vae, digits, device="cpu", backend=backend)
    for options in ({}, {"ray_options": {"actors": 1}}, {"backend": "local"}):
        with pytest.raises(ZeroDivisionError):
            s.identify(limit=2, **options)
    assert [kw["backend"] for kw in seen] == [backend, "ray", "local"]
    assert seen[1]["ray_options"] == {**vars(backend), "actors": 1}

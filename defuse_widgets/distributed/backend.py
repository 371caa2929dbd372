"""The search sharded over a Ray cluster: ``identify(..., backend="ray")``.

The driver checks and encodes the images as a local run does, puts the models and the encoded
images in Ray's object store once (:func:`ray.put`), and maps a pool of actors over batches of row
positions with Ray Data (``map_batches`` with an ``ActorPoolStrategy``). Each actor loads the job
once, searches its batches on its own device with the same
:class:`~defuse_widgets.search.identify.SearchRun`
and strategy as a local run, and returns plain numpy columns. Every image draws from its own
generator keyed by ``(seed, index)``, so the gathered errors equal the local run's.

:mod:`~defuse_widgets.distributed.map_model` runs a model over a whole split on the same kind of
pool, with
the connection, resource checks, pipeline and error handling defined here. These two are the only
modules that import ray, and only when Ray work runs.
"""

from __future__ import annotations

import importlib.util
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from defuse_widgets.distributed.address import check_reachable
from defuse_widgets.utils.checks import is_number, positive_int

INSTALL = "pip install defuse-widgets[ray]"
_FAILED = re.compile(r"(\w+) of image batch (.+?) failed on a Ray actor: (.+)")


@dataclass(frozen=True)
class RayBackend:
    """Where and how a Ray search runs.

    Parameters
    ----------
    actors : int
        Actors in the pool; each loads the models once.
    cpus_per_actor, gpus_per_actor : float
        Ray resources each actor reserves (the pool may take every CPU: the batches start in
        the object store, no read task needs a CPU); with ``gpus_per_actor > 0`` an actor
        searches on its CUDA device, otherwise on the CPU with that many torch threads.
    batch_size : int
        Images per batch handed to an actor (the unit of progress and of retry).
    address : str or None
        An existing cluster (``"auto"``, ``"host:port"`` or ``"ray://host:port"``); None: the
        cluster this process is connected to, or a new local one.
    max_restarts : int
        Times Ray restarts a dead actor (and retries its batch), -1 for no limit.
    timeout_s : float or None
        Most seconds the search may take after the pool starts; None: no limit.
    connect_timeout_s : float
        Most seconds to wait for a cluster at ``address``.
    """

    actors: int = 2
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0
    batch_size: int = 64
    address: str | None = None
    max_restarts: int = 3
    timeout_s: float | None = None
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        """Check the knobs."""
        positive_int("actors", self.actors)
        positive_int("batch_size", self.batch_size)
        positive_int("max_restarts", self.max_restarts, minimum=-1)
        if not (is_number(self.cpus_per_actor) and self.cpus_per_actor > 0):
            raise ValueError(f"cpus_per_actor: expected a number > 0, got {self.cpus_per_actor!r}")
        if not (is_number(self.gpus_per_actor) and self.gpus_per_actor >= 0):
            raise ValueError(f"gpus_per_actor: expected a number >= 0, got {self.gpus_per_actor!r}")
        if self.address is not None and not isinstance(self.address, str):
            raise ValueError(f"address: expected None or a string, got {self.address!r}")
        for name in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not (value is None and name == "timeout_s") and not (is_number(value) and value > 0):
                raise ValueError(f"{name}: expected a number of seconds > 0, got {value!r}")

    @property
    def device(self) -> str:
        """The device each actor searches on."""
        return "cuda" if self.gpus_per_actor > 0 else "cpu"

    def device_name(self) -> str:
        """Return the device recorded in the ErrorSet's settings, e.g. ``"ray:cpu"``."""
        return f"ray:{self.device}"


def as_ray_backend(backend: Any, ray_options: dict[str, Any] | None) -> RayBackend:
    """Turn ``backend="ray"`` and its options (or a RayBackend) into a checked RayBackend.

    Raises
    ------
    ValueError
        For an unknown backend or a bad option value.
    TypeError
        For an unknown option, or options given with a RayBackend object.
    ImportError
        When ray is not installed.
    """
    if isinstance(backend, RayBackend):
        if ray_options:
            raise TypeError(
                f"ray_options: expected None with a RayBackend (set them on it), got {ray_options}"
            )
        result = backend
    elif backend == "ray":
        options = dict(ray_options or {})
        known = [f.name for f in fields(RayBackend)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(
                f"ray_options: expected keys among {known}, got {', '.join(unknown)}; "
                f"see defuse_widgets.distributed.backend.RayBackend"
            )
        result = RayBackend(**options)
    else:
        raise ValueError(f"backend: expected 'local', 'ray' or a RayBackend, got {backend!r}")
    if importlib.util.find_spec("ray") is None:
        raise ImportError(f"backend='ray': Ray is not installed; {INSTALL}")
    return result


def pipeline(backend: RayBackend, actor: type, kwargs: dict[str, Any], blocks: list) -> Any:
    """The Ray Data pipeline: ``blocks`` of row positions mapped by a pool of ``actor``.

    The blocks live in the object store from the start (no read tasks, which would need a CPU
    of their own next to the pool on one node); ``actor(**kwargs, device=...)`` is built once
    per pool member, with ``backend``'s batch size, resources and restarts.
    """
    import ray

    with warnings.catch_warnings():
        # max_restarts/max_task_retries go through ray_remote_args (deprecated in Ray 2.60, the
        # only way from Ray 2.9 on)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray.data.from_numpy(blocks).map_batches(
            actor,
            fn_constructor_kwargs={**kwargs, "device": backend.device},
            batch_size=backend.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=backend.actors),
            num_cpus=backend.cpus_per_actor,
            num_gpus=backend.gpus_per_actor or None,
            max_restarts=backend.max_restarts,
            max_task_retries=backend.max_restarts,
        )


def ready(backend: RayBackend) -> None:
    """Connect to the cluster and check it can host the pool: the Ray checks before any work."""
    import ray

    connect(backend)
    check_resources(backend, ray.cluster_resources())


def connect(backend: RayBackend) -> None:
    """Connect to ``backend.address`` (checked reachable first), or reuse or start a cluster."""
    import ray

    if backend.address is not None:
        check_reachable(backend.address, backend.connect_timeout_s)
    if ray.is_initialized():
        _check_same_cluster(backend.address)
        return
    if backend.address is None:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return
    try:
        ray.init(address=backend.address, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise ConnectionError(
            f"address: could not connect to a Ray cluster at {backend.address!r} ({exc}); "
            f"start one with `ray start --head` or pass address=None for a local one"
        ) from exc


def _check_same_cluster(address: str | None) -> None:
    """Refuse an ``address`` other than the cluster this process is already connected to."""
    import ray

    if address is None or address == "auto" or "://" in address:
        return
    try:
        current = ray.get_runtime_context().gcs_address
    except Exception:  # a client connection has no GCS address here
        return
    if current and current != address:
        raise ValueError(
            f"address: expected the cluster this process is connected to ({current}) or None, "
            f"got {address!r}; call ray.shutdown() first to switch clusters"
        )


def check_resources(backend: RayBackend, resources: dict[str, float]) -> None:
    """Refuse, before any work, an actor pool larger than the cluster (it would wait forever)."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    want = backend.actors * backend.cpus_per_actor
    if want > cpus + 1e-9:
        raise ValueError(
            f"ray_options: expected actors * cpus_per_actor <= the cluster's {cpus:g} CPUs, got "
            f"{backend.actors} x {backend.cpus_per_actor:g} = {want:g}; lower actors or "
            f"cpus_per_actor"
        )
    if backend.actors * backend.gpus_per_actor > gpus + 1e-9:
        raise ValueError(
            f"ray_options: expected actors * gpus_per_actor <= the cluster's {gpus:g} GPUs, got "
            f"{backend.actors} x {backend.gpus_per_actor:g}; lower actors or gpus_per_actor"
        )


def gather(
    mapped: Any, timeout_s: float | None, bar: Any, what: str = "search"
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the actors' output batches as shards finish; raise past ``timeout_s``.

    Ray Data is consumed on a helper thread, so this thread can give up at the deadline (the
    helper then stops at its next batch) and a notebook's interrupt still lands. ``what``
    names the work in the timeout's message.
    """
    out: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def consume() -> None:
        try:
            for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                out.put(batch)
                if stop.is_set():
                    return
            out.put(None)
        except BaseException as exc:  # re-raised on the caller's thread
            out.put(exc)

    threading.Thread(target=consume, daemon=True, name="defuse-ray-search").start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = out.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(
                    f"timeout_s: the Ray {what} took longer than {timeout_s:g} s; raise "
                    f"timeout_s, or check the cluster's resources (`ray status`)"
                ) from None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise clear_error(item)
            bar.update(int(item["images"].sum()))
            yield item
    finally:
        stop.set()


def clear_error(exc: BaseException) -> BaseException:
    """One clear error naming the failed image batch, out of Ray's wrapped ones."""
    found = _FAILED.search(str(exc))
    if found is None:
        return exc
    what, batch, message = found.groups()
    outcome = "no errors were kept" if what == "search" else "nothing was changed"
    error = RuntimeError(
        f"backend='ray': the {what} of image batch {batch} failed: {message}; {outcome}"
    )
    error.__cause__ = exc
    return error

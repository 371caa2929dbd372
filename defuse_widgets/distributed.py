"""The search sharded over a Ray cluster: ``identify(..., backend="ray")``.

The driver checks and encodes the images as a local run does, puts the models and the encoded
images in Ray's object store once (:func:`ray.put`), and maps a pool of actors over batches of row
positions with Ray Data (``map_batches`` with an ``ActorPoolStrategy``). Each actor loads the job
once, searches its batches on its own device with the same :class:`~defuse_widgets.search.SearchRun`
and strategy as a local run, and returns plain numpy columns. Every image draws from its own
generator keyed by ``(seed, index)``, so the gathered errors equal the local run's.

:mod:`~defuse_widgets.ray_map` runs a model over a whole split on the same kind of pool, with
the connection, resource checks, pipeline and error handling defined here. These two are the only
modules that import ray, and only when Ray work runs.
"""

from __future__ import annotations

import copy
import importlib.util
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import is_number, positive_int
from .ray_address import check_reachable

if TYPE_CHECKING:
    from .search import SearchRun
    from .strategies import SearchStrategy

INSTALL = "pip install defuse-widgets[ray]"
COLUMNS = ("codes", "source_index", "pred_label", "confidence", "validity")
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
                f"see defuse_widgets.distributed.RayBackend"
            )
        result = RayBackend(**options)
    else:
        raise ValueError(f"backend: expected 'local', 'ray' or a RayBackend, got {backend!r}")
    if importlib.util.find_spec("ray") is None:
        raise ImportError(f"backend='ray': Ray is not installed; {INSTALL}")
    return result


def ray_search(
    backend: RayBackend, run: SearchRun, strategy: SearchStrategy, progress: bool
) -> dict[str, list[torch.Tensor]]:
    """Search every row of ``run`` on a Ray actor pool; return the columns a local run returns.

    Sets ``run.decodes`` to the actors' total. Raises RuntimeError naming the image batch when
    an actor's search fails, TimeoutError past ``backend.timeout_s``, ConnectionError for a
    cluster that cannot be reached.
    """
    import ray

    ready(backend)
    job = ray.put(_job(run, strategy))  # kept referenced until the end: restarts re-read it
    n = len(run.index)
    bar = tqdm(total=n, desc=f"identify ({strategy.name}, ray)", disable=not progress)
    context = ray.data.DataContext.get_current()  # a dataset keeps the context it was made in
    ray_bars, context.enable_progress_bars = context.enable_progress_bars, False  # ours instead
    try:
        blocks = np.array_split(np.arange(n, dtype=np.int64), max(1, -(-n // backend.batch_size)))
        mapped = pipeline(backend, SearchActor, {"job": [job]}, blocks)
        parts = list(gather(mapped, backend.timeout_s, bar))
    finally:
        context.enable_progress_bars = ray_bars
        bar.close()
    del job
    return _columns(parts, run)


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


class SearchActor:
    """A Ray Data callable class: loads the job once, then searches batches of row positions."""

    def __init__(self, job: list[Any], device: str):
        import ray

        loaded = ray.get(job[0])
        self.device = torch.device(device)
        threads = max(1, int(float(ray.get_runtime_context().get_assigned_resources().get(
            "CPU", 1))))  # fmt: skip
        torch.set_num_threads(threads)
        self.strategy = loaded.pop("strategy")
        self.modules = loaded.pop("modules")
        for module in self.modules:
            module.to(self.device)
        from .search import SearchRun

        self.run = SearchRun(**loaded, device=self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Search the rows ``batch["data"]``; return one header row then one row per error."""
        rows = torch.tensor(np.asarray(batch["data"]), dtype=torch.long)
        try:
            return self._search(rows)
        except Exception as exc:
            index = self.run.index[rows]
            raise RuntimeError(
                f"search of image batch rows {int(rows.min())}..{int(rows.max())} ({len(rows)} "
                f"images, split indices {int(index.min())}..{int(index.max())}) failed on a Ray "
                f"actor: {type(exc).__name__}: {exc}"
            ) from exc

    def _search(self, rows: torch.Tensor) -> dict[str, np.ndarray]:
        from .inference import evaluating
        from .models import seeded

        run = self.run
        run.decodes = 0
        with evaluating(*self.modules), seeded(run.seed):
            found = run.search_rows(self.strategy, rows)
        cols = {k: torch.cat(v).detach().cpu() for k, v in found.items()}
        header = {"codes": torch.zeros(1, run.latent_dim), "source_index": torch.tensor([-1]),
                  "pred_label": torch.tensor([0]), "confidence": torch.zeros(1),
                  "validity": torch.zeros(1)}  # fmt: skip
        out = {k: torch.cat([header[k].to(cols[k].dtype), cols[k]]).numpy() for k in COLUMNS}
        out["rank"] = np.arange(len(out["codes"]), dtype=np.int64)
        out["decodes"] = np.array([run.decodes] + [0] * len(cols["codes"]), dtype=np.int64)
        out["images"] = np.array([len(rows)] + [0] * len(cols["codes"]), dtype=np.int64)
        return out


def _job(run: SearchRun, strategy: SearchStrategy) -> dict[str, Any]:
    """What every actor needs, on the CPU: the models once and the encoded images once."""
    classifier, generator = copy.deepcopy((run.classifier, run.generator))
    modules = [m for m in (classifier, *generator.modules) if isinstance(m, nn.Module)]
    for module in modules:
        module.cpu()
    return {
        "classifier": classifier,
        "generator": generator,
        "modules": modules,
        "strategy": strategy,
        "y": run.y.cpu(),
        "mu": run.mu.cpu(),
        "std": run.std.cpu(),
        "chunk_size": run.chunk_size,
        "autocast": run.autocast_name,
        "seed": run.seed,
        "index": run.index,
    }


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


def _columns(parts: list[dict[str, np.ndarray]], run: SearchRun) -> dict[str, list[torch.Tensor]]:
    """Join the batches' columns, drop the header rows, set ``run.decodes``."""
    if not parts:
        raise RuntimeError("backend='ray': the search returned no batches")
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    run.decodes = int(joined["decodes"].sum())
    images = int(joined["images"].sum())
    if images != len(run.index):
        raise RuntimeError(f"backend='ray': expected {len(run.index)} images back, got {images}")
    keep = joined["source_index"] >= 0
    order = np.argsort(joined["rank"][keep], kind="stable")
    return {k: [torch.from_numpy(np.ascontiguousarray(joined[k][keep][order]))] for k in COLUMNS}

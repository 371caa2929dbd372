"""The search on a Ray actor pool: ``identify(..., backend="ray")``.

Each actor loads the job (models and encoded images, put in Ray's object store once) and runs
the same :class:`~defuse_widgets.search.run.SearchRun` as a local search over its batches of row
positions; the gathered columns equal a local run's. The pool, its checks and its error handling
are :mod:`defuse_widgets.distributed.backend`'s.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from defuse_widgets.distributed.backend import RayBackend, gather, pipeline, ready
from defuse_widgets.models.inference import evaluating
from defuse_widgets.search.run import FOUND_FIELDS, SearchRun
from defuse_widgets.search.strategies import SearchStrategy
from defuse_widgets.utils.seeding import seeded

COLUMNS = FOUND_FIELDS


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


class SearchActor:
    """A Ray Data callable class: loads the job once, then searches batches of row positions."""

    def __init__(self, job: list[Any], device: str):
        import ray

        loaded = ray.get(job[0])
        self.device = torch.device(device)
        threads = max(
            1, int(float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        )
        torch.set_num_threads(threads)
        self.strategy = loaded.pop("strategy")
        self.modules = loaded.pop("modules")
        for module in self.modules:
            module.to(self.device)
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
        run = self.run
        run.decodes = 0
        with evaluating(*self.modules), seeded(run.seed):
            found = run.search_rows(self.strategy, rows)
        cols = {k: torch.cat(v).detach().cpu() for k, v in found.items()}
        header = {
            "codes": torch.zeros(1, run.latent_dim),
            "source_index": torch.tensor([-1]),
            "pred_label": torch.tensor([0]),
            "confidence": torch.zeros(1),
            "validity": torch.zeros(1),
        }
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

"""Distill: a Dirichlet-process Gaussian mixture over error codes, and the failure regions in it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defuse_widgets.imaging import ImageGrid
from defuse_widgets.regions.labels import label_name
from defuse_widgets.regions.mixture import (
    DEFAULT_TOL,
    Mixture,
    chi_square_quantile,
    fit_mixture,
    fit_mixture_torch,
    inside_ellipsoid,
    robust_cholesky,
)
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.utils.checks import (
    Constraints,
    Interval,
    Options,
    check,
    positive_int,
    validate_params,
)
from defuse_widgets.utils.device import resolve_device
from defuse_widgets.utils.tables import Table, class_label, percent

DEFAULT_SCALE = (
    1.0  # measured in the README: 0.01 (the reference's) barely carries a fix to real images
)
MAX_REDRAWS = 8
FIT_METHODS = ("torch", "sklearn")
SAMPLE_STREAMS = {"eval": 1, "label": 3}  # stream ids; 2 was a fine-tuning stream, now its own
COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
CONSTRAINTS: Constraints = {
    "max_regions": [Interval(int, 1, None)],
    "min_weight": [Interval(float, 0, 1, closed="left")],
    "covariance_type": [Options(COVARIANCE_TYPES)],
    "max_fit": [Interval(int, 2, None)],
    "max_iter": [Interval(int, 1, None)],
    "method": [Options(FIT_METHODS)],
    "tol": [Interval(float, 0, None, closed="neither")],
    "n": [Interval(int, 1, None)],
    "purpose": [Options(tuple(SAMPLE_STREAMS))],
    "scale": [None, Interval(float, 0, None, closed="neither")],
}
"""The declared checks of :func:`fit_regions` and of sampling a region."""


@dataclass
class Region:
    """One failure region: a mixture component with enough weight (or a user's selection)."""

    id: int
    weight: float
    size: int
    mean: torch.Tensor
    covariance: torch.Tensor
    transition: tuple[int, int]
    transition_share: float
    mean_confidence: float
    mean_validity: float
    component: int
    user_defined: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-friendly fields (everything but the mean and covariance)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("mean", "covariance")}
        out["transition"] = list(self.transition)
        return out


@dataclass
class RegionSample:
    """Decoded samples of a region: codes (n, d), images (n, C, H, W), predictions (n,),
    confidence (n,)."""

    codes: torch.Tensor
    images: torch.Tensor
    predictions: torch.Tensor
    confidence: torch.Tensor


class RegionSet:
    """The failure regions of one error set.

    Parameters
    ----------
    regions : list of :class:`Region`, largest weight first, ids 0, 1, ...
    assignments : (M,) int64 region id of each error, -1 for errors in no region.
    mixture : the fitted mixture (all components, including those below ``min_weight``).
    settings : the fit settings.
    seed : seeds the held-out sample streams.
    decode, predict : codes (n, d) -> images (n, C, H, W) and images -> probabilities (n, K);
        :meth:`sample` needs both (a session passes its own).
    """

    def __init__(
        self,
        regions: list[Region],
        assignments: torch.Tensor,
        mixture: Mixture,
        settings: dict[str, Any],
        seed: int = 0,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.regions = regions
        self.assignments = assignments
        self.mixture = mixture
        self.settings = settings
        self.seed = seed
        self.decode = decode
        self.predict = predict

    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __repr__(self) -> str:
        return f"RegionSet({len(self)} regions over {len(self.assignments)} errors)"

    @property
    def ids(self) -> list[int]:
        """The region ids, in ``regions`` order."""
        return [r.id for r in self.regions]

    def get(self, region_id: int) -> Region:
        """The region with this id; KeyError naming the known ids otherwise."""
        for r in self.regions:
            if r.id == region_id:
                return r
        raise KeyError(f"region_id: no region {region_id!r}; known ids are {self.ids}")

    def column(self, region_id: int) -> int:
        """The column of the region in :meth:`predict_proba`'s output."""
        return self.ids.index(self.get(region_id).id)

    def members(self, region_id: int) -> torch.Tensor:
        """Indices of the errors assigned to the region."""
        self.get(region_id)
        return (self.assignments == region_id).nonzero().flatten()

    def predict_proba(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, R) float32 probability that each code belongs to each region (``regions`` order)."""
        resp = self.mixture.responsibilities(codes.cpu())
        return resp[:, [r.component for r in self.regions]].float()

    def sample_codes(
        self,
        region_id: int,
        n: int,
        scale: float | None = None,
        purpose: str = "eval",
        seed: int | None = None,
    ) -> torch.Tensor:
        """(n, d) codes from N(mean, scale x covariance), from a seeded stream per purpose.

        ``purpose="eval"`` (held-out evaluation) and ``"label"`` (what a labeler looks at) always
        give the same draws for a region; fine-tuning draws from :meth:`training_sampler`, a stream
        of its own, so evaluation samples are never ones it trained on.
        """
        region = self.get(region_id)
        validate_params(CONSTRAINTS, purpose=purpose, n=n)
        chol = robust_cholesky(region.covariance.double() * check_scale(scale))
        if seed is None:
            seed = derive_seed(self.seed, region_id, SAMPLE_STREAMS[purpose], 0)
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(n, len(region.mean), generator=gen, dtype=torch.float64)
        return (region.mean.double() + eps @ chol.T).float()

    def sample(
        self,
        region_id: int,
        n: int,
        scale: float | None = None,
        purpose: str = "eval",
        seed: int | None = None,
    ) -> RegionSample:
        """Decode ``n`` codes from the region and classify them with ``predict``."""
        if self.decode is None or self.predict is None:
            raise RuntimeError(
                "this RegionSet is not bound to decode/predict functions; use a session"
            )
        codes = self.sample_codes(region_id, n, scale, purpose, seed)
        images = self.decode(codes)
        conf, pred = self.predict(images).max(1)
        return RegionSample(codes, images, pred, conf)

    def training_sampler(
        self,
        targets: dict[int, int],
        scale: float | None | Mapping[int, float],
        seed: int,
        device: torch.device,
        coverage: float | None = None,
    ) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
        """A function ``n -> (codes (n, d), labels (n,))`` of fine-tuning draws on ``device``.

        Each draw picks a region of ``targets`` (region id -> label) uniformly and a code from its
        N(mean, scale x covariance), from one generator seeded by ``seed``; ``scale`` may be one
        per region (a mapping). With ``coverage``, draws outside the ellipsoid of the region's
        own N(mean, covariance) that holds that share of its mass are drawn again (up to
        ``MAX_REDRAWS`` times, then pulled onto its boundary).
        """
        ids = list(targets)
        scales = torch.tensor(
            [check_scale(scale.get(r) if isinstance(scale, Mapping) else scale) for r in ids],
            dtype=torch.float64,
        )
        means = torch.stack([self.get(r).mean for r in ids]).to(device)
        chols = torch.stack(
            [
                robust_cholesky(self.get(r).covariance.double() * s).float()
                for r, s in zip(ids, scales.tolist())
            ]
        ).to(device)
        labels = torch.tensor([targets[r] for r in ids], device=device)
        limit = None if coverage is None else chi_square_quantile(coverage, means.shape[1])
        scales_dev = scales.float().to(device)
        gen = torch.Generator(device=device).manual_seed(seed)

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            pick = torch.randint(len(ids), (n,), generator=gen, device=device)
            eps = torch.randn(n, means.shape[1], generator=gen, device=device)
            if limit is not None:
                eps = inside_ellipsoid(eps, scales_dev[pick], limit, gen, MAX_REDRAWS)
            return means[pick] + (chols[pick] @ eps[..., None])[..., 0], labels[pick]

        return draw

    def to_table(
        self,
        classes: Sequence[str] | None = None,
        labels: Mapping[int, int] | None = None,
        evaluation: Any = None,
    ) -> Table:
        """One row per region: size, weight, main mistake and its share, mean confidence and
        validity; with ``labels`` (region id -> label, e.g. ``s.labels``) each region's label,
        with ``evaluation`` (an :class:`~defuse_widgets.correction.evaluation.Evaluation`, e.g.
        ``s.evaluate()``) its accuracy on held-out samples and on the real test images inside it.

        Parameters
        ----------
        classes : sequence of str or None
            Class names (e.g. ``data.classes``); None shows class indices.
        labels : mapping of int to int or None
            Region id -> class index, ``MODEL_IS_RIGHT`` or ``UNRECOGNIZABLE``.
        evaluation : Evaluation or None
            Its ``regions`` (region id -> accuracy figures) fill the accuracy columns.
        """
        return region_table(self, classes, labels, evaluation)

    def to_pandas(
        self,
        classes: Sequence[str] | None = None,
        labels: Mapping[int, int] | None = None,
        evaluation: Any = None,
    ) -> Any:
        """:meth:`to_table` as a ``pandas.DataFrame``, one row per region (needs pandas)."""
        return self.to_table(classes, labels, evaluation).to_pandas()

    def _repr_html_(self) -> str:
        return self.to_table().to_html()

    def save_images(
        self,
        folder: str | os.PathLike,
        n: int = 32,
        columns: int = 8,
        scale: int = 4,
        regions: Sequence[int] | None = None,
    ) -> list[Path]:
        """Write ``n`` decoded samples of each region as one PNG per region,
        ``folder/region-<id>.png`` (the ``purpose="label"`` samples a labeler sees).

        Parameters
        ----------
        folder : str or path
            Created if missing; existing files of the same names are replaced.
        n : int
            Samples per region.
        columns, scale : int
            Images per row and the pixel upscale of each PNG.
        regions : sequence of int or None
            The region ids to write; None: every region.

        Returns
        -------
        list of Path
            The files written, in ``regions`` order.
        """
        positive_int("n", n)
        ids = self.ids if regions is None else [self.get(int(r)).id for r in regions]
        grids = [
            ImageGrid(self.sample(rid, n, purpose="label").images, columns, scale, n) for rid in ids
        ]
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        return [grid.save(out / f"region-{rid}.png") for rid, grid in zip(ids, grids)]


def check_scale(scale: float | None) -> float:
    """The sampling scale (``DEFAULT_SCALE`` for None); ValueError unless positive."""
    check("scale", scale, CONSTRAINTS["scale"])
    return DEFAULT_SCALE if scale is None else float(scale)


def derive_seed(*parts: int) -> int:
    """A seed for a random stream named by integers (the same parts give the same seed)."""
    return hash(parts) % (2**63)


def fit_regions(
    errors: ErrorSet,
    max_regions: int = 100,
    min_weight: float = 0.01,
    covariance_type: str = "full",
    max_fit: int = 10_000,
    max_iter: int = 200,
    seed: int = 0,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
    method: str = "torch",
    tol: float = DEFAULT_TOL,
    device: str | torch.device = "auto",
) -> RegionSet:
    """Fit a Dirichlet-process Gaussian mixture to the error codes and keep the heavy components.

    Parameters
    ----------
    errors : the :class:`~defuse_widgets.search.errors.ErrorSet` to cluster.
    max_regions : truncation level of the Dirichlet process (components fitted).
    min_weight : a component is a region when its mixture weight exceeds this.
    covariance_type : "full", "diag", "tied" or "spherical" (sklearn's meanings).
    max_fit : the mixture is fitted on at most this many codes (a seeded subsample); every error
        is then assigned to its most probable component.
    max_iter : variational iterations at most.
    seed : seeds the subsample and the k-means initialisation.
    decode, predict : passed to the :class:`RegionSet` (needed by :meth:`RegionSet.sample`).
    method : ``"torch"`` (default) fits the same variational DP-GMM as sklearn, batched over the
        components on ``device``, and stops once the lower bound gains less than ``tol`` per
        code (its speed and agreement with sklearn's, measured: ``docs/performance.md``);
        ``"sklearn"`` runs sklearn's ``BayesianGaussianMixture`` (the reference's fit; its
        stopping rule almost always runs ``max_iter`` iterations).
    tol : with ``method="torch"``, the per-code lower-bound gain under which the fit stops.
    device : with ``method="torch"``, where it fits: ``"auto"`` (CUDA, else the CPU; MPS has no
        float64 and fits on the CPU), or a device.

    Examples
    --------
    >>> regions = fit_regions(errors, max_regions=50)  # doctest: +SKIP
    """
    _check_errors(errors)
    validate_params(
        CONSTRAINTS,
        max_regions=max_regions,
        min_weight=min_weight,
        covariance_type=covariance_type,
        max_fit=max_fit,
        max_iter=max_iter,
        method=method,
        tol=tol,
    )
    dev = resolve_device(device)
    codes = errors.codes.double()
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(len(codes), size=min(max_fit, len(codes)), replace=False))
    iterations = None
    if method == "torch":
        mixture, converged, iterations = fit_mixture_torch(
            codes[fit_idx], max_regions, covariance_type, max_iter, seed, tol, dev
        )
    else:
        mixture, converged = fit_mixture(
            codes[fit_idx].numpy(), max_regions, covariance_type, max_iter, seed
        )
    component = mixture.responsibilities(codes).argmax(1)
    order = torch.argsort(mixture.weights, descending=True)
    # a heavy component that no error falls in (possible with duplicated codes) is no region
    counts = component.bincount(minlength=len(mixture.weights))
    heavy = [int(c) for c in order if mixture.weights[c] > min_weight and counts[c] > 0]
    assignments = torch.full((len(codes),), -1, dtype=torch.long)
    regions = []
    for region_id, comp in enumerate(heavy):
        members = (component == comp).nonzero().flatten()
        assignments[members] = region_id
        regions.append(
            describe_region(
                region_id,
                comp,
                float(mixture.weights[comp]),
                members,
                errors,
                mixture.means[comp],
                mixture.covariances[comp],
            )
        )
    settings = dict(
        max_regions=max_regions,
        min_weight=min_weight,
        covariance_type=covariance_type,
        max_fit=max_fit,
        fitted_on=len(fit_idx),
        converged=converged,
        method=method,
        iterations=iterations,
    )
    return RegionSet(regions, assignments, mixture, settings, seed, decode, predict)


def _check_errors(errors: ErrorSet) -> None:
    """Refuse errors no mixture can be fitted to (too few, damaged or all the same)."""
    if len(errors) < 2:
        raise ValueError(
            f"errors: need at least 2 errors to find regions, got {len(errors)}; search more "
            "images "
            "or use a stronger strategy (e.g. 'gradient')"
        )
    bad = (~torch.isfinite(errors.codes).all(1)).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"errors: the codes of errors {bad[:5].tolist()} are NaN or infinite; the error set "
            "is damaged: run identify again (and check that the generator encodes to finite codes)"
        )
    if len(errors.codes.unique(dim=0)) < 2:
        raise ValueError(
            f"errors: all {len(errors)} codes are identical, so their covariance is degenerate and "
            "no mixture can be fitted; search more images or use another strategy"
        )


def describe_region(
    region_id: int,
    comp: int,
    weight: float,
    members: torch.Tensor,
    errors: ErrorSet,
    mean: torch.Tensor,
    cov: torch.Tensor,
    user_defined: bool = False,
) -> Region:
    """The :class:`Region` of mixture component ``comp`` (mean, covariance, mixture ``weight``)
    over the errors ``members`` (indices into ``errors``): its size, most common transition and
    the members' mean confidence and validity."""
    if len(members):
        pairs = errors.true_label[members] * 100_000 + errors.pred_label[members]
        values, counts = pairs.unique(return_counts=True)
        top = int(counts.argmax())
        transition = (int(values[top]) // 100_000, int(values[top]) % 100_000)
        share = float(counts[top]) / len(members)
        conf = float(errors.confidence[members].mean())
        valid = float(errors.validity[members].mean())
    else:
        transition, share, conf, valid = (-1, -1), 0.0, float("nan"), float("nan")
    return Region(
        region_id,
        weight,
        len(members),
        mean.float(),
        cov.float(),
        transition,
        share,
        conf,
        valid,
        comp,
        user_defined,
    )


def user_region(regions: RegionSet, errors: ErrorSet, indices: torch.Tensor) -> Region:
    """Add a region made of the errors ``indices`` (e.g. a lasso selection) and return it.

    Its Gaussian is the members' mean and covariance; it joins the mixture as a new component
    with weight ``len(indices) / len(errors)``, and its members are reassigned to it.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).unique()
    if len(idx) < 2:
        raise ValueError(f"indices: expected at least 2 distinct error indices, got {len(idx)}")
    if int(idx.min()) < 0 or int(idx.max()) >= len(errors):
        raise ValueError(
            f"indices: expected error indices in [0, {len(errors) - 1}], got {idx.tolist()[:5]}..."
        )
    codes = errors.codes[idx].double()
    d = codes.shape[1]
    cov = torch.cov(codes.T).reshape(d, d) + 1e-4 * torch.eye(d, dtype=torch.float64)
    mean = codes.mean(0)
    weight = len(idx) / len(errors)
    mixture = regions.mixture.with_component(weight, mean, cov)
    region_id = max(regions.ids, default=-1) + 1
    region = describe_region(
        region_id, len(mixture.weights) - 1, weight, idx, errors, mean, cov, True
    )
    regions.mixture = mixture
    regions.regions.append(region)
    regions.assignments[idx] = region_id
    for r in regions.regions:
        r.size = int((regions.assignments == r.id).sum())
    return region


def region_table(
    regions: RegionSet,
    classes: Sequence[str] | None = None,
    labels: Mapping[int, int] | None = None,
    evaluation: Any = None,
) -> Table:
    """The rows of :meth:`RegionSet.to_table`."""
    columns = [
        "region",
        "size",
        "weight",
        "main mistake",
        "share",
        "mean confidence",
        "mean validity",
        "user-defined",
    ]
    if labels is not None:
        columns.append("label")
    if evaluation is not None:
        columns += ["sample accuracy", "real images", "real accuracy"]
    rows = []
    for r in regions:
        t, p = r.transition
        mistake = "-" if t < 0 else f"{class_label(t, classes)} → {class_label(p, classes)}"
        row = [
            r.id,
            r.size,
            r.weight,
            mistake,
            r.transition_share,
            r.mean_confidence,
            r.mean_validity,
            r.user_defined,
        ]
        if labels is not None:
            label = labels.get(r.id)
            row.append(None if label is None else _label_text(label, classes))
        if evaluation is not None:
            acc = evaluation.regions.get(r.id)
            row += (
                [None, None, None]
                if acc is None
                else [acc.sample_accuracy, acc.real_images, acc.real_accuracy]
            )
        rows.append(row)
    pct = {"share": percent, "sample accuracy": percent, "real accuracy": percent}
    fitted = regions.settings.get("fitted_on", len(regions.assignments))
    title = (
        f"{len(regions)} regions over {len(regions.assignments)} errors "
        f"(mixture fitted on {fitted})"
    )
    return Table(columns, rows, title=title, formats={**pct, "weight": lambda w: f"{w:.3f}"})


def _label_text(label: int, classes: Sequence[str] | None) -> str | int:
    """A region label's name: "model is right" / "unrecognizable", or the class."""
    return label_name(label, ()) if label < 0 else class_label(label, classes)

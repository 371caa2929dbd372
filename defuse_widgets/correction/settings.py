"""Every default of a fine-tuning round in one place: :class:`RoundSettings` and the constants
the round, its judge and the widgets read (nothing else spells a round's default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from defuse_widgets.correction.statistics import DEFAULT_CONFIDENCE
from defuse_widgets.utils.checks import Boolean, Constraints, Interval, Options, validate_params

OPTIMIZERS = ("sgd", "adam")
UPDATES = ("best", "last", "all")
"""What a round trains: only the last linear layer on the frozen features below it (as DFR
retrains the last layer), every weight, or ``"best"``: both, each judged, the better kept."""
DEFAULT_UPDATE = "best"
"""The last layer on frozen features (DFR) and every weight, each trained and judged; the one
that lifts the labeled regions more on validation and is confirmed there is kept (a round so
takes twice as long). Measured on the digits suite with the rounds' real
rows from :meth:`~defuse_widgets.session.session.DefuseSession.reach` (``python
benchmarks/planted_bugs.py --seeds 0 1 2``, with ``--correct '{"update": "all"}'`` for every
weight): both close every mislabeled slice's gap; the rare slices' gaps 75/82/72% with the last
layer against 83/94/0% with every weight (a round refused for a small class's coarse drop);
test accuracy up 2.7-4.9 points in every round the last layer kept; the spurious rounds lowered
test accuracy with both (-1.56; -1.11 and -0.22 points), which the whole-split check of a
round's confirmation now refuses. But on the README tour's generated regions (no planted bug)
the last layer alone was kept at a 50% blend and left 7 of the exported suite's 8 regions
failing, every weight 1 of 8 (docs/correction.md): neither wins everywhere, so both run."""
DEFAULT_EMA = 0.99
"""Decay of the moving average of the weights that a round checks and keeps."""
DEFAULT_KEEP = 4.0
"""Weight of the keep term, chosen on the planted-bug suite (0, 1, 2, 4, 8 measured)."""
DEFAULT_TOLERANCE = 1.0
"""Points of accuracy a class may lose in a round before the round is refused or flagged."""
OVERALL_TOLERANCE = 0.5
"""Points of overall accuracy a round may lose before it is refused or flagged."""
DEFAULT_PATIENCE = 5
"""Early-stopping checks without a better acceptable step before a round stops."""
BLENDS = tuple(round(1 - i / 20, 2) for i in range(1, 20))
"""Shares of the round's last weights (the rest: its starting weights) also judged: 95%, 90%,
..., 5% (weight interpolation searched in 0.05 steps, as WiSE-FT and PAINT interpolate)."""
DEFAULT_REAL_WEIGHT = None
"""None: the labeled regions' real members are drawn as groups (:data:`GROUP_SHARE`); a number:
the draw weight of each member against 1 for the other training rows (JTT's upweighting)."""
GROUP_SHARE = 0.5
"""Share of a round's training draws given to the labeled regions' real members, split equally
among the regions that have any (each region one group, as DFR balances groups); the other
training rows share the rest."""
EVAL_SAMPLES = 200
"""Held-out decoded samples per region when a round's result is evaluated."""
AUTO_GRID: tuple[dict[str, Any], ...] = (
    {"lam": 0.5, "lr": 0.001},
    {"lam": 1.0, "lr": 0.003},
    {"lam": 2.0, "lr": 0.003},
    {"lam": 1.0, "lr": 0.01},
)
"""The settings ``correct(auto=True)`` tries (over the round's other settings)."""

_COUNT = Interval(int, 1, None)
_POSITIVE = Interval(float, 0, None, closed="neither")
CONSTRAINTS: Constraints = {
    "steps": [_COUNT],
    "batch_size": [_COUNT],
    "lam": [Interval(float, 0, None, closed="left")],
    "lr": [_POSITIVE],
    "scale": [None, _POSITIVE],
    "optimizer": [Options(OPTIMIZERS)],
    "keep": [Interval(float, 0.0, 1e6)],
    "tolerance": [Interval(float, 0.0, 100.0)],
    "early_stopping": [Boolean()],
    "check_every": [None, _COUNT],
    "patience": [_COUNT],
    "ema": [Interval(float, 0.0, 1.0, closed="left")],
    "real_weight": [None, Interval(float, 1.0, 1e6)],
    "confidence": [Interval(float, 0.5, 1.0, closed="left")],
    "update": [Options(UPDATES)],
}
"""The declared checks of a round's knobs (``momentum`` and ``seed`` are free)."""


@dataclass(frozen=True)
class RoundSettings:
    """The knobs of one fine-tuning round, checked when made (see :meth:`DefuseSession.correct`).

    ``scale`` None: per region, measured on the validation images inside it (else
    :data:`~defuse_widgets.regions.distill.DEFAULT_SCALE`). ``keep``: weight of the term that
    keeps the outputs on training images outside the labeled regions close to the round's
    starting model. ``real_weight``: None (default) draws the real training images each
    labeled region reaches (:meth:`DefuseSession.reach`) that carry its label (confirmed
    relabels included) as one group per region,
    together :data:`GROUP_SHARE` of the draws (DFR's balanced groups); a number draws each of them
    that many times as often as the other training images (1: no upweighting; JTT's upweighting
    of a first model's errors). ``tolerance``: points a class may lose on validation, judged
    with paired tests at ``confidence`` (Holm over the classes); ``check_every`` (None: a tenth
    of ``steps``, at least 10) and ``patience``: early stopping on one half of the validation
    split, the kept step confirmed on the other (``early_stopping=False``: run every step and
    keep the last).
    ``ema``: decay of the exponential moving average of the weights that the round checks and
    keeps (0: the raw weights of the step; see
    :class:`~defuse_widgets.correction.training.WeightAverage`). ``update``: ``"all"`` trains
    every weight, ``"last"`` only the classifier's last ``nn.Linear`` layer, the rest frozen
    (DFR's last-layer retraining: the features stay, so classes the bug never touched keep
    theirs), ``"best"`` both, the better confirmed one kept (see :data:`DEFAULT_UPDATE`).
    """

    steps: int = 300
    lam: float = 1.0
    lr: float = 0.003
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    scale: float | None = None
    seed: int = 0
    keep: float = DEFAULT_KEEP
    tolerance: float = DEFAULT_TOLERANCE
    early_stopping: bool = True
    check_every: int | None = None
    patience: int = DEFAULT_PATIENCE
    ema: float = DEFAULT_EMA
    real_weight: float | None = DEFAULT_REAL_WEIGHT
    confidence: float = DEFAULT_CONFIDENCE
    update: str = DEFAULT_UPDATE

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first knob out of range (see :data:`CONSTRAINTS`)."""
        knobs = {name: getattr(self, name) for name in CONSTRAINTS}
        validate_params(CONSTRAINTS, **knobs)

    @property
    def every(self) -> int:
        """Steps between two early-stopping checks."""
        return self.check_every or max(10, self.steps // 10)


DEFAULTS = RoundSettings()
"""A round's default settings (read a default as ``DEFAULTS.steps``)."""

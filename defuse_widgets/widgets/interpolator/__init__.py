"""The latent interpolation widget (:class:`Interpolator`), its targets and its frame protocol,
beside its TypeScript in ``js/interpolator/``."""

from defuse_widgets.widgets.common import STATIC
from defuse_widgets.widgets.interpolator.widget import Interpolator

__all__ = ["STATIC", "Interpolator"]

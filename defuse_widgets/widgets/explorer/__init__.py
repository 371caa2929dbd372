"""The error explorer widget (:class:`Explorer`) and the helpers that serve only it, one per pane,
beside its TypeScript in ``js/explorer/``."""

from defuse_widgets.widgets.explorer.widget import Explorer, region_color

__all__ = ["Explorer", "region_color"]

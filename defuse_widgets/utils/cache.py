"""The one folder the package keeps its caches in: trained demo models, downloaded datasets and
2-D maps of error codes, each in a subfolder.

The root is the platform's user cache folder (``platformdirs``: ``~/.cache/defuse-widgets`` on
Linux, or under ``$XDG_CACHE_HOME`` when set; ``~/Library/Caches/defuse-widgets`` on macOS;
``%LOCALAPPDATA%\\defuse-widgets\\Cache`` on Windows); ``$DEFUSE_WIDGETS_CACHE`` moves it.
Two older variables that moved a single subfolder still do, with a DeprecationWarning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

ENV = "DEFUSE_WIDGETS_CACHE"
APP = "defuse-widgets"
KINDS = ("models", "datasets", "projections")
# variables of earlier versions, each the folder of one kind; honoured, but deprecated
LEGACY = {"datasets": "DEFUSE_WIDGETS_DATA", "projections": "DEFUSE_WIDGETS_PROJECTION_CACHE"}
_warned: set[str] = set()


def cache_root() -> Path:
    """The folder of every cache: ``$DEFUSE_WIDGETS_CACHE``, else the platform's user cache
    folder for ``defuse-widgets``. Nothing is created."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP, appauthor=False))


def cache_dir(kind: str) -> Path:
    """The cache folder of one ``kind``: ``"models"``, ``"datasets"`` or ``"projections"``.

    ``cache_root() / kind``, unless the kind's deprecated variable (``DEFUSE_WIDGETS_DATA``,
    ``DEFUSE_WIDGETS_PROJECTION_CACHE``) is set. Nothing is created.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    legacy = LEGACY.get(kind, "")
    old = os.environ.get(legacy) if legacy else None
    if not old:
        return cache_root() / kind
    if legacy not in _warned:
        _warned.add(legacy)
        warnings.warn(
            f"{legacy} is deprecated: set {ENV} to move every cache (this one is ${ENV}/{kind})",
            DeprecationWarning,
            stacklevel=2,
        )
    return Path(old).expanduser()

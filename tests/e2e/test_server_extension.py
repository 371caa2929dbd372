"""The opt-in latency server extension: loaded by a real JupyterLab, favicons cacheable."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from defuse_widgets.jupyter_latency import FAVICON_MAX_AGE_S


def test_enabled_extension_is_loaded_and_favicons_are_cacheable(
    lab_server: tuple[str, Path],
) -> None:
    url, root = lab_server
    log = (root / "jupyter-lab.log").read_text()
    assert "defuse_widgets.jupyter_latency: TCP_NODELAY on kernel websockets" in log
    # JupyterLab swaps these on every kernel busy/idle: they must not cost a request each time
    for name in ("favicon.ico", "favicon-busy-1.ico"):
        with urllib.request.urlopen(f"{url}/static/favicons/{name}", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == f"max-age={FAVICON_MAX_AGE_S}"
    # other static files keep the server's own caching rules
    with urllib.request.urlopen(f"{url}/lab", timeout=10) as resp:
        assert f"max-age={FAVICON_MAX_AGE_S}" not in (resp.headers["Cache-Control"] or "")


def test_the_package_enables_nothing_in_the_jupyter_server_by_itself() -> None:
    """Installing the wheel must not switch the extension on for every server (opt-in only)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "shared-data" not in wheel, "no jupyter_server_config.d file is installed"

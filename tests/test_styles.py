"""The widgets' styles work outside JupyterLab: every ``var(--...)`` carries a fallback value, so
marimo, VS Code or a plain HTML page (no ``--jp-*`` variables) still style buttons and inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "defuse_widgets" / "widgets").glob("*.css")) + sorted(
    (ROOT / "js").rglob("*.ts")
)


def vars_without_fallback(text: str) -> list[str]:
    """Every ``var(...)`` (nested ones too) whose parentheses hold no top-level comma."""
    missing = []
    for m in re.finditer(r"var\(", text):
        depth, comma, i = 1, False, m.end()
        while i < len(text) and depth:
            ch = text[i]
            depth += (ch == "(") - (ch == ")")
            comma |= ch == "," and depth == 1
            i += 1
        if not comma:
            missing.append(text[m.start() : i])
    return missing


def test_the_checker_finds_a_missing_fallback() -> None:
    assert vars_without_fallback("a { color: var(--x, #000); b: var(--y); }") == ["var(--y)"]
    assert vars_without_fallback("c: var(--a, var(--b))") == ["var(--b)"]
    assert vars_without_fallback("c: var(--a, var(--b, 1px))") == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_css_variable_has_a_fallback(path: Path) -> None:
    assert vars_without_fallback(path.read_text()) == []


def test_the_built_bundles_keep_the_fallbacks() -> None:
    static = ROOT / "defuse_widgets" / "static"
    if not (static / "explorer.js").exists():
        pytest.skip("explorer.js is not built (npm run build)")
    ours = re.compile(r"var\(--jp-[^()]*\)")  # the library CSS in the bundle is not ours to check
    for js in static.glob("*.js"):
        assert [v for v in ours.findall(js.read_text()) if "," not in v] == [], js.name

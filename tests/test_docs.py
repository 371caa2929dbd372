"""The front door: the README's links and API tour, and the docs site's API page and navigation.

``make docs`` (``mkdocs build --strict``, part of ``make test``) checks the site's own links and
renders every docstring; these tests check what that build cannot see: the README (not part of
the site), that every public name has a docstring at all, and the hook that generates the API page
and completes the navigation (``docs/hooks.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import defuse_widgets as dw

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOUR_HEADING = "## A five-minute API tour"
TOUR_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    """``docs/hooks.py``, the site's MkDocs hooks (it imports mkdocs)."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra: pip install -e '.[dev]'")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_tour() -> str:
    """The python block under the README's tour heading."""
    text = README.read_text(encoding="utf-8")
    assert TOUR_HEADING in text, f"README.md has no {TOUR_HEADING!r} section"
    section = text.split(TOUR_HEADING, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the README's tour has no python block"
    return block.group(1)


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "no local links found: the pattern no longer matches the README"
    broken = [t for t in local if t and not (ROOT / t).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_readme_anchors_into_docs_exist() -> None:
    """``docs/page.md#anchor`` links: the page has a heading with that id (the site's toc ids)."""
    toc = pytest.importorskip("markdown.extensions.toc", reason="markdown comes with mkdocs")
    links = re.findall(r"\]\((docs/[^)#\s]+\.md)#([^)\s]+)\)", README.read_text(encoding="utf-8"))
    assert links, "no anchored links found: the pattern no longer matches the README"
    for page, anchor in links:
        text = (ROOT / page).read_text(encoding="utf-8")
        headings = re.findall(r"^#{1,6} (.+?)\s*$", text, re.M)
        ids = {toc.slugify(h.replace("`", ""), "-") for h in headings}
        assert anchor in ids, f"README.md links to {page}#{anchor}; its headings give {sorted(ids)}"


def test_readme_stays_short_and_keeps_its_sections() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines <= 220, f"README.md has {lines} lines; move details into docs/ (target 150-200)"
    for heading in ("## Install", TOUR_HEADING, "## Bring your own", "## Supported front ends"):
        assert heading in text, f"README.md lost its {heading!r} section"
    for command in ("make demo", "make test"):
        assert command in text


def test_readme_tour_compiles_and_uses_public_names() -> None:
    code = readme_tour()
    compile(code, "README tour", "exec")
    used = set(re.findall(r"\bdw\.([A-Za-z_]+)", code))
    unknown = sorted(n for n in used if not hasattr(dw, n))
    assert not unknown, f"the README's tour uses names defuse_widgets does not have: {unknown}"


def test_every_public_name_has_a_docstring() -> None:
    griffe = pytest.importorskip("griffe", reason="griffe comes with mkdocstrings[python]")
    package = griffe.load("defuse_widgets", search_paths=[str(ROOT)], resolve_aliases=True)
    undocumented = [name for name in dw.__all__ if not package[name].docstring]
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_api_page_documents_every_public_name(hooks: ModuleType) -> None:
    assert hooks.public_names() == list(dw.__all__)
    page = hooks.api_page()
    blocks = re.findall(r"^::: defuse_widgets\.(\w+)$", page, re.M)
    assert sorted(blocks) == sorted(dw.__all__)
    assert "## Other" not in page, (
        "a public name comes from a subpackage the API page does not know"
    )


def test_nav_gets_every_page(hooks: ModuleType, tmp_path: Path) -> None:
    for name in ("index.md", "listed.md", "new-page.md"):
        (tmp_path / name).write_text(f"# {name}\n")
    config = SimpleNamespace(nav=[{"Home": "index.md"}, {"A": ["listed.md"]}], docs_dir=tmp_path)
    hooks.on_config(config)
    assert config.nav[-1] == {"More": ["new-page.md"]}
    hooks.on_config(config)  # everything listed now: nothing more is added
    assert [entry for entry in config.nav if "More" in entry] == [{"More": ["new-page.md"]}]


def test_mkdocs_nav_lists_existing_pages(hooks: ModuleType) -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    generated = {"api.md"} | {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    missing = sorted(
        p
        for p in hooks.nav_pages(config["nav"])
        if p not in generated and not (ROOT / "docs" / p).is_file()
    )
    assert not missing, f"mkdocs.yml lists pages that do not exist: {missing}"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_executed_notebook_is_current(hooks: ModuleType, path: Path) -> None:
    """The site shows each notebook with the outputs of its copy in docs/notebooks/."""
    reason = hooks.stale_reason(path, hooks.EXECUTED / path.name)
    assert not reason, f"{reason}: run `make docs-notebooks` and commit docs/notebooks/"


def test_notebook_page_takes_outputs_only_from_a_current_copy(
    hooks: ModuleType, tmp_path: Path
) -> None:
    def notebook(code: str, outputs: list[dict[str, object]]) -> dict[str, object]:
        ran = 1 if outputs else None
        cells = [
            {"cell_type": "markdown", "metadata": {}, "source": "# now"},
            {"cell_type": "code", "metadata": {}, "source": code, "outputs": outputs},
        ]
        cells[1]["execution_count"] = ran
        return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

    shown = [{"output_type": "stream", "name": "stdout", "text": "2\n"}]
    source, copy = tmp_path / "a.ipynb", tmp_path / "copy.ipynb"
    source.write_text(json.dumps(notebook("print(1 + 1)", [])))
    copy.write_text(json.dumps(notebook("print(1 + 1)", shown)))
    assert hooks.stale_reason(source, copy) == ""
    merged = hooks.with_outputs(source, copy)
    assert merged["cells"][1]["outputs"] == shown and merged["cells"][0]["source"] == "# now"
    copy.write_text(json.dumps(notebook("print(2 + 2)", shown)))
    assert "differ" in hooks.stale_reason(source, copy)
    copy.write_text(json.dumps(notebook("print(1 + 1)", [{"output_type": "error"}])))
    assert "error" in hooks.stale_reason(source, copy)
    assert "missing" in hooks.stale_reason(source, tmp_path / "none.ipynb")


@pytest.mark.slow
def test_readme_tour_runs(tmp_path: Path) -> None:
    """Every line of the README's tour runs, as written, from a fresh directory, without a
    warning."""
    script = tmp_path / "tour.py"
    script.write_text(readme_tour(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TOUR_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"the README's tour failed:\n{result.stderr[-4000:]}"
    warned = [line for line in result.stderr.splitlines() if "Warning: " in line]
    assert not warned, f"the README's tour prints warnings: {warned}"
    for folder in ("digits", "regions", "suite"):  # what the tour writes
        assert (tmp_path / "runs" / folder).is_dir(), f"the tour wrote no runs/{folder}"

"""MkDocs hooks for the docs site (``mkdocs.yml``: ``hooks: [docs/hooks.py]``).

Two pages are not files under ``docs/``, and the navigation lists every page:

- ``notebooks/*.ipynb``: the repository's notebooks (committed without outputs), each with the
  outputs of its executed copy in ``docs/notebooks/`` (``make docs-notebooks`` writes them) when
  that copy's code cells are the notebook's; ``mkdocs-jupyter`` renders them without running them.
  A notebook whose copy is missing or stale is shown without outputs, with a warning (which
  ``--strict`` turns into a failure).
- ``api.md``: the API reference, one ``::: defuse_widgets.NAME`` block per name of
  ``defuse_widgets.__all__``, grouped by the stage subpackage that defines it. Read statically
  with griffe (no torch import), so a name added to ``__all__`` is documented without editing a
  page, and a name that griffe cannot resolve fails ``mkdocs build --strict``.
- a page under ``docs/`` that ``nav`` in ``mkdocs.yml`` does not list (one added by another
  change) is appended under "More", so no page is built without a way to reach it.
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "defuse_widgets"
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "docs" / "notebooks"  # the executed copies (make docs-notebooks)
log = logging.getLogger("mkdocs.hooks.notebooks")

# the order of the reference page's sections: the loop's order, then the tools around it
STAGES: dict[str, str] = {
    "data": "Data",
    "models": "Models and generators",
    "search": "Identify: latent search",
    "regions": "Distill and label: failure regions",
    "correction": "Correct: fine-tuning rounds and evaluation",
    "session": "The session",
    "suite": "Regression suites",
    "testing": "Regression suites",
    "persist": "The session",
    "widgets": "Widgets",
    "distributed": "Scaling out",
    "imaging": "Images",
    "utils": "Utilities",
}
OTHER = "Other"


def public_names() -> list[str]:
    """``defuse_widgets.__all__``, read from ``__init__.py`` without importing the package.

    Returns
    -------
    list of str
        The names, in the order ``__all__`` lists them.
    """
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [str(v) for v in ast.literal_eval(node.value)]
    raise RuntimeError(f"no __all__ in {PACKAGE / '__init__.py'}")


def defining_modules() -> dict[str, str]:
    """Where each public name comes from, as ``__init__.py`` imports it.

    Returns
    -------
    dict of str to str
        Public name -> the dotted module it is imported from (``defuse_widgets.search.identify``),
        or the module's own dotted name for a re-exported submodule (``defuse_widgets.testing``).
    """
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    origin: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                name = alias.asname or alias.name
                # `from defuse_widgets import testing` imports a submodule, not a name of one
                target = ROOT.joinpath(*node.module.split("."), alias.name)
                is_submodule = target.with_suffix(".py").is_file() or target.is_dir()
                origin[name] = f"{node.module}.{alias.name}" if is_submodule else node.module
    return origin


def api_page() -> str:
    """The API reference page's markdown: a section per stage, a block per public name.

    Returns
    -------
    str
        Markdown with one mkdocstrings ``::: defuse_widgets.NAME`` block per name of ``__all__``.
    """
    origin = defining_modules()
    sections: dict[str, list[str]] = {title: [] for title in STAGES.values()}
    sections[OTHER] = []
    for name in public_names():
        parts = origin.get(name, "defuse_widgets").split(".")
        stage = parts[1] if len(parts) > 1 else ""
        sections[STAGES.get(stage, OTHER)].append(name)
    lines = [
        "# API reference",
        "",
        "Every public name of `defuse_widgets` (its `__all__`), from the numpy docstrings, grouped",
        "by the step of the loop it belongs to. Import them from the top level:",
        "`import defuse_widgets as dw`, then `dw.DefuseSession`, `dw.identify`, ...",
        "This page is generated from `__all__` when the site is built (`docs/hooks.py`).",
        "",
    ]
    for title, names in sections.items():
        if not names:
            continue
        lines += [f"## {title}", ""]
        for name in names:
            lines += [f"::: defuse_widgets.{name}", ""]
    return "\n".join(lines)


def nav_pages(nav: object) -> set[str]:
    """Every page path a ``nav`` configuration lists (nested sections included).

    Parameters
    ----------
    nav : list, dict or str
        ``config.nav`` or a part of it.

    Returns
    -------
    set of str
        The ``.md``/``.ipynb`` paths, relative to ``docs_dir``.
    """
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(nav_pages(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(nav_pages(v) for v in nav))
    return set()


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the pages under ``docs/`` that ``nav`` does not list, under "More"."""
    if config.nav is None:
        return config
    listed = nav_pages(config.nav)
    docs = Path(config.docs_dir)
    extra = sorted(
        p.relative_to(docs).as_posix()
        for p in docs.rglob("*.md")
        if p.relative_to(docs).as_posix() not in listed
    )
    if extra:
        config.nav.append({"More": extra})
    return config


def code_cells(nb: dict[str, Any]) -> list[str]:
    """The sources of a notebook's code cells, in order."""
    return [
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]


def stale_reason(source: Path, executed: Path) -> str:
    """Why ``executed`` cannot lend its outputs to ``source`` ("" when it can: it exists, its
    code cells are the source's, and it has outputs without errors)."""
    copy_name = executed.relative_to(ROOT) if executed.is_relative_to(ROOT) else executed
    if not executed.is_file():
        return f"{copy_name} is missing"
    nb, copy = (json.loads(p.read_text(encoding="utf-8")) for p in (source, executed))
    if code_cells(nb) != code_cells(copy):
        return f"the code cells of {copy_name} differ from {source.name}'s"
    outputs = [o for c in copy["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    if not outputs:
        return f"{copy_name} has no outputs"
    if any(o["output_type"] == "error" for o in outputs):
        return f"{copy_name} holds an error output"
    return ""


def with_outputs(source: Path, executed: Path) -> dict[str, Any]:
    """``source``'s cells (its markdown as it is now) with the outputs of its executed copy."""
    nb = json.loads(source.read_text(encoding="utf-8"))
    copy = json.loads(executed.read_text(encoding="utf-8"))
    runs = iter(c for c in copy["cells"] if c["cell_type"] == "code")
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            ran = next(runs)
            cell["outputs"], cell["execution_count"] = ran["outputs"], ran["execution_count"]
    return nb


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into notebook pages
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the notebooks (with their executed copies' outputs) and the API page to the files."""
    for copy in [f for f in files if f.src_uri.startswith("notebooks/")]:
        files.remove(copy)  # the executed copies lend their outputs below; not pages themselves
    pages = Path(config.site_dir).parent / "docs-notebooks"  # build/: git-ignored
    (pages / "notebooks").mkdir(parents=True, exist_ok=True)
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        reason = stale_reason(path, EXECUTED / path.name)
        if reason:
            log.warning(f"{path.name} is shown without outputs: {reason} (make docs-notebooks)")
            nb = json.loads(path.read_text(encoding="utf-8"))
        else:
            nb = with_outputs(path, EXECUTED / path.name)
        (pages / "notebooks" / path.name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(pages),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    files.append(File.generated(config, "api.md", content=api_page()))
    return files

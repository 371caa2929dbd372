"""MkDocs hooks for the docs site (``mkdocs.yml``: ``hooks: [docs/hooks.py]``).

Two pages are not files under ``docs/``, and the navigation lists every page:

- ``notebooks/*.ipynb``: the repository's notebooks, added as they are (no outputs are committed;
  ``mkdocs-jupyter`` renders them without running them), so the site never holds a second copy.
- ``api.md``: the API reference, one ``::: defuse_widgets.NAME`` block per name of
  ``defuse_widgets.__all__``, grouped by the stage subpackage that defines it. Read statically
  with griffe (no torch import), so a name added to ``__all__`` is documented without editing a
  page, and a name that griffe cannot resolve fails ``mkdocs build --strict``.
- a page under ``docs/`` that ``nav`` in ``mkdocs.yml`` does not list (one added by another
  change) is appended under "More", so no page is built without a way to reach it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "defuse_widgets"

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


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into notebook pages
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the repository's notebooks and the generated API page to the site's files."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    files.append(File.generated(config, "api.md", content=api_page()))
    return files

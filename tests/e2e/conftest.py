"""Shared fixtures for end-to-end tests in a real JupyterLab driven by headless Chromium.

Fixtures
--------
lab_server : (base_url, root_dir), a JupyterLab on a free loopback port, one per test session,
    stopped by its own process id at teardown.
notebook7_server : (base_url, root_dir), a Jupyter Notebook 7 (``jupyter notebook``), the same way.
browser : a headless system Chromium (``/usr/bin/chromium``), one per test session.
browser_page : a fresh page (1400 x 1000) per test, closed afterwards.
notebook : a callable ``notebook(name, cells, timeout=...) -> Page`` that writes a notebook from a
    list of code cell sources into the lab's root, opens it in ``browser_page``, accepts the kernel
    dialog and runs all cells (see :func:`open_and_run`).

The plain functions (:func:`start_lab`, :func:`stop_lab`, :func:`launch_browser`,
:func:`write_notebook`, :func:`open_and_run`, :func:`run_new_cell`) are importable by benchmarks
that run outside pytest: ``sys.path.insert(0, "tests/e2e"); import conftest``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

CHROMIUM = os.environ.get("DEFUSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_lab(
    root_dir: str | Path, timeout: float = 90.0, app: str = "lab"
) -> tuple[str, subprocess.Popen]:
    """Start ``jupyter lab`` (or ``app="notebook"``: Notebook 7) on a free loopback port; return
    its base url and process."""
    port = _free_port()
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [
        str(jupyter) if jupyter.exists() else "jupyter",
        app,
        "--no-browser",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--allow-root",
        f"--ServerApp.root_dir={root_dir}",
        # opt-in (README): the tests run with it, as a user who enabled it would
        "--ServerApp.jpserver_extensions={'defuse_widgets.jupyter_latency': True}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(Path(root_dir) / f"jupyter-{app}.log", "wb")  # noqa: SIM115 (closed with the process)
    settings = Path(root_dir) / ".lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)  # no "Jupyter news?" toast over screenshots
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        JUPYTERLAB_SETTINGS_DIR=str(Path(root_dir) / ".lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(Path(root_dir) / ".lab-workspaces"),
    )
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root_dir)
    url = f"http://127.0.0.1:{port}"
    return url, wait_for_server(proc, f"{url}/api/status", timeout, log.name)


def wait_for_server(proc: subprocess.Popen, url: str, timeout: float, log: str) -> subprocess.Popen:
    """Wait until ``url`` answers 200 (a server started as ``proc``); stop it on a timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_lab(proc)
    raise RuntimeError(f"the server did not answer on {url} within {timeout} s; see {log}")


def stop_lab(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`start_lab` (its own pid; kernels are its children)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def launch_browser(playwright: Any) -> Any:
    """Launch the system Chromium headless (Playwright's own download does not work here)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def write_notebook(root_dir: str | Path, name: str, cells: list[str]) -> Path:
    """Write ``name`` (``.ipynb`` added if missing) with one code cell per source string."""
    if not name.endswith(".ipynb"):
        name += ".ipynb"
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell-{i}",
                "metadata": {},
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = Path(root_dir) / name
    path.write_text(json.dumps(nb, indent=1))
    return path


def open_and_run(page: Any, base_url: str, name: str, timeout: float = 120.0) -> Any:
    """Open ``/lab/tree/<name>``, accept "Select Kernel" if asked, and run all cells.

    Returns when the run was started (not when it finished): wait for an output you expect.
    """
    if not name.endswith(".ipynb"):
        name += ".ipynb"
    # ?reset: start from an empty workspace, or notebooks an earlier test opened on the same
    # server come back as hidden tabs and the ".jp-Notebook" locators find those first
    page.goto(f"{base_url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
    # the kernel dialog may or may not appear, depending on the lab's settings
    with contextlib.suppress(Exception):
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=8000)
    wait_kernel_idle(page, timeout)
    run_all(page)
    return page


def run_all(page: Any, tries: int = 3) -> None:
    """Run all cells from the menu and wait until the first cell has started (its prompt reads
    ``[*]`` or a number); a click that a still-loading page dropped is made again."""
    for attempt in range(tries):
        page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(
                r"""() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
                      .some(p => /\[(\*|\d+)\]/.test(p.textContent || ''))""",
                timeout=30_000,
            )
            return
        except Exception:
            if attempt == tries - 1:
                raise


def wait_kernel_idle(page: Any, timeout: float = 120.0) -> None:
    """Wait until the notebook's kernel status says Idle."""
    page.wait_for_function(
        """() => {
          const t = document.querySelector('.jp-StatusBar-TextItem, #jp-main-statusbar');
          return !!t && /Idle/.test(t.textContent || '');
        }""",
        timeout=timeout * 1000,
    )


def cell_output_text(page: Any, index: int) -> str:
    """Text of the outputs of the ``index``-th cell (negative counts from the end)."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    n = cells.count()
    cell = cells.nth(index if index >= 0 else n + index)
    return str(cell.locator(".jp-OutputArea").inner_text())


def run_new_cell(page: Any, source: str, expect: str | None = None, timeout: float = 60.0) -> str:
    """Append a code cell at the end, run it, wait for its output; return the output text.

    ``expect``: wait until the output contains this text (default: any output).
    """
    cells = page.locator(".jp-Notebook .jp-Cell")
    n = cells.count()
    cells.nth(n - 1).locator(".jp-InputArea-prompt").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    new = cells.nth(n)
    new.locator(".cm-content").click()
    page.keyboard.insert_text(source)
    page.keyboard.press("Shift+Enter")
    out = new.locator(".jp-OutputArea-output")
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = " ".join(out.all_inner_texts())
        if text and (expect is None or expect in text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"cell {source!r} gave {text!r}, expected {expect!r}")


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A JupyterLab on loopback with a fresh root dir: yields (base_url, root_dir)."""
    root = tmp_path_factory.mktemp("lab")
    url, proc = start_lab(root)
    try:
        yield url, root
    finally:
        stop_lab(proc)


@pytest.fixture(scope="session")
def notebook7_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Jupyter Notebook 7 on loopback with a fresh root dir: yields (base_url, root_dir)."""
    pytest.importorskip("notebook", reason="Notebook 7 is in the dev extra (pip install notebook)")
    root = tmp_path_factory.mktemp("nb7")
    url, proc = start_lab(root, app="notebook")
    try:
        yield url, root
    finally:
        stop_lab(proc)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = launch_browser(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def browser_page(browser: Any) -> Iterator[Any]:
    """A fresh page; console errors are collected in ``page.console_errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.console_errors = errors
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def lab_helpers() -> SimpleNamespace:
    """The helper functions of this module (tests cannot ``import conftest`` reliably)."""
    return SimpleNamespace(
        write_notebook=write_notebook,
        open_and_run=open_and_run,
        run_all=run_all,
        wait_kernel_idle=wait_kernel_idle,
        cell_output_text=cell_output_text,
        run_new_cell=run_new_cell,
    )


@pytest.fixture
def notebook(lab_server: tuple[str, Path], browser_page: Any) -> Callable[..., Any]:
    """``notebook(name, cells, timeout=120) -> page``: write, open and run a notebook."""
    url, root = lab_server

    def _run(name: str, cells: list[str], timeout: float = 120.0) -> Any:
        write_notebook(root, name, cells)
        return open_and_run(browser_page, url, name, timeout=timeout)

    return _run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is a browser test (``-m "not browser"`` skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)

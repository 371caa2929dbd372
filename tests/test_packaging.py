"""The wheel: built without Node from the already-built front end, installed into a fresh virtual
environment outside the source tree, imported there with its front-end bundles inside.

The fresh environment reuses the test environment's dependencies through a ``.pth`` file (torch
is not downloaded or copied again); the wheel itself is installed with ``--no-deps --no-index``.
A ``.pth`` line only adds a directory to ``sys.path``: the test environment's own ``.pth`` files,
among them the editable install pointing at this checkout, are not processed, so the package
that imports is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import defuse_widgets as dw

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ("explorer.js", "interpolator.js")
TIMEOUT_S = 300

# run in the fresh environment from a directory outside the checkout
PROBE = """
import importlib.metadata as md, json, pathlib
import defuse_widgets as dw
from defuse_widgets.widgets.interpolator import STATIC
package = pathlib.Path(dw.__file__).parent
meta = md.metadata("defuse-widgets")
print(json.dumps({
    "package": str(package),
    "version": dw.__version__,
    "dist_version": md.version("defuse-widgets"),
    "bundles": sorted(p.name for p in (package / "static").glob("*.js")),
    "static": str(STATIC.resolve()),  # where the widgets load their bundles from
    "typed": (package / "py.typed").is_file(),
    "license": meta["License-Expression"],
    "names": [n for n in dw.__all__ if not hasattr(dw, n)],
}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


def _env_without_node(fake_bin: Path) -> dict[str, str]:
    """The environment with ``node``/``npm``/``npx`` replaced by stubs that log any call."""
    fake_bin.mkdir()
    for tool in ("node", "npm", "npx"):
        stub = fake_bin / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{fake_bin}/calls.log"\nexit 127\n')
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build the wheel, install it into a fresh venv outside the checkout, probe it there."""
    static = ROOT / "defuse_widgets" / "static"
    missing = [b for b in BUNDLES if not (static / b).is_file()]
    if missing:
        pytest.skip(f"the front end is not built ({', '.join(missing)}): npm ci && npm run build")
    for module in ("hatchling", "hatch_jupyter_builder"):
        pytest.importorskip(module, reason=f"{module} is in the dev extra: pip install -e '.[dev]'")
    work = tmp_path_factory.mktemp("packaging")
    assert not work.resolve().is_relative_to(ROOT), "the temporary folder is inside the checkout"
    env = _env_without_node(work / "no-node")

    dist = work / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(dist), str(ROOT)],
        cwd=work, env=env,
    )  # fmt: skip
    wheels = list(dist.glob("defuse_widgets-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dist}, got {wheels}"

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work, env=env)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=work, env=env,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "test-env-dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--quiet", str(wheels[0])],
        cwd=work, env=env,
    )  # fmt: skip
    probe = _run([str(python), "-c", PROBE], cwd=work, env=env)
    calls = work / "no-node" / "calls.log"
    return {
        "wheel": wheels[0],
        "site": Path(site).resolve(),
        "probe": json.loads(probe.stdout.strip().splitlines()[-1]),
        "node_calls": calls.read_text() if calls.exists() else "",
    }


def test_wheel_builds_without_node(installed: dict) -> None:
    assert installed["node_calls"] == "", f"the build ran Node: {installed['node_calls']}"


def test_wheel_holds_the_front_end_license_and_marker(installed: dict) -> None:
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for bundle in BUNDLES:
        assert f"defuse_widgets/static/{bundle}" in names
    assert "defuse_widgets/py.typed" in names
    assert "defuse_widgets/templates/report.html" in names  # the CLI's report page
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]


def test_installed_package_imports_outside_the_checkout(installed: dict) -> None:
    probe = installed["probe"]
    package = Path(probe["package"]).resolve()
    assert package.is_relative_to(installed["site"]), f"imported {package}, not the wheel's"
    assert not package.is_relative_to(ROOT)
    assert probe["names"] == [], f"names in __all__ missing from the package: {probe['names']}"
    assert probe["bundles"] == sorted(BUNDLES)
    assert Path(probe["static"]) == package / "static", "the widgets load bundles from elsewhere"
    assert probe["typed"]


def test_one_version_everywhere(installed: dict) -> None:
    probe = installed["probe"]
    assert probe["version"] == probe["dist_version"] == dw.__version__
    assert installed["wheel"].name.startswith(f"defuse_widgets-{dw.__version__}-")
    assert probe["license"] == "MIT"


@pytest.mark.parametrize("apt", ["no", "yes"])
def test_make_names_missing_system_packages(apt: str, tmp_path: Path) -> None:
    """`make test`'s browser and data steps: with both present nothing happens; with both
    missing and no way to install them (not root, or no apt-get: APT=no) make names each package
    and goes on. With APT=yes it would install them: checked with a dry run only."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    missing = [f"DEFUSE_CHROMIUM={tmp_path / 'no-chromium'}", f"FASHION_DIR={tmp_path / 'no-data'}"]
    dry = ["-n"] if apt == "yes" else []
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), *dry, "browser", "data", f"APT={apt}"]
    result = subprocess.run([*cmd, *missing], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if apt == "no":
        for package in ("chromium", "dataset-fashion-mnist"):
            assert f"MISSING: Debian package '{package}'" in result.stdout
            assert f"sudo apt-get install -y {package}" in result.stdout
    else:  # the recipe that would run: apt-get for each package
        assert result.stdout.count("apt-get install -y -qq") == 2
    present = [f"DEFUSE_CHROMIUM={sys.executable}", f"FASHION_DIR={tmp_path}"]
    (tmp_path / "train-images-idx3-ubyte.gz").touch()
    result = subprocess.run([*cmd[:4], "browser", "data", f"APT={apt}", *present],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr

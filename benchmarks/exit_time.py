"""Benchmark: how long a script that ran the README tour stays alive after its last line
(issue 44: within 2 s), with the package's exit handler and, as the baseline in the same run,
without it (``atexit.unregister`` of :func:`defuse_widgets.utils.shutdown.skip_exit_collections`).

Each variant runs the README's first Python block as a script in a fresh interpreter in a
temporary folder (``--script FILE`` runs another), prints a line stamped with the time as its
last statement, and the parent measures from that stamp to the process's end. Prints one line
per run, the medians, their ratio, and one JSON line.

Run: ``.venv/bin/python benchmarks/exit_time.py --runs 1`` (each run of the tour takes about
2 minutes on a 2-core CPU; ``--script`` with a shorter file for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = "EXIT-BENCHMARK-LAST-LINE"
BASELINE = (
    "import atexit\nfrom defuse_widgets.utils import shutdown\n"
    "atexit.unregister(shutdown.skip_exit_collections)\n"
)


def readme_tour() -> str:
    """The README's first ```python block (the API tour)."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]


def after_last_line(source: str, folder: Path) -> tuple[float, str]:
    """Seconds from the script's last line to its exit, and its standard error."""
    script = folder / "script.py"
    script.write_text(f"{source}\nimport time as _t\nprint('{STAMP}', _t.time(), flush=True)\n")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=folder, capture_output=True, text=True, check=False
    )
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"the script failed ({done.returncode}):\n{done.stderr[-3000:]}")
    stamp = float(next(ln for ln in done.stdout.splitlines() if ln.startswith(STAMP)).split()[1])
    return end - stamp, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs of each variant")
    parser.add_argument("--script", type=Path, help="a Python file instead of the README tour")
    args = parser.parse_args()
    source = args.script.read_text() if args.script else readme_tour()
    seconds: dict[str, list[float]] = {"package": [], "baseline": []}
    for run in range(args.runs):
        for variant in seconds:
            prefix = BASELINE if variant == "baseline" else ""
            with tempfile.TemporaryDirectory() as tmp:
                took, err = after_last_line(prefix + source, Path(tmp))
            warned = sum("Warning" in ln for ln in err.splitlines())
            seconds[variant].append(took)
            print(f"run {run} {variant}: {took:.2f} s after the last line, {warned} warning lines")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(
        f"median: {med['package']:.2f} s with the exit handler, {med['baseline']:.2f} s without "
        f"({med['baseline'] / med['package']:.1f}x); load average {os.getloadavg()[0]:.1f}"
    )
    print(json.dumps({"seconds": seconds, "median": med}))


if __name__ == "__main__":
    main()

"""Soak benchmark: a real JupyterLab and headless Chromium drive the explorer for many actions.

A digits session (the demo models, trained once and cached by ``defuse_widgets.cli``) is
identified and distilled in a notebook; the explorer is shown. Then, in a seeded random order,
the page is driven like a person would (``--actions`` actions, or until ``--minutes`` pass):

- ``select``: click a region button (the panel shows its samples),
- ``label``: apply the proposed label to the open region (or clear it, one time in four),
- ``hover``: move the mouse onto an error point (its thumbnail),
- ``lasso``: drag a lasso around a point (the selection reaches Python),
- ``interpolate``: click a point and move the interpolation slider to its end and back,
- ``fine_tune``: click "Fine-tune" and wait for the round (or the message that no region has a
  class label),
- ``revert``: click "Revert model" and wait,
- ``redistill``: ``s.distill(...)`` in the kernel with another seed (the map, the region list and
  the caches are rebuilt), sent on a kernel client of its own so that no notebook cell grows
  the page.

Every ``--every`` actions it samples the kernel's RSS (``/proc``), the page's JS heap
(CDP ``Performance.getMetrics`` after a forced garbage collection) and the DOM node count. The
growth per hundred actions is the least-squares slope over the samples after the warm-up
(``--warmup`` actions). Errors: console errors and uncaught exceptions in the page, errors the
explorer shows (its ``error`` trait, except the expected "label at least one region" hint), and
exceptions in the kernel. Prints a line per sample and, last, one JSON object.

Run: ``nice -n 19 python benchmarks/soak.py --actions 2000 --minutes 30``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import conftest as lab  # noqa: E402  (the e2e fixtures' plain helpers)

SETUP = r"""
import os, torch
import defuse_widgets as dw
from defuse_widgets.cli import demo_models
torch.set_num_threads(1)
data = dw.load_dataset("digits")
models = demo_models(data, seed=0, device="cpu", progress=False)
s = dw.DefuseSession(classifier=models["classifier"], generator=models["vae"], data=data,
                     device="cpu", seed=0, progress=False)
s.limit_snapshots(in_memory={in_memory})
s.identify(split="test", limit={limit})
s.distill(max_regions={regions})
w = s.explorer(steps={steps}, projection="pca")
shown_errors = []
w.observe(lambda c: shown_errors.append(c["new"]) if c["new"] else None, "error")
w
"""

WEIGHTS = {
    "select": 20,
    "label": 14,
    "hover": 16,
    "lasso": 12,
    "interpolate": 12,
    "fine_tune": 10,
    "revert": 8,
    "redistill": 4,
}
EXPECTED = ("label at least one region",)  # hints the explorer shows on purpose


class Kernel:
    """A kernel client of its own on the notebook's kernel (no cell is added to the page)."""

    def __init__(self, base_url: str):
        from jupyter_client import BlockingKernelClient
        from jupyter_core.paths import jupyter_runtime_dir

        with urllib.request.urlopen(f"{base_url}/api/sessions", timeout=10) as resp:
            sessions = json.load(resp)
        kernel_id = sessions[0]["kernel"]["id"]
        self.client = BlockingKernelClient()
        self.client.load_connection_file(Path(jupyter_runtime_dir()) / f"kernel-{kernel_id}.json")
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 600) -> str:
        """Run ``code``; its stdout. RuntimeError with the traceback if it raised."""
        out: list[str] = []
        failure: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                failure.append(f"{content['ename']}: {content['evalue']}")

        self.client.execute_interactive(
            code, timeout=timeout, output_hook=hook, store_history=False
        )
        if failure:
            raise RuntimeError(failure[0])
        return "".join(out)

    def close(self) -> None:
        self.client.stop_channels()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def page_memory(cdp: Any, page: Any) -> tuple[float, int]:
    """(JS heap used in MB after a forced garbage collection, DOM element count)."""
    cdp.send("HeapProfiler.collectGarbage")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    nodes = int(page.evaluate("() => document.getElementsByTagName('*').length"))
    return metrics["JSHeapUsedSize"] / 2**20, nodes


def slope_per_100(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares growth of ``ys`` per 100 of ``xs`` (None with under 3 points)."""
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def point(page: Any, rng: random.Random) -> tuple[float, float]:
    """Page coordinates of a random error point (the map's own ``screenPosition``)."""
    page.locator('[aria-label="Error map"]').scroll_into_view_if_needed()
    pos = page.evaluate(
        """(u) => { const el = document.querySelector('[aria-label="Error map"]');
                    return el.dfxMap.screenPosition(Math.floor(u * +el.dataset.points)); }""",
        rng.random(),
    )
    return float(pos[0]), float(pos[1])


def act(name: str, page: Any, kernel: Kernel, rng: random.Random) -> None:
    """Do one action and wait until it has taken effect."""
    if name == "select":
        buttons = page.get_by_role("button", name=re.compile(r"^Region \d+"))
        buttons.nth(rng.randrange(buttons.count())).click(timeout=30_000)
        page.locator(".dfx-panel img").first.wait_for(timeout=60_000)
    elif name == "label":
        apply = page.get_by_role("button", name="Apply label")
        if not apply.count():  # no region open yet
            return act("select", page, kernel, rng)
        if rng.random() < 0.25 and page.get_by_role("button", name="Clear label").count():
            page.get_by_role("button", name="Clear label").click(timeout=30_000)
        else:
            apply.click(timeout=30_000)
    elif name == "hover":
        x, y = point(page, rng)
        page.mouse.move(x - 3, y - 3)
        page.mouse.move(x, y)
        page.locator(".dfx-tip img").wait_for(state="visible", timeout=30_000)
    elif name == "lasso":
        x, y = point(page, rng)
        page.mouse.move(x - 20, y - 20)
        page.mouse.down()
        for px, py in ((x + 20, y - 20), (x + 20, y + 20), (x - 20, y + 20), (x - 20, y - 19)):
            page.mouse.move(px, py, steps=4)
        page.mouse.up()
    elif name == "interpolate":
        x, y = point(page, rng)
        page.mouse.move(x - 3, y - 3)
        page.mouse.move(x, y)
        page.locator(".dfx-tip img").wait_for(state="visible", timeout=30_000)
        page.mouse.click(x, y)
        slider = page.get_by_role("region", name="Selected error").get_by_role(
            "slider", name="Interpolation", exact=True
        )
        slider.wait_for(timeout=60_000)
        slider.focus()
        page.keyboard.press("End")
        page.keyboard.press("Home")
    elif name == "fine_tune":
        page.get_by_role("button", name="Fine-tune", exact=True).click(timeout=30_000)
        time.sleep(0.3)
        kernel.run("w.wait()")
    elif name == "revert":
        page.get_by_role("button", name="Revert model").click(timeout=30_000)
        time.sleep(0.3)
        kernel.run("w.wait()")
    elif name == "redistill":
        kernel.run(f"w.wait(); s.distill(max_regions=20, seed={rng.randrange(1000)})")
    page.wait_for_timeout(50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actions", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=int, default=25, help="actions between samples")
    ap.add_argument("--warmup", type=int, default=100, help="actions before growth is measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=200, help="test images searched")
    ap.add_argument("--steps", type=int, default=20, help="steps per fine-tuning round")
    ap.add_argument("--in-memory", type=int, default=4, help="snapshots kept in memory")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="dw-soak-"))
    os.environ["DEFUSE_WIDGETS_PROJECTION_CACHE"] = str(root / "projections")
    setup = SETUP.format(in_memory=args.in_memory, limit=args.limit, regions=20,
                         steps=args.steps)  # fmt: skip
    lab.write_notebook(root, "soak", [setup])
    url, server = lab.start_lab(root)
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    counts = dict.fromkeys(WEIGHTS, 0)
    done, started, kernel, result = 0, time.monotonic(), None, {}
    try:
        with sync_playwright() as p:
            browser = lab.launch_browser(p)
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.on("console", lambda m: errors.append(f"console: {m.text}")
                    if m.type == "error" else None)  # fmt: skip
            page.on("pageerror", lambda e: errors.append(f"page: {e}"))
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            lab.open_and_run(page, url, "soak", timeout=600)
            page.locator('[aria-label="Error map"][data-points]').wait_for(timeout=900_000)
            kernel = Kernel(url)
            pid = int(kernel.run("print(os.getpid())").split()[-1])
            names, weights = list(WEIGHTS), list(WEIGHTS.values())
            deadline = started + 60 * args.minutes
            while done < args.actions and time.monotonic() < deadline:
                name = rng.choices(names, weights)[0]
                try:
                    act(name, page, kernel, rng)
                except Exception as exc:  # a timeout or a kernel error: recorded, go on
                    errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                done += 1
                counts[name] += 1
                if done % args.every == 0:
                    heap, nodes = page_memory(cdp, page)
                    mem = json.loads(kernel.run(
                        "import json; print(json.dumps(s.memory_report().__dict__))"))  # fmt: skip
                    row = {"actions": done, "seconds": round(time.monotonic() - started, 1),
                           "kernel_rss_mb": round(rss_mb(pid), 1), "js_heap_mb": round(heap, 2),
                           "dom_nodes": nodes, "rounds": mem["snapshots"] - 1,
                           "snapshots_in_memory": mem["in_memory"],
                           "snapshots_on_disk": mem["on_disk"]}  # fmt: skip
                    samples.append(row)
                    print(json.dumps(row), flush=True)
            shown = json.loads(kernel.run("import json; print(json.dumps(shown_errors))"))
            errors += [f"explorer: {e}" for e in shown if not any(x in e for x in EXPECTED)]
            browser.close()
    except Exception as exc:
        errors.append(f"soak: {type(exc).__name__}: {exc}")
    finally:
        if kernel is not None:
            kernel.close()
        lab.stop_lab(server)
    after = [r for r in samples if r["actions"] >= args.warmup]
    xs = [float(r["actions"]) for r in after]
    result = {
        "benchmark": "soak",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "actions": done,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "counts": counts,
        "warmup_actions": args.warmup,
        "samples": len(samples),
        "growth_per_100_actions": {
            key: slope_per_100(xs, [float(r[key]) for r in after])
            for key in ("kernel_rss_mb", "js_heap_mb", "dom_nodes")
        },
        "first": samples[0] if samples else None,
        "last": samples[-1] if samples else None,
        "errors": len(errors),
        "error_kinds": dict(Counter(e[:90] for e in errors).most_common(10)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

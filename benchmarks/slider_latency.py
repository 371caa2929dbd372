"""Slider -> painted-frame latency of the interpolator in a real JupyterLab and headless Chromium.

For each decoder (digits 8x8, Fashion-MNIST 28x28) it opens a notebook, trains small models in the
kernel, shows ``s.interpolator(error_index)`` and drags the slider with real mouse events through
``--positions`` positions at ``--rate`` events per second, twice: kernel idle, and while a
fine-tuning round (``s.correct`` on a labeled region) runs in a background thread of the kernel.

Latency is measured in the page: each request carries the input event's timestamp, the kernel
echoes it with the frame, and the page takes ``performance.now()`` right after drawing the frame in
``requestAnimationFrame``. Reported: p50/p95 of that latency over painted frames, p50/p95 per input
event (time until a frame for that input or a later one was painted), inputs, frames painted,
inputs without a frame of their own ("dropped": coalesced or superseded, by design), frames
dropped in the browser, the kernel's peak of unacknowledged frames, and the time from the last
input to its frame. Prints a table and a final JSON line.

Run: ``.venv/bin/python benchmarks/slider_latency.py`` (about 3-4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import conftest as e2e  # noqa: E402  (shared JupyterLab/Chromium helpers)

from defuse_widgets.utils.cache import cache_root  # noqa: E402

TARGETS = {"p50_ms": 30.0, "p95_ms": 60.0, "final_ms": 100.0, "p95_finetune_ms": 150.0}

SETUP = """\
import threading, time, torch, defuse_widgets as dw
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.correction.training import CancelToken
torch.set_num_threads(1)
t0 = time.perf_counter()
data = {load}
clf, vae = dw.load_model("{clf_path}"), dw.load_model("{vae_path}")  # trained by the benchmark
s = DefuseSession(clf, vae, data, device="{device}", seed=0, progress=False)
s.identify(limit={limit}, samples=50)
s.distill(max_regions=8)
top = max(s.regions.regions, key=lambda r: r.size)
s.label(top.id, int(top.transition[0]))
torch.set_num_threads({threads})
w = next((v for v in (s.interpolator(i) for i in range(20)) if v.markers), s.interpolator(0))
print(f"setup {{time.perf_counter() - t0:.1f}} s on {{s.device}}, torch threads {threads}")
w"""

DIGITS = 'dw.load_dataset("digits")'
FASHION = """(lambda f: dw.from_tensors(f.x_train[:{n}], f.y_train[:{n}], f.x_test[:500],
    f.y_test[:500], f.classes, name="fashion-mnist-subset"))(
    dw.load_dataset("fashion-mnist", root="/usr/share/datasets/fashion-mnist"))"""
# epochs of the small models: latency depends on the architecture, not on how well they are trained
EPOCHS = {"digits": (10, 30), "fashion-mnist": (2, 2)}
CACHE = cache_root() / "bench"


def prepare_models(name: str, load_src: str) -> tuple[Path, Path]:
    """Train (once, cached) the small classifier and VAE the notebook loads."""
    clf_e, vae_e = EPOCHS[name]
    paths = CACHE / f"{name}-clf{clf_e}.safetensors", CACHE / f"{name}-vae{vae_e}.safetensors"
    if all(p.exists() for p in paths):
        return paths
    import torch

    import defuse_widgets as dw

    CACHE.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models train several times faster on one thread here
    try:
        data = eval(load_src, {"dw": dw})  # the same dataset expression the notebook runs
        t0 = time.perf_counter()
        dw.save_model(dw.train_classifier(data, epochs=clf_e, device="cpu"), paths[0])
        dw.save_model(dw.train_vae(data, epochs=vae_e, device="cpu"), paths[1])
        print(f"[{name}] trained small models in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        torch.set_num_threads(threads)
    return paths


START_FINETUNE = """\
tok = CancelToken()
fine_tune = lambda: ({ft_threads} and torch.set_num_threads({ft_threads}),  # this thread only
                     s.correct(steps=1_000_000, cancel=tok))
ft = threading.Thread(target=fine_tune, daemon=True)
ft.start(); time.sleep(1.0); print("fine-tuning", ft.is_alive())"""

STOP_FINETUNE = """tok.cancel(); ft.join(); print("stopped", w.stats["peak_in_flight"])"""

ROOT_SEL = ".dw-interp"

# --trace-ws: timestamps at the page's kernel WebSocket (Jupyter's v1 binary protocol), to split
# "up" and "down" into the browser's own share and the server + kernel share.
WS_TRACE = """(() => {
  const log = { out: {}, in: {}, protocol: [] };
  window.__dwWs = log;
  const dec = new TextDecoder();
  function content(buf) {
    const dv = new DataView(buf), n = Number(dv.getBigUint64(0, true));
    const off = (i) => Number(dv.getBigUint64(8 * (i + 1), true));
    if (n < 6) return null;
    const channel = dec.decode(new Uint8Array(buf, off(0), off(1) - off(0)));
    const c = JSON.parse(dec.decode(new Uint8Array(buf, off(4), off(5) - off(4))));
    return { channel, data: c && c.data };
  }
  const Base = window.WebSocket;
  class Traced extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener("open", () => log.protocol.push(this.protocol));
      this.addEventListener("message", (ev) => {
        const t = performance.now();
        if (!(ev.data instanceof ArrayBuffer)) return;
        try {
          const m = content(ev.data);
          const c = m && m.data && m.data.content;
          if (c && c.type === "frame") log.in[c.seq] = t;
        } catch (e) {}
      });
    }
    send(data) {
      try {
        const buf = data instanceof ArrayBuffer ? data : data.buffer;
        const m = buf && content(buf);
        const d = m && m.data;
        const msg = d && d.content && d.content.type === "request" ? d.content : null;
        if (msg && msg.id !== undefined) log.out[msg.id] = performance.now();
      } catch (e) {}
      return super.send(data);
    }
  }
  window.WebSocket = Traced;
})()"""


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _wait_final(page: Any, timeout: float = 30.0) -> None:
    page.wait_for_function(
        """(sel) => { const r = document.querySelector(sel);
          return r && r.dataset.paintedId && r.dataset.paintedId === r.dataset.inputId; }""",
        arg=ROOT_SEL,
        timeout=timeout * 1000,
    )


PAGE_DRAG = """async ([sel, n, rate, start, end]) => {
  const input = document.querySelector(sel).querySelector('input[type=range]');
  const lo = Number(input.min), hi = Number(input.max);
  const t0 = performance.now();
  let late = 0;
  for (let i = 1; i <= n; i++) {
    const due = t0 + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait)); else late += 1;
    input.value = String(lo + (hi - lo) * (start + ((end - start) * i) / n));
    input.dispatchEvent(new Event('input', { bubbles: true }));
  }
  return { seconds: (performance.now() - t0) / 1000, late };
}"""


def _mouse_drag(page: Any, positions: int, rate: float, start: float, end: float) -> tuple:
    slider = page.get_by_role("slider", name="Interpolation", exact=True)
    box = slider.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    left, width = box["x"] + 8, box["width"] - 16
    t0 = time.perf_counter()
    late = 0
    for i in range(1, positions + 1):
        due = t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
        page.mouse.move(left + (start + (end - start) * i / positions) * width, y)
    seconds = time.perf_counter() - t0
    page.mouse.up()
    return seconds, late


def drag(
    page: Any, positions: int, rate: float, start: float, end: float, driver: str = "page"
) -> dict[str, Any]:
    """Drag the Interpolation slider from ``start`` to ``end`` (fractions of the track).

    ``driver="mouse"``: real mouse events from Playwright (each move is a CDP round trip, which
    on a loaded 2-core machine took 30-70 ms, so the 60/s pace is not kept); ``"page"``: ``input``
    events dispatched on the range input by a timer in the page, which keeps the pace.
    """
    slider = page.get_by_role("slider", name="Interpolation", exact=True)
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    left, width = box["x"] + 8, box["width"] - 16
    page.mouse.move(left + start * width, y)
    page.mouse.down()
    _wait_final(page)
    page.evaluate("(sel) => document.querySelector(sel).__dwStats.reset()", ROOT_SEL)
    kernel0 = page.evaluate("(sel) => document.querySelector(sel).__dwStats.kernel", ROOT_SEL)
    if driver == "mouse":
        drag_s, late = _mouse_drag(page, positions, rate, start, end)
    else:
        page.mouse.up()
        res = page.evaluate(PAGE_DRAG, [ROOT_SEL, positions, rate, start, end])
        drag_s, late = res["seconds"], res["late"]
    _wait_final(page)
    time.sleep(0.2)
    st = page.evaluate(
        """(sel) => { const r = document.querySelector(sel); const s = r.__dwStats;
          return {inputs: s.inputs, requests: s.requests, received: s.framesReceived,
                  painted: s.framesPainted, dropped: s.dropped, lat: s.latencies,
                  inputLat: s.inputLatencies, finalMs: s.finalFrameMs, kernel: s.kernel,
                  breakdown: s.breakdown,
                  slider: Number(r.querySelector('input[type=range]').value),
                  shown: JSON.parse(r.dataset.paintedValues)}; }""",
        ROOT_SEL,
    )
    k1 = st["kernel"]
    return {
        "inputs": st["inputs"],
        "requests": st["requests"],
        "painted": st["painted"],
        "dropped": st["inputs"] - st["painted"],
        "browser_dropped": st["dropped"],
        "kernel_superseded": k1["superseded"] - kernel0.get("superseded", 0),
        "kernel_peak_in_flight": k1["peak_in_flight"],
        "p50_ms": _percentile(st["lat"], 0.5),
        "p95_ms": _percentile(st["lat"], 0.95),
        "input_p50_ms": _percentile(st["inputLat"], 0.5),
        "input_p95_ms": _percentile(st["inputLat"], 0.95),
        "final_ms": st["finalMs"],
        "render_ms_p50": k1.get("render_ms_p50"),
        "final_matches_slider": st["shown"] == [st["slider"]],
        "drag_s": round(drag_s, 3),
        "breakdown_p50_ms": {
            k: _percentile([b[k] for b in st["breakdown"]], 0.5)
            for k in ("wait", "up", "queue", "kernel", "down", "paint")
        },
        **_ws_split(page, st["breakdown"]),
        "late_events": late,
    }


def _ws_split(page: Any, breakdown: list[dict[str, float]]) -> dict[str, Any]:
    """With --trace-ws: p50 of page -> socket (``page_out``), socket -> kernel (``net_up``),
    kernel -> socket (``net_down``) and socket -> widget handler (``page_in``), in ms."""
    log = page.evaluate("() => window.__dwWs || null")
    if not log:
        return {}
    origin = page.evaluate("() => performance.timeOrigin")
    rows = []
    for b in breakdown:
        out, got = log["out"].get(str(b["id"])), log["in"].get(str(b["seq"]))
        if out is None or got is None:
            continue
        sent, received, k_received, k_sent = b["at"]
        rows.append(
            {
                "page_out": out - sent,
                "net_up": k_received - (origin + out),
                "net_down": origin + got - k_sent,
                "page_in": received - got,
            }
        )
    keys = ("page_out", "net_up", "net_down", "page_in")
    return {
        "ws_protocol": log["protocol"],
        "ws_frames": len(rows),
        **{
            f"ws_split_p{round(100 * q)}_ms": {
                k: _percentile([r[k] for r in rows], q) for k in keys
            }
            for q in (0.5, 0.9)
        },
        "breakdown_p90_ms": {
            k: _percentile([b[k] for b in breakdown], 0.9)
            for k in ("wait", "up", "queue", "kernel", "down", "paint")
        },
    }


def run_dataset(
    page: Any, url: str, root: Path, name: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    load = DIGITS if name == "digits" else FASHION.format(n=args.fashion_train)
    clf_path, vae_path = prepare_models(name, load)
    src = SETUP.format(
        load=load,
        clf_path=clf_path,
        vae_path=vae_path,
        limit=60 if name == "digits" else 30,
        device=args.device,
        threads=args.threads,
    )
    e2e.write_notebook(root, f"latency_{name}", [src])
    e2e.open_and_run(page, url, f"latency_{name}", timeout=600)
    page.get_by_role("img", name="Decoded image", exact=True).wait_for(timeout=600_000)
    _wait_final(page)
    setup = e2e.cell_output_text(page, 0).splitlines()[0]
    print(f"[{name}] {setup}", flush=True)
    if args.kernel_code:
        e2e.run_new_cell(page, f"{args.kernel_code}\nprint('KERNEL-CODE')", expect="KERNEL-CODE")
    drag(page, 30, args.rate, 0.0, 0.5, args.driver)  # warm-up, not reported
    rows = []
    for phase in ("idle", "fine-tuning"):
        if phase == "fine-tuning":
            if args.no_finetune:
                break
            src = START_FINETUNE.format(ft_threads=args.finetune_threads)
            e2e.run_new_cell(page, src, expect="fine-tuning True", timeout=120)
        for r in range(args.repeats):
            start, end = (0.0, 1.0) if r % 2 == 0 else (1.0, 0.0)
            res = drag(page, args.positions, args.rate, start, end, args.driver)
            rows.append({"dataset": name, "phase": phase, "repeat": r, **res})
            print(f"[{name}] {phase} #{r}: {json.dumps(res)}", flush=True)
        if phase == "fine-tuning":
            e2e.run_new_cell(page, STOP_FINETUNE, expect="stopped", timeout=120)
    return rows


def run_lab(name: str, extension: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start a JupyterLab (with the latency server extension or not) and benchmark one dataset."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="slider-latency-") as tmp:
        root = Path(tmp)
        env_before = os.environ.get("JUPYTER_CONFIG_PATH")
        # the package enables the extension in sys.prefix; a config dir of our own, which
        # takes precedence, turns it on or off for this server
        cfg = root / "config"
        cfg.mkdir()
        exts = {"defuse_widgets.jupyter_latency": extension == "on"}
        (cfg / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": exts}})
        )
        paths = [str(cfg)] + ([env_before] if env_before else [])
        os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join(paths)
        try:
            url, proc = e2e.start_lab(root)
        finally:
            if env_before is None:
                os.environ.pop("JUPYTER_CONFIG_PATH", None)
            else:
                os.environ["JUPYTER_CONFIG_PATH"] = env_before
        try:
            with sync_playwright() as p:
                browser = e2e.launch_browser(p)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                if args.trace_ws:
                    page.add_init_script(WS_TRACE)
                try:
                    return run_dataset(page, url, root, name, args)
                finally:
                    browser.close()
        finally:
            e2e.stop_lab(proc)


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    ap.add_argument("--positions", type=int, default=200)
    ap.add_argument("--rate", type=float, default=60.0, help="input events per second")
    ap.add_argument("--repeats", type=int, default=2, help="drags per phase (alternating ends)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the kernel")
    ap.add_argument("--fashion-train", type=int, default=3000, help="Fashion-MNIST subset size")
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument(
        "--kernel-code",
        default="",
        help="Python run in the kernel before the drags, e.g. 'w.render_threads = 2' (experiments)",
    )
    ap.add_argument(
        "--trace-ws", action="store_true", help="also time messages at the page's WebSocket"
    )
    ap.add_argument(
        "--finetune-threads",
        type=int,
        default=0,
        help="torch threads of the fine-tuning thread (0: torch's default)",
    )
    ap.add_argument(
        "--extension",
        choices=["on", "off", "both"],
        default="both",
        help="serve with the defuse_widgets.jupyter_latency server extension",
    )
    ap.add_argument(
        "--driver",
        choices=["page", "mouse"],
        default="page",
        help="page: input events paced in the page; mouse: Playwright moves",
    )
    args = ap.parse_args()

    rows: list[dict[str, Any]] = []
    modes = ["off", "on"] if args.extension == "both" else [args.extension]
    for extension in modes:
        for name in args.datasets:  # a fresh JupyterLab per run: no restored workspace
            rows += [{"extension": extension, **r} for r in run_lab(name, extension, args)]

    print(
        f"\nload average {os.getloadavg()[0]:.1f} (1 min) at the end; "
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
        f"device {args.device}; {args.positions} positions at {args.rate:g} events/s; "
        f"{args.repeats} drags per phase, driver {args.driver}, fine-tuning threads "
        f"{args.finetune_threads or 'default'} (medians over drags below)"
    )
    cols = [
        "extension",
        "dataset",
        "phase",
        "p50_ms",
        "p95_ms",
        "input_p50_ms",
        "input_p95_ms",
        "final_ms",
        "inputs",
        "painted",
        "dropped",
        "browser_dropped",
        "kernel_peak_in_flight",
        "render_ms_p50",
    ]
    print(" | ".join(cols))
    summary = []
    keys = ("extension", "dataset", "phase")
    groups = sorted(
        {tuple(r[k] for k in keys) for r in rows},
        key=lambda g: (g[0], args.datasets.index(g[1]), g[2] != "idle"),
    )
    for group in groups:
        sel = [r for r in rows if tuple(r[k] for k in keys) == group]
        agg: dict[str, Any] = dict(zip(keys, group))
        for c in cols[len(keys) :]:
            vals = [r[c] for r in sel if r[c] is not None]
            agg[c] = statistics.median(vals) if vals else None
        agg["kernel_peak_in_flight"] = max(r["kernel_peak_in_flight"] for r in sel)
        agg["final_matches_slider"] = all(r["final_matches_slider"] for r in sel)
        summary.append(agg)
        print(" | ".join(_fmt(agg[c]) for c in cols))
    checks = {}
    for agg in summary:
        key = "/".join(f"{k}={agg[k]}" for k in keys)
        if agg["phase"] == "idle":
            checks[key] = (
                (agg["p50_ms"] or 1e9) <= TARGETS["p50_ms"]
                and (agg["p95_ms"] or 1e9) <= TARGETS["p95_ms"]
                and (agg["final_ms"] or 1e9) <= TARGETS["final_ms"]
            )
        else:
            checks[key] = (agg["p95_ms"] or 1e9) < TARGETS["p95_finetune_ms"]
    print("targets:", TARGETS, "met:", checks)
    print(
        json.dumps(
            {
                "benchmark": "slider_latency",
                "targets": TARGETS,
                "met": checks,
                "summary": summary,
                "runs": rows,
            }
        )
    )


if __name__ == "__main__":
    main()

// Live latent interpolation: the browser side of the frame protocol (see widgets/interpolator/widget.py).
//
// Sliders send only their latest values as "request" custom messages (an input id and the input
// event's timestamp), at most `max_requests` unanswered; the kernel answers with "frame" custom
// messages carrying raw uint8 pixels as a binary buffer and the echoed id/timestamp. The newest
// frame received is painted in requestAnimationFrame on a small canvas scaled with
// `image-rendering: pixelated`; older unpainted frames are dropped. Acks name the newest frame
// received: it is painted in the next animation frame unless a newer one supersedes it, so the
// browser never queues more than one frame, and the kernel's frame slot frees up without waiting
// for the paint. Styles come from widgets/interpolator/interpolator.css (the widget's `_css`).
import type { RenderProps } from "@anywidget/types";
import { bytesOf, drawPixels, type Wire } from "./common/codec";
import { freeze, LOST_MESSAGE, watchKernel } from "./common/kernel";
import { Stats } from "./interpolator/stats";

interface SliderSpec {
  label: string;
  min: number;
  max: number;
  step: number;
}

interface Marker {
  slider: number;
  position: number;
  text: string;
}

/** The synced traits of widgets/interpolator/widget.py's Interpolator. */
interface Traits {
  mode: "path" | "directions";
  title: string;
  classes: string[];
  sliders: SliderSpec[];
  panels: { label: string; image: Wire }[];
  markers: Marker[];
  values: number[];
  error: string;
  max_in_flight: number;
  max_requests: number;
}

interface FrameMsg {
  type: "frame";
  seq: number;
  id: number;
  t: number;
  view: string;
  values: number[];
  image: { dtype: string; shape: number[] };
  probs: number[];
  prediction: number;
  stats: Record<string, unknown>;
  kernel_ms: number[];
}

const FRAME_PX = 256;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls: string,
  parent?: HTMLElement,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  parent?.appendChild(node);
  return node;
}

function render({ model, el: host, signal }: RenderProps<Traits>): () => void {
  const view = Math.random().toString(36).slice(2, 10);
  const root = el("div", "dw-interp", host);
  const title = el("div", "dw-title", root);
  const panels = el("div", "dw-panels", root);
  const main = el("div", "dw-main", root);
  const frameFig = el("figure", "", main);
  const canvas = el("canvas", "dw-frame", frameFig);
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "Decoded image");
  el("figcaption", "", frameFig).textContent = "Decoded frame";
  const bars = el("div", "dw-bars", main);
  bars.setAttribute("role", "group");
  bars.setAttribute("aria-label", "Class probabilities");
  const slidersBox = el("div", "dw-sliders", root);
  const status = el("div", "dw-status", root);
  status.setAttribute("aria-live", "polite");
  const errorBox = el("div", "dw-error", root);
  errorBox.setAttribute("role", "alert");

  const stats = new Stats();
  (root as HTMLElement & { __dwStats?: Stats }).__dwStats = stats; // read by tests and the benchmark
  let inputs: HTMLInputElement[] = [];
  let outputs: HTMLOutputElement[] = [];
  let inputId = 0;
  let latest: { id: number; t: number; values: number[] } | null = null;
  let pendingFrame: { msg: FrameMsg; pixels: Uint8Array } | null = null;
  let rafHandle: number | undefined;
  let painted = 0;
  let consumed = 0; // newest frame received (painted, or to be painted in the next animation frame)
  // Acks ride on the next request (every request carries the newest consumed seq; acks are
  // cumulative); a separate "ack" message goes only when no request followed within ACK_DELAY_MS.
  // During a drag this saves one kernel message (and its busy/idle pair) per frame.
  const ACK_DELAY_MS = 20;
  let ackTimer: number | undefined;
  function flushAck(): void {
    ackTimer = undefined;
    if (!lost()) model.send({ type: "ack", seq: consumed });
  }
  let barFills: HTMLElement[] = [];
  let barRows: HTMLElement[] = [];
  let barValues: HTMLElement[] = [];
  let barMeters: HTMLElement[] = [];

  function buildBars(): void {
    bars.replaceChildren();
    barFills = [];
    barRows = [];
    barValues = [];
    barMeters = [];
    for (const name of model.get("classes")) {
      const row = el("div", "dw-bar-row", bars);
      el("span", "dw-bar-label", row).textContent = name;
      const meter = el("div", "dw-bar", row);
      meter.setAttribute("role", "meter");
      meter.setAttribute("aria-label", `Probability of ${name}`);
      meter.setAttribute("aria-valuemin", "0");
      meter.setAttribute("aria-valuemax", "1");
      meter.setAttribute("aria-valuenow", "0");
      barFills.push(el("div", "dw-bar-fill", meter));
      barValues.push(el("span", "dw-bar-value", row));
      barRows.push(row);
      barMeters.push(meter);
    }
  }

  function buildPanels(): void {
    panels.replaceChildren();
    for (const p of model.get("panels")) {
      const fig = el("figure", "", panels);
      const c = el("canvas", "", fig);
      c.setAttribute("role", "img");
      c.setAttribute("aria-label", p.label);
      const [h, w] = p.image.shape;
      const scale = Math.max(1, Math.floor(96 / Math.max(h, w)));
      c.style.width = `${w * scale}px`;
      c.style.height = `${h * scale}px`;
      drawPixels(c, bytesOf(p.image.buffer), p.image.shape);
      el("figcaption", "", fig).textContent = p.label;
    }
  }

  function fmt(v: number): string {
    return model.get("mode") === "path" ? v.toFixed(3) : `${v >= 0 ? "+" : ""}${v.toFixed(2)} sd`;
  }

  function currentValues(): number[] {
    return inputs.map((i) => Number(i.value));
  }

  // requests go as custom messages, at most `max_requests` unanswered (pipelined); the latest
  // value waits here and goes out when a frame comes back.
  const outstanding = new Map<number, number>(); // request id -> time sent

  function send(): void {
    if (!latest || lost()) return;
    const now = performance.now();
    for (const [id, at] of outstanding) if (now - at > 1000) outstanding.delete(id); // lost
    if (outstanding.size >= Number(model.get("max_requests"))) return; // sent on the next frame
    const req = { id: latest.id, t: latest.t, values: latest.values, view, ack: consumed };
    outstanding.set(req.id, now);
    if (ackTimer !== undefined) {
      clearTimeout(ackTimer); // this request carries the ack
      ackTimer = undefined;
    }
    model.send({ type: "request", ...req });
    stats.requests += 1;
    stats.sent(req.id, now);
    latest = null;
  }

  function onInput(ev: Event): void {
    inputId += 1;
    const t = ev.timeStamp || performance.now();
    const values = currentValues();
    outputs.forEach((o, j) => (o.value = fmt(values[j])));
    stats.input(inputId, t);
    root.dataset.inputId = String(inputId);
    latest = { id: inputId, t, values };
    send();
  }

  function buildSliders(): void {
    slidersBox.replaceChildren();
    inputs = [];
    outputs = [];
    const values = model.get("values") ?? [];
    const markers = model.get("markers") ?? [];
    model.get("sliders").forEach((spec, j) => {
      const row = el("div", "dw-slider", slidersBox);
      const label = el("label", "", row);
      label.textContent = spec.label;
      const track = el("div", "dw-track", row);
      const input = el("input", "", track);
      input.type = "range";
      input.min = String(spec.min);
      input.max = String(spec.max);
      input.step = String(spec.step);
      input.value = String(values[j] ?? spec.min);
      input.id = `dw-${view}-s${j}`;
      label.htmlFor = input.id;
      input.setAttribute("aria-label", spec.label);
      input.addEventListener("input", onInput);
      for (const m of markers.filter((mk) => mk.slider === j)) {
        const frac = (m.position - spec.min) / (spec.max - spec.min);
        const mark = el("div", "dw-marker", track);
        // the thumb centre runs from 8px to width - 8px on Chromium's default range input
        mark.style.left = `calc(8px + (100% - 16px) * ${frac.toFixed(4)})`;
        mark.title = `prediction flips: ${m.text}`;
        mark.setAttribute("aria-label", `Prediction flips: ${m.text}`);
        mark.dataset.position = String(m.position);
      }
      const mine = markers.filter((mk) => mk.slider === j);
      if (mine.length) {
        const note = el("div", "dw-flips", slidersBox);
        note.textContent = `${spec.label}: prediction flips ${mine.map((mk) => mk.text).join("; ")}`;
      }
      const out = el("output", "", row);
      out.value = fmt(Number(input.value));
      inputs.push(input);
      outputs.push(out);
    });
  }

  function paint(): void {
    rafHandle = undefined;
    const f = pendingFrame;
    pendingFrame = null;
    if (!f) return;
    const { msg, pixels } = f;
    drawPixels(canvas, pixels, msg.image.shape);
    const classes = model.get("classes");
    msg.probs.forEach((p, k) => {
      if (!barFills[k]) return;
      barFills[k].style.width = `${(100 * p).toFixed(1)}%`;
      barValues[k].textContent = p.toFixed(2);
      barMeters[k].setAttribute("aria-valuenow", p.toFixed(4));
      barRows[k].classList.toggle("dw-top", k === msg.prediction);
    });
    const where = msg.values.map(fmt).join(", ");
    status.textContent =
      `Prediction: ${classes[msg.prediction] ?? msg.prediction} ` +
      `(${(100 * msg.probs[msg.prediction]).toFixed(0)}%) at ${where}`;
    painted = msg.seq;
    const now = performance.now();
    stats.painted(msg, now, msg.view === view);
    root.dataset.paintedSeq = String(msg.seq);
    root.dataset.paintedId = msg.view === view ? String(msg.id) : root.dataset.paintedId ?? "";
    root.dataset.paintedValues = JSON.stringify(msg.values);
    root.dataset.prediction = String(msg.prediction);
    if (ackTimer === undefined) ackTimer = window.setTimeout(flushAck, ACK_DELAY_MS);
  }

  function onCustom(msg: { type?: string } | null, buffers: DataView[]): void {
    if (!msg || msg.type !== "frame") return;
    const frame = msg as FrameMsg;
    stats.received(frame, performance.now());
    if (frame.seq <= consumed) {
      stats.dropped += 1; // older than what is on screen or about to be
    } else {
      if (pendingFrame) stats.dropped += 1; // superseded before it was painted
      pendingFrame = { msg: frame, pixels: bytesOf(buffers[0]) };
      consumed = frame.seq;
      if (rafHandle === undefined) rafHandle = requestAnimationFrame(paint);
    }
    if (frame.view === view) {
      for (const id of outstanding.keys()) if (id <= frame.id) outstanding.delete(id);
      if (latest) send(); // carries the ack of this frame
    }
  }

  function onValues(): void {
    const values = model.get("values");
    inputs.forEach((input, j) => {
      if (values[j] !== undefined) input.value = String(values[j]);
      outputs[j].value = fmt(Number(input.value));
    });
  }

  function onError(): void {
    if (lost()) return;
    errorBox.textContent = model.get("error") || "";
  }

  function rebuild(): void {
    title.textContent = model.get("title");
    const [first] = model.get("panels");
    const shape = first?.image.shape ?? [8, 8, 1];
    const scale = Math.max(1, Math.floor(FRAME_PX / Math.max(shape[0], shape[1])));
    canvas.style.width = `${shape[1] * scale}px`;
    canvas.style.height = `${shape[0] * scale}px`;
    buildPanels();
    buildBars();
    buildSliders();
  }

  const lost = watchKernel(model, signal, () => {
    errorBox.setAttribute("role", "alert");
    errorBox.textContent = LOST_MESSAGE;
    freeze(root, errorBox);
  });
  rebuild();
  onError();
  model.on("msg:custom", onCustom);
  model.on("change:values", onValues);
  model.on("change:error", onError);
  model.on("change:panels", rebuild);
  model.on("change:sliders", rebuild);
  model.on("change:markers", rebuild);
  // ask for the first frame at the sliders' starting position
  inputId += 1;
  latest = { id: inputId, t: performance.now(), values: currentValues() };
  stats.input(inputId, latest.t);
  root.dataset.inputId = String(inputId);
  send();

  return () => {
    if (rafHandle !== undefined) cancelAnimationFrame(rafHandle);
    if (ackTimer !== undefined) flushAck();
    model.off("msg:custom", onCustom);
    model.off("change:values", onValues);
    model.off("change:error", onError);
    model.off("change:panels", rebuild);
    model.off("change:sliders", rebuild);
    model.off("change:markers", rebuild);
  };
}

export default { render };

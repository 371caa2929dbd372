// Live latent interpolation: the browser side of the frame protocol (see widgets/interpolator.py).
//
// Sliders write only their latest values to the `request` trait (throttled, with an input id and
// the input event's timestamp); the kernel answers with "frame" custom messages carrying raw
// uint8 pixels as a binary buffer and the echoed id/timestamp. The newest frame received is
// painted in requestAnimationFrame on a small canvas scaled with `image-rendering: pixelated`;
// older unpainted frames are dropped. Acks name the newest frame received: it is painted in the
// next animation frame unless a newer one supersedes it, so the browser never queues more than
// one frame, and the kernel's frame slot frees up without waiting for the paint.
import { drawPixels, toPixels, type ArrayMsg } from "./interpolator/pixels";
import { Stats } from "./interpolator/stats";

interface Model {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[]): void;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event: string, cb: (...args: any[]) => void): void;
}

interface SliderSpec {
  label: string;
  min: number;
  max: number;
  step: number;
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

const CSS = `
.dw-interp { font: 13px/1.4 system-ui, sans-serif; color: #222; max-width: 760px; }
.dw-interp .dw-title { font-weight: 600; margin-bottom: 6px; }
.dw-interp .dw-panels { display: flex; gap: 12px; margin-bottom: 8px; flex-wrap: wrap; }
.dw-interp figure { margin: 0; text-align: center; font-size: 11px; }
.dw-interp canvas { image-rendering: pixelated; image-rendering: crisp-edges; display: block;
  background: #000; }
.dw-interp .dw-main { display: flex; gap: 16px; align-items: flex-start; }
.dw-interp .dw-bars { flex: 1; min-width: 220px; }
.dw-interp .dw-bar-row { display: grid; grid-template-columns: 90px 1fr 44px; gap: 6px;
  align-items: center; height: 20px; }
.dw-interp .dw-bar-label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
  text-align: right; }
.dw-interp .dw-bar { background: #eee; height: 14px; position: relative; }
.dw-interp .dw-bar-fill { background: #4c78a8; height: 100%; width: 0; }
.dw-interp .dw-bar-row.dw-top .dw-bar-fill { background: #e45756; }
.dw-interp .dw-bar-value { font-variant-numeric: tabular-nums; font-size: 11px; }
.dw-interp .dw-slider { display: grid; grid-template-columns: 90px 1fr 60px; gap: 6px;
  align-items: center; margin-top: 8px; }
.dw-interp .dw-track { position: relative; }
.dw-interp .dw-track input { width: 100%; margin: 0; }
.dw-interp .dw-marker { position: absolute; top: -9px; width: 3px; height: 9px;
  background: #e45756; transform: translateX(-1.5px); border-radius: 1px; }
.dw-interp .dw-flips { color: #555; font-size: 12px; margin-top: 2px; }
.dw-interp .dw-status { margin-top: 6px; min-height: 18px; }
.dw-interp .dw-error { color: #b00020; min-height: 0; }
`;

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

function render({ model, el: host }: { model: Model; el: HTMLElement }): () => void {
  const view = Math.random().toString(36).slice(2, 10);
  const root = el("div", "dw-interp", host);
  el("style", "", root).textContent = CSS;
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
  (root as any).__dwStats = stats;
  let inputs: HTMLInputElement[] = [];
  let outputs: HTMLOutputElement[] = [];
  let inputId = 0;
  let lastSent = -Infinity;
  let trailing: number | undefined;
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
    model.send({ type: "ack", seq: consumed });
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
    for (const name of model.get("classes") as string[]) {
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
    for (const p of model.get("panels") as { label: string; image: ArrayMsg }[]) {
      const fig = el("figure", "", panels);
      const c = el("canvas", "", fig);
      c.setAttribute("role", "img");
      c.setAttribute("aria-label", p.label);
      const [h, w] = p.image.shape;
      const scale = Math.max(1, Math.floor(96 / Math.max(h, w)));
      c.style.width = `${w * scale}px`;
      c.style.height = `${h * scale}px`;
      drawPixels(c, toPixels(p.image.buffer), p.image.shape);
      el("figcaption", "", fig).textContent = p.label;
    }
  }

  function fmt(v: number): string {
    return model.get("mode") === "path" ? v.toFixed(3) : `${v >= 0 ? "+" : ""}${v.toFixed(2)} sd`;
  }

  function currentValues(): number[] {
    return inputs.map((i) => Number(i.value));
  }

  // transport "message": requests go as custom messages, at most `max_requests` unanswered
  // (pipelined); the latest value waits here and goes out when a frame comes back.
  const outstanding = new Map<number, number>(); // request id -> time sent

  function send(): void {
    trailing = undefined;
    if (!latest) return;
    const req = { id: latest.id, t: latest.t, values: latest.values, view, ack: consumed };
    const pipelined = model.get("transport") === "message";
    if (pipelined) {
      const now = performance.now();
      for (const [id, at] of outstanding) if (now - at > 1000) outstanding.delete(id); // lost
      if (outstanding.size >= Number(model.get("max_requests"))) return; // sent on next frame
      outstanding.set(req.id, now);
    }
    if (ackTimer !== undefined) {
      clearTimeout(ackTimer); // this request carries the ack
      ackTimer = undefined;
    }
    if (pipelined) {
      model.send({ type: "request", ...req });
    } else {
      model.set("request", req);
      model.save_changes();
    }
    lastSent = performance.now();
    stats.requests += 1;
    stats.sent(req.id, lastSent);
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
    const wait = Number(model.get("throttle_ms")) - (performance.now() - lastSent);
    if (wait <= 0) send();
    else if (trailing === undefined) trailing = window.setTimeout(send, wait);
  }

  function buildSliders(): void {
    slidersBox.replaceChildren();
    inputs = [];
    outputs = [];
    const values = (model.get("values") as number[]) ?? [];
    const markers = (model.get("markers") as { slider: number; position: number; text: string }[]) ?? [];
    (model.get("sliders") as SliderSpec[]).forEach((spec, j) => {
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
    const classes = model.get("classes") as string[];
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

  function onCustom(msg: any, buffers: DataView[]): void {
    if (!msg || msg.type !== "frame") return;
    const frame = msg as FrameMsg;
    stats.received(frame, performance.now());
    if (frame.seq <= consumed) {
      stats.dropped += 1; // older than what is on screen or about to be
    } else {
      if (pendingFrame) stats.dropped += 1; // superseded before it was painted
      pendingFrame = { msg: frame, pixels: toPixels(buffers[0]) };
      consumed = frame.seq;
      if (rafHandle === undefined) rafHandle = requestAnimationFrame(paint);
    }
    if (frame.view === view) {
      for (const id of outstanding.keys()) if (id <= frame.id) outstanding.delete(id);
      if (latest && trailing === undefined) send(); // carries the ack of this frame
    }
  }

  function onValues(): void {
    const values = model.get("values") as number[];
    inputs.forEach((input, j) => {
      if (values[j] !== undefined) input.value = String(values[j]);
      outputs[j].value = fmt(Number(input.value));
    });
  }

  function onError(): void {
    errorBox.textContent = model.get("error") || "";
  }

  function rebuild(): void {
    title.textContent = model.get("title");
    const [first] = model.get("panels") as { image: ArrayMsg }[];
    const shape = first?.image.shape ?? [8, 8, 1];
    const scale = Math.max(1, Math.floor(FRAME_PX / Math.max(shape[0], shape[1])));
    canvas.style.width = `${shape[1] * scale}px`;
    canvas.style.height = `${shape[0] * scale}px`;
    buildPanels();
    buildBars();
    buildSliders();
  }

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
    if (trailing !== undefined) clearTimeout(trailing);
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

// Latency bookkeeping for the frame protocol, read by the browser test and the benchmark
// (exposed as `element.__dwStats` on the widget's root `.dw-interp`).

export interface FrameInfo {
  seq: number;
  id: number;
  t: number;
  stats?: Record<string, unknown>;
  kernel_ms?: number[];
}

/** Where the time of one painted frame went (ms): see Stats.painted. */
export interface Breakdown {
  id: number; // the request's input id
  seq: number; // the frame's number
  at: number[]; // raw clocks: [request sent, frame received] (page ms), [received, sent] (kernel, epoch ms)
  wait: number; // input event -> request handed to the widget manager (waiting for a request slot)
  up: number; // -> kernel received it (ipywidgets coalescing, server, ZMQ, kernel queue)
  queue: number; // -> render started (waiting for a frame slot)
  kernel: number; // -> frame sent (decode, classify, copy, serialize)
  down: number; // -> browser received it (server, websocket, widget manager)
  paint: number; // -> drawn in requestAnimationFrame
}

export class Stats {
  inputs = 0;
  requests = 0;
  framesReceived = 0;
  framesPainted = 0;
  dropped = 0;
  /** input -> paint latency (ms) of each painted frame, from the timestamp echoed with it */
  latencies: number[] = [];
  /** per input event: ms until a frame for it or a later input was painted */
  inputLatencies: number[] = [];
  lastInputId = 0;
  lastInputT = 0;
  lastPaintId = 0;
  lastPaintT = 0;
  /** ms from the last input to the paint of its frame (null until painted) */
  finalFrameMs: number | null = null;
  kernel: Record<string, unknown> = {};
  breakdown: Breakdown[] = [];
  private waiting: { id: number; t: number }[] = [];
  private sentAt = new Map<number, number>();
  private receivedAt = new Map<number, number>();

  sent(id: number, now: number): void {
    this.sentAt.set(id, now);
  }

  input(id: number, t: number): void {
    this.inputs += 1;
    this.lastInputId = id;
    this.lastInputT = t;
    this.finalFrameMs = null;
    this.waiting.push({ id, t });
  }

  received(frame: FrameInfo, now: number): void {
    this.framesReceived += 1;
    this.receivedAt.set(frame.seq, now);
    if (frame.stats) this.kernel = frame.stats;
  }

  painted(frame: FrameInfo, now: number, own: boolean): void {
    this.framesPainted += 1;
    if (!own) return;
    this.latencies.push(now - frame.t);
    const sent = this.sentAt.get(frame.id);
    const recv = this.receivedAt.get(frame.seq);
    const k = frame.kernel_ms;
    if (sent !== undefined && recv !== undefined && k && k.length === 3) {
      const origin = performance.timeOrigin;
      this.breakdown.push({
        id: frame.id,
        seq: frame.seq,
        at: [sent, recv, k[0], k[2]],
        wait: sent - frame.t,
        up: k[0] - (origin + sent),
        queue: k[1] - k[0],
        kernel: k[2] - k[1],
        down: origin + recv - k[2],
        paint: now - recv,
      });
    }
    for (const id of this.sentAt.keys()) if (id <= frame.id) this.sentAt.delete(id);
    this.receivedAt.delete(frame.seq);
    while (this.waiting.length && this.waiting[0].id <= frame.id) {
      const w = this.waiting.shift()!;
      this.inputLatencies.push(now - w.t);
    }
    this.lastPaintId = frame.id;
    this.lastPaintT = now;
    if (frame.id === this.lastInputId) this.finalFrameMs = now - this.lastInputT;
  }

  reset(): void {
    this.inputs = this.requests = this.framesReceived = this.framesPainted = this.dropped = 0;
    this.latencies = [];
    this.inputLatencies = [];
    this.breakdown = [];
    this.waiting = [];
    this.finalFrameMs = null;
  }
}

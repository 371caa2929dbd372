// Latency bookkeeping for the frame protocol, read by the browser test and the benchmark
// (exposed as `element.__dwStats` on the widget's root `.dw-interp`).

export interface FrameInfo {
  seq: number;
  id: number;
  t: number;
  stats?: Record<string, unknown>;
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
  private waiting: { id: number; t: number }[] = [];

  input(id: number, t: number): void {
    this.inputs += 1;
    this.lastInputId = id;
    this.lastInputT = t;
    this.finalFrameMs = null;
    this.waiting.push({ id, t });
  }

  received(frame: FrameInfo): void {
    this.framesReceived += 1;
    if (frame.stats) this.kernel = frame.stats;
  }

  painted(frame: FrameInfo, now: number, own: boolean): void {
    this.framesPainted += 1;
    if (!own) return;
    this.latencies.push(now - frame.t);
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
    this.waiting = [];
    this.finalFrameMs = null;
  }
}

// Hover thumbnails: all of them in one sprite trait (`thumbs`), or, for large maps, one hovered
// point at a time through the `_thumb_command` command: one request in flight, the newest hover
// waiting behind it (older waiting ones resolve to null), answers cached.
import type { Experimental } from "@anywidget/types";
import { Arr, decode } from "../common/codec";
import { deadline } from "./status";

type Waiting = { index: number; resolve: (a: Arr | null) => void };

export class Thumbs {
  sprite: Arr | null = null;
  private cache = new Map<number, Arr>();
  private waiting: Waiting | null = null;
  private inFlight = false;

  constructor(private invoke: Experimental["invoke"], private signal: AbortSignal) {}

  /** The thumbnails sent as one buffer (null: on demand); clears the cache. */
  setSprite(sprite: Arr | null): void { this.sprite = sprite; this.cache.clear(); }

  /** The sprite (all thumbnails) or error `index`'s thumbnail alone; null when superseded. */
  get(index: number): Promise<Arr | null> {
    if (this.sprite) return Promise.resolve(this.sprite);
    const hit = this.cache.get(index);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve) => {
      this.waiting?.resolve(null);
      this.waiting = { index, resolve };
      void this.pump();
    });
  }

  private async pump(): Promise<void> {
    if (this.inFlight || !this.waiting || this.signal.aborted) return;
    const { index } = this.waiting;
    this.inFlight = true;
    let arr: Arr | null = null;
    try {
      const [res, buffers] = await this.invoke<{ index: number; shape: number[] | null }>(
        "_thumb_command", { index }, { signal: deadline(this.signal) });
      arr = res.shape && buffers[0] ? decode({ buffer: buffers[0], dtype: "uint8", shape: res.shape }) : null;
      if (arr) this.cache.set(index, arr);
    } catch { /* no answer: the hover shows no image */ }
    this.inFlight = false;
    if (this.waiting && this.waiting.index === index) { this.waiting.resolve(arr); this.waiting = null; }
    void this.pump();
  }
}

// Binary array codec, the JS half of defuse_widgets/widgets/_codec.py.
export type Wire = { buffer: DataView | ArrayBuffer | Uint8Array; dtype: string; shape: number[] };
export type Arr = {
  data: Float32Array | Float64Array | Int8Array | Int16Array | Int32Array | Uint8Array | Uint16Array | Uint32Array;
  shape: number[];
};

const CTORS: Record<string, any> = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, int16: Int16Array,
  int32: Int32Array, uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array,
};

export function decode(w: Wire | null | undefined): Arr | null {
  if (!w || !w.buffer) return null;
  const Ctor = CTORS[w.dtype];
  if (!Ctor) throw new Error(`unsupported dtype ${w.dtype}`);
  const b: any = w.buffer;
  const buf: ArrayBuffer = b instanceof ArrayBuffer ? b : b.buffer;
  const off = b instanceof ArrayBuffer ? 0 : b.byteOffset;
  const len = (b instanceof ArrayBuffer ? b.byteLength : b.byteLength) / Ctor.BYTES_PER_ELEMENT;
  // copy when unaligned (a typed-array view needs an aligned offset)
  const data = off % Ctor.BYTES_PER_ELEMENT === 0
    ? new Ctor(buf, off, len)
    : new Ctor(buf.slice(off, off + len * Ctor.BYTES_PER_ELEMENT));
  return { data, shape: w.shape };
}

export function encode(data: Int32Array | Float32Array, shape?: number[]): Wire {
  const dtype = data instanceof Int32Array ? "int32" : "float32";
  return { buffer: new DataView(data.buffer, data.byteOffset, data.byteLength), dtype, shape: shape ?? [data.length] };
}

/** Image i of a uint8 (N, H, W, C) array as a data: URL (PNG), upscaled for crisp pixels. */
export function imageURL(arr: Arr, i: number, minSide = 64): string {
  const [, h, w, c] = arr.shape;
  const cv = document.createElement("canvas");
  cv.width = w; cv.height = h;
  const ctx = cv.getContext("2d")!;
  const img = ctx.createImageData(w, h);
  const base = i * h * w * c;
  for (let p = 0; p < h * w; p++) {
    const q = base + p * c;
    const r = arr.data[q], g = c >= 3 ? arr.data[q + 1] : r, b = c >= 3 ? arr.data[q + 2] : r;
    img.data[p * 4] = r; img.data[p * 4 + 1] = g; img.data[p * 4 + 2] = b; img.data[p * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  const scale = Math.max(1, Math.ceil(minSide / Math.max(h, w)));
  if (scale === 1) return cv.toDataURL();
  const big = document.createElement("canvas");
  big.width = w * scale; big.height = h * scale;
  const bctx = big.getContext("2d")!;
  bctx.imageSmoothingEnabled = false;
  bctx.drawImage(cv, 0, 0, big.width, big.height);
  return big.toDataURL();
}

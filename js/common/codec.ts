// Binary arrays and uint8 images, the JS half of defuse_widgets/widgets/common/codec.py; used by
// both widgets (the explorer's traits and thumbnails, the interpolator's panels and frames).
export type Wire = { buffer: DataView | ArrayBuffer | Uint8Array; dtype: string; shape: number[] };
export type Arr = {
  data: Float32Array | Float64Array | Int8Array | Int16Array | Int32Array | Uint8Array | Uint16Array | Uint32Array;
  shape: number[];
};

type TypedArrayCtor = {
  new (buffer: ArrayBufferLike, byteOffset?: number, length?: number): Arr["data"];
  BYTES_PER_ELEMENT: number;
};

const CTORS: Record<string, TypedArrayCtor> = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, int16: Int16Array,
  int32: Int32Array, uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array,
};

/** The bytes of a buffer as ipywidgets delivers it (DataView), or as an ArrayBuffer/Uint8Array. */
export function bytesOf(b: Wire["buffer"]): Uint8Array {
  if (b instanceof Uint8Array) return b;
  if (b instanceof ArrayBuffer) return new Uint8Array(b);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

export function decode(w: Wire | null | undefined): Arr | null {
  if (!w || !w.buffer) return null;
  const Ctor = CTORS[w.dtype];
  if (!Ctor) throw new Error(`unsupported dtype ${w.dtype}`);
  const bytes = bytesOf(w.buffer);
  const size = Ctor.BYTES_PER_ELEMENT;
  const len = bytes.byteLength / size;
  // copy when unaligned (a typed-array view needs an aligned offset)
  const data = bytes.byteOffset % size === 0
    ? new Ctor(bytes.buffer, bytes.byteOffset, len)
    : new Ctor(bytes.slice().buffer, 0, len);
  return { data, shape: w.shape };
}

export function encode(data: Int32Array | Float32Array, shape?: number[]): Wire {
  const dtype = data instanceof Int32Array ? "int32" : "float32";
  return { buffer: new DataView(data.buffer, data.byteOffset, data.byteLength), dtype, shape: shape ?? [data.length] };
}

/** Draw (H, W, C) uint8 pixels (C = 1 gray, 3 RGB or 4 RGBA) at 1:1 on `canvas`. */
export function drawPixels(canvas: HTMLCanvasElement, pixels: ArrayLike<number>, shape: number[]): void {
  const [h, w, c = 1] = shape;
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const img = ctx.createImageData(w, h);
  const out = img.data;
  for (let i = 0; i < w * h; i++) {
    const o = 4 * i, q = c * i;
    const r = pixels[q];
    out[o] = r;
    out[o + 1] = c >= 3 ? pixels[q + 1] : r;
    out[o + 2] = c >= 3 ? pixels[q + 2] : r;
    out[o + 3] = c === 4 ? pixels[q + 3] : 255;
  }
  ctx.putImageData(img, 0, 0);
}

/** Image i of a uint8 (N, H, W, C) array as a data: URL (PNG), upscaled for crisp pixels. */
export function imageURL(arr: Arr, i: number, minSide = 64): string {
  const [, h, w, c] = arr.shape;
  const cv = document.createElement("canvas");
  const n = h * w * c;
  drawPixels(cv, arr.data.subarray(i * n, (i + 1) * n), [h, w, c]);
  const scale = Math.max(1, Math.ceil(minSide / Math.max(h, w)));
  if (scale === 1) return cv.toDataURL();
  const big = document.createElement("canvas");
  big.width = w * scale; big.height = h * scale;
  const bctx = big.getContext("2d")!;
  bctx.imageSmoothingEnabled = false;
  bctx.drawImage(cv, 0, 0, big.width, big.height);
  return big.toDataURL();
}

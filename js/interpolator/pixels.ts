// Raw uint8 pixels (H, W, C) from a binary buffer onto a canvas of the image's own size.

export interface ArrayMsg {
  buffer: DataView;
  dtype: string;
  shape: number[];
}

export function toPixels(view: DataView | ArrayBuffer | Uint8Array): Uint8Array {
  if (view instanceof Uint8Array) return view;
  if (view instanceof ArrayBuffer) return new Uint8Array(view);
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Draw (H, W, C) uint8 pixels (C = 1 gray, 3 RGB or 4 RGBA) at 1:1 on `canvas`. */
export function drawPixels(canvas: HTMLCanvasElement, pixels: Uint8Array, shape: number[]): void {
  const [h, w, c = 1] = shape;
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const img = ctx.createImageData(w, h);
  const out = img.data;
  const n = w * h;
  for (let i = 0; i < n; i++) {
    const o = 4 * i;
    if (c === 1) {
      const v = pixels[i];
      out[o] = v;
      out[o + 1] = v;
      out[o + 2] = v;
      out[o + 3] = 255;
    } else {
      out[o] = pixels[c * i];
      out[o + 1] = pixels[c * i + 1];
      out[o + 2] = pixels[c * i + 2];
      out[o + 3] = c === 4 ? pixels[c * i + 3] : 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}

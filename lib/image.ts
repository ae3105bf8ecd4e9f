/**
 * Image input: decoding (PNG, JPEG, WebP and the other formats libvips reads, through sharp), EXIF
 * orientation, and the resize to the model's input size. Runs on libuv's thread pool, off the main
 * thread.
 */
import * as fs from 'node:fs/promises';

import sharp from 'sharp';

import { BadInputError, invalidParameter } from './errors';

/** Raw pixels, row-major, interleaved: RGB or RGBA (alpha is ignored). */
export interface RawImage {
  data: Uint8Array | Uint8ClampedArray | Buffer;
  width: number;
  height: number;
  channels: 3 | 4;
}

/** What `segment()` accepts: a file path, an encoded image (Buffer / Uint8Array) or raw pixels. */
export type ImageInput = string | Buffer | Uint8Array | RawImage;

export interface PreparedImage {
  /** Original size after EXIF orientation: the size of the returned label map. */
  width: number;
  height: number;
  /** Resized RGB pixels, (height, width, 3) */
  data: Buffer;
  resizedWidth: number;
  resizedHeight: number;
}

/** Images above this many pixels are refused before decoding (about 16k x 16k). */
export const kMaxInputPixels = 268_402_689;

function isRaw(v: unknown): v is RawImage {
  return !!v && typeof v === 'object' && !ArrayBuffer.isView(v) && 'data' in (v as object);
}

function checkRaw(img: RawImage, name: string): void {
  if (!(img.data instanceof Uint8Array || img.data instanceof Uint8ClampedArray))
    throw invalidParameter(`${name}.data`, 'a Uint8Array of interleaved pixels', img.data);
  if (!Number.isInteger(img.width) || img.width < 1) throw invalidParameter(`${name}.width`, 'a positive integer', img.width);
  if (!Number.isInteger(img.height) || img.height < 1) throw invalidParameter(`${name}.height`, 'a positive integer', img.height);
  if (img.channels !== 3 && img.channels !== 4) throw invalidParameter(`${name}.channels`, '3 or 4', img.channels);
  const expected = img.width * img.height * img.channels;
  if (img.data.length !== expected)
    throw new BadInputError(
      `Expected ${expected} bytes (${img.width} x ${img.height} x ${img.channels}) for ${name}.data but received ${img.data.length}`,
    );
  if (img.width * img.height > kMaxInputPixels)
    throw new BadInputError(`${name} has ${img.width * img.height} pixels, more than the limit of ${kMaxInputPixels}`);
}

// RGBA -> RGB, alpha dropped (not composited: alpha carries no meaning for segmentation).
function dropAlpha(rgba: Uint8Array | Uint8ClampedArray, pixels: number): Buffer {
  const rgb = Buffer.allocUnsafe(pixels * 3);
  for (let i = 0; i < pixels; i++) {
    rgb[3 * i] = rgba[4 * i];
    rgb[3 * i + 1] = rgba[4 * i + 1];
    rgb[3 * i + 2] = rgba[4 * i + 2];
  }
  return rgb;
}

/** Size of the resized image: the long side becomes `size`, the aspect ratio is kept. */
export function resizedSize(width: number, height: number, size: number): [number, number] {
  const scale = size / Math.max(width, height);
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

/** Decodes, orients and resizes one image so that its long side is `size`. */
export async function prepareImage(input: ImageInput, size: number, name = 'image'): Promise<PreparedImage> {
  let pipeline: sharp.Sharp;
  let width: number, height: number;
  if (typeof input === 'string') {
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(input);
    } catch (err) {
      throw new BadInputError(`cannot read image file ${input}: ${(err as Error).message}`, { cause: err });
    }
    return prepareImage(bytes, size, `${name} (${input})`);
  } else if (isRaw(input)) {
    checkRaw(input, name);
    width = input.width;
    height = input.height;
    pipeline = sharp(input.channels === 4 ? dropAlpha(input.data, width * height) : Buffer.from(input.data.buffer, input.data.byteOffset, input.data.byteLength), {
      raw: { width, height, channels: 3 },
    });
  } else if (input instanceof Uint8Array) {
    if (input.length === 0) throw new BadInputError(`${name} is an empty buffer: expected an encoded image (PNG, JPEG, WebP)`);
    const data = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    pipeline = sharp(data, { failOn: 'error', limitInputPixels: kMaxInputPixels }).rotate();
    let meta: sharp.Metadata;
    try {
      meta = await sharp(data, { limitInputPixels: kMaxInputPixels }).metadata();
    } catch (err) {
      throw new BadInputError(
        `${name} could not be decoded: ${(err as Error).message}. Expected an encoded PNG, JPEG, WebP, GIF, TIFF or AVIF image, or raw pixels { data, width, height, channels }`,
        { cause: err },
      );
    }
    if (!meta.width || !meta.height) throw new BadInputError(`${name} has no image dimensions: it is not a supported image`);
    if (meta.hasAlpha) {
      // libvips resizes with premultiplied alpha, which would darken transparent pixels: alpha is
      // not part of the image for segmentation, so decode, drop it, and resize the colour alone.
      let raw: { data: Buffer; info: sharp.OutputInfo };
      try {
        raw = await pipeline.ensureAlpha().raw().toBuffer({ resolveWithObject: true });
      } catch (err) {
        throw new BadInputError(`${name} could not be decoded: ${(err as Error).message}`, { cause: err });
      }
      return prepareImage({ data: raw.data, width: raw.info.width, height: raw.info.height, channels: 4 }, size, name);
    }
    const swap = (meta.orientation ?? 1) >= 5;
    width = swap ? meta.height : meta.width;
    height = swap ? meta.width : meta.height;
    if (meta.width * meta.height > kMaxInputPixels)
      throw new BadInputError(`${name} is ${meta.width} x ${meta.height}, more than the limit of ${kMaxInputPixels} pixels`);
  } else {
    throw invalidParameter(name, 'a file path, an encoded image Buffer or raw pixels { data, width, height, channels }', input);
  }
  const [rw, rh] = resizedSize(width, height, size);
  try {
    const { data, info } = await pipeline
      .removeAlpha()
      .toColourspace('srgb')
      .resize(rw, rh, { fit: 'fill', fastShrinkOnLoad: false }) // the same resampling for every format
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || info.width !== rw || info.height !== rh)
      throw new BadInputError(`${name} decoded to ${info.width} x ${info.height} x ${info.channels}, expected ${rw} x ${rh} x 3`);
    return { width, height, data, resizedWidth: rw, resizedHeight: rh };
  } catch (err) {
    if (err instanceof BadInputError) throw err;
    throw new BadInputError(`${name} could not be decoded: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Image input: decoding (PNG, JPEG, WebP and the other formats libvips reads, through sharp), EXIF
 * orientation, and the resize to the model's input size. Runs on libuv's thread pool, off the main
 * thread.
 */
import * as fs from 'node:fs/promises';

import sharp from 'sharp';

import { loadBinding } from './binding';
import { BadInputError, OutOfMemoryError, invalidParameter } from './errors';

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

const kCaptured = Symbol('step-seg captured image');

/**
 * An image input whose bytes step-seg owns: a path, or a copy of the caller's encoded bytes or raw
 * pixels made when the call was made (`captureImage`), so the caller may reuse its buffers as soon as
 * `segment()` has returned its Promise.
 */
export interface CapturedImage {
  readonly [kCaptured]: true;
  readonly name: string;
  readonly path?: string;
  readonly encoded?: Buffer;
  readonly raw?: { data: Buffer; width: number; height: number; channels: 3 | 4 };
}

function isCaptured(v: unknown): v is CapturedImage {
  return !!v && typeof v === 'object' && (v as CapturedImage)[kCaptured] === true;
}

/**
 * A copy of `view`'s bytes that step-seg owns. Large copies go through the addon (huge pages
 * populated up front, a few threads: page faults on fresh memory cost more than the copy); a copy
 * that cannot be allocated is an OutOfMemoryError.
 */
export function copyBytes(view: Uint8Array | Uint8ClampedArray, name: string): Buffer {
  try {
    const ab = loadBinding().binding.capture(view);
    if (ab) return Buffer.from(ab);
    return Buffer.from(view); // a copy
  } catch (err) {
    if (err instanceof RangeError)
      throw new OutOfMemoryError(`cannot allocate ${Math.round(view.byteLength / 2 ** 20)} MiB to copy ${name}: ${err.message}`, { cause: err });
    throw err;
  }
}

/**
 * Checks an input and takes what `segment()` will read of it, synchronously: raw pixels and encoded
 * bytes are copied (the caller may change or reuse its buffer once the call has returned), a path is
 * kept as a string. Throws BadInputError for inputs that are not images.
 */
export function captureImage(input: ImageInput | CapturedImage, name = 'image'): CapturedImage {
  if (isCaptured(input)) return input;
  if (typeof input === 'string') return { [kCaptured]: true, name: `${name} (${input})`, path: input };
  if (isRaw(input)) {
    checkRaw(input, name);
    const { width, height, channels } = input;
    return { [kCaptured]: true, name, raw: { data: copyBytes(input.data, name), width, height, channels } };
  }
  if (input instanceof Uint8Array) {
    if (input.length === 0) throw new BadInputError(`${name} is an empty buffer: expected an encoded image (PNG, JPEG, WebP)`);
    return { [kCaptured]: true, name, encoded: copyBytes(input, name) };
  }
  throw invalidParameter(name, 'a file path, an encoded image Buffer or raw pixels { data, width, height, channels }', input);
}

// RGBA -> RGB in place, alpha dropped (not composited: alpha carries no meaning for segmentation), on
// a libuv worker thread: `rgba` must be a buffer step-seg owns. Resolves with its first 3 * pixels bytes.
async function dropAlpha(rgba: Buffer, pixels: number): Promise<Buffer> {
  await loadBinding().binding.dropAlpha(rgba, pixels);
  return rgba.subarray(0, pixels * 3);
}

/** Size of the resized image: the long side becomes `size`, the aspect ratio is kept. */
export function resizedSize(width: number, height: number, size: number): [number, number] {
  const scale = size / Math.max(width, height);
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

/**
 * Decodes, orients and resizes one image so that its long side is `size`. A raw or encoded input not
 * captured yet is captured (copied) first, before this returns its Promise.
 */
export function prepareImage(input: ImageInput | CapturedImage, size: number, name = 'image'): Promise<PreparedImage> {
  let captured: CapturedImage;
  try {
    captured = captureImage(input, name);
  } catch (err) {
    return Promise.reject(err);
  }
  return decode(captured, size);
}

async function decode(img: CapturedImage, size: number): Promise<PreparedImage> {
  const name = img.name;
  let pipeline: sharp.Sharp;
  let width: number, height: number;
  if (img.path !== undefined) {
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(img.path);
    } catch (err) {
      throw new BadInputError(`cannot read image file ${img.path}: ${(err as Error).message}`, { cause: err });
    }
    if (bytes.length === 0) throw new BadInputError(`${name} is an empty file: expected an encoded image (PNG, JPEG, WebP)`);
    return decode({ [kCaptured]: true, name, encoded: bytes }, size);
  } else if (img.raw) {
    let { data, channels } = img.raw;
    width = img.raw.width;
    height = img.raw.height;
    if (channels === 4) data = await dropAlpha(data, width * height);
    pipeline = sharp(data, { raw: { width, height, channels: 3 } });
  } else {
    const data = img.encoded!;
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
      const { width: w, height: h } = raw.info;
      return decode({ [kCaptured]: true, name, raw: { data: raw.data, width: w, height: h, channels: 4 } }, size);
    }
    const swap = (meta.orientation ?? 1) >= 5;
    width = swap ? meta.height : meta.width;
    height = swap ? meta.width : meta.height;
    if (meta.width * meta.height > kMaxInputPixels)
      throw new BadInputError(`${name} is ${meta.width} x ${meta.height}, more than the limit of ${kMaxInputPixels} pixels`);
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

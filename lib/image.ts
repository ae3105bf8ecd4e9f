/**
 * Image input: decoding (PNG, JPEG, WebP and the other formats libvips reads, through sharp), EXIF
 * orientation, and the resize to the model's input size. Runs on libuv's thread pool, off the main
 * thread.
 */
import * as fs from 'node:fs/promises';

import sharp from 'sharp';

import { loadBinding } from './binding';
import { BadInputError, OutOfMemoryError, invalidParameter } from './errors';
import { decodeWorkBytes } from './memory';

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
  /** Original size after EXIF orientation. */
  width: number;
  height: number;
  /** Resized RGB pixels, (height, width, 3) */
  data: Buffer;
  resizedWidth: number;
  resizedHeight: number;
  /** Size of the label map: the original size, or `outputSize` on its long side. */
  outWidth: number;
  outHeight: number;
}

export interface PrepareOptions {
  /** Long side to resize to; undefined: the image's own (no resize). */
  size?: number;
  /** Long side of the label map; undefined: the image's own size. */
  outputSize?: number;
  /** Called with what each stage will allocate, before it does (throws to refuse: lib/memory.ts). */
  reserve?: (bytes: number, what: string) => void;
}

/**
 * Above this many pixels (sharp's default limit, about 16k x 16k) an encoded image is decoded with
 * libvips' fastest shrink-on-load (JPEG DCT scaling by up to 8, WebP scale-on-load) before the
 * resize; at or below it the resampling is the one every earlier version used. No pixel limit of
 * step-seg's own applies: libvips' limits and the memory budget (lib/memory.ts) do.
 */
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
export function captureImage(
  input: ImageInput | CapturedImage,
  name = 'image',
  reserve?: (bytes: number, what: string) => void,
): CapturedImage {
  if (isCaptured(input)) return input;
  if (typeof input === 'string') return { [kCaptured]: true, name: `${name} (${input})`, path: input };
  if (isRaw(input)) {
    checkRaw(input, name);
    const { width, height, channels } = input;
    reserve?.(input.data.byteLength, 'the copy of the pixels');
    return { [kCaptured]: true, name, raw: { data: copyBytes(input.data, name), width, height, channels } };
  }
  if (input instanceof Uint8Array) {
    if (input.length === 0) throw new BadInputError(`${name} is an empty buffer: expected an encoded image (PNG, JPEG, WebP)`);
    reserve?.(input.byteLength, 'the copy of the encoded image');
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
 * Decodes, orients and resizes one image so that its long side is `size` (a number, or the options).
 * A raw or encoded input not captured yet is captured (copied) first, before this returns its Promise.
 */
export function prepareImage(input: ImageInput | CapturedImage, size: number | PrepareOptions, name = 'image'): Promise<PreparedImage> {
  const opts: PrepareOptions = typeof size === 'number' ? { size } : size;
  let captured: CapturedImage;
  try {
    captured = captureImage(input, name, opts.reserve);
  } catch (err) {
    return Promise.reject(err);
  }
  return decode(captured, opts);
}

// A libvips failure: out of memory is an OutOfMemoryError, anything else a BadInputError.
function decodeError(name: string, err: unknown, hint = ''): Error {
  if (err instanceof BadInputError || err instanceof OutOfMemoryError) return err;
  const message = (err as Error)?.message ?? String(err);
  if (/out of memory|memory allocation|cannot allocate|bad_alloc/i.test(message))
    return new OutOfMemoryError(`${name}: out of memory while decoding: ${message}`, { cause: err });
  return new BadInputError(`${name} could not be decoded: ${message}${hint}`, { cause: err });
}

async function decode(img: CapturedImage, opts: PrepareOptions): Promise<PreparedImage> {
  const name = img.name;
  const reserve = opts.reserve ?? (() => undefined);
  let pipeline: sharp.Sharp;
  let width: number, height: number;
  let fast = false; // fastest shrink-on-load (encoded images above kMaxInputPixels)
  if (img.path !== undefined) {
    let bytes: Buffer;
    try {
      const { size } = await fs.stat(img.path);
      reserve(size, 'the encoded file');
      bytes = await fs.readFile(img.path);
    } catch (err) {
      if (err instanceof OutOfMemoryError) throw err;
      throw new BadInputError(`cannot read image file ${img.path}: ${(err as Error).message}`, { cause: err });
    }
    if (bytes.length === 0) throw new BadInputError(`${name} is an empty file: expected an encoded image (PNG, JPEG, WebP)`);
    return decode({ [kCaptured]: true, name, encoded: bytes }, opts);
  } else if (img.raw) {
    let { data, channels } = img.raw;
    width = img.raw.width;
    height = img.raw.height;
    if (channels === 4) data = await dropAlpha(data, width * height); // in place: nothing more to hold
    reserve(decodeWorkBytes(width), 'resizing');
    pipeline = sharp(data, { raw: { width, height, channels: 3 }, limitInputPixels: false });
  } else {
    const data = img.encoded!;
    let meta: sharp.Metadata;
    try {
      meta = await sharp(data, { limitInputPixels: false }).metadata();
    } catch (err) {
      throw decodeError(name, err, '. Expected an encoded PNG, JPEG, WebP, GIF, TIFF or AVIF image, or raw pixels { data, width, height, channels }');
    }
    if (!meta.width || !meta.height) throw new BadInputError(`${name} has no image dimensions: it is not a supported image`);
    const large = meta.width * meta.height > kMaxInputPixels;
    pipeline = sharp(data, { failOn: 'error', limitInputPixels: false }).rotate();
    if (meta.hasAlpha) {
      // libvips resizes with premultiplied alpha, which would darken transparent pixels: alpha is
      // not part of the image for segmentation, so decode (the whole image: there is no way to drop
      // alpha before libvips' resize), drop it in place, and resize the colour alone.
      reserve(meta.width * meta.height * 4 + decodeWorkBytes(meta.width), 'the decoded RGBA image');
      let raw: { data: Buffer; info: sharp.OutputInfo };
      try {
        raw = await pipeline.ensureAlpha().raw().toBuffer({ resolveWithObject: true });
      } catch (err) {
        throw decodeError(name, err);
      }
      const { width: w, height: h } = raw.info;
      return decode({ [kCaptured]: true, name, raw: { data: raw.data, width: w, height: h, channels: 4 } }, { ...opts, reserve });
    }
    const swap = (meta.orientation ?? 1) >= 5;
    width = swap ? meta.height : meta.width;
    height = swap ? meta.width : meta.height;
    // libvips streams the decode through the resize: a band of rows at a time
    reserve(decodeWorkBytes(meta.width), 'decoding');
    fast = large;
  }
  const [rw, rh] = opts.size === undefined ? [width, height] : resizedSize(width, height, opts.size);
  const [ow, oh] = opts.outputSize === undefined ? [width, height] : resizedSize(width, height, opts.outputSize);
  reserve(rw * rh * 3, 'the resized image');
  try {
    let p = pipeline.removeAlpha().toColourspace('srgb');
    // the same resampling for every format (shrink-on-load only where sharp leaves a factor of 2 to
    // the resize), but for images above kMaxInputPixels: the fastest shrink-on-load there is
    if (rw !== width || rh !== height) p = p.resize(rw, rh, { fit: 'fill', fastShrinkOnLoad: fast });
    const { data, info } = await p.raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || info.width !== rw || info.height !== rh)
      throw new BadInputError(`${name} decoded to ${info.width} x ${info.height} x ${info.channels}, expected ${rw} x ${rh} x 3`);
    return { width, height, data, resizedWidth: rw, resizedHeight: rh, outWidth: ow, outHeight: oh };
  } catch (err) {
    throw decodeError(name, err);
  }
}

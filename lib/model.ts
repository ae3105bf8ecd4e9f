/**
 * Models: loading (directory, file or Buffer), device choice, and the inference calls. Native work
 * runs on libuv's thread pool and resolves Promises; calls on one model run one at a time, in order.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';

import { loadBinding, packageRoot, type CudaProbe, type NativeModel, type NativeSegmentPlan, type NativeSegmentResult } from './binding';
import { parseConfig, toNativeConfig, type ModelConfig } from './config';
import { BadInputError, BadModelError, DeviceUnavailableError, DisposedError, OutOfMemoryError, coded, fromNative, invalidParameter, readingArguments } from './errors';
import { captureImage, prepareImage, type CapturedImage, type ImageInput } from './image';
import {
  checkForwardOptions,
  checkLoadOptions,
  checkSegmentOptions,
  type ForwardOptions,
  type LoadOptions,
  type Precision,
  type SegmentOptions,
} from './options';
import { parseJsonStrict } from './json';
import { readHeaderFromBuffer, readHeaderFromFile, type SafetensorsHeader } from './safetensors';
import type { TokenMap } from './pictures';
import { compareSelfCheck, selfCheckImage, selfCheckModel } from './selfcheck';
import { kLimits } from './limits';
import { Ledger } from './memory';
import { numel, type Tensor } from './tensor';

/** Where the bundled default model lives. */
export const defaultModelPath = path.join(packageRoot, 'weights', 'default');

/** A group of encoder blocks between early exits (`'blocks 0-3'`), or all of them (`'encoder'`). */
type BlockGroup = 'encoder' | `blocks ${number}-${number}`;

/**
 * The stages `stats.ms` times. On the CPU: `copy` (the caller's bytes, on the main thread), `decode`
 * (the image, on libuv's pool), `normalize`, `score`
 * and `select` (merging), `trunk` (the learned policy's CNN), `embed` (patch or superpatch embedding),
 * the block groups, `halt` (pruning: the exit heads, halting and compaction, summed over the exits and
 * left out of the block groups), `head` (the segmentation head), `unshare` (each token's logits back
 * onto the patch cells it covers), `upsample` (bilinear upsampling and argmax to the output size).
 * These are disjoint: with `copy` and `decode` they add up to about `total`. On the GPU the block
 * groups and the head are timed with CUDA events and end in `(gpu)` (`'encoder (gpu)'`,
 * `'head (gpu)'`, or `'graph (gpu)'` for a replayed CUDA graph; no `halt` or `unshare`), and
 * `host + transfers` is the rest of the native call. `total` is the whole call, decoding included.
 */
export type StageName =
  | 'copy'
  | 'decode'
  | 'normalize'
  | 'score'
  | 'select'
  | 'trunk'
  | 'embed'
  | BlockGroup
  | 'halt'
  | 'head'
  | 'unshare'
  | 'upsample'
  | `${BlockGroup | 'head' | 'head + upsample' | 'graph'} (gpu)`
  | 'host + transfers'
  | 'total';

/** Milliseconds per stage (see {@link StageName}); only the stages that ran are present. */
export type StageTimes = { [K in StageName]?: number } & { decode: number; total: number };

export interface SegmentStats {
  /** Device that ran the model, and why it is the CPU when a GPU was asked for or could be used. */
  device: 'cpu' | 'cuda';
  deviceReason?: string;
  /** The matrix products' arithmetic (`model.precision`). */
  precision: Precision;
  tokens: {
    /** Tokens a plain ViT uses for this image (patches + prefix tokens). */
    dense: number;
    /** Tokens entering the encoder, after merging. */
    input: number;
    /** Tokens of each superpatch side (in patches) after merging, e.g. `{ 8: 3, 4: 10, 2: 40, 1: 500 }`. */
    perLevel: Record<number, number>;
    /** Active tokens entering each block, for the whole batch. */
    perBlock: number[];
    /** Tokens halted at each exit taken (`prune`), for the whole batch. */
    halted: number[];
  };
  /** GFLOPs of the work actually done for the whole batch (GEMMs and attention, after merging and pruning). */
  gflops: number;
  /** GFLOPs the dense model (no merging, no pruning) would spend on the same batch. */
  gflopsDense: number;
  /** Of `gflops`, what the learned merge policy (trunk and heads) spent; 0 for the similarity scorer. */
  gflopsPolicy: number;
  /** Milliseconds per stage for the whole call, in the order they ran; `decode` and `total` always. */
  ms: StageTimes;
  /** Images in the call these figures come from. */
  batchSize: number;
  /** With `tile`: the tiles this image ran as (token counts, GFLOPs and times are summed over them). */
  tiles?: number;
}

export interface SegmentResult {
  width: number;
  height: number;
  /** Class index per pixel, row-major, `width * height`; Uint16Array when there are over 256 classes. */
  labels: Uint8Array | Uint16Array;
  /** Class names, indexed by label. */
  classes: string[];
  stats: SegmentStats;
  /** With `probabilities: true`: softmax probabilities, dims `[K, height, width]`. */
  probabilities?: Tensor;
  /**
   * Where the tokens went: for every patch of the `gh x gw` grid (row-major), the index of the token
   * that carried it (tokens numbered in row-major order of their top-left patch) and that token's
   * side in patches (1 for an unmerged patch), and the number of blocks the token went through before
   * it exited (the model's depth for tokens that reached the final head); with the model's
   * `patchSize` and `depth` and the long side it ran at (`inputSize`), so that
   * `tokenPicture(image, result)` needs no options.
   */
  tokenMap: Required<TokenMap>;
  /** With `logits: true`: patch-grid logits, dims `[K, gh, gw]` (the grid covers the resized, padded image). */
  logits?: Tensor;
}

export interface FeaturesResult extends Tensor {
  /** ViTs: dims `[N, T, C]`, prefix tokens first, then patches row-major, as timm's forward_features. */
  dims: number[];
  /** With `intermediates: true`: `patch_embed` [N, patches, C], `tokens_0`, `block_N`, `final_norm` [N, T, C]. */
  intermediates?: Record<string, Tensor>;
  /** EfficientNet trunks: the five stage maps, `[N, C, h, w]` at strides 2, 4, 8, 16, 32 (data/dims: the last). */
  stages?: Tensor[];
  /** `ms`: the stages that ran (no `decode`: the input is a tensor). */
  stats: { gflops: number; ms: { [K in StageName]?: number } };
}

let probe: Promise<CudaStatus> | undefined;
let warnedFallback = false;

/** The CUDA probe's findings, plus the GPU self-check's verdict where the probe found a usable GPU. */
export interface CudaStatus extends CudaProbe {
  /** The built-in check (lib/selfcheck.ts) that `device: 'auto'` needs before it takes the GPU. */
  selfCheck: { passed: boolean; reason: string };
}

/** What the CUDA probe found, and whether the GPU passed the self-check; both run on the first call only. */
export function cudaStatus(): Promise<CudaStatus> {
  probe ??= (async () => {
    const p = await loadBinding().binding.probeCuda();
    if (!p.compiled || !p.usable) return { ...p, selfCheck: { passed: false, reason: p.reason } };
    const failed = await gpuSelfCheck();
    return { ...p, selfCheck: { passed: !failed, reason: failed ?? '' } };
  })();
  return probe;
}

/**
 * The tiny model of lib/selfcheck.ts segmented on the CPU and on the GPU: undefined when the GPU's
 * logits agree, else why not. Runs once per process (cudaStatus caches it).
 */
async function gpuSelfCheck(): Promise<string | undefined> {
  const models: Model[] = [];
  try {
    const src = await readSource(selfCheckModel());
    for (const device of ['cpu', 'cuda'] as const) {
      const { native } = await createNative(src, { device }, device);
      models.push(new Model(native, src.config, device));
    }
    const image = selfCheckImage();
    const [cpu, gpu] = await Promise.all(models.map((m) => m.segment(image, { logits: true })));
    const why = compareSelfCheck(cpu.logits!.data as Float32Array, gpu.logits!.data as Float32Array);
    return why && `the GPU self-check failed: ${why}`;
  } catch (err) {
    return `the GPU self-check failed: ${(err as Error).message}`;
  } finally {
    for (const m of models) m.dispose();
  }
}

async function chooseDevice(requested: 'auto' | 'cpu' | 'cuda'): Promise<{ device: 'cpu' | 'cuda'; reason?: string }> {
  if (requested === 'cpu') return { device: 'cpu' };
  let reason: string;
  if (process.env.STEP_SEG_FORCE_CPU && process.env.STEP_SEG_FORCE_CPU !== '0') {
    reason = 'STEP_SEG_FORCE_CPU is set';
  } else {
    const p = await cudaStatus();
    // 'cuda' asks for the GPU whatever the self-check says; 'auto' takes it only once the check passed.
    if (p.compiled && p.usable && (requested === 'cuda' || p.selfCheck.passed)) return { device: 'cuda' };
    reason = p.usable ? p.selfCheck.reason : p.reason;
  }
  if (requested === 'cuda') throw new DeviceUnavailableError(`device 'cuda' is not available: ${reason}`);
  warnFallback(reason);
  return { device: 'cpu', reason };
}

/** One warning per process when 'auto' falls back to the CPU for a reason a user can act on. */
function warnFallback(reason: string): void {
  if (warnedFallback || /no CUDA backend|no NVIDIA driver|no GPU|reports no GPU|STEP_SEG_FORCE_CPU/.test(reason)) return;
  warnedFallback = true;
  process.emitWarning(`step-seg is using the CPU: ${reason}`, { code: 'STEP_SEG_CPU_FALLBACK' });
}

/** Creates the native model on `device`; 'auto' falls back to the CPU when the GPU copy cannot be made. */
async function createNative(
  src: ModelSource,
  choice: { device: 'cpu' | 'cuda'; reason?: string },
  requested: 'auto' | 'cpu' | 'cuda',
  precision: Precision = 'fp32',
): Promise<{ native: NativeModel; device: 'cpu' | 'cuda'; reason?: string }> {
  const { binding } = loadBinding();
  const create = (device: 'cpu' | 'cuda') =>
    binding.createModel(toNativeConfig(src.config), src.header.tensors, src.weights, src.header.dataOffset, device, src.header.prefix, src.header.fileSize, precision);
  try {
    return { native: await create(choice.device), ...choice };
  } catch (err) {
    const e = fromNative(err);
    if (e instanceof BadModelError) throw new BadModelError(`${src.where}: ${e.message}`, { cause: err });
    // The GPU was usable but this model does not fit or cannot run there: 'auto' takes the CPU.
    if (choice.device === 'cuda' && requested === 'auto' && (e instanceof OutOfMemoryError || e instanceof DeviceUnavailableError)) {
      const reason = `the model could not be placed on the GPU: ${e.message}`;
      warnFallback(reason);
      return { native: await create('cpu'), device: 'cpu', reason };
    }
    throw e;
  }
}

interface ModelSource {
  header: SafetensorsHeader;
  config: ModelConfig;
  weights: string | Buffer;
  where: string;
}

async function readSource(source: string | Buffer | Uint8Array): Promise<ModelSource> {
  if (typeof source !== 'string') {
    const buf = Buffer.isBuffer(source) ? source : Buffer.from(source.buffer, source.byteOffset, source.byteLength);
    const header = readHeaderFromBuffer(buf);
    return { header, weights: buf, where: 'weights buffer', config: configFromMetadata(header, 'weights buffer') };
  }
  let stat;
  try {
    stat = await fs.stat(source);
  } catch (err) {
    throw new BadModelError(`model not found at ${source}: expected a directory with config.json and model.safetensors, or a .safetensors file`, { cause: err });
  }
  if (stat.isDirectory()) {
    const configPath = path.join(source, 'config.json');
    const weightsPath = path.join(source, 'model.safetensors');
    let text: string;
    try {
      text = await fs.readFile(configPath, 'utf8');
    } catch (err) {
      throw new BadModelError(`cannot read ${configPath}: a model directory holds config.json and model.safetensors`, { cause: err });
    }
    const raw = parseJsonStrict(text, configPath);
    const header = await readHeaderFromFile(weightsPath);
    return { header, weights: weightsPath, where: source, config: parseConfig(raw, configPath) };
  }
  const header = await readHeaderFromFile(source);
  return { header, weights: source, where: source, config: configFromMetadata(header, source) };
}

function configFromMetadata(header: SafetensorsHeader, where: string): ModelConfig {
  const text = header.metadata.config;
  if (text === undefined)
    throw new BadModelError(`${where}: a single-file model needs its config as JSON in the safetensors __metadata__ under "config"`);
  const raw = parseJsonStrict(text, `${where}: __metadata__.config`);
  return parseConfig(raw, `${where} (__metadata__.config)`);
}

/**
 * Loads a segmentation model.
 * @param source A model directory (`config.json` + `model.safetensors`), a `.safetensors` file with
 *   its config in `__metadata__.config`, or such a file's bytes. Default: the bundled model.
 * @param options `device`: `'auto'` (default; the `STEP_SEG_DEVICE` environment variable overrides
 *   the default), `'cpu'` or `'cuda'`.
 * @throws {BadModelError} a missing, truncated or corrupt file, a missing or misshapen tensor, an
 *   unknown dtype, or a config that contradicts the weights: the message names the tensor or field.
 * @throws {DeviceUnavailableError} `device: 'cuda'` where the GPU cannot be used, with the reason.
 * @example
 * const model = await loadModel();            // the bundled model
 * const { labels, width, height } = await model.segment('street.jpg');
 * model.dispose();
 */
export function loadModel(source?: string | Buffer | Uint8Array, options?: LoadOptions): Promise<Model> {
  return coded(() => load(source, options));
}

async function load(source?: string | Buffer | Uint8Array, options?: LoadOptions): Promise<Model> {
  const opts = readingArguments('options', () => checkLoadOptions(options));
  if (source !== undefined && typeof source !== 'string' && !(source instanceof Uint8Array))
    throw invalidParameter('source', 'a model directory, a .safetensors path or a Buffer', source);
  const src = await readSource(source ?? defaultModelPath);
  const choice = await chooseDevice(opts.device);
  const { native, device, reason } = await createNative(src, choice, opts.device, opts.precision);
  return new Model(native, src.config, device, reason, opts.precision);
}

/** @internal The native model behind a Model (tests and diagnostics; not exported from the package). */
export const nativeOf = new WeakMap<object, NativeModel>();

/** A loaded model. Calls run one at a time, in call order; `dispose()` frees its memory. */
export class Model {
  /** The parsed config (timm fields in camelCase, plus the segmentation fields). */
  readonly config: ModelConfig;
  /** Device that runs this model. */
  readonly device: 'cpu' | 'cuda';
  /** Why the device is the CPU when `'auto'` or `'cuda'` was asked for. */
  readonly deviceReason?: string;
  /**
   * The arithmetic of the matrix products that run: `'bf16'` on the GPU, and on the CPU where bf16
   * was asked for and the CPU has AVX512_BF16; else `'fp32'`.
   */
  readonly precision: Precision;
  /** Why the precision is fp32 when bf16 was asked for. */
  readonly precisionReason?: string;
  #native: NativeModel;
  #disposed = false;
  #tail: Promise<unknown> = Promise.resolve();

  /** @internal use {@link loadModel} */
  constructor(native: NativeModel, config: ModelConfig, device: 'cpu' | 'cuda', deviceReason?: string, requested: Precision = 'fp32') {
    this.#native = native;
    nativeOf.set(this, native);
    this.config = config;
    this.device = device;
    this.deviceReason = deviceReason;
    this.precision = device === 'cuda' ? 'bf16' : native.precision;
    if (requested === 'bf16' && this.precision !== 'bf16')
      this.precisionReason = "no bfloat16 kernel runs here (runtimeInfo().bf16Kernel is 'none': the CPU lacks AVX512_BF16, or STEP_SEG_BF16_KERNEL=none): float32 instead";
  }

  /** Class names, indexed by label. */
  get classes(): string[] {
    return this.config.classNames;
  }

  /** True after `dispose()`. */
  get disposed(): boolean {
    return this.#disposed;
  }

  #live(): NativeModel {
    if (this.#disposed) throw new DisposedError();
    return this.#native;
  }

  // Runs native work after every earlier call on this model has settled.
  #enqueue<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(work);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /**
   * The backbone's final-norm tokens, as timm's `forward_features` returns them.
   * @param pixels normalised float32 `{ data, dims: [N, 3, H, W] }`, H and W multiples of the patch size.
   * @param options `intermediates` (default false): also return every intermediate.
   * @returns `{ data, dims: [N, T, C] }`, prefix tokens first, then patches row-major.
   * @throws {BadInputError} wrong dims, a data length that does not match, or NaN / infinite values.
   * @throws {DisposedError} after `dispose()`.
   */
  forwardFeatures(pixels: Tensor, options?: ForwardOptions): Promise<FeaturesResult> {
    return coded(() => this.#forwardFeatures(pixels, options));
  }

  async #forwardFeatures(pixels: Tensor, options?: ForwardOptions): Promise<FeaturesResult> {
    const native = this.#live();
    const opts = readingArguments('options', () => checkForwardOptions(options));
    if (!pixels || typeof pixels !== 'object') throw invalidParameter('pixels', 'a tensor { data: Float32Array, dims: [N, 3, H, W] }', pixels);
    const { data, dims: given } = readingArguments('pixels', () => ({ data: pixels.data, dims: pixels.dims }));
    const dims = readingArguments('pixels.dims', () => (Array.isArray(given) ? [...given] : given));
    const P = this.config.patchSize;
    if (!(data instanceof Float32Array)) throw invalidParameter('pixels.data', 'a Float32Array', data);
    if (
      !Array.isArray(dims) ||
      dims.length !== 4 ||
      !dims.every((d) => Number.isInteger(d) && d > 0) ||
      dims[1] !== 3 ||
      dims[0] > kLimits.batch ||
      dims[2] > kLimits.featuresSide ||
      dims[3] > kLimits.featuresSide
    )
      throw invalidParameter('pixels.dims', `[N, 3, H, W] with positive integers, N at most ${kLimits.batch}, H and W at most ${kLimits.featuresSide}`, dims);
    if (this.config.kind === 'vit' && (dims[2] % P || dims[3] % P))
      throw invalidParameter('pixels.dims', `H and W multiples of the patch size ${P}`, dims);
    if (data.length !== numel(dims))
      throw new BadInputError(`Expected ${numel(dims)} values for pixels.data (dims [${dims.join(', ')}]) but received ${data.length}`);
    const N = dims[0], C = this.config.embedDim;
    const plan = native.planFeatures(dims, opts.intermediates); // tokens and bytes: native/core/layout.h
    if (plan.tokens > kLimits.tokens)
      throw new BadInputError(`this input needs ${plan.tokens} tokens, more than the engine's limit of ${kLimits.tokens}: use a smaller input`);
    const ledger = new Ledger();
    ledger.reserve(4 * data.length, 'the copy of the pixels');
    let owned: Float32Array;
    try {
      // the call's own copy, taken now (the caller may reuse its array once this returns), checked
      owned = data.slice();
      for (let i = 0; i < owned.length; i++)
        if (!Number.isFinite(owned[i])) throw new BadInputError(`pixels.data[${i}] is ${owned[i]}: expected finite numbers (no NaN or infinity)`);
      ledger.reserve(plan.bytes.forward, 'the forward');
      // the tokens returned, and with intermediates a copy after every block (none for a bare trunk)
      ledger.reserve(plan.bytes.results, 'the results');
    } catch (err) {
      ledger.release();
      throw err;
    }
    return this.#enqueue(async () => {
      let out;
      try {
        out = await this.#native.forwardFeatures(owned, dims, opts.intermediates);
      } catch (err) {
        throw fromNative(err);
      }
      const stats = { gflops: out.stats.gflops, ms: out.stats.ms };
      if (out.stages) {
        const stages: Tensor[] = out.stages.map((st) => ({ type: 'float32', data: st.data, dims: st.dims }));
        const last = stages[stages.length - 1];
        return { type: 'float32' as const, data: last.data as Float32Array, dims: last.dims as number[], stages, stats };
      }
      const result: FeaturesResult = { type: 'float32', data: out.tokens, dims: [N, out.tokens.length / N / C, C], stats };
      if (opts.intermediates) {
        result.intermediates = {};
        for (const [name, t] of Object.entries(out.captured))
          result.intermediates[name] = { type: 'float32', data: t, dims: [N, t.length / N / C, C] };
      }
      return result;
    }).finally(() => ledger.release());
  }

  /**
   * Segments one image.
   * @param image a file path, an encoded image (PNG, JPEG, WebP, ...) in a Buffer, or raw pixels
   *   `{ data: Uint8Array, width, height, channels: 3 | 4 }`.
   * @param options `size` (long side for inference, default the model's `input_size`, 16..8192),
   *   `probabilities` (default false), `logits` (default false), `merge` (superpatch merging: false
   *   or settings over the model's; default the model's, the similarity scorer for most models),
   *   `prune` (early exits: false or settings over the model's; default the model's).
   * @returns labels at the image's own size, with the class names, the token map and stats.
   * @throws {BadInputError} an unreadable or corrupt image, wrong raw dimensions, bad options.
   * @throws {OutOfMemoryError} when the work would not fit in memory.
   * @throws {DisposedError} after `dispose()`.
   * @example
   * const { labels, width, classes } = await model.segment('photo.jpg', { size: 1024 });
   * console.log(classes[labels[10 * width + 20]]); // class at x = 20, y = 10
   */
  async segment(image: ImageInput, options?: SegmentOptions): Promise<SegmentResult> {
    const [result] = await this.segmentBatch([image], options);
    return result;
  }

  /**
   * Segments several images in one packed batch (each keeps its own size and token count); the
   * results equal those of segmenting each image alone.
   */
  segmentBatch(images: ImageInput[], options?: SegmentOptions): Promise<SegmentResult[]> {
    return coded(() => this.#segmentBatch(images, options));
  }

  async #segmentBatch(images: ImageInput[], options?: SegmentOptions): Promise<SegmentResult[]> {
    this.#live();
    if (!Array.isArray(images) || images.length === 0) throw invalidParameter('images', 'a non-empty array of images', images);
    const opts = readingArguments('options', () =>
      checkSegmentOptions(options, {
        size: this.config.inputSize,
        patch: this.config.patchSize,
        merge: this.config.merge,
        policy: this.config.policy,
        prune: this.config.prune,
      }),
    );
    if (this.config.numClasses === 0)
      throw new BadModelError(
        this.config.kind === 'vit'
          ? 'this model has no segmentation head (no class_names / decoder.head in its config): use forwardFeatures()'
          : `this model is a bare ${this.config.kind} trunk: use forwardFeatures()`,
      );
    // What the call reads of the caller's inputs is taken now (raw pixels and encoded bytes copied),
    // so the caller may reuse its buffers once this has returned. A hole in the array is an error.
    // Every stage reserves its memory before it allocates (lib/memory.ts), until the call settles.
    const ledger = new Ledger();
    const reserve = (bytes: number, what: string) => ledger.reserve(bytes, what);
    const captured: CapturedImage[] = [];
    const tCopy = performance.now();
    try {
      for (let i = 0; i < images.length; i++) {
        const name = images.length > 1 ? `images[${i}]` : 'image';
        if (!(i in images)) throw invalidParameter(name, 'an image (the array has a hole here)', undefined);
        captured.push(readingArguments(name, () => captureImage(images[i], name, reserve)));
      }
    } catch (err) {
      ledger.release();
      throw err;
    }
    const copyMs = performance.now() - tCopy; // the only work on the main thread that grows with the input
    // Decoding starts now, beside any running call; the native work takes its turn in the queue,
    // which it joins now, so a dispose() that follows this call lets it finish.
    const t0 = performance.now();
    let decodeMs = 0;
    const decoding = Promise.all(captured.map((im) => prepareImage(im, { size: opts.size, outputSize: opts.outputSize, reserve }))).then(
      (prepared) => ((decodeMs = performance.now() - t0), prepared),
    );
    decoding.catch(() => undefined); // rejection is reported through the queued work below
    const run = this.#enqueue(async () => {
      const prepared = await decoding;
      const t1 = performance.now();
      const K = this.config.numClasses;
      // the patch grids, the tokens of each forward and the bytes (native/core/layout.h)
      const plan = this.#native.planSegment({
        images: prepared.map((p) => ({ width: p.resizedWidth, height: p.resizedHeight, outWidth: p.outWidth, outHeight: p.outHeight })),
        tile: opts.tile || undefined,
        learnedPolicy: !!opts.merge && opts.merge.policy === 'learned',
        probs: opts.probabilities,
        logits: opts.logits,
      });
      this.#reserveSegment(ledger, plan, !!opts.tile);
      // Every result array is allocated here, where a failed allocation is a RangeError (an
      // OutOfMemoryError, see coded()), and filled by the addon on its worker thread.
      const outputs = prepared.map((p, i) => {
        const { gh, gw } = plan.images[i], pixels = p.outWidth * p.outHeight;
        return {
          gh,
          gw,
          labels: K <= 256 ? new Uint8Array(pixels) : new Uint16Array(pixels),
          probs: opts.probabilities ? new Float32Array(K * pixels) : undefined,
          logits: opts.logits ? new Float32Array(K * gh * gw) : undefined,
          index: new Int32Array(gh * gw),
          size: new Uint8Array(gh * gw),
          exitLayer: new Uint8Array(gh * gw),
        };
      });
      let out;
      try {
        out = await this.#native.segment(
          prepared.map((p, i) => ({
            data: p.data,
            width: p.resizedWidth,
            height: p.resizedHeight,
            channels: 3,
            outWidth: p.outWidth,
            outHeight: p.outHeight,
            labels: outputs[i].labels,
            probs: outputs[i].probs,
            logits: outputs[i].logits,
            index: outputs[i].index,
            size: outputs[i].size,
            exitLayer: outputs[i].exitLayer,
          })),
          {
            mean: this.config.pixelMean,
            std: this.config.pixelStd,
            probs: opts.probabilities,
            logits: opts.logits,
            merge: opts.merge || undefined,
            prune: opts.prune || undefined,
            tile: opts.tile || undefined,
          },
        );
      } catch (err) {
        throw fromNative(err);
      }
      const total = copyMs + decodeMs + performance.now() - t1;
      return out.map((r, i) => {
        const p = prepared[i], o = outputs[i];
        const result: SegmentResult = {
          width: p.outWidth,
          height: p.outHeight,
          labels: o.labels,
          classes: this.config.classNames,
          stats: this.#stats(r.stats, { copy: copyMs, decode: decodeMs, ...r.stats.ms, total }, images.length),
          tokenMap: {
            gh: o.gh, gw: o.gw, index: o.index, size: o.size, exitLayer: o.exitLayer,
            patchSize: this.config.patchSize, depth: this.config.depth,
            inputSize: opts.size ?? Math.max(o.gh, o.gw) * this.config.patchSize, // tiles at the image's own size
          },
        };
        const sizes = [...(opts.merge ? opts.merge.levels : []), 1];
        sizes.forEach((side, l) => (result.stats.tokens.perLevel[side] = r.tokensPerSize[l]));
        if (opts.tile) result.stats.tiles = r.stats.tiles;
        if (o.probs) result.probabilities = { type: 'float32', data: o.probs, dims: [K, p.outHeight, p.outWidth] };
        if (o.logits) result.logits = { type: 'float32', data: o.logits, dims: [K, o.gh, o.gw] };
        return result;
      });
    });
    // the reservations last until the call settles, whichever way
    return run.finally(() => ledger.release());
  }

  #stats(s: NativeSegmentResult['stats'], ms: StageTimes, batchSize: number): SegmentStats {
    const stats: SegmentStats = {
      device: this.device,
      precision: this.precision,
      tokens: { dense: s.denseTokens, input: s.inputTokens, perLevel: {}, perBlock: s.perBlock, halted: s.halted },
      gflops: s.gflops,
      gflopsDense: s.gflopsDense,
      gflopsPolicy: s.gflopsPolicy,
      ms,
      batchSize,
    };
    if (this.deviceReason) stats.deviceReason = this.deviceReason;
    return stats;
  }

  // What the native part of a segment() call holds (the plan's bytes): each forward (the whole batch,
  // or one tile at a time), the per-image patch-grid logits (and, with tiles, their running sums and a
  // tile's crop), and the result arrays.
  #reserveSegment(ledger: Ledger, plan: NativeSegmentPlan, tiled: boolean): void {
    if (plan.tokens > kLimits.tokens)
      throw new BadInputError(`this input needs ${plan.tokens} tokens in one forward, more than the engine's limit of ${kLimits.tokens}: use a smaller size, tiles or fewer images per call`);
    ledger.reserve(plan.bytes.forward, tiled ? 'a tile\'s forward' : 'the forward');
    ledger.reserve(plan.bytes.results, 'the results');
  }

  /**
   * Disposes the model: calls made from now on reject with {@link DisposedError}; calls already made
   * finish, and the model's memory is freed as soon as the last of them ends.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const native = this.#native;
    this.#tail = this.#tail.then(() => native.dispose());
  }

  /** Disposes and waits until the memory is freed (`await using model = await loadModel()`). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
    await this.#tail;
  }
}

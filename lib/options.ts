/** Option checking for the public API, in one place, with errors of one shape. */
import { invalidParameter } from './errors';

export type Device = 'auto' | 'cpu' | 'cuda';

export interface LoadOptions {
  /** `'auto'` (default): the GPU when usable, else the CPU; `'cpu'`; `'cuda'`: the GPU or a rejection. */
  device?: Device;
}

export interface SegmentOptions {
  /** Long side, in pixels, the image is resized to before inference. Default: the model's `input_size`. */
  size?: number;
  /** Also return per-class probabilities at the output size, `(K, height, width)`. Default false. */
  probabilities?: boolean;
  /** Also return the low-resolution patch-grid logits, `(K, gh, gw)`. Default false. */
  logits?: boolean;
}

export interface ForwardOptions {
  /** Also return `patch_embed`, `tokens_0`, `block_N` and `final_norm`. Default false. */
  intermediates?: boolean;
}

function checkKeys(options: object, allowed: readonly string[], name: string): void {
  for (const key of Object.keys(options))
    if (!allowed.includes(key)) throw invalidParameter(`${name}.${key}`, `one of the known options (${allowed.join(', ')})`, key);
}

function checkObject(options: unknown, name: string): Record<string, unknown> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw invalidParameter(name, 'an object', options);
  return options as Record<string, unknown>;
}

function checkBool(v: unknown, name: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw invalidParameter(name, 'a boolean', v);
  return v;
}

export function checkLoadOptions(options: unknown): Required<LoadOptions> {
  const o = checkObject(options, 'options');
  checkKeys(o, ['device'], 'options');
  const device = o.device ?? process.env.STEP_SEG_DEVICE ?? 'auto';
  if (device !== 'auto' && device !== 'cpu' && device !== 'cuda') throw invalidParameter('options.device', "'auto', 'cpu' or 'cuda'", device);
  return { device };
}

export const kMaxSize = 8192;

export function checkSegmentOptions(options: unknown, defaultSize: number, patch: number): Required<SegmentOptions> {
  const o = checkObject(options, 'options');
  checkKeys(o, ['size', 'probabilities', 'logits'], 'options');
  const size = o.size ?? defaultSize;
  if (!Number.isInteger(size) || (size as number) < patch || (size as number) > kMaxSize)
    throw invalidParameter('options.size', `an integer from ${patch} to ${kMaxSize}`, size);
  return { size: size as number, probabilities: checkBool(o.probabilities, 'options.probabilities'), logits: checkBool(o.logits, 'options.logits') };
}

export function checkForwardOptions(options: unknown): Required<ForwardOptions> {
  const o = checkObject(options, 'options');
  checkKeys(o, ['intermediates'], 'options');
  return { intermediates: checkBool(o.intermediates, 'options.intermediates') };
}

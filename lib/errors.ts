/**
 * Typed errors. Every error step-seg raises is a {@link StepError} with a stable `code`; the classes
 * let callers branch with `instanceof`, the codes survive serialisation (worker threads, logs).
 */

/** Stable error codes. */
export type StepErrorCode =
  | 'ERR_STEP_BAD_INPUT'
  | 'ERR_STEP_BAD_MODEL'
  | 'ERR_STEP_DEVICE_UNAVAILABLE'
  | 'ERR_STEP_OUT_OF_MEMORY'
  | 'ERR_STEP_DISPOSED'
  | 'ERR_STEP_INTERNAL';

/** Base class of every step-seg error. */
export class StepError extends Error {
  readonly code: StepErrorCode;
  constructor(code: StepErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** An image, tensor or option that is not what the API expects. */
export class BadInputError extends StepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STEP_BAD_INPUT', message, options);
  }
}

/** A model directory, weights file or config that is missing, corrupt or inconsistent. */
export class BadModelError extends StepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STEP_BAD_MODEL', message, options);
  }
}

/** The requested device (`'cuda'`) cannot be used; the message says why. */
export class DeviceUnavailableError extends StepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STEP_DEVICE_UNAVAILABLE', message, options);
  }
}

/** The work does not fit in memory. */
export class OutOfMemoryError extends StepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STEP_OUT_OF_MEMORY', message, options);
  }
}

/** A model (or tensor) was used after `dispose()`. */
export class DisposedError extends StepError {
  constructor(message = 'the model has been disposed: load it again to keep using it') {
    super('ERR_STEP_DISPOSED', message);
  }
}

/** A bug in step-seg itself; please report it. */
export class InternalError extends StepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STEP_INTERNAL', message, options);
  }
}

const byCode: Record<StepErrorCode, new (message: string, options?: { cause?: unknown }) => StepError> = {
  ERR_STEP_BAD_INPUT: BadInputError,
  ERR_STEP_BAD_MODEL: BadModelError,
  ERR_STEP_DEVICE_UNAVAILABLE: DeviceUnavailableError,
  ERR_STEP_OUT_OF_MEMORY: OutOfMemoryError,
  ERR_STEP_DISPOSED: DisposedError,
  ERR_STEP_INTERNAL: InternalError,
};

/** Turns an error from the native addon (an Error with a `code`) into the matching class. */
export function fromNative(err: unknown): StepError {
  if (err instanceof StepError) return err;
  const e = err as { code?: string; message?: string };
  const cls = (e && e.code && byCode[e.code as StepErrorCode]) || InternalError;
  return new cls(e?.message ?? String(err), { cause: err });
}

/** `Expected <what> for <name> but received <value> of type <type>` (sharp's shape of message). */
export function invalidParameter(name: string, expected: string, value: unknown): BadInputError {
  let shown: string;
  try {
    shown = typeof value === 'string' ? JSON.stringify(value) : String(value);
  } catch {
    shown = '?';
  }
  if (shown.length > 60) shown = shown.slice(0, 57) + '...';
  const type = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  return new BadInputError(`Expected ${expected} for ${name} but received ${shown} of type ${type}`);
}

/**
 * Any error thrown on the way through the public API, as a StepError: step-seg's own pass through; a
 * failed allocation of a result array (V8's RangeError) is an OutOfMemoryError; anything else (a bug,
 * or a caller's getter that throws) an InternalError with the original as its cause.
 */
export function asStepError(err: unknown): StepError {
  if (err instanceof StepError) return err;
  if (err instanceof RangeError && /allocation failed|Invalid (typed )?array (buffer )?length|Array buffer allocation/i.test(err.message))
    return new OutOfMemoryError(`out of memory: ${err.message}`, { cause: err });
  const e = err as { code?: string; message?: string };
  if (e && typeof e.code === 'string' && e.code in byCode) return fromNative(err);
  return new InternalError(`internal error: ${e?.message ?? String(err)}`, { cause: err });
}

/** Runs `work` and rejects only with StepErrors (asStepError). */
export async function coded<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw asStepError(err);
  }
}

/**
 * Runs `read`, which reads the caller's arguments (options, inputs): an exception that is not a
 * StepError was thrown by the caller's own objects (a getter, a Proxy) and is a BadInputError.
 */
export function readingArguments<T>(what: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    if (err instanceof StepError) throw err;
    throw new BadInputError(`reading ${what} threw: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }
}

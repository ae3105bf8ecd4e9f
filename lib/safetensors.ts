/**
 * safetensors headers: an 8-byte little-endian header length, a JSON header mapping tensor names to
 * `{ dtype, shape, data_offsets: [begin, end] }` (offsets relative to the data section that follows
 * the header) and an optional `__metadata__` map of strings. Only the header is read here; the
 * tensors are converted by the addon straight from the mapped file (or the caller's Buffer).
 */
import * as fs from 'node:fs/promises';

import { BadModelError } from './errors';
import { parseJsonStrict, shown } from './json';

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  tensors: TensorInfo[];
  metadata: Record<string, string>;
  dataOffset: number; // byte where the data section starts
  dataSize: number; // bytes in the data section
  /** Read from a file: its first dataOffset bytes and its size then (the addon checks them again). */
  prefix?: Buffer;
  fileSize?: number;
}

const kMaxHeader = 100 * 1024 * 1024;

/** Bytes per element of the safetensors dtypes (the engine reads F32, F16 and BF16). */
const kDtypeBytes: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8, C64: 8,
};

/**
 * Checks a header against the format's rules (github.com/huggingface/safetensors, "Format"): one
 * entry per name, each { dtype, shape, data_offsets: [begin, end] } with end - begin the tensor's byte
 * count, offsets inside the data section, and the tensors covering the data section exactly once:
 * no overlap (no two names for the same bytes), no holes, nothing after the last tensor.
 */
function parseHeader(json: Buffer, total: number, where: string): SafetensorsHeader {
  const header = parseJsonStrict(json.toString('utf8'), `${where}: the safetensors header`, 8) as Record<string, unknown>;
  if (!header || typeof header !== 'object' || Array.isArray(header))
    throw new BadModelError(`${where}: the safetensors header is not a JSON object`);
  const dataOffset = 8 + json.length;
  const dataSize = total - dataOffset;
  const metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!v || typeof v !== 'object' || Array.isArray(v)) throw new BadModelError(`${where}: __metadata__ is not an object of strings`);
      for (const [k, m] of Object.entries(v as Record<string, unknown>)) {
        if (typeof m !== 'string') throw new BadModelError(`${where}: __metadata__.${k} is not a string`);
        metadata[k] = m;
      }
      continue;
    }
    const t = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const shape = t?.shape, offsets = t?.data_offsets;
    if (
      typeof t?.dtype !== 'string' ||
      !Array.isArray(shape) ||
      !shape.every((d) => Number.isSafeInteger(d) && d >= 0) ||
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((d) => Number.isSafeInteger(d) && d >= 0)
    )
      throw new BadModelError(`${where}: tensor ${name} has a malformed header entry ${shown(v)}`);
    let count = 1;
    for (const d of shape as number[]) count *= d;
    if (!Number.isSafeInteger(count))
      throw new BadModelError(`${where}: tensor ${name} has shape [${(shape as number[]).join(', ')}]: too many elements to hold`);
    const [begin, end] = offsets as number[];
    if (end < begin) throw new BadModelError(`${where}: tensor ${name} ends (${end}) before it begins (${begin})`);
    if (end > dataSize)
      throw new BadModelError(
        `${where}: tensor ${name} ends at byte ${end} of the data section but the file holds only ${dataSize} bytes there: the file is truncated`,
      );
    const elem = kDtypeBytes[t.dtype];
    if (elem !== undefined && count * elem !== end - begin)
      throw new BadModelError(
        `${where}: tensor ${name} has dtype ${t.dtype} and shape [${(shape as number[]).join(', ')}] (${count * elem} bytes) but its data_offsets span ${end - begin} bytes`,
      );
    tensors.push({ name, dtype: t.dtype, shape: shape as number[], begin, end });
  }
  // coverage: sorted by offset, each tensor starts where the one before ends
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0, last = '';
  for (const t of sorted) {
    if (t.begin < at)
      throw new BadModelError(`${where}: tensors ${last} and ${t.name} overlap (bytes ${t.begin} to ${Math.min(at, t.end)} of the data section): each byte belongs to one tensor`);
    if (t.begin > at) throw new BadModelError(`${where}: bytes ${at} to ${t.begin} of the data section belong to no tensor (before ${t.name})`);
    at = t.end;
    if (t.end > t.begin) last = t.name;
  }
  if (at !== dataSize)
    throw new BadModelError(`${where}: the data section holds ${dataSize} bytes but its tensors end at byte ${at}: the file has ${dataSize - at} bytes that belong to no tensor`);
  return { tensors, metadata, dataOffset, dataSize };
}

function headerLength(prefix: Buffer, total: number, where: string): number {
  if (total < 8) throw new BadModelError(`${where}: ${total} bytes is too short for a safetensors file: it is empty or truncated`);
  const n = prefix.readBigUInt64LE(0);
  if (n > BigInt(kMaxHeader) || Number(n) + 8 > total)
    throw new BadModelError(
      `${where}: the safetensors header claims ${n} bytes but the file holds ${total}: the file is truncated or not safetensors`,
    );
  return Number(n);
}

/** Reads just the header of a safetensors file. */
export async function readHeaderFromFile(file: string): Promise<SafetensorsHeader> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (err) {
    throw new BadModelError(`cannot open weights file ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const { size } = await handle.stat();
    const prefix = Buffer.alloc(8);
    await handle.read(prefix, 0, Math.min(8, size), 0);
    const n = headerLength(prefix, size, file);
    const prefixBytes = Buffer.alloc(8 + n);
    const { bytesRead } = await handle.read(prefixBytes, 0, 8 + n, 0);
    if (bytesRead !== 8 + n || !prefixBytes.subarray(0, 8).equals(prefix))
      throw new BadModelError(`${file}: the file changed while its header was read: load it again once it has been written`);
    const header = parseHeader(prefixBytes.subarray(8), size, file);
    return { ...header, prefix: prefixBytes, fileSize: size };
  } finally {
    await handle.close();
  }
}

/** Parses the header of safetensors bytes held in memory. */
export function readHeaderFromBuffer(buf: Buffer): SafetensorsHeader {
  const n = headerLength(buf, buf.length, 'weights buffer');
  return parseHeader(buf.subarray(8, 8 + n), buf.length, 'weights buffer');
}

/** Writes a safetensors file image (used by scripts and tests to make models). */
export function encodeSafetensors(
  tensors: Record<string, { dtype: 'F32' | 'F16' | 'BF16'; shape: number[]; data: Float32Array | Uint16Array }>,
  metadata?: Record<string, string>,
): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  const parts: Buffer[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8; // keep the data section 8-byte aligned
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...parts]);
}

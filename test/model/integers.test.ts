// Integers are range-checked before they cross into C++ (int32 there) and before anything is
// allocated: nothing wraps, truncates or runs for long before it is refused.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadBinding } from '../../lib/binding';
import { toNativeConfig } from '../../lib/config';
import { BadInputError, BadModelError, loadModel } from '../../lib/index';
import { encodeSafetensors, readHeaderFromBuffer } from '../../lib/safetensors';
import { rejectsWith } from '../helpers/compare';
import { randomVit, rng } from '../helpers/random';

const spec = { embedDim: 32, depth: 2, numHeads: 2, imgSize: [32, 32] as [number, number], classNames: ['a', 'b', 'c'] };
const vit = randomVit({ ...spec, exitLayers: [1], seed: 5 });
const rand = rng(9);
const img = { data: new Uint8Array(64 * 48 * 3).map(() => Math.floor(rand() * 256)), width: 64, height: 48, channels: 3 as const };

function withConfig(edit: Record<string, unknown>): Buffer {
  const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, data] of Object.entries(vit.tensors)) t[name] = { dtype: 'F32', shape: vit.shapes[name], data };
  return encodeSafetensors(t, { config: JSON.stringify({ ...vit.config, ...edit }) });
}

test('keepTopK of 2^31 or more is refused; 2^31 - 1 keeps every halting token as context', async () => {
  const model = await loadModel(vit.buffer, { device: 'cpu' });
  for (const k of [2 ** 31, 2 ** 32, 2 ** 53, 1e300])
    await rejectsWith(model.segment(img, { prune: { keepTopK: k } }), BadInputError, /an integer from 0 to 2147483647 for options\.prune\.keepTopK/);
  // agree: false: every token passes threshold 0, and random logits rarely agree with all neighbours
  const all = await model.segment(img, { merge: false, prune: { threshold: 0, keepTopK: 2 ** 31 - 1, agree: false } });
  assert.equal(all.stats.tokens.halted, [0]);
  const none = await model.segment(img, { merge: false, prune: { threshold: 0, keepTopK: 0, agree: false } });
  assert.ok(none.stats.tokens.halted[0] > 0);
  model.dispose();
});

test('config integers of 2^32 or more (and 1e6 blocks) are refused at once, naming the field', async () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ depth: 2 ** 32 + 2 }, /depth must be an integer from 1 to 255/],
    [{ depth: 1e6 }, /depth must be an integer from 1 to 255/],
    [{ embed_dim: 2 ** 32 + 32 }, /embed_dim must be an integer from 1 to 16384/],
    [{ mlp_ratio: 2 ** 32 }, /mlp_ratio must be .* at most 131072/],
    [{ reg_tokens: 2 ** 32 }, /reg_tokens must be an integer from 0 to 256/],
    [{ prune: { exit_layers: [1], keep_top_k: 2 ** 32 } }, /prune\.keepTopK must be an integer from 0 to 2147483647/],
    [{ num_heads: 2 ** 32 + 2 }, /num_heads must be an integer from 1 to 32/],
    [{ patch_size: 2 ** 32 + 16 }, /patch_size must be an integer from 1 to 256/],
    [{ img_size: [2 ** 32 + 32, 32] }, /img_size must be/],
    [{ input_size: 2 ** 40 }, /input_size must be an integer from 16 to 8192/],
    [{ num_classes: 2 ** 32 + 3, class_names: undefined }, /num_classes must be an integer from 0 to 65536/],
    [{ norm_eps: 1e-50 }, /norm_eps must be a positive number that float32 holds/],
  ];
  for (const [edit, pattern] of cases) {
    const t0 = performance.now();
    await rejectsWith(loadModel(withConfig(edit), { device: 'cpu' }), BadModelError, pattern);
    assert.ok(performance.now() - t0 < 2000, `${JSON.stringify(edit)} took ${(performance.now() - t0).toFixed(0)} ms to refuse`);
  }
});

test('the addon itself refuses integers that would not fit its int32 fields (a coded error, no truncation)', async () => {
  const { binding } = loadBinding();
  const model = await loadModel(vit.buffer, { device: 'cpu' });
  const header = readHeaderFromBuffer(vit.buffer);
  for (const [field, value] of [['depth', 2 ** 32 + 2], ['embedDim', 2 ** 32 + 32], ['regTokens', 2 ** 32], ['mlpHidden', 1.5]] as const) {
    try {
      await binding.createModel({ ...toNativeConfig(model.config), [field]: value }, header.tensors, vit.buffer, header.dataOffset, 'cpu');
      assert.unreachable(field);
    } catch (err) {
      assert.is((err as { code: string }).code, 'ERR_STEP_BAD_INPUT', `${field}: ${err}`);
      assert.match((err as Error).message, new RegExp(field));
    }
  }
  model.dispose();
});

test('tensor shapes whose element count overflows 64 bits are a BadModelError', async () => {
  const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, data] of Object.entries(vit.tensors)) t[name] = { dtype: 'F32', shape: vit.shapes[name], data };
  const buf = encodeSafetensors(t, { config: JSON.stringify(vit.config) });
  const n = Number(buf.readBigUInt64LE(0));
  const json = buf.subarray(8, 8 + n).toString();
  // norm.bias holds 32 floats (128 bytes): claim a shape whose byte count wraps to 128 in 64 bits
  const patched = json.replace(/"norm\.bias":\{"dtype":"F32","shape":\[32\]/, '"norm.bias":{"dtype":"F32","shape":[4611686018427387904,32]');
  assert.is.not(patched, json);
  const padded = patched.padEnd(Math.ceil(patched.length / 8) * 8, ' ');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(padded.length));
  await rejectsWith(loadModel(Buffer.concat([len, Buffer.from(padded), buf.subarray(8 + n)]), { device: 'cpu' }), BadModelError, /norm\.bias/);
});

test('forwardFeatures dims and merge scales beyond the engine are BadInputError', async () => {
  const model = await loadModel(vit.buffer, { device: 'cpu' });
  await rejectsWith(model.forwardFeatures({ data: new Float32Array(3 * 16 * 16), dims: [1, 3, 2 ** 32 + 16, 16] }), BadInputError, /pixels\.dims/);
  await rejectsWith(model.forwardFeatures({ data: new Float32Array(3 * 16 * 16), dims: [2 ** 32 + 1, 3, 16, 16] }), BadInputError, /pixels\.dims/);
  await rejectsWith(model.segment(img, { merge: { colorTau: 1e-50 } }), BadInputError, /options\.merge\.colorTau/);
  model.dispose();
});

test.run();

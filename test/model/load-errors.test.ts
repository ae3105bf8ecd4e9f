// Reading a model validates everything before use: each broken model gives a typed error that names
// the tensor or field.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel } from '../../lib/index';
import { encodeSafetensors } from '../../lib/safetensors';
import { rejectsLoad } from '../helpers/compare';
import { randomVit } from '../helpers/random';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-load-'));
const spec = { embedDim: 32, depth: 2, numHeads: 2, imgSize: [32, 48] as [number, number], classNames: ['a', 'b', 'c'] };

// Rebuilds a model from its tensors with one change.
function variant(edit: (t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>, config: Record<string, unknown>) => void): Buffer {
  const { tensors, config, shapes } = randomVit(spec);
  const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, data] of Object.entries(tensors)) t[name] = { dtype: 'F32', shape: shapes[name], data };
  const c = { ...config };
  edit(t, c);
  return encodeSafetensors(t, { config: JSON.stringify(c) });
}
function readHeaderJson(buf: Buffer): string {
  return buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString();
}

test('a good random model loads from a Buffer, a file and a directory', async () => {
  const { buffer, config } = randomVit(spec);
  const file = path.join(tmp, 'good.safetensors');
  fs.writeFileSync(file, buffer);
  const dir = path.join(tmp, 'good-dir');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'model.safetensors'), buffer);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  for (const src of [buffer, file, dir]) (await loadModel(src, { device: 'cpu' })).dispose();
});

test('missing path, empty file, truncated file', async () => {
  await rejectsLoad(path.join(tmp, 'nope'), /model not found/);
  const empty = path.join(tmp, 'empty.safetensors');
  fs.writeFileSync(empty, Buffer.alloc(0));
  await rejectsLoad(empty, /too short|truncated/);
  const { buffer } = randomVit(spec);
  const cut = path.join(tmp, 'cut.safetensors');
  fs.writeFileSync(cut, buffer.subarray(0, buffer.length - 100));
  await rejectsLoad(cut, /truncated/);
  await rejectsLoad(buffer.subarray(0, 20), /truncated|not safetensors/);
});

test('corrupt header', async () => {
  const { buffer } = randomVit(spec);
  const bad = Buffer.from(buffer);
  bad.write('#', 8);
  await rejectsLoad(bad, /not valid JSON/);
  const huge = Buffer.from(buffer);
  huge.writeBigUInt64LE(BigInt(1) << BigInt(40));
  await rejectsLoad(huge, /header claims/);
});

test('missing tensor, misshapen tensor, unknown dtype, NaN in weights', async () => {
  await rejectsLoad(variant((t) => delete t['blocks.1.mlp.fc2.bias']), /missing tensor blocks\.1\.mlp\.fc2\.bias/);
  await rejectsLoad(
    variant((t) => (t['blocks.0.attn.qkv.weight'] = { dtype: 'F32', shape: [96, 16], data: new Float32Array(96 * 16) })),
    /blocks\.0\.attn\.qkv\.weight has shape \[96, 16\] but the config needs \[96, 32\]/,
  );
  const odd = variant(() => undefined);
  const json = readHeaderJson(odd);
  const patched = json.replace('"norm.bias":{"dtype":"F32"', '"norm.bias":{"dtype":"I64"');
  assert.is.not(patched, json);
  const buf = Buffer.concat([odd.subarray(0, 8), Buffer.from(patched), odd.subarray(8 + json.length)]);
  await rejectsLoad(buf, /norm\.bias has dtype I64/);
  await rejectsLoad(variant((t) => (t['norm.weight'].data[3] = NaN)), /norm\.weight holds a non-finite value/);
});

test('config that contradicts the weights, and bad config fields', async () => {
  await rejectsLoad(variant((_, c) => (c.depth = 1)), /unexpected tensor blocks\.1\./);
  await rejectsLoad(variant((_, c) => (c.depth = 3)), /missing tensor blocks\.2\./);
  await rejectsLoad(variant((_, c) => (c.embed_dim = 48)), /shape/);
  await rejectsLoad(variant((_, c) => (c.class_token = false)), /unexpected tensor cls_token|pos_embed/);
  await rejectsLoad(variant((_, c) => (c.num_heads = 5)), /num_heads must be a divisor of embed_dim/);
  await rejectsLoad(variant((_, c) => (c.img_size = [30, 48])), /img_size must be a multiple of patch_size/);
  await rejectsLoad(variant((_, c) => (c.act = 'relu')), /act must be/);
  await rejectsLoad(variant((_, c) => (c.class_names = ['a', 'b'])), /num_classes must be 2|decoder\.head/);
  await rejectsLoad(variant((_, c) => (c.arch = 'timm.ResNet')), /arch .* is not supported/);
  const { tensors } = randomVit(spec);
  const noConfig = encodeSafetensors({ 'norm.weight': { dtype: 'F32', shape: [32], data: tensors['norm.weight'] } });
  await rejectsLoad(noConfig, /needs its config/);
  const dir = path.join(tmp, 'bad-json');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'config.json'), '{ nope');
  fs.writeFileSync(path.join(dir, 'model.safetensors'), randomVit(spec).buffer);
  await rejectsLoad(dir, /config\.json is not valid JSON/);
});

test('bad options are BadInputError', async () => {
  const { buffer } = randomVit(spec);
  try {
    await loadModel(buffer, { device: 'gpu' as 'cuda' });
    assert.unreachable();
  } catch (err) {
    assert.is((err as { code: string }).code, 'ERR_STEP_BAD_INPUT');
    assert.match((err as Error).message, /Expected 'auto', 'cpu' or 'cuda' for options\.device but received "gpu" of type string/);
  }
});

test('a bad precision, in the options or in STEP_SEG_PRECISION, is BadInputError', async () => {
  const { buffer } = randomVit(spec);
  const expectBad = async (options: object, pattern: RegExp) => {
    try {
      await loadModel(buffer, options);
      assert.unreachable();
    } catch (err) {
      assert.is((err as { code: string }).code, 'ERR_STEP_BAD_INPUT');
      assert.match((err as Error).message, pattern);
    }
  };
  await expectBad({ device: 'cpu', precision: 'fp16' }, /Expected 'fp32' or 'bf16' for options\.precision but received "fp16"/);
  process.env.STEP_SEG_PRECISION = 'int8';
  try {
    await expectBad({ device: 'cpu' }, /Expected 'fp32' or 'bf16' for STEP_SEG_PRECISION but received "int8"/);
    const m = await loadModel(buffer, { device: 'cpu', precision: 'fp32' }); // the option wins over the variable
    assert.is(m.precision, 'fp32');
    m.dispose();
  } finally {
    delete process.env.STEP_SEG_PRECISION;
  }
});

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
test.run();

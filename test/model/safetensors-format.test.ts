// The safetensors format's rules, enforced when a model loads: offsets inside the data section, the
// byte count of every dtype and shape, tensors covering the data section exactly once (no aliasing,
// no overlap, no holes, nothing after the end), one entry per name; and the JSON itself (headers,
// config.json, __metadata__.config): no duplicate keys, no unbounded nesting, every error coded.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { BadModelError, loadModel } from '../../lib/index';
import { parseJsonStrict } from '../../lib/json';
import { rejectsLoad } from '../helpers/compare';
import { randomVit } from '../helpers/random';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-format-'));
const vit = randomVit({ embedDim: 32, depth: 2, numHeads: 2, imgSize: [32, 32], classNames: ['a', 'b'], seed: 2 });
const headerLength = Number(vit.buffer.readBigUInt64LE(0));
const headerText = vit.buffer.subarray(8, 8 + headerLength).toString().trimEnd();
const data = vit.buffer.subarray(8 + headerLength);

// A safetensors file from header text and data bytes.
function file(text: string, bytes: Buffer = data): Buffer {
  const len = Buffer.alloc(8);
  const json = Buffer.from(text);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, bytes]);
}
function edited(edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): string {
  const h = JSON.parse(headerText);
  edit(h);
  return JSON.stringify(h);
}

test('the unmodified file loads (the rules hold for what encodeSafetensors writes)', async () => {
  (await loadModel(file(headerText), { device: 'cpu' })).dispose();
});

test('aliased and overlapping data_offsets are refused', async () => {
  // two names for the same bytes: norm.weight aliases norm.bias (both [32] F32)
  await rejectsLoad(file(edited((h) => (h['norm.weight'].data_offsets = [...h['norm.bias'].data_offsets]))), /overlap|belong to no tensor/);
  // a partial overlap: shift one tensor by 4 bytes into its neighbour
  await rejectsLoad(
    file(edited((h) => (h['norm.bias'].data_offsets = h['norm.bias'].data_offsets.map((o) => o - 4)))),
    /overlap|belong to no tensor/,
  );
});

test('holes, trailing bytes and spans that do not match dtype and shape are refused', async () => {
  await rejectsLoad(file(headerText, Buffer.concat([data, Buffer.alloc(16)])), /16 bytes that belong to no tensor/);
  // a hole: the last tensor (by offset) moved 8 bytes on, the file 8 bytes longer
  const last = Object.entries(JSON.parse(headerText) as Record<string, { data_offsets?: number[] }>)
    .filter(([k]) => k !== '__metadata__')
    .sort((a, b) => b[1].data_offsets![0] - a[1].data_offsets![0])[0][0];
  await rejectsLoad(file(edited((h) => (h[last].data_offsets = h[last].data_offsets.map((o) => o + 8))), Buffer.concat([data, Buffer.alloc(8)])), /belong to no tensor/);
  await rejectsLoad(file(edited((h) => (h['norm.bias'].shape = [16]))), /norm\.bias has dtype F32 and shape \[16\] \(64 bytes\) but its data_offsets span 128 bytes/);
  await rejectsLoad(file(edited((h) => (h['norm.bias'].data_offsets = [h['norm.bias'].data_offsets[0], 1e300]))), /malformed|truncated/);
});

test('a duplicate key is a BadModelError, in the header, config.json and __metadata__.config', async () => {
  // the same tensor name twice (JSON.parse would keep the second)
  const dup = headerText.replace(/^\{/, `{"norm.bias":{"dtype":"F32","shape":[32],"data_offsets":[0,128]},`);
  await rejectsLoad(file(dup), /the key "norm\.bias" twice/);
  const h = JSON.parse(headerText);
  const config = h.__metadata__.config as string;
  const dupConfig = config.replace(/^\{/, '{"depth":3,');
  h.__metadata__.config = dupConfig;
  await rejectsLoad(file(JSON.stringify(h)), /__metadata__\.config has the key "depth" twice/);
  const dir = path.join(tmp, 'dup-config');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'model.safetensors'), vit.buffer);
  fs.writeFileSync(path.join(dir, 'config.json'), dupConfig);
  await rejectsLoad(dir, /config\.json has the key "depth" twice/);
});

test('deeply nested JSON in a header, config.json and __metadata__.config is a coded BadModelError', async () => {
  const deep = '['.repeat(200000) + ']'.repeat(200000);
  await rejectsLoad(file(headerText.replace(/^\{/, `{"x":${deep},`)), /nests deeper than/);
  const h = JSON.parse(headerText);
  h.__metadata__.config = (h.__metadata__.config as string).replace(/^\{/, `{"deep":${deep},`);
  await rejectsLoad(file(JSON.stringify(h)), /__metadata__\.config nests deeper than 64 levels/);
  const dir = path.join(tmp, 'deep-config');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'model.safetensors'), vit.buffer);
  fs.writeFileSync(path.join(dir, 'config.json'), h.__metadata__.config);
  await rejectsLoad(dir, /config\.json nests deeper than 64 levels/);
  // __metadata__ must be an object of strings (Object.entries of a string would read its characters)
  const notObject = JSON.parse(headerText);
  notObject.__metadata__ = 'not an object';
  await rejectsLoad(file(JSON.stringify(notObject)), /__metadata__ is not an object of strings/);
});

test('the strict reader agrees with JSON.parse on valid JSON and refuses what JSON.parse refuses', () => {
  for (const text of ['{"a":[1,-2.5e3,true,false,null,"x\\u0041\\n"],"b":{"c":{}},"__proto__":1}', '[]', '"s"', ' 0 ', '{"k":""}'])
    assert.equal(parseJsonStrict(text, 't'), JSON.parse(text), text);
  assert.ok(Object.prototype.hasOwnProperty.call(parseJsonStrict('{"__proto__":{"x":1}}', 't'), '__proto__'));
  for (const bad of ['{', '{"a":1,}', '[1 2]', '01', '{"a" 1}', 'tru', '"\\x"', '"a\nb"', '{} {}', ''])
    assert.throws(() => parseJsonStrict(bad, 't'), (e: unknown) => e instanceof BadModelError, bad);
});

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
test.run();

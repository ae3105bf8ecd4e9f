// Finite inputs and weights can still overflow float32 on the way: the logits of every head (and the
// features of a backbone) are checked, and a NaN or infinity there is a typed error naming the cause,
// never all-NaN logits turned into label 0.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { BadInputError, BadModelError, loadModel } from '../../lib/index';
import { encodeSafetensors } from '../../lib/safetensors';
import { rejectsWith } from '../helpers/compare';
import { randomVit, rng } from '../helpers/random';

const spec = { embedDim: 32, depth: 2, numHeads: 2, imgSize: [32, 32] as [number, number], classNames: ['a', 'b', 'c'], exitLayers: [1], seed: 8 };
const rand = rng(4);
const img = { data: new Uint8Array(48 * 40 * 3).map(() => Math.floor(rand() * 256)), width: 48, height: 40, channels: 3 as const };

function model(edit: (t: Record<string, Float32Array>, c: Record<string, unknown>) => void, extra: Partial<typeof spec> = {}): Buffer {
  const vit = randomVit({ ...spec, ...extra });
  const config = { ...vit.config };
  edit(vit.tensors, config);
  const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [name, data] of Object.entries(vit.tensors)) t[name] = { dtype: 'F32', shape: vit.shapes[name], data };
  return encodeSafetensors(t, { config: JSON.stringify(config) });
}

test('a finite but huge bias (3e38) is a BadModelError at the first head that sees it, not label 0', async () => {
  const m = await loadModel(model((t) => t['blocks.0.mlp.fc2.bias'].fill(3e38)), { device: 'cpu' });
  await rejectsWith(m.segment(img), BadModelError, /logits of the exit head after block 1 are not finite .* weights/);
  await rejectsWith(m.segment(img, { prune: false }), BadModelError, /logits of the segmentation head are not finite/);
  m.dispose();
  const head = await loadModel(model((t) => t['decoder.head.weight'].fill(3e38)), { device: 'cpu' });
  await rejectsWith(head.segment(img, { prune: false, merge: false }), BadModelError, /segmentation head are not finite/);
  head.dispose();
});

test('a pixel_std of 0 is a BadModelError at load; one so small it overflows is one at segment()', async () => {
  await rejectsWith(loadModel(model((_, c) => (c.pixel_std = [0.2, 0, 0.2])), { device: 'cpu' }), BadModelError, /pixel_std must be an array of 3 positive numbers/);
  await rejectsWith(loadModel(model((_, c) => (c.pixel_std = [0.2, 1e-45, 0.2])), { device: 'cpu' }), BadModelError, /pixel_std/);
  // a tiny std gives huge normalised pixels: finite logits, or the typed error, never NaN logits
  const tiny = await loadModel(model((_, c) => (c.pixel_std = [1e-37, 1e-37, 1e-37])), { device: 'cpu' });
  try {
    const r = await tiny.segment(img, { logits: true });
    assert.ok((r.logits!.data as Float32Array).every(Number.isFinite));
  } catch (err) {
    assert.instance(err, BadModelError);
    assert.match((err as Error).message, /not finite/);
  }
  tiny.dispose();
});

test('forwardFeatures: an input of 3e38 is a BadInputError that says so; huge weights a BadModelError', async () => {
  const m = await loadModel(model(() => undefined), { device: 'cpu' });
  const pixels = new Float32Array(3 * 32 * 32).fill(3e38);
  await rejectsWith(m.forwardFeatures({ data: pixels, dims: [1, 3, 32, 32] }), BadInputError, /pixels\.data holds values as large as/);
  m.dispose();
  const features = await loadModel(model((t) => t['blocks.1.attn.proj.bias'].fill(3e38), { classNames: undefined as never, exitLayers: undefined as never }), { device: 'cpu' });
  await rejectsWith(features.forwardFeatures({ data: new Float32Array(3 * 32 * 32).fill(0.1), dims: [1, 3, 32, 32] }), BadModelError, /final-norm features are not finite/);
  features.dispose();
});

test('a healthy model still segments (the check costs nothing visible)', async () => {
  const m = await loadModel(model(() => undefined), { device: 'cpu' });
  const r = await m.segment(img, { logits: true });
  assert.ok((r.logits!.data as Float32Array).every(Number.isFinite));
  m.dispose();
});

test.run();

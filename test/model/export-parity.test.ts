// The engine against PyTorch on a model that export.py wrote: StepSeg.infer (scripts/step_model.py,
// float64) is the reference for segment() with merging and pruning off and on, the learned policy
// included, both with the engine's defaults (unshare 'blend', prune.agree: merge_blend, prune_agree,
// step_blend_agree, learned_blend_agree and learned_cheap, whose options leave those out) and the old way (unshare
// 'copy', agree false: dense, merge, prune, step, learned). Fixture: test/fixtures/step-small (scripts/make_step_fixture.py). Its learned-policy case
// uses the trunk of randomEffnet('policy.trunk.', 4), which the fixture script reproduces bit for bit,
// so the 3M-parameter trunk need not be stored.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel, type Model, type SegmentOptions } from '../../lib/index';
import { encodeSafetensors, readHeaderFromBuffer } from '../../lib/safetensors';
import { fixturesDir, readSafetensors, relL2 } from '../helpers/compare';
import { randomEffnet } from '../helpers/random';

const dir = path.join(fixturesDir, 'step-small');
const ref = readSafetensors(path.join(dir, 'reference.safetensors'));
const meta = readHeaderFromBuffer(fs.readFileSync(path.join(dir, 'reference.safetensors'))).metadata;
const cases = JSON.parse(meta.cases) as Record<string, Pick<SegmentOptions, 'merge' | 'prune'>>;
const trunkSpec = JSON.parse(meta.trunk) as { prefix: string; seed: number };
const images = Array.from({ length: Number(meta.images) }, (_, i) => {
  const t = ref[`image_${i}`];
  const [height, width] = t.dims;
  return { data: t.data as Uint8Array, width, height, channels: 3 as const };
});

// The fixture's weights as stored (float16), plus the policy trunk and heads, as one in-memory model:
// the full trunk (learned cases), or (learned_cheap) the trunk truncated after feature map 3 on the
// input pooled by 2, with its own heads (reference cheap.policy.heads.*).
const cheapSpec = JSON.parse(meta.cheap) as { features: number; policy_pool: number; policy_feature: number };
function learnedModelBuffer(cheap = false): Buffer {
  const bytes = fs.readFileSync(path.join(dir, 'model.safetensors'));
  const header = readHeaderFromBuffer(bytes);
  type Entry = { dtype: 'F32' | 'F16'; shape: number[]; data: Float32Array | Uint16Array };
  const tensors: Record<string, Entry> = {};
  for (const t of header.tensors) {
    const copy = new Uint8Array(bytes.subarray(header.dataOffset + t.begin, header.dataOffset + t.end));
    const data = t.dtype === 'F16' ? new Uint16Array(copy.buffer) : new Float32Array(copy.buffer);
    tensors[t.name] = { dtype: t.dtype as 'F32' | 'F16', shape: t.shape, data };
  }
  const trunk = randomEffnet(trunkSpec.prefix, trunkSpec.seed, cheap ? cheapSpec.features : 5);
  for (const [name, t] of Object.entries(trunk)) tensors[name] = { dtype: 'F32', ...t };
  const heads = cheap ? 'cheap.policy.heads.' : 'policy.heads.';
  for (const name of Object.keys(ref).filter((n) => n.startsWith(heads)))
    tensors[name.replace(/^cheap\./, '')] = { dtype: 'F32', shape: ref[name].dims, data: ref[name].data as Float32Array };
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const merge = cases[cheap ? 'learned_cheap' : 'learned'].merge as { levels: number[]; thresholds: number[] };
  config.merge = { policy: 'learned', levels: merge.levels, thresholds: merge.thresholds, head_outputs: 1 };
  if (cheap) Object.assign(config.merge, { policy_pool: cheapSpec.policy_pool, policy_feature: cheapSpec.policy_feature });
  return encodeSafetensors(tensors, { config: JSON.stringify(config) });
}

let model: Model, learned: Model, cheap: Model;
test.before(async () => {
  model = await loadModel(dir, { device: 'cpu', precision: 'fp32' });
  learned = await loadModel(learnedModelBuffer(), { device: 'cpu', precision: 'fp32' });
  cheap = await loadModel(learnedModelBuffer(true), { device: 'cpu', precision: 'fp32' });
});
test.after(() => {
  model.dispose();
  learned.dispose();
  cheap.dispose();
});

test('the exported model loads with its merge and prune defaults', () => {
  assert.is(model.config.numClasses, 11);
  assert.equal(model.config.prune && model.config.prune.exitLayers, [1, 2]);
  assert.is(model.config.merge && model.config.merge.policy, 'similarity');
  assert.equal(learned.config.policy, { levels: [4, 2], outputs: 1, pool: 1, feature: 4 });
  assert.equal(cheap.config.policy, { levels: [4, 2], outputs: 1, pool: 2, feature: 3 });
  // the default cases leave unshare and agree out: these are what they test
  for (const m of [model, learned, cheap]) {
    assert.is(m.config.merge && m.config.merge.unshare, 'blend');
    assert.is(m.config.prune && m.config.prune.agree, true);
  }
});

const segmentCase = (name: string, i: number, override: Pick<SegmentOptions, 'merge' | 'prune'> = {}) => {
  const img = images[i];
  const m = name === 'learned_cheap' ? cheap : name.startsWith('learned') ? learned : model;
  return m.segment(img, { size: Math.max(img.width, img.height), logits: true, ...cases[name], ...override });
};

for (const name of Object.keys(cases)) {
  test(`${name}: logits, token map and exit layers equal PyTorch's`, async () => {
    for (let i = 0; i < images.length; i++) {
      const r = await segmentCase(name, i);
      const logits = ref[`${i}.${name}.logits`];
      assert.equal(r.logits!.dims, logits.dims, `image ${i}: logits dims`);
      const err = relL2(r.logits!.data, logits.data);
      assert.ok(err < 1e-5, `image ${i}: logits relative L2 error ${err}`);
      const { gh, gw, index, size, exitLayer } = r.tokenMap;
      assert.equal([gh, gw], logits.dims.slice(1));
      assert.equal(Array.from(index), Array.from(ref[`${i}.${name}.index`].data), `image ${i}: token index`);
      assert.equal(Array.from(size), Array.from(ref[`${i}.${name}.size`].data), `image ${i}: token size`);
      assert.equal(Array.from(exitLayer), Array.from(ref[`${i}.${name}.exit_layer`].data), `image ${i}: exit layer`);
    }
  });
}

const blendCases = ['merge_blend', 'step_blend_agree', 'learned_blend_agree', 'learned_cheap'];
const agreeCases = ['prune_agree', 'step_blend_agree', 'learned_blend_agree', 'learned_cheap'];

test('merging and pruning do happen in the fixture (the parity above is not vacuous)', async () => {
  for (const name of ['merge', 'step', 'learned', ...blendCases])
    assert.ok(images.some((_, i) => Array.from(ref[`${i}.${name}.size`].data).some((s) => s > 1)), `${name} merges`);
  for (const name of ['prune', 'step', 'learned', ...agreeCases])
    for (const layer of [1, 2])
      assert.ok(images.some((_, i) => Array.from(ref[`${i}.${name}.exit_layer`].data).includes(layer)), `${name} halts at ${layer}`);
});

// Blending moves superpatches' logits and only theirs: the engine run by copy on the same case keeps
// every single patch's logits bit for bit and differs far beyond the parity tolerance on superpatches
// next to other tokens, so the blend parity above checks blending.
test('blend cases: blending changes superpatch logits (copy is far from the reference), single patches as copied', async () => {
  for (const name of blendCases) {
    let changed = 0;
    for (let i = 0; i < images.length; i++) {
      const blend = await segmentCase(name, i);
      const copy = await segmentCase(name, i, { merge: { ...(cases[name].merge as object), unshare: 'copy' } });
      const { gh, gw, size } = blend.tokenMap, K = blend.logits!.dims[0], cells = gh * gw;
      assert.equal(Array.from(copy.tokenMap.exitLayer), Array.from(blend.tokenMap.exitLayer), `${name} image ${i}: same halting`);
      for (let cell = 0; cell < cells; cell++) {
        let d = 0;
        for (let k = 0; k < K; k++) d = Math.max(d, Math.abs(blend.logits!.data[k * cells + cell] - copy.logits!.data[k * cells + cell]));
        if (size[cell] === 1) assert.is(d, 0, `${name} image ${i}: blending changed single patch ${cell}`);
        else if (d > 1e-2) changed++;
      }
      if (Array.from(size).some((s) => s > 1))
        assert.ok(relL2(copy.logits!.data, ref[`${i}.${name}.logits`].data) > 1e-3, `${name} image ${i}: copy is as close to the blend reference as blend`);
    }
    assert.ok(changed > 0, `${name}: blending changed no superpatch patch`);
  }
});

// Agreement stops tokens: at the first exit both runs have the same tokens, so a patch whose token
// halts there without agreement but not with it (the reference marks its token confident and in
// disagreement there: blocked = 1) was stopped by its neighbours' labels.
test('agree cases: some confident tokens that halt at exit 1 without agreement do not with it', async () => {
  for (const name of agreeCases) {
    let stopped = 0;
    for (let i = 0; i < images.length; i++) {
      const withAgree = await segmentCase(name, i);
      const without = await segmentCase(name, i, { prune: { ...(cases[name].prune as object), agree: false } });
      const blocked = ref[`${i}.${name}.blocked`].data;
      const refExit = ref[`${i}.${name}.exit_layer`].data;
      for (let cell = 0; cell < blocked.length; cell++) {
        if (blocked[cell] !== 1) continue;
        assert.is.not(withAgree.tokenMap.exitLayer[cell], 1, `${name} image ${i}: blocked patch ${cell} halted at exit 1`);
        assert.is.not(refExit[cell], 1);
        if (without.tokenMap.exitLayer[cell] === 1) stopped++;
      }
    }
    assert.ok(stopped > 0, `${name}: agreement stopped no token`);
  }
});

test.run();

// The learned merge policy: the EfficientNet-Lite0 trunk against timm (effnet-a fixture, from
// ../shared), any input size, and a ViT whose policy (trunk + level heads) picks the superpatches the
// pooled stride-32 map and the heads say it should.
import * as fs from 'node:fs';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { BadInputError, loadModel } from '../../lib/index';
import { checkMerge, kDefaultMerge } from '../../lib/config';
import { loadBinding } from '../../lib/binding';
import { encodeSafetensors } from '../../lib/safetensors';
import { readSafetensors, rejectsLoad, rejectsWith, relL2, sharedDir, standIn } from '../helpers/compare';
import { randn, randomEffnet, randomVit, rng, withPolicy } from '../helpers/random';
import { skip } from '../helpers/skip';

const effnetDir = path.join(sharedDir, 'fixtures', 'effnet-a');

test('efficientnet_lite0 trunk: every stage matches timm to 1e-4 (effnet-a)', async (ctx) => {
  if (!fs.existsSync(effnetDir)) return skip(ctx, '../shared/fixtures/effnet-a is absent');
  const io = readSafetensors(path.join(effnetDir, 'io.safetensors'));
  const model = await loadModel(effnetDir, { device: 'cpu', precision: 'fp32' });
  assert.is(model.config.kind, 'efficientnet_lite0');
  const x = io.input_nchw_f32;
  const out = await model.forwardFeatures({ data: x.data as Float32Array, dims: x.dims });
  assert.is(out.stages!.length, 5);
  out.stages!.forEach((stage, i) => {
    const ref = io[`stage_${i}`];
    assert.equal(stage.dims, [1, ...ref.dims]);
    const err = relL2(stage.data, ref.data);
    assert.ok(err < 1e-4, `stage_${i}: relative L2 error ${err}`);
  });
  // any input size: ceil(n / stride) per stage
  const odd = await model.forwardFeatures({ data: randn(2 * 3 * 77 * 131, rng(1)), dims: [2, 3, 77, 131] });
  assert.equal(odd.stages!.map((s) => s.dims.slice(2)), [[39, 66], [20, 33], [10, 17], [5, 9], [3, 5]]);
  assert.ok(odd.stages!.every((s) => (s.data as Float32Array).every(Number.isFinite)));
  model.dispose();
});

// A ViT with a learned policy: random trunk and heads for window sides 4 and 2 (sigmoid heads), the
// full trunk's stride-32 map, or (pool 2, feature 3) the stride-16 map of the half-size input, the
// trunk truncated there (its weights hold only the blocks it runs).
const C = 32, classes = ['a', 'b', 'c'];
const vit = randomVit({ embedDim: C, depth: 2, numHeads: 2, imgSize: [64, 64], classNames: classes, inputSize: 128, seed: 9 });
const trunk = randomEffnet('policy.trunk.', 4);
const kChannels = [16, 24, 40, 112, 320];
function policyHeads(feature: number) {
  const rand = rng(33);
  const heads: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const side of [4, 2]) {
    heads[`policy.heads.${side}.weight`] = { shape: [1, kChannels[feature]], data: randn(kChannels[feature], rand, feature === 4 ? 0.01 : 0.03) };
    heads[`policy.heads.${side}.bias`] = { shape: [1], data: Float32Array.of(0.3) };
  }
  return heads;
}
const truncated = (feature: number) => randomEffnet('policy.trunk.', 4, feature + 1);
function policyModel(outputs: 1 | 2, pool = 1, feature = 4, thresholds = [0.47, 0.45]) {
  const extra = pool === 1 && feature === 4 ? {} : { policy_pool: pool, policy_feature: feature };
  return withPolicy(vit, truncated(feature), policyHeads(feature), { levels: [4, 2], thresholds, ...extra }, outputs);
}

for (const [pool, feature] of [[1, 4], [2, 3]] as const) {
  test(`learned policy (pool ${pool}, feature ${feature}): the superpatches are those the trunk, pooling and heads select`, async () => {
    const thresholds = [0.47, 0.45];
    const model = await loadModel(policyModel(1, pool, feature, thresholds), { device: 'cpu' });
    assert.ok(model.config.policy);
    const w = 128, h = 96;
    const img = { data: new Uint8Array(w * h * 3), width: w, height: h, channels: 3 as const };
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) img.data.set(x < 64 ? [200, 180, 160] : [(x * 7 + y * 13) % 256, (x * y) % 256, 90], 3 * (y * w + x));
    const r = await model.segment(img, { size: 128 });

    // the same trunk as a bare model: feature map `feature` of the image normalised with mean = std =
    // 127.5 and average-pooled by `pool`
    const bare: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const [name, t] of Object.entries(trunk)) bare[name.replace('policy.trunk.', '')] = { dtype: 'F32', ...t };
    const trunkModel = await loadModel(encodeSafetensors(bare, { config: JSON.stringify({ arch: 'timm.efficientnet_lite0' }) }), { device: 'cpu' });
    const ph = h / pool, pw = w / pool;
    const pixels = new Float32Array(3 * ph * pw);
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < ph; y++)
        for (let x = 0; x < pw; x++) {
          let sum = 0;
          for (let dy = 0; dy < pool; dy++) for (let dx = 0; dx < pool; dx++) sum += (img.data[3 * ((y * pool + dy) * w + x * pool + dx) + c] - 127.5) / 127.5;
          pixels[(c * ph + y) * pw + x] = sum / (pool * pool);
        }
    const feats = await trunkModel.forwardFeatures({ data: pixels, dims: [1, 3, ph, pw] });
    const stage = feats.stages![feature];
    const [, Cm, ch, cw] = stage.dims;
    assert.is(Cm, kChannels[feature]);
    const map = stage.data as Float32Array; // (Cm, ch, cw)
    const gh = h / 16, gw = w / 16, cell = pool * 2 ** (feature + 1);
    const heads = policyHeads(feature);
    const scores: number[] = [];
    for (const side of [4, 2]) {
      const f = (side * 16) / cell, wh = Math.floor(gh / side), ww = Math.floor(gw / side);
      const hw = heads[`policy.heads.${side}.weight`].data, hb = heads[`policy.heads.${side}.bias`].data[0];
      for (let i = 0; i < wh; i++)
        for (let j = 0; j < ww; j++) {
          let logit = hb;
          for (let c = 0; c < Cm; c++) {
            let sum = 0;
            for (let dy = 0; dy < f; dy++) for (let dx = 0; dx < f; dx++) sum += map[(c * ch + i * f + dy) * cw + j * f + dx];
            logit += (hw[c] * sum) / (f * f);
          }
          scores.push(1 / (1 + Math.exp(-logit)));
        }
    }
    const rects = new Int32Array(gh * gw * 4), count = new Int32Array(1), tokenOfPatch = new Int32Array(gh * gw);
    loadBinding().binding.ops.superpatchSelect({
      image: 0, gh, gw, levels: Int32Array.of(4, 2), thresholds: Float32Array.from(thresholds), scores: Float32Array.from(scores), rects, count, tokenOfPatch,
    });
    // thresholds sit away from the scores, so float rounding cannot flip a decision
    for (const s of scores) assert.ok(Math.abs(s - thresholds[0]) > 1e-4 && Math.abs(s - thresholds[1]) > 1e-4);
    assert.equal(r.tokenMap.index, tokenOfPatch);
    assert.is(r.stats.tokens.input, count[0] + 1);
    assert.ok(count[0] < gh * gw && count[0] > 0, `some windows merge, not all: ${scores.map((s) => s.toFixed(3))}`);
    assert.ok(r.stats.gflopsPolicy > 0 && r.stats.gflops > r.stats.gflopsPolicy);

    // a two-output softmax head whose logit difference is the same gives the same superpatches
    const soft = await loadModel(policyModel(2, pool, feature, thresholds), { device: 'cpu' });
    assert.equal((await soft.segment(img, { size: 128 })).tokenMap.index, r.tokenMap.index);
    // per call: similarity still available; learned levels must have heads
    const sim = await model.segment(img, { size: 128, merge: { policy: 'similarity', thresholds: [0.7, 0.6] } });
    assert.ok(sim.stats.tokens.input > 0);
    // the learned heads' thresholds do not carry over to the similarity scorer: levels [4, 2] have no
    // similarity defaults, so they must be given
    await rejectsWith(model.segment(img, { merge: { policy: 'similarity' } }), BadInputError, /thresholds.*are for the learned scorer, not similarity/);
    try {
      await model.segment(img, { merge: { policy: 'learned', levels: [8, 4], thresholds: [0.5, 0.5] } });
      assert.unreachable();
    } catch (err) {
      assert.instance(err, BadInputError);
      assert.match((err as Error).message, /levels among the policy's heads \[4, 2\]/);
    }
    for (const m of [model, soft, trunkModel]) m.dispose();
  });
}

test('a truncated policy: GFLOPs shrink, and its config and weights must agree', async () => {
  const full = await loadModel(policyModel(1), { device: 'cpu' });
  const cheap = await loadModel(policyModel(1, 2, 3), { device: 'cpu' });
  const img = { data: new Uint8Array(128 * 96 * 3).map((_, i) => (i * 37) % 256), width: 128, height: 96, channels: 3 as const };
  const a = await full.segment(img, { size: 128 }), b = await cheap.segment(img, { size: 128 });
  assert.ok(b.stats.gflopsPolicy > 0 && b.stats.gflopsPolicy < a.stats.gflopsPolicy / 4, `${b.stats.gflopsPolicy} vs ${a.stats.gflopsPolicy}`);
  full.dispose(), cheap.dispose();
  // the full trunk's blocks under a truncated config: unexpected tensors, named
  const extra = withPolicy(vit, trunk, policyHeads(3), { levels: [4, 2], thresholds: [0.5, 0.5], policy_pool: 2, policy_feature: 3 });
  await rejectsLoad(extra, /unexpected tensor policy\.trunk\.blocks\.5\.0\.conv_pw\.weight .*truncated after feature map 3/);
  // cells that do not tile the windows: pool 4 with feature 3 is 64 px, windows of 2 patches are 32
  const coarse = withPolicy(vit, truncated(3), policyHeads(3), { levels: [4, 2], thresholds: [0.5, 0.5], policy_pool: 4, policy_feature: 3 });
  await rejectsLoad(coarse, /merge\.levels.*multiples of 64 px/);
  const badPool = withPolicy(vit, truncated(3), policyHeads(3), { levels: [4, 2], thresholds: [0.5, 0.5], policy_pool: 3, policy_feature: 3 });
  await rejectsLoad(badPool, /merge\.policy_pool.*1, 2 or 4/);
});

test('a model without a policy refuses the learned scorer', async () => {
  const plain = await loadModel(standIn, { device: 'cpu' });
  try {
    await plain.segment({ data: new Uint8Array(48), width: 4, height: 4, channels: 3 }, { merge: { policy: 'learned' } });
    assert.unreachable();
  } catch (err) {
    assert.instance(err, BadInputError);
    // plain words: what is missing and what to use instead, not "Expected 'similarity' ... received"
    assert.match((err as Error).message, /this model carries no learned merge policy/);
    assert.match((err as Error).message, /Use policy 'similarity'/);
    assert.not.match((err as Error).message, /Expected|received/);
  }
  plain.dispose();
});


test('switching the scorer per call: the similarity defaults on their levels, never the learned thresholds', () => {
  const learned = { ...kDefaultMerge, policy: 'learned' as const, thresholds: [0.9, 0.85, 0.8] };
  const fail = (field: string, expected: string): never => {
    throw new Error(`${field}: ${expected}`);
  };
  assert.equal(checkMerge({ policy: 'similarity' }, learned, fail).thresholds, kDefaultMerge.thresholds);
  assert.equal(checkMerge({}, learned, fail).thresholds, [0.9, 0.85, 0.8]);
  assert.equal(checkMerge({ policy: 'learned' }, learned, fail).thresholds, [0.9, 0.85, 0.8]);
  // a similarity config switched to learned: the heads' thresholds are unknown
  assert.throws(() => checkMerge({ policy: 'learned' }, kDefaultMerge, fail), /thresholds: 3 numbers, one per level \(the config's thresholds are for the similarity scorer, not learned\)/);
  assert.equal(checkMerge({ policy: 'learned', thresholds: [0.5, 0.5, 0.5] }, kDefaultMerge, fail).thresholds, [0.5, 0.5, 0.5]);
});

test.run();

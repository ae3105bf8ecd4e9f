// The bundled model on real photos (../shared/images) on the GPU and on the CPU, with its shipped
// settings (similarity merging and early exits): the same superpatches and halted tokens (token maps
// identical) and labels that agree on >= 99.5% of the pixels. Runs where CUDA is usable: on a GPU, or on
// the CUDA emulator build (npm test runs it there), where the photos are segmented at a 384-px long side
// to keep it quick; on a GPU at 1024. Skipped (counted) without CUDA or without ../shared/images; under
// STEP_SEG_REQUIRE_CUDA=1 a missing CUDA backend is a failure.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { cudaStatus, loadModel, type Model } from '../../lib/index';
import { sharedImages } from '../helpers/compare';
import { cudaRequired, onEmulator } from '../helpers/gpu';
import { skip } from '../helpers/skip';

let cpu: Model | undefined, gpu: Model | undefined;
let reason = '';
test.before(async () => {
  const status = await cudaStatus();
  if (!status.usable) {
    reason = status.reason;
    return;
  }
  cpu = await loadModel(undefined, { device: 'cpu' });
  gpu = await loadModel(undefined, { device: 'cuda' });
});
test.after(() => {
  cpu?.dispose();
  gpu?.dispose();
});

test('the bundled model on real photos: the GPU gives the CPU\'s token maps and >= 99.5% of its labels', async (ctx) => {
  if (!cpu || !gpu) {
    if (cudaRequired) assert.unreachable(`STEP_SEG_REQUIRE_CUDA is set but CUDA cannot run: ${reason}`);
    return skip(ctx, reason);
  }
  const photos = sharedImages();
  if (!photos.length) return skip(ctx, '../shared/images is absent');
  const size = onEmulator() ? 384 : 1024;
  for (const file of photos) {
    const a = await cpu.segment(file, { size });
    const b = await gpu.segment(file, { size });
    assert.is(b.stats.device, 'cuda');
    const name = file.split('/').pop();
    assert.equal(Array.from(b.tokenMap.index), Array.from(a.tokenMap.index), `${name}: superpatches`);
    assert.equal(Array.from(b.tokenMap.exitLayer), Array.from(a.tokenMap.exitLayer), `${name}: halted tokens`);
    let same = 0;
    for (let i = 0; i < a.labels.length; i++) same += a.labels[i] === b.labels[i] ? 1 : 0;
    const agree = same / a.labels.length;
    assert.ok(agree >= 0.995, `${name} at ${size}: labels agree on ${(agree * 100).toFixed(3)}%`);
  }
});

test.run();

// Nothing proportional to the image's size runs on the main thread but the one copy of the caller's
// pixels that the buffer contract needs (buffer-contract.test.ts): dropping alpha, decoding, resizing,
// the model, upsampling and writing the label map run on worker threads.
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel } from '../../lib/index';
import { standIn } from '../helpers/compare';

test('a raw RGBA 8000 x 6000 image: the main thread copies it and is otherwise free', async () => {
  const model = await loadModel(standIn, { device: 'cpu' });
  const width = 8000, height = 6000;
  const data = new Uint8Array(width * height * 4);
  for (let i = 0; i < data.length; i += 4093) data[i] = i & 255;
  await model.segment({ data: data.subarray(0, 64 * 64 * 4), width: 64, height: 64, channels: 4 }, { size: 64 }); // warm up
  let maxGap = 0, last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
  }, 1);
  await new Promise((r) => setTimeout(r, 20));
  const t0 = performance.now();
  const pending = model.segment({ data, width, height, channels: 4 }, { size: 256 });
  const syncMs = performance.now() - t0;
  last = performance.now();
  maxGap = 0;
  const r = await pending;
  const totalMs = performance.now() - t0;
  clearInterval(timer);
  assert.is(r.labels.length, width * height);
  const copyMs = r.stats.ms.copy; // the copy of the caller's pixels (the buffer contract)
  assert.ok(copyMs > 0 && copyMs <= syncMs + 0.5, `copy ${copyMs} ms within a call that returned after ${syncMs} ms`);
  assert.ok(syncMs - copyMs < 25, `segment() took ${syncMs.toFixed(0)} ms to return, ${(syncMs - copyMs).toFixed(0)} ms of it besides the copy`);
  assert.ok(maxGap < 40, `the event loop stalled for ${maxGap.toFixed(0)} ms after segment() returned (call: ${totalMs.toFixed(0)} ms)`);
  console.log(`  segment() returned after ${syncMs.toFixed(0)} ms (copy ${copyMs.toFixed(0)} ms), then max event-loop gap ${maxGap.toFixed(0)} ms over ${totalMs.toFixed(0)} ms`);
  model.dispose();
});

test.run();

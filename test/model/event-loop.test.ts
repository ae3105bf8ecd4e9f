// Nothing proportional to the image's size runs on the main thread but the one copy of the caller's
// pixels that the buffer contract needs (buffer-contract.test.ts): dropping alpha, decoding, resizing,
// the model, upsampling and writing the label map run on worker threads.
import * as fs from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel } from '../../lib/index';
import { standIn } from '../helpers/compare';

// CPU time of the main thread (Linux: schedstat's time on the CPU, in ns), not wall time: on a loaded
// machine the thread may wait for a core, which is not work it does.
function mainThreadCpuMs(): number {
  return Number(fs.readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
}

test('a raw RGBA 8000 x 6000 image: the main thread copies it and is otherwise free', async () => {
  const model = await loadModel(standIn, { device: 'cpu' });
  const width = 8000, height = 6000;
  const data = new Uint8Array(width * height * 4);
  for (let i = 0; i < data.length; i += 4093) data[i] = i & 255;
  await model.segment({ data: data.subarray(0, 64 * 64 * 4), width: 64, height: 64, channels: 4 }, { size: 64 }); // warm up
  await new Promise((r) => setTimeout(r, 20));
  const t0 = performance.now();
  const pending = model.segment({ data, width, height, channels: 4 }, { size: 256 });
  const syncMs = performance.now() - t0;
  // from the return to the result: how long the main thread ran (not waited), and the longest
  // delay of the event loop (libuv's own timer: no JS callbacks of ours in the measurement)
  const cpu0 = mainThreadCpuMs();
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const r = await pending;
  delay.disable();
  const busyMs = mainThreadCpuMs() - cpu0;
  const maxDelayMs = delay.max / 1e6;
  const totalMs = performance.now() - t0;
  assert.is(r.labels.length, width * height);
  const copyMs = r.stats.ms.copy; // the copy of the caller's pixels (the buffer contract)
  assert.ok(copyMs > 0 && copyMs <= syncMs + 0.5, `copy ${copyMs} ms within a call that returned after ${syncMs} ms`);
  assert.ok(syncMs - copyMs < 25, `segment() took ${syncMs.toFixed(0)} ms to return, ${(syncMs - copyMs).toFixed(0)} ms of it besides the copy`);
  // what is left is garbage collection and callbacks: no pass over the pixels or the labels (a pass
  // over 48 M labels alone costs more than 100 ms of CPU here)
  assert.ok(busyMs < 80, `the main thread ran for ${busyMs.toFixed(0)} ms of CPU after segment() returned (call: ${totalMs.toFixed(0)} ms)`);
  // the delay also counts waiting for a core on a loaded machine: a loose bound
  assert.ok(maxDelayMs < 300, `the event loop was delayed by ${maxDelayMs.toFixed(0)} ms after segment() returned`);
  console.log(
    `  segment() returned after ${syncMs.toFixed(0)} ms (copy ${copyMs.toFixed(0)} ms); then the main thread ran ${busyMs.toFixed(0)} ms of CPU ` +
      `of ${(totalMs - syncMs).toFixed(0)} ms, longest event-loop delay ${maxDelayMs.toFixed(0)} ms`,
  );
  model.dispose();
});

test.run();

// Child of test/model/memory.test.ts (a fresh process per scenario, so that its peak RSS is its own).
// Prints one JSON line.
import * as fs from 'node:fs';

import { OutOfMemoryError, loadModel } from '../../lib/index';
import { loadBinding } from '../../lib/binding';
import { standIn } from './compare';

const status = (key: string) => Number(fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp(`${key}:\\s+(\\d+)`))![1]) * 1024;

(async () => {
  const scenario = process.argv[2];
  const model = await loadModel(standIn, { device: 'cpu' });
  const raw = (w: number, h: number) => {
    const data = new Uint8Array(w * h * 3);
    for (let i = 0; i < data.length; i += 7) data[i] = (i * 31) & 255;
    return { data, width: w, height: h, channels: 3 as const };
  };
  await model.segment(raw(64, 48), { size: 64, probabilities: true }); // code paths warm, buffers small
  if (scenario === 'peak') {
    // the estimate (the most this call reserved) against what the process really took (VmHWM)
    const image = raw(3000, 2500);
    fs.writeFileSync('/proc/self/clear_refs', '5'); // resets VmHWM to the current RSS
    const base = status('VmRSS');
    let reserved = 0;
    const timer = setInterval(() => (reserved = Math.max(reserved, loadBinding().binding.memoryReserved())), 1);
    const r = await model.segment(image, { size: 1536, probabilities: true, logits: true });
    clearInterval(timer);
    reserved = Math.max(reserved, loadBinding().binding.memoryReserved());
    console.log(JSON.stringify({ peak: status('VmHWM') - base, reserved, labels: r.labels.length, after: loadBinding().binding.memoryReserved() }));
  } else if (scenario === 'huge-output') {
    // probabilities no typed array can hold (the budget lied to: STEP_SEG_MEMORY_LIMIT_MB is huge)
    try {
      await model.segment(raw(400, 300), { size: 256, probabilities: true, outputSize: 60000 });
      console.log(JSON.stringify({ outcome: 'ok' }));
    } catch (err) {
      console.log(JSON.stringify({ outcome: err instanceof OutOfMemoryError ? 'oom' : 'other', message: String(err).slice(0, 300) }));
    }
  } else if (scenario === 'address-space') {
    // run under a small RLIMIT_AS with the budget lied to: allocations fail for real, anywhere (the
    // copy, decoding, the forward's tensors, thread scratch, the result arrays) and must come back
    // as OutOfMemoryError, and the model must work again afterwards
    const outcomes: string[] = [];
    const attempt = async (what: string, call: () => Promise<unknown>) => {
      try {
        await call();
        outcomes.push(`${what}: ok`);
      } catch (err) {
        outcomes.push(err instanceof OutOfMemoryError ? `${what}: oom (${(err as Error).message.slice(0, 80)})` : `${what}: OTHER ${String(err).slice(0, 200)}`);
      }
    };
    const small = raw(512, 512), large = raw(4000, 4000);
    // a large copy that fits, resized small: works
    await attempt('copy', () => model.segment(large, { size: 256 }));
    // 4 images of 8192 x 8192 (no resize), then a 3.2 GB pixel tensor: fails in the engine (or before)
    const side = raw(8192, 8192);
    await attempt('batch', () => model.segmentBatch(Array(4).fill(side), { size: 8192, merge: false }));
    // probabilities of a 40000-pixel-wide label map: no typed array holds them
    await attempt('output', () => model.segment(small, { size: 64, probabilities: true, outputSize: 40000 }));
    const after = await model.segment(raw(64, 48), { size: 64 });
    console.log(JSON.stringify({ outcomes, after: after.labels.length, reserved: loadBinding().binding.memoryReserved() }));
  } else if (scenario === 'heap') {
    // a small V8 heap: results live outside it (typed arrays), so a large call still works
    const r = await model.segment(raw(4000, 3000), { size: 1024, probabilities: true });
    console.log(JSON.stringify({ outcome: 'ok', labels: r.labels.length, probs: r.probabilities!.data.length }));
  }
  model.dispose();
})().catch((err) => {
  console.log(JSON.stringify({ outcome: 'error', message: String(err), code: (err as { code?: string }).code }));
});

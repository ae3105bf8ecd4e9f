// Child of test/model/threads.test.ts: a fresh process per thread count, since the addon sizes its
// one thread pool from STEP_SEG_NUM_THREADS on first use. argv: how many models segment at once.
// Prints one JSON line:
//   engineThreads  threads the engine added to the process (libvips' workers not counted: decoding is
//                  sharp's), sampled every few ms while the models segmented at once; the most seen
//   cpuPerWall     the process's CPU time over the wall time while they segmented: how many threads
//                  computed at a time, on average (the main thread idles, awaiting them)
//   capacity       the same ratio for two plain spinning threads, before and after: how many cores this
//                  machine gave us just then (another process on it lowers it)
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { Worker } from 'node:worker_threads';

import { loadModel } from '../../lib/index';
import { randomVit, rng } from './random';

// Threads of this process but libvips' (named "libvips worker"; sharp decodes on them).
function threads(): number {
  let n = 0;
  for (const t of fs.readdirSync('/proc/self/task')) {
    try {
      if (!fs.readFileSync(`/proc/self/task/${t}/comm`, 'utf8').startsWith('libvips')) n++;
    } catch {
      // the thread ended between readdir and read
    }
  }
  return n;
}

// CPU time over wall time of the whole process while `work` runs.
async function cpuPerWall(work: () => Promise<unknown>): Promise<number> {
  const c0 = process.cpuUsage(), t0 = performance.now();
  await work();
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1000 / (performance.now() - t0);
}

// Two threads that spin for `ms`: the cores the machine lends us now (2 when nothing else runs).
const spin = (ms: number) =>
  cpuPerWall(() =>
    Promise.all(
      [0, 1].map(
        () =>
          new Promise((resolve, reject) => {
            const w = new Worker(`const end = Date.now() + ${ms}; while (Date.now() < end);`, { eval: true });
            w.on('exit', resolve).on('error', reject);
          }),
      ),
    ),
  );

(async () => {
  const count = Number(process.argv[2]);
  const rand = rng(Number(process.env.STEP_SEG_TEST_SEED ?? 7));
  const vit = randomVit({ embedDim: 192, depth: 4, numHeads: 3, imgSize: [128, 128], classNames: ['a', 'b', 'c'], inputSize: 640, seed: 11 });
  const image = () => {
    const w = 576 + 16 * Math.floor(rand() * 5), h = 416 + 16 * Math.floor(rand() * 5);
    return { data: new Uint8Array(w * h * 3).map(() => Math.floor(rand() * 256)), width: w, height: h, channels: 3 as const };
  };
  // libuv starts its whole pool on first use: start it before counting
  await Promise.all([0, 1, 2, 3].map(() => fsp.stat(__filename)));
  const before = threads();
  const models = await Promise.all(Array.from({ length: count }, () => loadModel(vit.buffer, { device: 'cpu' })));
  const images = models.map(() => [image(), image(), image()]);
  await Promise.all(models.map((m, i) => m.segment(images[i][0], { merge: false }))); // warm-up
  const beforeSpin = threads();
  const capacityBefore = await spin(300);
  // the spinning Workers' threads outlive their 'exit' event for a moment: wait until they are gone, so
  // that only the engine's threads are counted below
  for (const t0 = Date.now(); threads() > beforeSpin && Date.now() - t0 < 2000; ) await new Promise((r) => setTimeout(r, 5));
  let engineThreads = threads() - before;
  const timer = setInterval(() => (engineThreads = Math.max(engineThreads, threads() - before)), 3);
  const ratio = await cpuPerWall(() =>
    Promise.all(
      models.map(async (m, i) => {
        // at the image's own size: no resize, so that sharp (which has its own threads) barely works
        for (const img of images[i]) await m.segment(img, { size: Math.max(img.width, img.height), merge: false, prune: false });
      }),
    ),
  );
  clearInterval(timer);
  const capacityAfter = await spin(300);
  for (const m of models) m.dispose();
  console.log(JSON.stringify({ engineThreads, cpuPerWall: ratio, capacity: Math.min(capacityBefore, capacityAfter) }));
})().catch((err) => {
  console.error(err);
  process.exit(1);
});

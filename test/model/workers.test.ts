// worker_threads: the addon is context-aware (per-environment state), so it loads in any number of
// workers at once and in the main thread beside them, and a worker that exits (or is terminated
// mid-call) leaves the addon usable everywhere else.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel } from '../../lib/index';
import { repoRoot, standIn } from '../helpers/compare';

const demo = path.join(repoRoot, 'assets', 'demo-rocket.jpg');
const size = 160;

// tsx is registered inside the worker so that it runs the TypeScript sources like the tests do.
function startWorker(data: Record<string, unknown>): Worker {
  const tsx = require.resolve('tsx/cjs/api');
  const body = path.join(__dirname, '..', 'helpers', 'worker-segment.ts');
  return new Worker(`require(${JSON.stringify(tsx)}).register(); require(${JSON.stringify(body)});`, { eval: true, workerData: data });
}

// Collects a worker's messages until it exits; rejects on an error message or a non-zero exit.
function collect(w: Worker): Promise<Uint8Array[]> {
  const labels: Uint8Array[] = [];
  return new Promise((resolve, reject) => {
    w.on('message', (m) => {
      if (m.error) reject(new Error(`worker: ${m.error} (${m.code})`));
      else if (m.labels) labels.push(m.labels);
    });
    w.on('error', reject);
    w.on('exit', (code) => (code === 0 ? resolve(labels) : reject(new Error(`worker exited with ${code}`))));
  });
}

test('4 workers and the main thread segment at once, with identical results', async () => {
  const model = await loadModel(standIn, { device: 'cpu' });
  const reference = (await model.segment(demo, { size })).labels;
  const workers = Array.from({ length: 4 }, () => collect(startWorker({ model: standIn, image: demo, size, runs: 3 })));
  const mains = Array.from({ length: 3 }, () => model.segment(demo, { size }));
  const results = await Promise.all(workers);
  for (const r of await Promise.all(mains)) assert.equal(r.labels, reference);
  for (const labels of results) {
    assert.is(labels.length, 3);
    for (const l of labels) assert.equal(l, reference);
  }
  model.dispose();
});

test('workers that load a model and exit, or are terminated mid-call, leave the main thread working', async () => {
  for (let cycle = 0; cycle < 3; cycle++) {
    // a worker that finishes and exits by itself
    assert.is((await collect(startWorker({ model: standIn, image: demo, size, runs: 1 }))).length, 1);
    // a worker terminated while its call runs on the thread pool
    const w = startWorker({ model: standIn, image: demo, size: 512, runs: 0, hold: true });
    await new Promise<void>((resolve, reject) => {
      w.on('message', (m) => m.loaded && setTimeout(resolve, 30));
      w.on('error', reject);
    });
    await w.terminate();
    // the main thread loads and segments after each exit
    const model = await loadModel(standIn, { device: 'cpu' });
    const r = await model.segment(demo, { size });
    assert.is(r.labels.length, 640 * 427);
    model.dispose();
  }
});

test.run();

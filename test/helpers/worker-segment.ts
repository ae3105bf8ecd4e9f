// Worker body for test/model/workers.test.ts: loads the addon and a model in a worker_threads Worker,
// segments `runs` times and posts each result's labels back; `hold: true` keeps segmenting until
// terminated (for termination while a call is in flight).
import { parentPort, workerData } from 'node:worker_threads';

import { loadModel } from '../../lib/index';

(async () => {
  const { model: source, image, size, runs, hold } = workerData as { model: string; image: string; size: number; runs: number; hold?: boolean };
  const model = await loadModel(source, { device: 'cpu' });
  parentPort!.postMessage({ loaded: true });
  for (let i = 0; i < runs || hold; i++) {
    const r = await model.segment(image, { size });
    parentPort!.postMessage({ labels: r.labels });
  }
  model.dispose();
})().catch((err) => parentPort!.postMessage({ error: String(err), code: (err as { code?: string }).code }));

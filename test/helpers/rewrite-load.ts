// Child of test/model/file-change.test.ts: loads `file` `runs` times while another process rewrites it
// (truncates it, writes model A or model B back); every load must either give a model whose logits are
// exactly A's or B's, or reject with a BadModelError. Prints one JSON line of counts.
import * as fs from 'node:fs';

import { BadModelError, loadModel } from '../../lib/index';

(async () => {
  const [file, refFile, runs] = [process.argv[2], process.argv[3], Number(process.argv[4])];
  const refs = JSON.parse(fs.readFileSync(refFile, 'utf8')) as { image: number[]; a: number[]; b: number[] };
  const image = { data: Uint8Array.from(refs.image), width: 32, height: 32, channels: 3 as const };
  const counts = { loaded: 0, a: 0, b: 0, refused: 0, other: 0, messages: [] as string[] };
  for (let i = 0; i < runs; i++) {
    try {
      const m = await loadModel(file, { device: 'cpu' });
      counts.loaded++;
      const logits = Array.from((await m.segment(image, { size: 32, logits: true, merge: false })).logits!.data as Float32Array);
      if (logits.every((v, k) => v === refs.a[k])) counts.a++;
      else if (logits.every((v, k) => v === refs.b[k])) counts.b++;
      else counts.other++;
      m.dispose();
    } catch (err) {
      if (err instanceof BadModelError) counts.refused++;
      else counts.other++;
      if (counts.messages.length < 3 || !(err instanceof BadModelError)) counts.messages.push(String(err).slice(0, 200));
    }
  }
  console.log(JSON.stringify(counts));
})();

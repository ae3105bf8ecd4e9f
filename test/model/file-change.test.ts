// A model file rewritten by another process while it loads: the load gives exactly one of the
// complete models or a BadModelError ("changed while it was loading"), and never kills the process
// (the weights are read with pread into owned memory, never mapped: a truncated mapping is SIGBUS).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { loadModel } from '../../lib/index';
import { randomVit, rng } from '../helpers/random';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-rewrite-'));

test('loads while another process truncates and rewrites the file: model A, model B or BadModelError', async () => {
  const spec = { embedDim: 256, depth: 4, numHeads: 4, imgSize: [32, 32] as [number, number], classNames: ['a', 'b', 'c'] };
  const a = randomVit({ ...spec, seed: 1 }).buffer, b = randomVit({ ...spec, seed: 2 }).buffer; // 13 MB each
  const file = path.join(tmp, 'model.safetensors');
  const rand = rng(3);
  const image = Array.from({ length: 32 * 32 * 3 }, () => Math.floor(rand() * 256));
  const logitsOf = async (buf: Buffer) => {
    const m = await loadModel(buf, { device: 'cpu' });
    const r = await m.segment({ data: Uint8Array.from(image), width: 32, height: 32, channels: 3 }, { size: 32, logits: true, merge: false });
    m.dispose();
    return Array.from(r.logits!.data as Float32Array);
  };
  const refFile = path.join(tmp, 'refs.json');
  fs.writeFileSync(refFile, JSON.stringify({ image, a: await logitsOf(a), b: await logitsOf(b) }));
  fs.writeFileSync(file, a);
  fs.writeFileSync(path.join(tmp, 'a'), a);
  fs.writeFileSync(path.join(tmp, 'b'), b);
  // the rewriter: truncate to a third, write A or B back in 1 MB pieces, rest 5 to 35 ms, forever
  const rewriter = spawn(
    process.execPath,
    [
      '-e',
      `const fs = require('fs'); const [f, a, b] = process.argv.slice(1); const bufs = [fs.readFileSync(a), fs.readFileSync(b)];
       for (let i = 0; ; i++) { const buf = bufs[i % 2]; fs.truncateSync(f, Math.floor(buf.length / 3));
         const fd = fs.openSync(f, 'r+'); for (let o = 0; o < buf.length; o += 1 << 20) fs.writeSync(fd, buf, o, Math.min(1 << 20, buf.length - o), o); fs.closeSync(fd);
         Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5 + (i % 7) * 5); }`,
      file,
      path.join(tmp, 'a'),
      path.join(tmp, 'b'),
    ],
    { stdio: 'ignore' },
  );
  try {
    const child = spawnSync(process.execPath, ['--import', 'tsx', path.join(__dirname, '..', 'helpers', 'rewrite-load.ts'), file, refFile, '40'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.is(child.signal, null, `the loading process died of ${child.signal}: ${child.stderr.slice(-500)}`);
    assert.is(child.status, 0, child.stderr.slice(-500));
    const counts = JSON.parse(child.stdout.trim().split('\n').pop()!);
    console.log(`  40 loads under rewriting: ${counts.a} A, ${counts.b} B, ${counts.refused} refused (${counts.messages[0] ?? ''})`);
    assert.is(counts.other, 0, `loads that were neither model nor a BadModelError: ${counts.messages.join(' | ')}`);
    assert.is(counts.a + counts.b + counts.refused, 40);
    assert.ok(counts.refused > 0, 'the rewriting never overlapped a load: the test did not test anything');
  } finally {
    rewriter.kill();
  }
});

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
test.run();

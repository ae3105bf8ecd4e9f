// `npm run demo` (scripts/demo.mjs), the main job on the bundled defaults: the bundled model on the
// bundled photo writes the label map and the overlay, named as the CLI's --overlay names it.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import sharp from 'sharp';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { repoRoot } from '../helpers/compare';

test('npm run demo writes demo-labels.png and demo-labels.overlay.png from the bundled defaults', async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-demo-'));
  try {
    const r = spawnSync(process.execPath, [path.join(repoRoot, 'scripts', 'demo.mjs')], {
      cwd: tmp,
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '', STEP_SEG_DEVICE: 'cpu' },
      timeout: 120_000,
    });
    assert.is(r.status, 0, r.stderr);
    assert.equal(fs.readdirSync(tmp).sort(), ['demo-labels.overlay.png', 'demo-labels.png']);
    for (const f of ['demo-labels.png', 'demo-labels.overlay.png']) {
      const m = await sharp(path.join(tmp, f)).metadata();
      assert.equal([m.format, m.width, m.height], ['png', 640, 427], f);
    }
    assert.match(r.stdout, /most pixels: .*sky/);
    assert.match(r.stdout, /wrote demo-labels\.png and demo-labels\.overlay\.png\n$/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test.run();

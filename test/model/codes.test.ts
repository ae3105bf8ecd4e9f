// Every error step-seg raises carries a code: holes in arrays, hostile objects, and anything that
// escapes the checks arrive as StepErrors.
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { BadInputError, StepError, loadModel, type Model } from '../../lib/index';
import { repoRoot, standIn } from '../helpers/compare';

const demo = path.join(repoRoot, 'assets', 'demo-rocket.jpg');
let model: Model;

test.before(async () => {
  model = await loadModel(standIn, { device: 'cpu' });
});
test.after(() => model.dispose());

async function coded(p: Promise<unknown>, code?: string, pattern?: RegExp): Promise<StepError> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, StepError, `not a StepError: ${err}`);
    assert.match((err as StepError).code, /^ERR_STEP_/);
    if (code) assert.is((err as StepError).code, code);
    if (pattern) assert.match((err as Error).message, pattern);
    return err as StepError;
  }
  assert.unreachable('expected a rejection');
  throw new Error('unreachable');
}

test('a sparse array in segmentBatch is a BadInputError naming the hole', async () => {
  // eslint-disable-next-line no-sparse-arrays
  const err = await coded(model.segmentBatch([, demo] as never), 'ERR_STEP_BAD_INPUT', /hole here\) for images\[0\]/);
  assert.instance(err, BadInputError);
  await coded(model.segmentBatch(new Array(2) as never), 'ERR_STEP_BAD_INPUT', /hole/);
  await coded(model.segmentBatch([demo, undefined] as never), 'ERR_STEP_BAD_INPUT', /images\[1\]/);
});

test('hostile objects: throwing getters and proxies give coded errors', async () => {
  const throwing = { get size(): number { throw new TypeError('boom'); } };
  await coded(model.segment(demo, throwing as never), 'ERR_STEP_BAD_INPUT', /reading options threw: boom/);
  const proxy = new Proxy({}, { get() { throw new Error('trap'); }, has() { return true; }, ownKeys() { throw new Error('keys'); } });
  await coded(model.segment(proxy as never));
  await coded(model.segment(demo, proxy as never));
  await coded(model.segment({ data: new Uint8Array(12), width: 2, height: 2, get channels(): 3 { throw new Error('x'); } } as never), 'ERR_STEP_BAD_INPUT', /reading image threw/);
  await coded(loadModel(standIn, proxy as never));
  await coded(model.forwardFeatures(proxy as never));
  await coded(model.segment(Symbol('x') as never), 'ERR_STEP_BAD_INPUT');
  await coded(model.segment(demo, { merge: { levels: { length: 2, 0: 4, 1: 2 } } } as never), 'ERR_STEP_BAD_INPUT');
});

test.run();

// The skip mechanism (test/helpers/skip.ts + scripts/run-tests.mjs): the runner, run in a child process
// on the fixture files of test/fixtures/skips, counts a test that calls skip() as skipped, not passed,
// across several files in one uvu process and in named suites, adds uvu's test.skip(), counts a test
// that skips and then fails as failed, prints each skip's line, ends with the summary line, and exits
// non-zero on a failure or when no test ran.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

import { fixturesDir, repoRoot } from '../helpers/compare';

const runner = path.join(repoRoot, 'scripts', 'run-tests.mjs');
const fixtures = path.join(fixturesDir, 'skips');

function runTests(pattern: string) {
  const r = spawnSync(process.execPath, [runner, fixtures, pattern], {
    cwd: repoRoot,
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: '' },
    timeout: 120_000,
  });
  const stdout = r.stdout.replace(/\x1b\[[0-9;]*m/g, '');
  const lines = stdout.trimEnd().split('\n');
  return { code: r.status, stdout, stderr: r.stderr, last: lines[lines.length - 1] };
}

test('skips are counted as skipped, not passed, over two files (a named suite in one) and test.skip()', () => {
  const r = runTests('^[ab]-.*\\.case\\.ts$');
  assert.is(r.last, '2 passed, 0 failed, 3 skipped', r.stdout + r.stderr);
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^ {2}skip: skips: fixture reason a$/m);
  assert.match(r.stdout, /^ {2}skip: named > skips: fixture reason b$/m);
  assert.match(r.stdout, /^ {2}Passed: {4}4$/m, 'uvu itself counts the skips as passes');
});

test('a failure fails the run; a test that skips and then fails is a failure, not a skip', () => {
  const r = runTests('^c-.*\\.case\\.ts$');
  assert.is(r.last, '0 passed, 2 failed, 1 skipped', r.stdout + r.stderr);
  assert.is(r.code, 1);
});

test('a run where every test skips, or none is found, exits non-zero', () => {
  const all = runTests('^d-.*\\.case\\.ts$');
  assert.is(all.last, '0 passed, 0 failed, 1 skipped', all.stdout + all.stderr);
  assert.match(all.stdout, /no test ran: all 1 skipped/);
  assert.is(all.code, 1);
  const none = runTests('^no-such-file$');
  assert.is(none.last, '0 passed, 0 failed, 0 skipped', none.stdout + none.stderr);
  assert.match(none.stdout, /no test ran: none found/);
  assert.is(none.code, 1);
});

test.run();

// Skipped tests. uvu has no skip from inside a test: a test that cannot run (no usable GPU, ../shared
// absent) and returns early counts as passed. A test that cannot run ends with `return skip(ctx, why)`
// instead (ctx: the context uvu passes every test body; its __test__ and __suite__ name the test):
//
//   test('real photos', async (ctx) => {
//     if (!images.length) return skip(ctx, '../shared/images is absent');
//     ...
//   });
//
// skip() prints `  skip: <test name>: <reason>` and, when STEP_SEG_TEST_SKIPS names a file (set by
// scripts/run-tests.mjs, which `npm test` runs), appends the skip to it as one JSON line. uvu still
// counts the test as passed; the runner moves each recorded skip from passed to skipped when it prints
// its closing `N passed, N failed, N skipped`. A skip must be the test's last act: a test that calls
// skip() and then fails counts as failed. Run through uvu directly, the line is printed and nothing is
// recorded.
import * as fs from 'node:fs';

/** The environment variable naming the file where skips are recorded (one JSON line each). */
export const kSkipFileEnv = 'STEP_SEG_TEST_SKIPS';

/** One recorded skip: the test's suite ('' for uvu's default `test`), its name and the reason. */
export interface SkipRecord {
  suite: string;
  test: string;
  reason: string;
}

/** What uvu passes to a test body (uvu's Crumbs). */
export interface TestCrumbs {
  __suite__: string;
  __test__: string;
}

// uvu prints a dot per test with no newline after it; note whether stdout sits at the start of a line
// so that a skip line starts on its own.
const kTracked = Symbol.for('step-seg.test.stdout-tracked');
const out = process.stdout as typeof process.stdout & { [kTracked]?: { atLineStart: boolean } };
if (!out[kTracked]) {
  const state = { atLineStart: true };
  const write = out.write.bind(out) as (...args: unknown[]) => boolean;
  out.write = ((chunk: unknown, ...rest: unknown[]) => {
    const text = typeof chunk === 'string' ? chunk : chunk instanceof Uint8Array ? Buffer.from(chunk).toString() : '';
    if (text.length) state.atLineStart = text.endsWith('\n');
    return write(chunk, ...rest);
  }) as typeof out.write;
  out[kTracked] = state;
}

/** Marks the running test skipped, with the reason; return right after (`return skip(ctx, reason)`). */
export function skip(ctx: TestCrumbs, reason: string): void {
  const record: SkipRecord = { suite: ctx.__suite__ ?? '', test: ctx.__test__ ?? '', reason };
  if (!record.test) throw new Error('skip(ctx, reason): ctx must be the context uvu passed to the test body');
  const name = record.suite ? `${record.suite} > ${record.test}` : record.test;
  process.stdout.write(`${out[kTracked]!.atLineStart ? '' : '\n'}  skip: ${name}: ${reason}\n`);
  const file = process.env[kSkipFileEnv];
  if (file) fs.appendFileSync(file, JSON.stringify(record) + '\n');
}

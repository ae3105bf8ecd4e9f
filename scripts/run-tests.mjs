#!/usr/bin/env node
// The test runner behind `npm test`: uvu (through tsx) in a child process, its output passed through,
// then one closing line "N passed, N failed, N skipped" with the truth about skips. uvu counts a test
// that returns early as passed; tests that cannot run call skip() (test/helpers/skip.ts), which appends
// a JSON line to the file named by STEP_SEG_TEST_SKIPS (set here, one file for the whole run, so every
// test file uvu loads in its one process records into it). This runner moves those from passed to
// skipped (a test that recorded a skip and then failed stays failed), and adds uvu's own test.skip()
// count. Exit status 1 when a test failed, uvu exited non-zero or printed no summary, or no test ran
// to a verdict (none found, or every one skipped).
// A whole run (no arguments) where the CUDA emulator is built (build-emu/, npm run build:emu) runs in
// two passes, summed in the closing line: every other file on the default binary, then the CUDA test
// files on the emulator with STEP_SEG_REQUIRE_CUDA=1, where a skip is a failure.
//
//   node scripts/run-tests.mjs [dir] [pattern] [uvu options]   (default: test "\.test\.ts$")
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';

const kSkipFileEnv = 'STEP_SEG_TEST_SKIPS'; // as test/helpers/skip.ts

const require = createRequire(import.meta.url);
const uvuBin = path.join(path.dirname(require.resolve('uvu')), '..', 'bin.js'); // uvu exports no ./bin.js
const args = process.argv.slice(2);
if (!args.length) args.push('test', '\\.test\\.ts$');

// One uvu run (a child process) with `env` added; its counts, skips moved out of passed.
async function runUvu(uvuArgs, env) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-skips-'));
  const skipFile = path.join(tmp, 'skips.jsonl');
  fs.writeFileSync(skipFile, '');
  const child = spawn(process.execPath, ['--import', 'tsx', uvuBin, ...uvuArgs], {
    stdio: ['inherit', 'pipe', 'inherit'],
    env: { ...process.env, ...env, [kSkipFileEnv]: skipFile },
  });
  let output = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    output += chunk;
    process.stdout.write(chunk);
  });
  const [code, signal] = await new Promise((resolve) => child.on('close', (c, s) => resolve([c, s])));

  const text = output.replace(/\x1b\[[0-9;]*m/g, '');
  const lines = text.split(/\r?\n/);
  const last = (label) => {
    const re = new RegExp(`^\\s*${label}:\\s*(\\d+)\\s*$`);
    let n;
    for (const line of lines) {
      const m = re.exec(line);
      if (m) n = Number(m[1]);
    }
    return n;
  };
  const total = last('Total'), uvuPassed = last('Passed'), uvuSkipped = last('Skipped') ?? 0;
  const problems = [];
  if (total === undefined || uvuPassed === undefined) problems.push('uvu printed no Total / Passed summary');

  const records = fs.readFileSync(skipFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  fs.rmSync(tmp, { recursive: true, force: true });
  // A test that recorded a skip and then failed is a failure: each of uvu's failure headers,
  // ' FAIL ' [' <suite> '] ' "<name>"', cancels one skip recorded under that suite and name.
  const failures = lines.filter((l) => /^\s*FAIL\s/.test(l)).map((l) => l.trimEnd());
  const skips = records.filter((r) => {
    const i = failures.findIndex((l) => l.endsWith(` FAIL ${r.suite ? ` ${r.suite} ` : ''} "${r.test}"`));
    if (i >= 0) failures.splice(i, 1);
    return i < 0;
  });

  let passed = (uvuPassed ?? 0) - skips.length;
  let failed = (total ?? 0) - (uvuPassed ?? 0);
  if (passed < 0) {
    problems.push(`${skips.length} skips recorded but uvu passed only ${uvuPassed}`);
    passed = 0;
  }
  const skipped = skips.length + uvuSkipped;
  if ((code !== 0 || signal) && failed === 0) {
    problems.push(signal ? `uvu was killed by ${signal}` : `uvu exited with status ${code}`);
    failed = 1;
  } else if (problems.length && failed === 0) failed = 1;
  return { passed, failed, skipped, skips, uvuSkipped, problems };
}

// The CUDA tests: on the CUDA emulator when its build exists (npm run build:emu) and this is a whole
// run, with STEP_SEG_REQUIRE_CUDA=1 so that nothing there may skip; the other files on the default
// binary. STEP_SEG_TEST_EMU=0 (or STEP_SEG_BINARY set) runs everything on the default binary.
const kCudaFiles = '(ops/cuda|ops/step\\.cuda|model/cuda-model|model/cuda-photos|model/cuda-selfcheck|emu/emulator)\\.test\\.ts$';
const emuBinary = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'build-emu', 'Release', 'step_seg.node');
const wholeRun = args.length === 2 && args[0] === 'test' && args[1] === '\\.test\\.ts$';
const useEmu = wholeRun && fs.existsSync(emuBinary) && !process.env.STEP_SEG_BINARY && process.env.STEP_SEG_TEST_EMU !== '0';
const runs = useEmu
  ? [
      { args: [...args, '--ignore', kCudaFiles], env: {} },
      { args: ['test', kCudaFiles], env: { STEP_SEG_BINARY: emuBinary, STEP_SEG_REQUIRE_CUDA: '1' }, label: 'the CUDA tests on the CUDA emulator' },
    ]
  : [{ args, env: {} }];
let passed = 0, failed = 0, skipped = 0, uvuSkipped = 0;
const skips = [], problems = [];
for (const run of runs) {
  if (run.label) console.log(`\n== ${run.label} (STEP_SEG_BINARY=${path.relative(process.cwd(), emuBinary)}, STEP_SEG_REQUIRE_CUDA=1) ==`);
  const r = await runUvu(run.args, run.env);
  passed += r.passed, failed += r.failed, skipped += r.skipped, uvuSkipped += r.uvuSkipped;
  skips.push(...r.skips), problems.push(...r.problems);
}
if (passed + failed === 0) problems.push(skipped ? `no test ran: all ${skipped} skipped` : 'no test ran: none found');

if (skipped) {
  const byReason = new Map();
  for (const r of skips) byReason.set(r.reason, (byReason.get(r.reason) ?? 0) + 1);
  if (uvuSkipped) byReason.set('test.skip()', uvuSkipped);
  console.log('skipped tests, by reason:');
  for (const [reason, n] of byReason) console.log(`  ${n} x ${reason}`);
  if (wholeRun && !useEmu && skips.some((r) => /cuda|CUDA|GPU|NVIDIA/.test(r.reason)))
    console.log('  (without a GPU, `npm run build:emu` builds the CUDA emulator; npm test then runs the CUDA tests on it)');
}
for (const p of problems) console.log(`run-tests: ${p}`);
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exitCode = failed > 0 || passed + failed === 0 ? 1 : 0;

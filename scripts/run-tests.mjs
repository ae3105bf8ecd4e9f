#!/usr/bin/env node
// The test runner behind `npm test`: uvu (through tsx) in a child process, its output passed through,
// then one closing line "N passed, N failed, N skipped" with the truth about skips. uvu counts a test
// that returns early as passed; tests that cannot run call skip() (test/helpers/skip.ts), which appends
// a JSON line to the file named by STEP_SEG_TEST_SKIPS (set here, one file for the whole run, so every
// test file uvu loads in its one process records into it). This runner moves those from passed to
// skipped (a test that recorded a skip and then failed stays failed), and adds uvu's own test.skip()
// count. Exit status 1 when a test failed, uvu exited non-zero or printed no summary, or no test ran
// to a verdict (none found, or every one skipped).
// Where the CUDA emulator is built (build-emu/, npm run build:emu), a run under test/ goes in two passes,
// summed in the closing line: the files with CUDA tests (kEmuFiles: every op test of test/ops, which
// holds each op's CPU tests and its CUDA comparisons, and the CUDA model tests) on the emulator, whose
// binary carries the CPU backend too, with STEP_SEG_REQUIRE_CUDA=1, where a CUDA skip is a failure;
// every other file on the default binary. Each file runs once; a pass with no file is left out.
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
if (!args.length) args.push('test');
if (args.length === 1 || args[1].startsWith('-')) args.splice(1, 0, '\\.test\\.ts$'); // uvu's own default takes every .ts

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

// The files with CUDA tests, relative to test/ (a folder ends in /): on the CUDA emulator when its build
// exists, with STEP_SEG_REQUIRE_CUDA=1 so that no CUDA test may skip there; the other files on the
// default binary. STEP_SEG_TEST_EMU=0 (or STEP_SEG_BINARY set) runs everything on the default binary.
const kEmuFiles = ['ops/', 'model/cuda-model.test.ts', 'model/cuda-photos.test.ts', 'model/cuda-selfcheck.test.ts', 'emu/emulator.test.ts'];
const repoRoot = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const emuBinary = path.join(repoRoot, 'build-emu', 'Release', 'step_seg.node');
const [dir, pattern, ...uvuOptions] = args;

// The files uvu would load for `dir` and `pattern` (as uvu/parse: names relative to dir, case-insensitive).
function testFiles(root, re) {
  const out = [];
  const walk = (d, prefix) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const name = prefix ? `${prefix}/${e.name}` : e.name;
      if (/^\.git|node_modules/i.test(name)) continue;
      if (e.isDirectory()) walk(path.join(d, e.name), name);
      else if (re.test(name)) out.push(name);
    }
  };
  if (fs.existsSync(root) && fs.statSync(root).isDirectory()) walk(root, '');
  return out;
}
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
// kEmuFiles relative to dir ('' when dir lies inside one of its folders), as one regex on uvu's names.
const under = path.relative(path.join(repoRoot, 'test'), path.resolve(dir)).split(path.sep).join('/');
const emuEntries = under.startsWith('..') || path.isAbsolute(under) ? [] : kEmuFiles.flatMap((e) =>
  !under ? [e] : e.startsWith(`${under}/`) ? [e.slice(under.length + 1)] : e.endsWith('/') && `${under}/`.startsWith(e) ? [''] : []);
const emuRe = emuEntries.includes('') ? '' : `^(?:${emuEntries.map((e) => escape(e) + (e.endsWith('/') ? '' : '$')).join('|')})`;
const wanted = new RegExp(pattern, 'i');
const emuWanted = emuEntries.length ? new RegExp(emuRe, 'i') : undefined;
const files = testFiles(path.resolve(dir), wanted);
const emuFiles = emuWanted ? files.filter((f) => emuWanted.test(f)) : [];
const useEmu = emuFiles.length > 0 && fs.existsSync(emuBinary) && !process.env.STEP_SEG_BINARY && process.env.STEP_SEG_TEST_EMU !== '0';
const emuRun = {
  args: [dir, emuRe ? `^(?=.*(?:${pattern}))(?:${emuRe.slice(1)})` : pattern, ...uvuOptions],
  env: { STEP_SEG_BINARY: emuBinary, STEP_SEG_REQUIRE_CUDA: '1' },
  label: `${emuFiles.length} file(s) with CUDA tests on the CUDA emulator`,
};
const runs = !useEmu
  ? [{ args, env: {} }]
  : emuFiles.length === files.length
    ? [emuRun]
    : [{ args: [dir, pattern, ...uvuOptions, '--ignore', emuRe], env: {}, label: `${files.length - emuFiles.length} file(s) on the default binary` }, emuRun];
let passed = 0, failed = 0, skipped = 0, uvuSkipped = 0;
const skips = [], problems = [];
for (const run of runs) {
  if (run.label) console.log(`\n== ${run.label}${run.env.STEP_SEG_BINARY ? ` (STEP_SEG_BINARY=${path.relative(process.cwd(), emuBinary)}, STEP_SEG_REQUIRE_CUDA=1)` : ''} ==`);
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
  if (!useEmu && skips.some((r) => /cuda|CUDA|GPU|NVIDIA/.test(r.reason)))
    console.log('  (without a GPU, `npm run build:emu` builds the CUDA emulator; this runner then runs the CUDA tests on it)');
}
for (const p of problems) console.log(`run-tests: ${p}`);
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exitCode = failed > 0 || passed + failed === 0 ? 1 : 0;

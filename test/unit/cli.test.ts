// The command line (bin/step-seg.mjs) over the built package (dist/, from `npm run build:ts`): help,
// info, segment (label maps, overlay, token picture; a bad file reported, the rest still written,
// exit code 1), doctor, usage errors. Each command runs in a child process, as a user runs it.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import sharp from 'sharp';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';

import { readHeaderFromFile } from '../../lib/safetensors';
import { repoRoot, standIn } from '../helpers/compare';

const cli = path.join(repoRoot, 'bin', 'step-seg.mjs');
const demo = path.join(repoRoot, 'assets', 'demo-rocket.jpg'); // 640 x 427
const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'));

function stepSeg(args: string[], cwd = repoRoot) {
  const r = spawnSync(process.execPath, [cli, ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: '', STEP_SEG_DEVICE: 'cpu' },
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const test = suite<{ tmp: string }>('cli');

test.before((ctx) => {
  ctx.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'step-seg-cli-'));
});
test.after((ctx) => fs.rmSync(ctx.tmp, { recursive: true, force: true }));

test('package.json names the CLI and ships bin/', () => {
  assert.is(pkg.bin['step-seg'], 'bin/step-seg.mjs');
  assert.ok(pkg.files.includes('bin/'));
  assert.ok(fs.readFileSync(cli, 'utf8').startsWith('#!/usr/bin/env node'));
});

test('--help, <command> --help and --version', () => {
  const main = stepSeg(['--help']);
  assert.is(main.code, 0);
  for (const c of ['segment', 'info', 'doctor', 'bench']) assert.match(main.stdout, c);
  const seg = stepSeg(['segment', '--help']);
  assert.is(seg.code, 0);
  for (const o of ['--out', '--format', '--overlay', '--tokens', '--model', '--device', '--size', '--merge', '--prune']) assert.match(seg.stdout, o);
  for (const c of ['info', 'doctor', 'bench']) assert.is(stepSeg([c, '--help']).code, 0);
  const v = stepSeg(['--version']);
  assert.is(v.code, 0);
  assert.is(v.stdout.trim(), pkg.version);
});

test('usage errors: one line on stderr, exit code 2', () => {
  for (const args of [['segment', '--bogus', demo], ['frobnicate'], ['segment', demo, '--format', 'gif'], ['segment', demo, '--size', 'big'], ['segment']]) {
    const r = stepSeg(args);
    assert.is(r.code, 2, args.join(' '));
    assert.match(r.stderr, /^step-seg: [^\n]+\n$/, args.join(' '));
  }
});

test('info prints the config, classes, parameters, merging and licence of the bundled model', async ({ tmp }) => {
  // `default` names the bundled model from any folder, not only inside a clone
  const r = stepSeg(['info', 'default'], tmp);
  assert.is(r.code, 0, r.stderr);
  for (const k of ['arch', 'params', 'classes', 'merge', 'prune', 'sky', 'bicyclist', 'patch 16']) assert.match(r.stdout, k);
  assert.match(r.stdout, /licence\s+research and non-commercial use only/);
  // the bundled model's scorer is its learned policy: what it runs on, not the similarity scorer's taus
  assert.match(r.stdout, /merge\s+learned: levels 8x8, 4x4, 2x2, thresholds 0\.9, 0\.8, 0\.75; EfficientNet-Lite0 trunk to feature map 3 \(stride 16\) of the input pooled by 2: one score per 32-px cell, sigmoid heads/);
  assert.match(stepSeg(['info', standIn]).stdout, /merge\s+similarity: .*colorTau 16, textureTau 32/);
  assert.ok(r.stdout.includes(path.join(repoRoot, 'weights', 'LICENSE')), 'the path of the terms');
  assert.is(stepSeg(['info'], tmp).stdout, r.stdout, 'no argument is the bundled model too');
  assert.is(stepSeg(['info', 'weights/default']).stdout, r.stdout, 'the path works inside the clone');
  const j = stepSeg(['info', 'default', '--json']);
  const info = JSON.parse(j.stdout);
  const header = await readHeaderFromFile(path.join(repoRoot, 'weights', 'default', 'model.safetensors'));
  assert.is(info.params, header.tensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0));
  assert.is(info.classes.length, 11);
  assert.equal(info.merge.levels, [8, 4, 2]);
  const bad = stepSeg(['info', path.join(os.tmpdir(), 'no-such-model-dir')]);
  assert.is(bad.code, 1);
  assert.match(bad.stderr, /^step-seg: [^\n]*model not found[^\n]*\n$/);
});

test('segment writes the label map, the overlay and the token picture', async ({ tmp }) => {
  const out = path.join(tmp, 'out1');
  const r = stepSeg(['segment', demo, '--out', out, '--overlay', '--tokens', '--model', standIn]);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /1 image segmented/);
  assert.match(r.stdout, /of the dense tokens, \d+% enter the encoder/);
  assert.equal(fs.readdirSync(out).sort(), ['demo-rocket.overlay.png', 'demo-rocket.png', 'demo-rocket.tokens.png']);
  for (const f of ['demo-rocket.png', 'demo-rocket.overlay.png']) {
    const m = await sharp(path.join(out, f)).metadata();
    assert.equal([m.format, m.width, m.height], ['png', 640, 427], f);
  }
  const t = await sharp(path.join(out, 'demo-rocket.tokens.png')).metadata();
  assert.is(t.width, 512); // the stand-in model's input size
  assert.ok(t.height! > 342, 'the photo (512 x 342) and the legend below');
});

test('segment --format json and raw, --merge off, --size', ({ tmp }) => {
  const out = path.join(tmp, 'out2');
  assert.is(stepSeg(['segment', demo, '--out', out, '--format', 'json', '--merge', 'off', '--size', '256']).code, 0);
  const j = JSON.parse(fs.readFileSync(path.join(out, 'demo-rocket.json'), 'utf8'));
  assert.equal([j.width, j.height, j.dtype, j.classes.length], [640, 427, 'uint8', 11]);
  assert.is(Buffer.from(j.labels, 'base64').length, 640 * 427);
  assert.is(j.stats.tokens.input, j.stats.tokens.dense, 'merge off is dense');
  assert.is(stepSeg(['segment', demo, '--out', out, '--format', 'raw', '--size', '128']).code, 0);
  assert.is(fs.statSync(path.join(out, 'demo-rocket.raw')).size, 640 * 427);
});

test('a bad file is reported and skipped, the good one is written, exit code 1', ({ tmp }) => {
  const bad = path.join(tmp, 'broken.jpg');
  fs.writeFileSync(bad, 'this is not a JPEG');
  const out = path.join(tmp, 'out3');
  const r = stepSeg(['segment', bad, demo, path.join(tmp, 'missing.png'), '--out', out, '--size', '128']);
  assert.is(r.code, 1);
  assert.match(r.stderr, /step-seg: [^\n]*broken\.jpg: [^\n]*could not be decoded/);
  assert.match(r.stderr, /missing\.png: no such file/);
  assert.match(r.stdout, /1 image segmented, 2 failed/);
  assert.ok(fs.existsSync(path.join(out, 'demo-rocket.png')));
  assert.not.ok(fs.existsSync(path.join(out, 'broken.png')));
});

test('folders and globs expand to their images; same names do not overwrite each other', ({ tmp }) => {
  const dir = path.join(tmp, 'in');
  fs.mkdirSync(path.join(dir, 'a', 'b'), { recursive: true });
  fs.copyFileSync(demo, path.join(dir, 'one.jpg'));
  fs.copyFileSync(demo, path.join(dir, 'a', 'b', 'one.jpg'));
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'not an image');
  const out = path.join(tmp, 'out4');
  const folder = stepSeg(['segment', dir, '--out', out, '--size', '64']);
  assert.is(folder.code, 0, folder.stderr);
  assert.equal(fs.readdirSync(out).sort(), ['one-2.png', 'one.png']);
  const out5 = path.join(tmp, 'out5');
  const globbed = stepSeg(['segment', 'in/**/*.jpg', 'in/*.jp?', '--out', out5, '--size', '64'], tmp);
  assert.is(globbed.code, 0, globbed.stderr);
  assert.match(globbed.stdout, /2 images segmented/);
  const none = stepSeg(['segment', 'in/*.png', '--out', out5], tmp);
  assert.is(none.code, 1);
  assert.match(none.stderr, /in\/\*\.png: no images match/);
});

test('the token counts say what each number is, and the numbers are those of the stats', ({ tmp }) => {
  // the bundled model merges and has exits: both shares appear, each of the dense count
  const out = path.join(tmp, 'out6');
  const r = stepSeg(['segment', demo, '--out', out, '--format', 'json', '--size', '320']);
  assert.is(r.code, 0, r.stderr);
  const { tokens } = JSON.parse(fs.readFileSync(path.join(out, 'demo-rocket.json'), 'utf8')).stats;
  const perBlock = tokens.perBlock.reduce((a: number, b: number) => a + b, 0) / tokens.perBlock.length;
  const share = (n: number) => `${Math.round((100 * n) / tokens.dense)}%`;
  assert.ok(Math.round(perBlock) < tokens.input, 'tokens halted at the exits');
  const line = r.stdout.split('\n').find((l) => l.startsWith(`${demo}:`))!;
  assert.ok(
    line.includes(`tokens: ${tokens.input} of ${tokens.dense} enter the encoder (${share(tokens.input)}), ${Math.round(perBlock)} per block on average with early exits (${share(perBlock)})`),
    line,
  );
  assert.match(r.stdout, new RegExp(`of the dense tokens, ${share(tokens.input)} enter the encoder, ${share(perBlock)} per block on average with early exits`));
  assert.not.match(r.stdout, /kept/);
});

test('--merge learned on a model without a learned policy says so plainly, and what to use', () => {
  const r = stepSeg(['segment', demo, '--merge', 'learned', '--model', standIn, '--out', path.join(os.tmpdir(), 'step-seg-never-written')]);
  assert.is(r.code, 2);
  assert.match(r.stderr, /^step-seg: [^\n]+\n$/);
  assert.match(r.stderr, /this model carries no learned merge policy/);
  assert.match(r.stderr, /--merge similarity/);
  assert.not.match(r.stderr, /Expected|received|of type/);
  assert.match(stepSeg(['segment', '--help']).stdout, /learned only for a\s+model whose weights carry a merge policy/);
});

test('bench --images and --image: dense and STEP rows per image and size, and the STEP costs per stage', async ({ tmp }) => {
  const dir = path.join(tmp, 'bench-photos');
  fs.mkdirSync(dir);
  const names = ['a.png', 'b.png'];
  for (const name of names) {
    const w = 80 + Math.floor(Math.random() * 120), h = 60 + Math.floor(Math.random() * 100);
    const px = Buffer.alloc(w * h * 3);
    for (let i = 0; i < px.length; i++) px[i] = Math.floor(Math.random() * 256);
    await sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toFile(path.join(dir, name));
  }
  const r = stepSeg(['bench', '--images', dir, '--image', demo, '--sizes', '96,128', '--runs', '1', '--device', 'cpu']);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /on 3 images, cpu/);
  for (const file of [...names.map((n) => path.join(dir, n)), demo]) {
    const rel = path.relative(repoRoot, file); // as the CLI shows a path: relative below its cwd
    const at = r.stdout.indexOf(rel.startsWith('..') ? file : rel);
    assert.ok(at >= 0, `${file} is not in the output`);
    const block = r.stdout.slice(at).split('\n\n')[0];
    for (const size of [96, 128]) {
      assert.match(block, new RegExp(`^\\s*${size}\\s+dense\\s+[\\d.]+\\s+\\d+\\s+[\\d.]+$`, 'm'));
      assert.match(block, new RegExp(`^\\s*${size}\\s+STEP\\s+[\\d.]+\\s+\\d+\\s+[\\d.]+$`, 'm'));
    }
    // the bundled model merges and prunes: every STEP stage is timed on the CPU
    const costs = [...block.matchAll(/^\s+((?:[\d.]+\s+){7})\(([\d.]+)% of [\d.]+ ms\)$/gm)];
    assert.is(costs.length, 2, block);
  }
  assert.match(r.stdout, /STEP ms score select embed halt\+compact unshare upsample\+argmax/);
  const missing = stepSeg(['bench', '--images', path.join(tmp, 'no-such-folder')]);
  assert.is(missing.code, 2);
  assert.match(missing.stderr, /no such file or folder/);
});

test('doctor prints the binary it loaded, which build made it, and the licences', () => {
  const r = stepSeg(['doctor']);
  assert.is(r.code, 0, r.stderr);
  const m = /binary\s+(\S+\.node)/.exec(r.stdout);
  assert.ok(m, r.stdout);
  assert.ok(fs.existsSync(m![1]), m![1]);
  for (const k of ['cuda', 'cpu', 'gemm kernel', 'node', 'N-API']) assert.match(r.stdout, k);
  const j = JSON.parse(stepSeg(['doctor', '--json']).stdout);
  assert.is(j.binary.file, m![1]);
  assert.type(j.cuda.compiled, 'boolean');
  assert.match(r.stdout, /licence\s+code Apache-2\.0[^\n]*bundled model: research and non-commercial use only/);
  assert.ok(r.stdout.includes(path.join(repoRoot, 'weights', 'LICENSE')));
  // the build that made the binary, and without CUDA how to get it: never "built without nvcc" for
  // the binding.gyp fallback (which never looks for nvcc)
  assert.ok(['binding.gyp', 'cmake-js'].includes(j.binary.build), j.binary.build);
  assert.match(r.stdout, new RegExp(`build\\s+${j.binary.build.replace('.', '\\.')}, (CPU only|the CUDA backend compiled in)`));
  assert.not.match(r.stdout, /built without nvcc/);
  if (!j.cuda.compiled) {
    const nvcc = (process.env.PATH ?? '').split(path.delimiter).some((d) => fs.existsSync(path.join(d, 'nvcc')));
    assert.match(r.stdout, /`npm run build:native`[^\n]* builds the CUDA backend in/);
    assert.match(r.stdout, nvcc ? /nvcc is on the PATH/ : /once nvcc \(the CUDA toolkit\) is on the PATH/);
    if (j.binary.build === 'binding.gyp') assert.match(r.stdout, /CPU-only fallback built from binding\.gyp/);
  }
});

test.run();

// step-seg doctor: which binary loaded, CUDA status, GPU, CPU features, Node and N-API.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { api, decodeVersion, kLicence, onPath, pkg, root } from './shared.mjs';

export const help = `Usage: step-seg doctor [options]

Which native binary loaded, from where and which build made it (binding.gyp or cmake-js), whether
CUDA is usable and if not why and how to get it, the GPU, driver and runtime versions, the CPU
features and engine settings, Node and N-API versions, and the licences.

Options:
      --json               the same as JSON
      --verbose            stack traces on errors
  -h, --help               this help`;

export const options = { json: { type: 'boolean' } };

// ---------------------------------------------------------------------------------------------------
// doctor

// How to get a binary with the CUDA backend, for one without it.
function cudaHint(binary) {
  if (binary.kind === 'STEP_SEG_BINARY') return 'unset STEP_SEG_BINARY to load the package\'s own binary, or point it at a cmake-js build made with nvcc';
  const nvcc = onPath('nvcc');
  if (!fs.existsSync(path.join(root, 'CMakeLists.txt')))
    // an installed package: it ships the CPU-only sources alone
    return (
      (binary.kind === 'prebuilt' ? 'this prebuilt binary was built without the CUDA backend' : `npm compiled this fallback because no prebuilt binary fits ${process.platform}-${process.arch}`) +
      '; for CUDA, run `npm run build:native` in a clone of step-seg (with nvcc) and load it with STEP_SEG_BINARY=<clone>/build/Release/step_seg.node'
    );
  const run = `\`npm run build:native\` in ${root} (cmake-js) builds the CUDA backend in`;
  return nvcc ? `nvcc is on the PATH (${nvcc}): ${run}, and the next load picks it up` : `${run} once nvcc (the CUDA toolkit) is on the PATH`;
}

// The bundled model's licence in one line, from its config.
function defaultModelLicence() {
  try {
    const license = JSON.parse(fs.readFileSync(path.join(root, 'weights', 'default', 'config.json'), 'utf8')).license;
    return typeof license === 'string' ? license : undefined;
  } catch {
    return undefined;
  }
}

function cpuFlags() {
  if (process.platform !== 'linux') return undefined;
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const line = text.split('\n').find((l) => /^flags\s*:/.test(l)) ?? '';
    const flags = new Set(line.replace(/^flags\s*:/, '').trim().split(/\s+/));
    const model = (/^model name\s*:\s*(.*)$/m.exec(text) ?? [])[1];
    return { model, avx2: flags.has('avx2'), fma: flags.has('fma'), avx512f: flags.has('avx512f'), avx512bf16: flags.has('avx512_bf16') };
  } catch {
    return undefined;
  }
}

export async function run(values) {
  const report = {
    version: pkg.version,
    node: process.version,
    napi: Number(process.versions.napi),
    napiNeeded: pkg.binary?.napi_versions?.[0],
    platform: `${process.platform}-${process.arch}`,
    glibc: process.report?.getReport?.().header?.glibcVersionRuntime,
    cpus: os.cpus().length,
  };
  let status = 0;
  let index;
  try {
    index = await api();
  } catch (err) {
    report.packageError = err.message;
  }
  if (index) {
    try {
      const info = index.runtimeInfo();
      const rel = path.relative(root, info.binary);
      report.binary = {
        file: info.binary,
        kind: process.env.STEP_SEG_BINARY ? 'STEP_SEG_BINARY' : rel.startsWith('prebuilds') ? 'prebuilt' : rel.startsWith('build') ? 'local build' : 'other',
        build: info.build ?? 'unknown',
      };
      report.engine = { threads: info.threads, gemmKernel: info.gemmKernel, bf16Kernel: info.bf16Kernel, defaultPrecision: info.defaultPrecision };
    } catch (err) {
      report.binaryError = err.message;
      status = 1;
    }
    if (report.binary) {
      const p = await index.cudaStatus();
      report.cuda = p;
      if (!p.compiled) report.cudaHint = cudaHint(report.binary);
      try {
        const m = await index.loadModel();
        report.defaultDevice = { device: m.device, reason: m.deviceReason };
        m.dispose();
      } catch (err) {
        report.defaultDevice = { error: err.message };
      }
    }
  } else status = 1;
  report.cpu = cpuFlags();
  try {
    const sharp = (await import('sharp')).default;
    report.sharp = { sharp: sharp.versions.sharp, libvips: sharp.versions.vips };
  } catch {
    // reported through packageError when it matters
  }
  report.env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('STEP_SEG_')));
  report.licence = { code: kLicence.code, bundledModel: defaultModelLicence(), terms: kLicence.modelFile };

  if (values.json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    return status;
  }
  const lines = [`step-seg ${report.version} doctor`];
  const row = (k, v) => lines.push(`  ${k.padEnd(10)} ${v}`);
  if (report.packageError) row('package', `cannot load: ${report.packageError}`);
  if (report.binary) {
    const b = report.binary;
    const cuda = report.cuda?.emulated ? 'cuda (emulated): the CUDA emulator build, for tests only' : report.cuda?.compiled ? 'the CUDA backend compiled in' : 'CPU only';
    row('binary', `${b.file} (${b.kind})`);
    row('build', b.build === 'binding.gyp' ? `binding.gyp, ${cuda}: the fallback that npm install compiles` : `${b.build}, ${cuda}`);
  }
  if (report.binaryError) {
    const [first, ...more] = report.binaryError.split('\n');
    row('binary', `NOT LOADED: ${first.replace(/^step-seg: /, '')}`);
    for (const l of more) lines.push(`             ${l.trim()}`);
  }
  if (report.cuda) {
    const c = report.cuda;
    const kind = c.emulated ? 'cuda (emulated)' : 'cuda';
    row('cuda', !c.compiled ? `not compiled into this binary: ${c.reason.replace(/^this build of step-seg has no CUDA backend: /, '')}` : c.usable ? `${kind}: usable` : `${kind}: not usable: ${c.reason}`);
    if (c.usable && c.selfCheck) row('self-check', c.selfCheck.passed ? "passed (device 'auto' takes the GPU)" : `${c.selfCheck.reason} (device 'auto' takes the CPU)`);
    if (report.cudaHint) row('', report.cudaHint);
    if (c.compiled) {
      row('gpu', c.name ? `${c.name}, compute capability ${Math.floor(c.computeCapability / 10)}.${c.computeCapability % 10}, ${c.deviceCount} device${c.deviceCount === 1 ? '' : 's'}` : 'none found');
      row('driver', `CUDA ${decodeVersion(c.driverVersion)} (${c.driverVersion}); runtime ${decodeVersion(c.runtimeVersion)} (${c.runtimeVersion}), linked statically`);
    }
  }
  if (report.defaultDevice)
    row('device', report.defaultDevice.error ? `default model did not load: ${report.defaultDevice.error}` : `auto -> ${report.defaultDevice.device}${report.defaultDevice.reason ? ` (${report.defaultDevice.reason})` : ''}`);
  const flags = report.cpu ? `; avx2 ${report.cpu.avx2 ? 'yes' : 'no'}, fma ${report.cpu.fma ? 'yes' : 'no'}, avx512f ${report.cpu.avx512f ? 'yes' : 'no'}, avx512_bf16 ${report.cpu.avx512bf16 ? 'yes' : 'no'} (/proc/cpuinfo)` : '';
  if (report.engine) row('cpu', `gemm kernel ${report.engine.gemmKernel}, ${report.engine.threads} threads of ${report.cpus} cores${flags}`);
  else row('cpu', `${report.cpus} cores${flags}`);
  if (report.cpu?.model) row('', report.cpu.model);
  if (report.engine) {
    const e = report.engine;
    row('precision', `${e.defaultPrecision} by default; bf16 kernel ${e.bf16Kernel}${e.bf16Kernel === 'none' ? " (precision 'bf16' runs float32 here)" : " (loadModel(src, { precision: 'bf16' }) about doubles GEMM speed)"}`);
  }
  row('node', `${report.node}, N-API ${report.napi} (the binary needs ${report.napiNeeded}), ${report.platform}${report.glibc ? `, glibc ${report.glibc}` : ''}`);
  if (report.sharp) row('sharp', `${report.sharp.sharp}, libvips ${report.sharp.libvips}`);
  const env = Object.entries(report.env);
  row('env', env.length ? env.map(([k, v]) => `${k}=${v}`).join(' ') : 'no STEP_SEG_* variables set');
  row('licence', `code ${report.licence.code}; bundled model: ${report.licence.bundledModel ?? 'see its weights/LICENSE'}`);
  row('', report.licence.terms);
  process.stdout.write(lines.join('\n') + '\n');
  return status;
}

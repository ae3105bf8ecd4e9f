#!/usr/bin/env node
// step-seg: the command line (`npx step-seg ...`). Plain Node ESM over the built package (dist/), no
// dependencies beyond the package's own. Commands: segment, doctor, info, bench; `--help` on each.
// Errors are one line on stderr (`step-seg: <message>`), the stack only with --verbose. Exit codes:
// 0 ok, 1 a failure (any image that failed), 2 a usage error.
import { parseArgs } from 'node:util';

import * as bench from './commands/bench.mjs';
import * as doctor from './commands/doctor.mjs';
import * as info from './commands/info.mjs';
import * as segment from './commands/segment.mjs';
import { pkg, UsageError } from './commands/shared.mjs';

// One module per command under bin/commands/, each exporting help, options and run(values, positionals).
const kCommands = { segment, info, doctor, bench };

// ---------------------------------------------------------------------------------------------------
// help

const kHelp = {
  main: `step-seg ${pkg.version}: semantic segmentation of large images with Vision Transformers (STEP)

Usage: step-seg <command> [options]

Commands:
  segment <inputs...>   segment images (files, folders, globs) and write label maps and pictures
  info [model]          a model's config, classes, parameters, merging and exit layers
  doctor                which binary loaded, CUDA status, GPU, CPU features, Node and N-API
  bench                 time dense vs STEP on the demo image at 512 and 1024 px

Options:
  -h, --help            help (also: step-seg <command> --help)
      --version         the version
      --verbose         stack traces on errors

Examples:
  step-seg segment photos/ --out labels --overlay
  step-seg segment "shots/**/*.jpg" --size 1024 --format json
  step-seg info default

The code is Apache-2.0; the bundled model (default) is for research and non-commercial use only
(trained on CamVid): see its weights/LICENSE, or step-seg info.`,

  ...Object.fromEntries(Object.entries(kCommands).map(([name, c]) => [name, c.help])),
};

const kCommon = {
  help: { type: 'boolean', short: 'h' },
  verbose: { type: 'boolean' },
};

// ---------------------------------------------------------------------------------------------------
// small helpers

function parse(command, argv) {
  try {
    return parseArgs({ args: argv, options: { ...kCommon, ...kCommands[command].options }, allowPositionals: true, strict: true });
  } catch (err) {
    // node's messages are long and suggest `--`; keep the one fact that matters
    const m = /Unknown option '([^']+)'/.exec(err.message);
    if (m) throw new UsageError(`unknown option ${m[1]} for '${command}' (see: step-seg ${command} --help)`);
    const v = /Option '([^']+)' argument missing/.exec(err.message);
    if (v) throw new UsageError(`option ${v[1].split(',').pop().trim().split(' ')[0]} needs a value (see: step-seg ${command} --help)`);
    throw new UsageError(err.message.split('\n')[0]);
  }
}

// ---------------------------------------------------------------------------------------------------
// main

async function main(argv) {
  const verbose = argv.includes('--verbose');
  // the library's one-off CPU-fallback notice, as one line in the CLI's voice
  process.removeAllListeners('warning');
  process.on('warning', (w) => process.stderr.write(`step-seg: warning: ${w.message}\n`));
  try {
    const command = argv.find((a) => !a.startsWith('-'));
    const before = command === undefined ? argv : argv.slice(0, argv.indexOf(command));
    if (before.includes('--version')) {
      process.stdout.write(pkg.version + '\n');
      return 0;
    }
    if (command === undefined) {
      if (before.includes('--help') || before.includes('-h')) {
        process.stdout.write(kHelp.main + '\n');
        return 0;
      }
      const unknown = before.find((a) => a !== '--verbose');
      if (unknown) throw new UsageError(`unknown option ${unknown} (see: step-seg --help)`);
      process.stderr.write(kHelp.main + '\n');
      return 2;
    }
    if (command === 'help') {
      const topic = argv[argv.indexOf(command) + 1];
      process.stdout.write((kHelp[topic] ?? kHelp.main) + '\n');
      return 0;
    }
    const run = kCommands[command]?.run;
    if (!run) throw new UsageError(`unknown command ${JSON.stringify(command)}: expected segment, info, doctor or bench (see: step-seg --help)`);
    const { values, positionals } = parse(command, argv.filter((a, i) => i !== argv.indexOf(command)));
    if (values.help) {
      process.stdout.write(kHelp[command] + '\n');
      return 0;
    }
    return await run(values, positionals);
  } catch (err) {
    // one line; a message with more (the binary loader's list of fixes) says where the rest is
    const message = String(err?.message ?? err).replace(/^step-seg: /, '');
    const [first, ...more] = message.split('\n');
    process.stderr.write(`step-seg: ${first}${more.length && !verbose ? ' (details: --verbose or step-seg doctor)' : ''}\n`);
    if (verbose) process.stderr.write(`${more.length ? more.join('\n') + '\n' : ''}${err?.stack ?? ''}\n`);
    return err instanceof UsageError ? 2 : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));

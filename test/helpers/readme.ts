// The fenced code blocks of README.md, for the tests that run them (readme.test.ts) and type-check
// them (types.test.ts).
import * as fs from 'node:fs';
import * as path from 'node:path';

import { repoRoot } from './compare';

/**
 * What a fence's language means: js is a CommonJS file (what `npm init -y` gives), mjs an ES module,
 * ts TypeScript (an ES module, run through tsx and type-checked); sh, json and text are not run.
 */
export const kRunnable = ['js', 'mjs', 'ts'] as const;
export const kNotRun = ['sh', 'json', 'text'] as const;

export interface ReadmeBlock {
  lang: string;
  code: string;
  /** 1-based line of the opening fence. */
  line: number;
}

export function readmeBlocks(file = path.join(repoRoot, 'README.md')): ReadmeBlock[] {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const blocks: ReadmeBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(.*)$/.exec(lines[i]);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]); i++) body.push(lines[i]);
    if (i === lines.length) throw new Error(`README.md:${start + 1}: a fence that never closes`);
    blocks.push({ lang: open[1].trim(), code: body.join('\n') + '\n', line: start + 1 });
  }
  return blocks;
}

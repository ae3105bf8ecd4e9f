// The inputs of `segment`: files, folders (recursive) and globs (*, **, ?), dependency-free; and its
// progress bar.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

import { fmtDuration, kImageExtensions } from './shared.mjs';

// ---------------------------------------------------------------------------------------------------
// inputs: files, folders (recursive) and globs (*, **, ?), dependency-free

function hasGlob(s) {
  return /[*?]/.test(s);
}

function segmentRegExp(segment) {
  let re = '';
  for (const ch of segment) re += ch === '*' ? '[^/]*' : ch === '?' ? '[^/]' : ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^${re}$`);
}

// Files under dir, recursively (symbolic links to folders are not followed), as paths joined to dir.
async function walk(dir, onFile) {
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await walk(p, onFile);
    else if (e.isFile() || e.isSymbolicLink()) onFile(p);
  }
}

// Matches a glob: the segments before the first wildcard are the folder to search.
async function glob(pattern) {
  const parts = pattern.split(/[\\/]+/);
  const absolute = path.isAbsolute(pattern);
  let base = absolute ? path.parse(pattern).root : '.';
  let i = 0;
  if (absolute && parts[0] === '') i = 1;
  for (; i < parts.length && !hasGlob(parts[i]); i++) base = path.join(base, parts[i]);
  const rest = parts.slice(i).filter((s) => s !== '' && s !== '.');
  const matchers = rest.map((s) => (s === '**' ? '**' : segmentRegExp(s)));
  const match = (segs, m) => {
    if (m.length === 0) return segs.length === 0;
    if (m[0] === '**') {
      for (let k = 0; k <= segs.length; k++) if (match(segs.slice(k), m.slice(1))) return true;
      return false;
    }
    if (segs.length === 0) return false;
    // * and ? do not match a leading dot, as in shells
    if (segs[0].startsWith('.') && !m[0].source.startsWith('^\\.')) return false;
    return m[0].test(segs[0]) && match(segs.slice(1), m.slice(1));
  };
  const out = [];
  await walk(base, (file) => {
    const rel = path.relative(base, file).split(path.sep);
    if (match(rel, matchers)) out.push(base === '.' ? path.normalize(file) : file);
  });
  return out;
}

// Expands the positional inputs; returns the files and the inputs that matched nothing.
export async function expandInputs(inputs) {
  const files = [], problems = [], seen = new Set();
  const add = (f) => {
    const key = path.resolve(f);
    if (!seen.has(key)) seen.add(key), files.push(f);
  };
  const isImage = (f) => kImageExtensions.has(path.extname(f).toLowerCase());
  for (const input of inputs) {
    let stat;
    try {
      stat = await fsp.stat(input);
    } catch {
      stat = undefined;
    }
    if (stat?.isDirectory()) {
      const found = [];
      await walk(input, (f) => isImage(f) && found.push(f));
      if (!found.length) problems.push({ input, message: 'no images in this folder' });
      found.forEach(add);
    } else if (stat) {
      add(input);
    } else if (hasGlob(input)) {
      const found = (await glob(input)).filter(isImage);
      if (!found.length) problems.push({ input, message: 'no images match this pattern' });
      found.forEach(add);
    } else {
      problems.push({ input, message: 'no such file or folder' });
    }
  }
  return { files, problems };
}

// ---------------------------------------------------------------------------------------------------
// progress on stderr: a bar with an ETA on a terminal, else nothing (the caller prints lines)

export class Progress {
  constructor(total) {
    this.total = total;
    this.done = 0;
    this.start = performance.now();
    this.active = false;
  }
  draw(label = '') {
    const cols = process.stderr.columns || 80, width = 24;
    const frac = this.total ? this.done / this.total : 1, filled = Math.round(frac * width);
    const elapsed = performance.now() - this.start;
    const eta = this.done ? (elapsed / this.done) * (this.total - this.done) : NaN;
    let line = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${this.done}/${this.total} ${(100 * frac).toFixed(0).padStart(3)}%  ETA ${fmtDuration(eta)}  ${label}`;
    if (line.length > cols - 1) line = line.slice(0, cols - 2) + '…';
    process.stderr.write(`\r\x1b[2K${line}`);
    this.active = true;
  }
  // prints a line above the bar
  say(text) {
    if (this.active) process.stderr.write('\r\x1b[2K');
    process.stderr.write(text + '\n');
    if (this.active) this.draw();
  }
  end() {
    if (this.active) process.stderr.write('\r\x1b[2K');
    this.active = false;
  }
}

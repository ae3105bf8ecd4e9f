/**
 * A strict JSON reader for model files (safetensors headers, config.json, __metadata__.config):
 * JSON.parse keeps the last of two equal keys and recurses without a bound, so a model could say two
 * things at once or exhaust the stack. Here a duplicate key, nesting deeper than `maxDepth` and any
 * syntax error are a BadModelError that says where.
 */
import { BadModelError } from './errors';

const kNumber = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

export function parseJsonStrict(text: string, what: string, maxDepth = 64): unknown {
  let i = 0;
  const n = text.length;
  const fail = (message: string): never => {
    throw new BadModelError(`${what} is not valid JSON: ${message} at position ${i}`);
  };
  const ws = () => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const string = (): string => {
    const start = i++;
    let escaped = false;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x22) break;
      if (c === 0x5c) {
        escaped = true;
        i += 2;
        continue;
      }
      if (c < 0x20) fail('a control character inside a string');
      i++;
    }
    if (i >= n) fail('an unterminated string');
    i++;
    const raw = text.slice(start, i);
    if (!escaped) return raw.slice(1, -1);
    try {
      return JSON.parse(raw) as string;
    } catch {
      return fail('a bad escape in a string');
    }
  };
  const value = (depth: number, path: string): unknown => {
    ws();
    if (i >= n) fail('unexpected end');
    const c = text[i];
    if (c === '{' || c === '[') {
      if (depth >= maxDepth) throw new BadModelError(`${what} nests deeper than ${maxDepth} levels (at ${path || 'the top'})`);
      i++;
      ws();
      if (c === '[') {
        const out: unknown[] = [];
        if (text[i] === ']') return i++, out;
        for (;;) {
          out.push(value(depth + 1, `${path}[${out.length}]`));
          ws();
          if (text[i] === ',') i++;
          else if (text[i] === ']') return i++, out;
          else fail("',' or ']' expected");
        }
      }
      const out: Record<string, unknown> = {};
      if (text[i] === '}') return i++, out;
      for (;;) {
        ws();
        if (text[i] !== '"') fail('a key (a string) expected');
        const key = string();
        if (Object.prototype.hasOwnProperty.call(out, key))
          throw new BadModelError(`${what} has the key ${JSON.stringify(key.slice(0, 200))} twice${path ? ` in ${path}` : ''}: a model must say one thing`);
        ws();
        if (text[i] !== ':') fail("':' expected");
        i++;
        // defineProperty: a "__proto__" key is data, not the object's prototype
        Object.defineProperty(out, key, { value: value(depth + 1, path ? `${path}.${key}` : key), enumerable: true, writable: true, configurable: true });
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === '}') return i++, out;
        else fail("',' or '}' expected");
      }
    }
    if (c === '"') return string();
    if (text.startsWith('true', i)) return (i += 4), true;
    if (text.startsWith('false', i)) return (i += 5), false;
    if (text.startsWith('null', i)) return (i += 4), null;
    kNumber.lastIndex = i;
    const m = kNumber.exec(text);
    if (!m) return fail(`unexpected ${JSON.stringify(c)}`);
    i += m[0].length;
    return Number(m[0]);
  };
  const out = value(0, '');
  ws();
  if (i < n) fail('text after the JSON value');
  return out;
}

/** `JSON.stringify(value)` cut to `max` characters, for messages; never throws. */
export function shown(value: unknown, max = 120): string {
  let s: string;
  try {
    s = JSON.stringify(value) ?? String(value);
  } catch {
    s = '?';
  }
  return s.length > max ? s.slice(0, max - 3) + '...' : s;
}

/**
 * Reading the JSON files the library consumes (config.json, cfg.json, meta.json, tokenizer.json,
 * state.json, safetensors headers) so that hostile content fails as a FormatError naming the file
 * and the field, never as a RangeError from a recursion deep in some consumer.
 *
 * JSON.parse itself is iterative in V8 and copes with any nesting, but everything that walks the
 * result afterwards (JSON.stringify in an error message, a tokenizer library, structuredClone) is
 * recursive: a file of a million nested brackets overflows the stack there. Real files of the
 * formats we read nest a handful of levels, so the depth is bounded right after parsing, by an
 * explicit-stack walk that cannot overflow itself.
 */
import { readFileSync } from 'node:fs';
import { FormatError } from '../errors.js';

/** Real files nest fewer than 10 levels (tokenizer.json: about 6); 64 leaves ample room. */
export const MAX_JSON_DEPTH = 64;
/** Values quoted in error messages are cut to this many characters. */
export const MAX_QUOTED_CHARS = 80;

/**
 * A short, bounded description of a value for an error message: JSON for small values, cut to
 * `max` characters. Never recursive beyond a few levels, so it is safe on any parsed value.
 */
export function describe(value: unknown, max = MAX_QUOTED_CHARS): string {
  let text: string;
  try {
    text = shallowJson(value, 3, max + 1);
  } catch {
    text = String(typeof value);
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** JSON of `value` with containers below `depth` levels shown as `[…]` / `{…}`, stopping after `budget` chars. */
function shallowJson(value: unknown, depth: number, budget: number): string {
  if (value === undefined) return 'undefined';
  if (typeof value === 'bigint') return `${value}`;
  if (typeof value === 'function') return 'function';
  // Long strings are cut before quoting, so describing one costs O(budget), not O(its length).
  if (typeof value === 'string' && value.length > budget) return `${JSON.stringify(value.slice(0, budget))}`;
  if (typeof value !== 'object' || value === null) return JSON.stringify(value) ?? String(value);
  if (Array.isArray(value)) {
    if (depth <= 0) return '[…]';
    let out = '[';
    for (let i = 0; i < value.length && out.length < budget; i++) out += (i ? ',' : '') + shallowJson(value[i], depth - 1, budget - out.length);
    return out + ']';
  }
  if (depth <= 0) return '{…}';
  let out = '{';
  let first = true;
  for (const key of Object.keys(value)) {
    if (out.length >= budget) break;
    out += `${first ? '' : ','}${JSON.stringify(key)}:${shallowJson((value as Record<string, unknown>)[key], depth - 1, budget - out.length)}`;
    first = false;
  }
  return out + '}';
}

/** Longest reason an error message carries; reasons quoting more of a hostile file are cut. */
export const MAX_REASON_CHARS = 400;

/**
 * `why` cut to MAX_REASON_CHARS: a last line of defence for messages that quote a value without
 * {@link describe} (a megabyte string in a config field must not become a megabyte message).
 */
export function capReason(why: string): string {
  return why.length > MAX_REASON_CHARS ? `${why.slice(0, MAX_REASON_CHARS - 1)}…` : why;
}

/** A field path for messages: `model.vocab["a b"]`, `shards[3].rows`. */
export function fieldPath(parts: readonly (string | number)[]): string {
  let out = '';
  for (const p of parts) {
    if (typeof p === 'number') out += `[${p}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${describe(p, 40)}]`;
  }
  return out || '(top level)';
}

/**
 * Throws a FormatError if `value` nests deeper than `maxDepth`, naming the path of the first
 * field that does (walked with an explicit stack, so this never overflows).
 */
export function checkJsonDepth(value: unknown, file: string, maxDepth = MAX_JSON_DEPTH, what = 'JSON'): void {
  const stack: { v: unknown; depth: number; path: (string | number)[] }[] = [{ v: value, depth: 0, path: [] }];
  while (stack.length > 0) {
    const { v, depth, path } = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= maxDepth) {
      throw new FormatError(`${file}: ${what} nests deeper than ${maxDepth} levels at field '${fieldPath(path.slice(0, 8))}${path.length > 8 ? '…' : ''}'`, file);
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) if (typeof v[i] === 'object' && v[i] !== null) stack.push({ v: v[i], depth: depth + 1, path: [...path, i] });
    } else {
      for (const key of Object.keys(v)) {
        const child = (v as Record<string, unknown>)[key];
        if (typeof child === 'object' && child !== null) stack.push({ v: child, depth: depth + 1, path: [...path, key] });
      }
    }
  }
}

/** Parses JSON text read from `file`; a syntax error or excessive nesting is a FormatError naming it. */
export function parseJsonText(text: string, file: string, what = 'invalid JSON'): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const why = (err as Error).message;
    throw new FormatError(`${file}: ${what} (${why.length > 200 ? `${why.slice(0, 199)}…` : why})`, file);
  }
  checkJsonDepth(value, file);
  return value;
}

/** Reads and parses a JSON file; unreadable, malformed or too deeply nested is a FormatError naming it. */
export function readJsonFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FormatError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`, file);
  }
  return parseJsonText(text, file);
}

/** readJsonFile, which must give a JSON object. */
export function readJsonObjectFile(file: string): Record<string, unknown> {
  const v = readJsonFile(file);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new FormatError(`${file}: expected a JSON object, got ${describe(v)}`, file);
  return v as Record<string, unknown>;
}

/** `obj[key]` if `obj` has it as an own property (never a prototype member such as 'constructor'). */
export function own(obj: object, key: string): unknown {
  return Object.hasOwn(obj, key) ? (obj as Record<string, unknown>)[key] : undefined;
}

/**
 * Seeded mutators of the fuzz suite: byte-level (bit flips, truncation, insertion, deletion,
 * splicing, integer boundary values), JSON-structure-level (deep nesting, huge numbers, wrong
 * types, prototype keys), and text-level for YAML. Every mutation is a pure function of the input
 * and the generator, so an input is reproduced from (parser, seed, index) alone.
 */

/** xorshift128+ -style generator on 32-bit state (fast, seedable, good enough for fuzzing). */
export class FuzzRng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    // splitmix32 expansion of the seed, so nearby seeds give unrelated streams.
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() | 1;
  }
  /** A uniform 32-bit unsigned integer (xoshiro128**). */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.b << 9) >>> 0;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return n <= 0 ? 0 : Math.floor((this.u32() / 0x100000000) * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** A 32-bit hash of strings and numbers, to derive per-input seeds. */
export function hashSeed(...parts: (string | number)[]): number {
  let h = 0x811c9dc5;
  for (const ch of parts.join('\u0000')) {
    h ^= ch.codePointAt(0)!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

// ---- Byte mutators ----

/** Little-endian encodings of the integers parsers most often mishandle. */
const BOUNDARY_INTS: bigint[] = [0n, 1n, 2n, 7n, 8n, 0x7fn, 0x80n, 0xffn, 0x100n, 0x7fffn, 0x8000n, 0xffffn, 0x10000n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 0x1fffffffffffffn, 0x20000000000000n, 0x7fffffffffffffffn, 0x8000000000000000n, 0xffffffffffffffffn];

export function bitFlip(data: Buffer, rng: FuzzRng): Buffer {
  if (data.length === 0) return data;
  const out = Buffer.from(data);
  const flips = 1 + rng.int(8);
  for (let i = 0; i < flips; i++) out[rng.int(out.length)]! ^= 1 << rng.int(8);
  return out;
}

export function truncate(data: Buffer, rng: FuzzRng): Buffer {
  return data.subarray(0, rng.int(data.length + 1));
}

export function insertBytes(data: Buffer, rng: FuzzRng): Buffer {
  const at = rng.int(data.length + 1);
  const n = rng.pick([1, 2, 4, 8, 16, 100, 4096]);
  const filler = Buffer.alloc(n);
  const kind = rng.int(3);
  for (let i = 0; i < n; i++) filler[i] = kind === 0 ? rng.int(256) : kind === 1 ? 0 : 0xff;
  return Buffer.concat([data.subarray(0, at), filler, data.subarray(at)]);
}

export function deleteBytes(data: Buffer, rng: FuzzRng): Buffer {
  if (data.length === 0) return data;
  const at = rng.int(data.length);
  const n = 1 + rng.int(Math.min(64, data.length - at));
  return Buffer.concat([data.subarray(0, at), data.subarray(at + n)]);
}

/** A piece of `other` (another seed input, or the same one) written over or into `data`. */
export function splice(data: Buffer, other: Buffer, rng: FuzzRng): Buffer {
  if (other.length === 0) return data;
  const from = rng.int(other.length);
  const piece = other.subarray(from, from + 1 + rng.int(Math.min(256, other.length - from)));
  const at = rng.int(data.length + 1);
  return rng.chance(0.5)
    ? Buffer.concat([data.subarray(0, at), piece, data.subarray(at)])
    : Buffer.concat([data.subarray(0, at), piece, data.subarray(Math.min(data.length, at + piece.length))]);
}

/** Overwrites 1, 2, 4 or 8 bytes with a boundary integer (little- or big-endian). */
export function boundaryInt(data: Buffer, rng: FuzzRng): Buffer {
  if (data.length === 0) return data;
  const width = rng.pick([1, 2, 4, 8]);
  const at = rng.int(Math.max(1, data.length - width + 1));
  const value = rng.pick(BOUNDARY_INTS) & ((1n << BigInt(8 * width)) - 1n);
  const out = Buffer.from(data);
  const little = rng.chance(0.75);
  for (let i = 0; i < width && at + i < out.length; i++) {
    const byte = Number((value >> BigInt(8 * i)) & 0xffn);
    out[little ? at + i : at + width - 1 - i] = byte;
  }
  return out;
}

/** One random byte-level mutation (sometimes several stacked). */
export function mutateBytes(data: Buffer, rng: FuzzRng, other: Buffer = data): Buffer {
  let out = data;
  const rounds = rng.chance(0.2) ? 2 + rng.int(3) : 1;
  for (let r = 0; r < rounds; r++) {
    switch (rng.int(6)) {
      case 0: out = bitFlip(out, rng); break;
      case 1: out = truncate(out, rng); break;
      case 2: out = insertBytes(out, rng); break;
      case 3: out = deleteBytes(out, rng); break;
      case 4: out = splice(out, other, rng); break;
      default: out = boundaryInt(out, rng); break;
    }
  }
  return out;
}

// ---- JSON structure mutators ----

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Keys and strings that name Object.prototype members: a parser must never resolve them. */
export const PROTOTYPE_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__', 'isPrototypeOf'];

/** Numbers at and beyond every limit a field may have. Non-JSON values are spliced in as text. */
const HUGE_NUMBERS = ['0', '-0', '-1', '1', '2147483647', '2147483648', '4294967296', '9007199254740991', '9007199254740993', '1e308', '-1e308', '1e400', '1.5', '0.0001', '-2147483649', '18446744073709551616', '123456789012345678901234567890'];

function wrongTypeValue(rng: FuzzRng): Json {
  return rng.pick<Json>([null, true, false, 0, -1, '', 'x', [], {}, [1, 2], { a: 1 }, 'constructor', '__proto__', 2 ** 31, 1e308]);
}

/** All [parent, key] places of a JSON value, so one can be replaced. */
function places(root: Json): { parent: Json[] | Record<string, Json>; key: string | number }[] {
  const out: { parent: Json[] | Record<string, Json>; key: string | number }[] = [];
  const stack: Json[] = [root];
  while (stack.length > 0 && out.length < 20000) {
    const v = stack.pop()!;
    if (Array.isArray(v)) v.forEach((c, i) => (out.push({ parent: v, key: i }), stack.push(c)));
    else if (v !== null && typeof v === 'object') for (const k of Object.keys(v)) (out.push({ parent: v, key: k }), stack.push(v[k]!));
  }
  return out;
}

/** A marker replaced in the serialised text by raw (possibly invalid-JSON or very deep) text. */
const RAW = '\u0000RAW\u0000';

/**
 * Mutates JSON text structurally: replaces a value by a deeply nested one, a huge or boundary
 * number, a value of the wrong type or a prototype-key string; adds prototype keys to an object;
 * removes a key; duplicates a key's value under a prototype key. Falls back to byte mutation for
 * text that is not JSON.
 */
export function mutateJson(text: string, rng: FuzzRng): string {
  let root: Json;
  try {
    root = JSON.parse(text) as Json;
  } catch {
    return mutateBytes(Buffer.from(text), rng).toString('latin1');
  }
  const raws: string[] = [];
  const ps = places(root);
  const choice = rng.int(7);
  const target = ps.length > 0 ? rng.pick(ps) : null;
  const set = (v: Json) => {
    if (!target) root = v;
    else if (Array.isArray(target.parent)) target.parent[target.key as number] = v;
    else target.parent[target.key as string] = v;
  };
  switch (choice) {
    case 0: { // deep nesting
      const depth = rng.pick([100, 1000, 10_000, 100_000]);
      const [open, close] = rng.chance(0.5) ? ['[', ']'] : ['{"a":', '}'];
      raws.push(open.repeat(depth) + '1' + close.repeat(depth));
      set(RAW);
      break;
    }
    case 1: raws.push(rng.pick(HUGE_NUMBERS)); set(RAW); break;
    case 2: set(wrongTypeValue(rng)); break;
    case 3: set(rng.pick(PROTOTYPE_KEYS)); break;
    case 4: { // a prototype key added to some object
      const objects = [root, ...ps.map((p) => (Array.isArray(p.parent) ? p.parent[p.key as number] : p.parent[p.key as string]))].filter(
        (v): v is Record<string, Json> => v !== null && typeof v === 'object' && !Array.isArray(v),
      );
      if (objects.length === 0) return mutateBytes(Buffer.from(text), rng).toString('utf8');
      const obj = rng.pick(objects);
      const keys = Object.keys(obj);
      const value: Json = keys.length > 0 && rng.chance(0.5) ? obj[rng.pick(keys)]! : wrongTypeValue(rng);
      // Through defineProperty so that '__proto__' becomes an own key that stringify writes out.
      Object.defineProperty(obj, rng.pick(PROTOTYPE_KEYS), { value, enumerable: true, writable: true, configurable: true });
      break;
    }
    case 5: { // a key removed
      if (target && !Array.isArray(target.parent)) delete target.parent[target.key as string];
      else if (target) (target.parent as Json[]).splice(target.key as number, 1);
      break;
    }
    default: { // a long string or a long array
      set(rng.chance(0.5) ? 'x'.repeat(rng.pick([1000, 100_000])) : new Array(rng.pick([1000, 100_000])).fill(rng.int(2) ? 0 : 'a'));
      break;
    }
  }
  let out: string;
  try {
    out = JSON.stringify(root);
  } catch {
    // An input already nested too deep by an earlier mutation round: mutate its bytes instead.
    return mutateBytes(Buffer.from(text), rng).toString('utf8');
  }
  for (const r of raws) out = out.replace(JSON.stringify(RAW), () => r);
  return out;
}

/** Line-level mutation of YAML (and other line-oriented text), plus YAML-specific constructs. */
export function mutateYaml(text: string, rng: FuzzRng): string {
  const lines = text.split('\n');
  const at = rng.int(lines.length);
  switch (rng.int(8)) {
    case 0: lines.splice(at, 1); break;
    case 1: lines.splice(at, 0, lines[rng.int(lines.length)] ?? ''); break;
    case 2: lines[at] = (lines[at] ?? '').replace(/: .*/, `: ${rng.pick([...HUGE_NUMBERS, ...PROTOTYPE_KEYS, '~', '[]', '{}', '!!binary AAAA', '*undefined_alias', '&a [*a]'])}`); break;
    case 3: lines.splice(at, 0, `${rng.pick(PROTOTYPE_KEYS)}: ${rng.pick(['1', 'x', '{}', '[1]'])}`); break;
    case 4: { // deep flow nesting
      const depth = rng.pick([100, 10_000]);
      lines[at] = (lines[at] ?? 'k:').replace(/: .*|$/, `: ${'['.repeat(depth)}${']'.repeat(depth)}`);
      break;
    }
    case 5: // alias expansion ("billion laughs")
      lines.push('a: &a ["x","x","x","x","x","x","x","x","x","x"]', 'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]', 'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]', 'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]', 'e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]');
      break;
    case 6: lines[at] = '  '.repeat(rng.int(8)) + (lines[at] ?? '').trimStart(); break;
    default: return mutateBytes(Buffer.from(text), rng).toString('utf8');
  }
  return lines.join('\n');
}

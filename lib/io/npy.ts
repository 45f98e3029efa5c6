/**
 * NumPy's `.npy` arrays and `.npz` archives (a zip of `.npy` members, as `np.savez` and
 * `np.savez_compressed` write them), read strictly: the format is parsed by this module, never by
 * evaluating the header (it is a Python literal, parsed here as data), and every problem is a
 * FormatError naming the file and the array.
 *
 * A `.npy` file (numpy/lib/format.py): the magic `\x93NUMPY`, a major and minor version byte (1.0,
 * 2.0 or 3.0), the header length (u16 little-endian for 1.0, u32 for 2.0 and 3.0), the header (a
 * Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`, latin-1 in 1.0
 * and 2.0, UTF-8 in 3.0, padded with spaces and a newline), then exactly prod(shape) items of raw data.
 * Floating-point dtypes only (`f2`, `f4`, `f8`, either byte order); bfloat16 is not a NumPy dtype
 * (ml_dtypes saves it as raw void `V2`), so such files are refused with that explanation.
 */
import { FormatError } from '../errors.js';
import { capReason } from './json.js';
import { ZipFile } from './zip.js';

/** A floating-point array in C (row-major) order, in the width it was stored in. */
export interface NpyArray {
  dtype: 'float16' | 'float32' | 'float64';
  shape: number[];
  /** float16 as raw bits (Uint16Array), float32 and float64 as themselves; native byte order. */
  data: Uint16Array | Float32Array | Float64Array;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]);
const ITEM_SIZE = { f2: 2, f4: 4, f8: 8 } as const;
/** Headers larger than this are corrupt (numpy itself refuses headers above 10000 bytes by default). */
const MAX_HEADER = 1 << 16;

type HeaderValue = string | boolean | number[] | number;

/** Parses the header's dict literal: string keys; string, True/False, int or tuple-of-ints values. */
function parseHeaderDict(text: string, fail: (why: string) => never): Record<string, HeaderValue> {
  let i = 0;
  const ws = () => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  const expect = (ch: string) => {
    ws();
    if (text[i] !== ch) fail(`expected '${ch}' at character ${i} of the header ${JSON.stringify(text.slice(0, 120))}`);
    i++;
  };
  const str = (): string => {
    ws();
    const q = text[i];
    if (q !== "'" && q !== '"') fail(`expected a quoted string at character ${i} of the header`);
    const end = text.indexOf(q!, i + 1);
    if (end < 0) fail('unterminated string in the header');
    const s = text.slice(i + 1, end);
    if (s.includes('\\')) fail('escapes in header strings are not supported');
    i = end + 1;
    return s;
  };
  const int = (): number => {
    ws();
    const m = /^\d+/.exec(text.slice(i));
    if (!m) fail(`expected a non-negative integer at character ${i} of the header`);
    i += m![0].length;
    // 'L' suffixes come from Python 2's numpy.
    if (text[i] === 'L') i++;
    const n = Number(m![0]);
    if (!Number.isSafeInteger(n)) fail(`dimension ${m![0]} is too large`);
    return n;
  };
  const value = (): HeaderValue => {
    ws();
    const c = text[i];
    if (c === "'" || c === '"') return str();
    if (text.startsWith('True', i)) return (i += 4), true;
    if (text.startsWith('False', i)) return (i += 5), false;
    if (c === '(') {
      i++;
      const items: number[] = [];
      ws();
      while (text[i] !== ')') {
        items.push(int());
        ws();
        if (text[i] === ',') i++;
        else if (text[i] !== ')') fail(`expected ',' or ')' in the shape at character ${i} of the header`);
        ws();
      }
      i++;
      return items;
    }
    if (c !== undefined && /\d/.test(c)) return int();
    if (c === '[') fail("structured dtypes (a list as 'descr') are not supported: expected a plain floating-point array");
    return fail(`unexpected ${JSON.stringify(text.slice(i, i + 20))} in the header`);
  };
  const out: Record<string, HeaderValue> = Object.create(null) as Record<string, HeaderValue>;
  expect('{');
  ws();
  while (text[i] !== '}') {
    const key = str();
    expect(':');
    if (Object.hasOwn(out, key)) fail(`duplicate key '${key}' in the header`);
    out[key] = value();
    ws();
    if (text[i] === ',') i++;
    else if (text[i] !== '}') fail(`expected ',' or '}' at character ${i} of the header`);
    ws();
  }
  i++;
  ws();
  if (i !== text.length) fail('trailing characters after the header dict');
  return out;
}

/** Swaps each `size`-byte item of `bytes` in place (big-endian files on this little-endian reader). */
function swapBytes(bytes: Uint8Array, size: number): void {
  for (let p = 0; p < bytes.length; p += size) {
    for (let a = p, b = p + size - 1; a < b; a++, b--) {
      const t = bytes[a]!;
      bytes[a] = bytes[b]!;
      bytes[b] = t;
    }
  }
}

/** Fortran (column-major) order to C order: reverses the axes' strides. */
function fortranToC<T extends Uint16Array | Float32Array | Float64Array>(src: T, shape: number[]): T {
  if (shape.length < 2) return src;
  const dst = new (src.constructor as { new (n: number): T })(src.length);
  const n = shape.length;
  // C strides of the destination and Fortran strides of the source.
  const fStride = new Array<number>(n);
  fStride[0] = 1;
  for (let k = 1; k < n; k++) fStride[k] = fStride[k - 1]! * shape[k - 1]!;
  const index = new Array<number>(n).fill(0);
  for (let c = 0; c < src.length; c++) {
    let f = 0;
    for (let k = 0; k < n; k++) f += index[k]! * fStride[k]!;
    dst[c] = src[f]!;
    for (let k = n - 1; k >= 0; k--) {
      if (++index[k]! < shape[k]!) break;
      index[k] = 0;
    }
  }
  return dst;
}

/**
 * Parses one `.npy` image. `file` and `name` (the array's name, e.g. the npz member) go into every
 * error message.
 */
export function parseNpy(bytes: Buffer, file: string, name: string): NpyArray {
  const fail = (why: string): never => {
    throw new FormatError(`${file}: array '${name}': ${capReason(why)}`, file);
  };
  if (bytes.length < 10 || !bytes.subarray(0, 6).equals(MAGIC)) fail('not a .npy array (bad magic; expected \\x93NUMPY)');
  const major = bytes[6]!;
  const minor = bytes[7]!;
  if (![1, 2, 3].includes(major) || minor !== 0) fail(`unsupported .npy version ${major}.${minor} (1.0, 2.0 and 3.0 are)`);
  const lengthBytes = major === 1 ? 2 : 4;
  if (bytes.length < 8 + lengthBytes) fail('truncated before the header length');
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const headerStart = 8 + lengthBytes;
  if (headerLength > MAX_HEADER) fail(`header length ${headerLength} is too large`);
  if (headerStart + headerLength > bytes.length) fail(`the header (${headerLength} bytes) extends past the end of the data (truncated?)`);
  const text = bytes.toString(major === 3 ? 'utf8' : 'latin1', headerStart, headerStart + headerLength).trim();
  const header = parseHeaderDict(text, fail);
  for (const key of Object.keys(header)) if (!['descr', 'fortran_order', 'shape'].includes(key)) fail(`unexpected header key '${key}'`);
  const descr = header.descr;
  const fortran = header.fortran_order;
  const shape = header.shape;
  if (typeof descr !== 'string') fail("the header has no string 'descr'");
  if (typeof fortran !== 'boolean') fail("the header has no True/False 'fortran_order'");
  if (!Array.isArray(shape)) fail("the header has no tuple 'shape'");
  const m = /^([<>|=])(f2|f4|f8)$/.exec(descr as string);
  if (!m) {
    if (/^[<>|=]?V2$/.test(descr as string)) fail(`dtype '${descr}' is raw 2-byte data, as bfloat16 is saved (bfloat16 is not a NumPy dtype): save the array as float32`);
    fail(`dtype '${descr}' is not supported (float16 '<f2', float32 '<f4', float64 '<f8')`);
  }
  const kind = m![2] as keyof typeof ITEM_SIZE;
  const size = ITEM_SIZE[kind];
  const dims = shape as number[];
  const count = dims.reduce((a, b) => a * b, 1);
  const dataStart = headerStart + headerLength;
  const have = bytes.length - dataStart;
  if (have !== count * size) {
    fail(`shape (${dims.join(', ')}) of ${descr} needs ${count * size} bytes of data, the file has ${have}${have < count * size ? ' (truncated?)' : ''}`);
  }
  // A fresh, aligned copy: the source buffer may be a slice at any offset.
  const raw = new Uint8Array(count * size);
  raw.set(bytes.subarray(dataStart, dataStart + count * size));
  if (m![1] === '>' && size > 1) swapBytes(raw, size);
  let data: Uint16Array | Float32Array | Float64Array =
    kind === 'f2' ? new Uint16Array(raw.buffer) : kind === 'f4' ? new Float32Array(raw.buffer) : new Float64Array(raw.buffer);
  if (fortran) data = fortranToC(data, dims);
  return { dtype: kind === 'f2' ? 'float16' : kind === 'f4' ? 'float32' : 'float64', shape: dims, data };
}

/**
 * Reads the arrays of an `.npz` archive (stored or deflated members; the zip reader checks every
 * offset and CRC and caps inflation), by name without the `.npy` suffix.
 */
export function readNpz(file: string): Map<string, NpyArray> {
  const zip = ZipFile.open(file);
  try {
    const out = new Map<string, NpyArray>();
    for (const entry of zip.entries.values()) {
      if (!entry.name.endsWith('.npy')) throw new FormatError(`${file}: member '${capReason(entry.name)}' is not a .npy array (an .npz holds only NAME.npy members)`, file);
      const name = entry.name.slice(0, -'.npy'.length);
      out.set(name, parseNpy(zip.read(entry), file, name));
    }
    return out;
  } finally {
    zip.close();
  }
}

/** Whether an array holds NaN or infinity (float16 read from its bits). */
export function hasNonFinite(a: NpyArray | { data: Float32Array | Float64Array | Uint16Array; dtype: string }): boolean {
  const d = a.data;
  if (d instanceof Uint16Array) {
    for (let i = 0; i < d.length; i++) if ((d[i]! & 0x7c00) === 0x7c00) return true;
    return false;
  }
  for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i]!)) return true;
  return false;
}

/**
 * Reads PyTorch `torch.save` zip checkpoints (".pt") without executing anything.
 *
 * A checkpoint is a zip archive holding `<prefix>/data.pkl` (a pickle of the saved object, in
 * which each tensor storage is a persistent id) and one raw little-endian record per storage,
 * `<prefix>/data/<key>`. This module runs its own pickle VM (protocols 0 to 5) that resolves
 * globals against a fixed whitelist of data constructors (OrderedDict, torch tensor rebuilding,
 * storage classes, dtypes, devices, a few builtins, numpy scalars). Other globals are never
 * looked up as code: each becomes an inert PickleGlobal. Instantiating one without calling its
 * code (NEWOBJ, NEWOBJ_EX, copyreg._reconstructor, copyreg.__newobj__) yields a plain object
 * `{ __class__: 'module.Name', ...state }`; *calling* one (REDUCE, INST, OBJ) is refused with a
 * FormatError, since that is how malicious pickles run code (`os.system`, `builtins.eval`).
 *
 * Python values map to JS as: None -> null, bool -> boolean, int -> number (bigint beyond
 * 2^53), float -> number, str -> string, bytes/bytearray -> Uint8Array, tuple and list -> array,
 * dict and OrderedDict -> plain object in insertion order (JS still lists integer-like keys
 * first; keys must be str or int), set/frozenset -> Set, torch dtype -> its name ('float32'),
 * torch.device -> its string ('cuda', 'cuda:0'), torch.Size -> array, numpy scalar -> number
 * (bigint beyond 2^53) or boolean, complex and slice -> `{ __class__, ... }` objects, tensor and
 * storage -> PickledTensor, an unknown global used as a value -> PickleGlobal. Attributes
 * set on a dict (state_dict's `_metadata`) become non-enumerable properties of the object.
 */
import type { DType } from '../tensor.js';
import { FormatError } from '../errors.js';
import { capReason } from './json.js';
import { ZipFile, type ZipEntry } from './zip.js';

/** A tensor of the checkpoint. */
export interface PickledTensor {
  dtype: DType;
  shape: number[];
  /**
   * Row-major contiguous little-endian bytes (views are materialised). A contiguous tensor's
   * bytes are a view of its storage's memory, at a byteOffset that is a multiple of the element
   * size, so typed-array views over them work; tensors sharing a storage may share memory.
   */
  bytes: Uint8Array;
}

/** A Python global (class or function) that the loader refers to by name and never runs. */
export class PickleGlobal {
  /** `module.qualname`, e.g. 'sae_training.config.LanguageModelSAERunnerConfig'. */
  readonly name: string;
  constructor(name: string) {
    this.name = name;
  }
  toString(): string {
    return this.name;
  }
}

/** True if `path` is a zip archive holding a `<prefix>/data.pkl` entry (a torch.save checkpoint). */
export function isTorchZipCheckpoint(path: string): boolean {
  let zip: ZipFile;
  try {
    zip = ZipFile.open(path);
  } catch (err) {
    if (err instanceof FormatError) return false;
    throw err;
  }
  try {
    return dataPklEntries(zip).length > 0;
  } finally {
    zip.close();
  }
}

/** Reads a torch.save zip checkpoint (see the module comment for how Python values map to JS). */
export function readTorchCheckpoint(path: string): unknown {
  const zip = ZipFile.open(path);
  try {
    const pickles = dataPklEntries(zip);
    if (pickles.length !== 1) {
      throw new FormatError(`${path}: not a torch.save checkpoint (${pickles.length === 0 ? 'no' : 'several'} '<prefix>/data.pkl' entries)`, path);
    }
    const pkl = pickles[0]!;
    const prefix = pkl.name.slice(0, -'data.pkl'.length);
    // torch >= 2 records the byte order of the storages; older versions always wrote little-endian.
    const byteorder = zip.entries.get(`${prefix}byteorder`);
    if (byteorder && zip.read(byteorder, 16).toString('latin1') !== 'little') {
      throw new FormatError(`${path}: storages are not little-endian ('${prefix}byteorder' says otherwise)`, path);
    }
    if (pkl.size > MAX_PICKLE_BYTES) throw new FormatError(`${path}: '${pkl.name}' is too large (${pkl.size} bytes)`, path);
    const bytes = zip.read(pkl, MAX_PICKLE_BYTES);
    return new TorchUnpickler(zip, prefix, pkl.name, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)).load();
  } finally {
    zip.close();
  }
}

function dataPklEntries(zip: ZipFile): ZipEntry[] {
  return [...zip.entries.values()].filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
}

/** Real data.pkl files are small (they hold structure, not tensor data). */
const MAX_PICKLE_BYTES = 256 * 1024 * 1024;
/** Python ints in checkpoints are small; this bounds the cost of parsing hostile huge ones. */
const MAX_INT_BYTES = 1024;
/**
 * Non-contiguous views are copied out of their storages. Their total size is bounded by the
 * file's: a real checkpoint's views (transposes, slices) copy at most each storage once or twice,
 * while a few bytes of pickle could otherwise ask for gigabytes (zero strides, or the same storage
 * viewed a thousand times). The floor lets small files hold a few legitimately expanded tensors.
 */
const GATHER_FILE_RATIO = 4;
const GATHER_FLOOR = 64 * 1024 * 1024;
/**
 * Copying work (dict, set and list items copied by BUILD, OrderedDict, set(), torch.Size, ...) per
 * pickle byte: each opcode does O(1) work except these, which a memoised argument can repeat.
 */
const WORK_PER_BYTE = 64;
const WORK_FLOOR = 1 << 20;

const ITEM_SIZE: Record<DType, number> = {
  float32: 4, float16: 2, bfloat16: 2, float64: 8, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1,
};

/** Storage classes of persistent ids. Untyped storages count bytes. */
const STORAGE_DTYPES = new Map<string, DType>([
  ['torch.FloatStorage', 'float32'],
  ['torch.HalfStorage', 'float16'],
  ['torch.BFloat16Storage', 'bfloat16'],
  ['torch.DoubleStorage', 'float64'],
  ['torch.LongStorage', 'int64'],
  ['torch.IntStorage', 'int32'],
  ['torch.ShortStorage', 'int16'],
  ['torch.CharStorage', 'int8'],
  ['torch.ByteStorage', 'uint8'],
  ['torch.BoolStorage', 'bool'],
  ['torch.UntypedStorage', 'uint8'],
  ['torch.storage.UntypedStorage', 'uint8'],
]);

/** torch dtypes, pickled as globals by their canonical names. */
const TORCH_DTYPES = new Set<string>(Object.keys(ITEM_SIZE));

/** Python 2 module names that protocol 0-2 pickles use (Python 3's pickle maps them the same way). */
const MODULE_ALIASES = new Map([
  ['__builtin__', 'builtins'],
  ['copy_reg', 'copyreg'],
]);

/** A numpy dtype as rebuilt by `numpy.dtype(kind, align, copy)` + BUILD (only what scalars need). */
class NumpyDtype {
  readonly kind: string;
  /** '<', '>', '|' or '=' (from the BUILD state). */
  byteorder = '=';
  constructor(kind: string) {
    this.kind = kind;
  }
}

/** Decoders of numpy scalar bytes by dtype kind: [byte size, read(view, littleEndian)]. */
const NUMPY_SCALARS = new Map<string, [number, (v: DataView, le: boolean) => number | bigint | boolean]>([
  ['f8', [8, (v, le) => v.getFloat64(0, le)]],
  ['f4', [4, (v, le) => v.getFloat32(0, le)]],
  ['i8', [8, (v, le) => smallestInt(v.getBigInt64(0, le))]],
  ['u8', [8, (v, le) => smallestInt(v.getBigUint64(0, le))]],
  ['i4', [4, (v, le) => v.getInt32(0, le)]],
  ['u4', [4, (v, le) => v.getUint32(0, le)]],
  ['i2', [2, (v, le) => v.getInt16(0, le)]],
  ['u2', [2, (v, le) => v.getUint16(0, le)]],
  ['i1', [1, (v) => v.getInt8(0)]],
  ['u1', [1, (v) => v.getUint8(0)]],
  ['b1', [1, (v) => v.getUint8(0) !== 0]],
]);

/** A bigint as a number when that is exact. */
function smallestInt(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

/** Sets an own enumerable property, even for keys like '__proto__' that assignment would misread. */
function setKey(obj: object, key: string, value: unknown, enumerable = true): void {
  Object.defineProperty(obj, key, { value, enumerable, writable: true, configurable: true });
}

type Handler = (u: TorchUnpickler, args: unknown[]) => unknown;

/** The only globals that may be called (REDUCE, INST, OBJ), by qualified name. */
const CALLABLES = new Map<string, Handler>([
  ['collections.OrderedDict', (u, args) => u.newDict(args[0] ?? [])],
  ['torch._utils._rebuild_tensor_v2', (u, [storage, offset, size, stride]) => u.rebuildTensor(storage, offset, size, stride)],
  ['torch._utils._rebuild_parameter', (u, [data]) => (u.isTensor(data) ? data : u.fail('_rebuild_parameter of something that is not a tensor'))],
  ['torch.device', (u, [type, index]) => {
    if (typeof type !== 'string' || !(index == null || isInt(index))) return u.fail('bad torch.device arguments');
    return index == null ? type : `${type}:${index}`;
  }],
  ['torch.Size', (u, [dims]) => [...u.iterable(dims ?? [])]],
  ['copyreg._reconstructor', (u, [cls, base]) => {
    // Protocol 0/1 instances of plain classes: object.__new__(cls), then BUILD sets the state.
    if (!(base instanceof PickleGlobal && base.name === 'builtins.object')) return u.fail(`copyreg._reconstructor with base ${String(base)} is not supported`);
    return u.newObject(cls, []);
  }],
  ['copyreg.__newobj__', (u, [cls, ...args]) => u.newObject(cls, args)],
  ['builtins.set', (u, args) => new Set(u.iterable(args[0] ?? []))],
  ['builtins.frozenset', (u, args) => new Set(u.iterable(args[0] ?? []))],
  ['builtins.slice', (_u, [start, stop, step]) => ({ __class__: 'builtins.slice', start, stop, step })],
  ['builtins.complex', (u, [real, imag]) => {
    if (typeof real !== 'number' || !(imag === undefined || typeof imag === 'number')) return u.fail('bad complex arguments');
    return { __class__: 'builtins.complex', real, imag: imag ?? 0 };
  }],
  // Protocol 2 pickles empty bytes as bytes() and bytearrays as bytearray(bytes).
  ['builtins.bytes', (u, args) => (args.length === 0 ? new Uint8Array(0) : u.fail('bytes() with arguments is not supported'))],
  ['builtins.bytearray', (u, [data]) => (data === undefined ? new Uint8Array(0) : data instanceof Uint8Array ? data.slice() : u.fail('bad bytearray argument'))],
  // Protocol 2 pickles bytes as _codecs.encode(latin-1 text, 'latin1').
  ['_codecs.encode', (u, [text, encoding]) => {
    if (typeof text !== 'string') return u.fail('_codecs.encode of something that is not a str');
    if (encoding === 'latin1' || encoding === 'latin-1') {
      const out = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c > 0xff) u.fail('_codecs.encode: text is not latin-1');
        out[i] = c;
      }
      return out;
    }
    if (encoding === 'utf-8' || encoding === 'utf8') return new Uint8Array(Buffer.from(text, 'utf8'));
    return u.fail(`_codecs.encode with encoding ${String(encoding)} is not supported`);
  }],
  ['numpy.dtype', (u, [kind]) => (typeof kind === 'string' ? new NumpyDtype(kind) : u.fail('bad numpy.dtype arguments'))],
  ['numpy.core.multiarray.scalar', (u, [dtype, data]) => u.numpyScalar(dtype, data)],
  ['numpy._core.multiarray.scalar', (u, [dtype, data]) => u.numpyScalar(dtype, data)],
]);

/** The pickle VM, with torch's persistent_load (storages read lazily from the zip, once per key). */
class TorchUnpickler {
  private pos = 0;
  /** Where the current opcode starts, for error messages. */
  private at = 0;
  private stack: unknown[] = [];
  /** Stack lengths at each MARK. */
  private marks: number[] = [];
  private memo = new Map<number, unknown>();
  /** Objects the VM made, to tell what SETITEM/BUILD may modify. */
  private dicts = new WeakSet<object>();
  private instances = new WeakSet<object>();
  /** Storages by key: torch writes a persistent id at every use of a storage, its record once. */
  private storages = new Map<string, PickledTensor>();
  private storageObjects = new WeakSet<object>();
  private tensors = new WeakSet<object>();
  /** Bytes non-contiguous views may still materialise (see GATHER_FILE_RATIO). */
  private gatherBudget: number;
  /** Items copying opcodes may still copy (see WORK_PER_BYTE). */
  private workBudget: number;

  constructor(
    private readonly zip: ZipFile,
    private readonly prefix: string,
    private readonly entryName: string,
    private readonly data: Uint8Array,
  ) {
    this.gatherBudget = Math.max(GATHER_FLOOR, GATHER_FILE_RATIO * zip.size);
    this.workBudget = Math.max(WORK_FLOOR, WORK_PER_BYTE * data.length);
  }

  /** Accounts for copying `n` items; a pickle that repeats large copies is refused rather than run for minutes. */
  charge(n: number): void {
    this.workBudget -= n;
    if (this.workBudget < 0) this.fail(`the pickle copies more than ${WORK_PER_BYTE} items per byte (hostile or corrupt pickle)`);
  }

  fail(why: string): never {
    // Cut: reasons quote names and strings read from the pickle, which may be kilobytes long.
    throw new FormatError(`${this.zip.path}: ${this.entryName}: ${capReason(why)} (at byte ${this.at})`, this.zip.path);
  }

  load(): unknown {
    for (;;) {
      this.at = this.pos;
      const op = this.u8();
      switch (op) {
        // Framing and protocol.
        case 0x80: { // PROTO
          const proto = this.u8();
          if (proto > 5) this.fail(`unsupported pickle protocol ${proto}`);
          break;
        }
        case 0x95: // FRAME: a length prefix only used to speed up reading.
          this.length(this.u64());
          break;
        case 0x2e: // STOP
          return this.pop();

        // Stack manipulation and memo.
        case 0x28: this.marks.push(this.stack.length); break; // MARK
        case 0x30: // POP
          if (this.stack.length > (this.marks.at(-1) ?? 0)) this.pop();
          else this.popMark();
          break;
        case 0x31: this.popMark(); break; // POP_MARK
        case 0x32: this.push(this.top()); break; // DUP
        case 0x70: this.memo.set(this.intLine(), this.top()); break; // PUT
        case 0x71: this.memo.set(this.u8(), this.top()); break; // BINPUT
        case 0x72: this.memo.set(this.u32(), this.top()); break; // LONG_BINPUT
        case 0x94: this.memo.set(this.memo.size, this.top()); break; // MEMOIZE
        case 0x67: this.push(this.memoGet(this.intLine())); break; // GET
        case 0x68: this.push(this.memoGet(this.u8())); break; // BINGET
        case 0x6a: this.push(this.memoGet(this.u32())); break; // LONG_BINGET

        // Scalars.
        case 0x4e: this.push(null); break; // NONE
        case 0x88: this.push(true); break; // NEWTRUE
        case 0x89: this.push(false); break; // NEWFALSE
        case 0x49: { // INT (text; protocol 0 writes bools as I00 / I01)
          const text = this.line();
          this.push(text === '00' ? false : text === '01' ? true : this.parseInt(text));
          break;
        }
        case 0x4a: this.push(this.i32()); break; // BININT
        case 0x4b: this.push(this.u8()); break; // BININT1
        case 0x4d: this.push(this.u16()); break; // BININT2
        case 0x4c: this.push(this.parseInt(this.line().replace(/L$/, ''))); break; // LONG (text)
        case 0x8a: this.push(this.longBytes(this.u8())); break; // LONG1
        case 0x8b: this.push(this.longBytes(this.i32())); break; // LONG4
        case 0x46: this.push(this.parseFloat(this.line())); break; // FLOAT (text)
        case 0x47: { // BINFLOAT (big-endian)
          const b = this.take(8);
          this.push(new DataView(b.buffer, b.byteOffset, 8).getFloat64(0, false));
          break;
        }

        // Strings and bytes. torch.load decodes Python 2 str (STRING, BINSTRING) as UTF-8.
        case 0x53: this.push(utf8(escapeDecode(this.quoted(this.lineBytes())))); break; // STRING
        case 0x54: this.push(utf8(this.take(this.length(this.i32())))); break; // BINSTRING
        case 0x55: this.push(utf8(this.take(this.u8()))); break; // SHORT_BINSTRING
        case 0x56: this.push(rawUnicodeEscapeDecode(this.lineBytes())); break; // UNICODE
        case 0x58: this.push(utf8(this.take(this.length(this.u32())))); break; // BINUNICODE
        case 0x8c: this.push(utf8(this.take(this.u8()))); break; // SHORT_BINUNICODE
        case 0x8d: this.push(utf8(this.take(this.length(this.u64())))); break; // BINUNICODE8
        case 0x43: this.push(this.take(this.u8()).slice()); break; // SHORT_BINBYTES
        case 0x42: this.push(this.take(this.length(this.u32())).slice()); break; // BINBYTES
        case 0x8e: // BINBYTES8
        case 0x96: // BYTEARRAY8
          this.push(this.take(this.length(this.u64())).slice());
          break;
        case 0x98: break; // READONLY_BUFFER: no distinction between read-only and writable bytes here.

        // Containers.
        case 0x29: this.push([]); break; // EMPTY_TUPLE
        case 0x74: this.push(this.popMark()); break; // TUPLE
        case 0x85: this.push([this.pop()]); break; // TUPLE1
        case 0x86: { // TUPLE2
          const b = this.pop();
          this.push([this.pop(), b]);
          break;
        }
        case 0x87: { // TUPLE3
          const c = this.pop();
          const b = this.pop();
          this.push([this.pop(), b, c]);
          break;
        }
        case 0x5d: this.push([]); break; // EMPTY_LIST
        case 0x6c: this.push(this.popMark()); break; // LIST
        case 0x61: this.list(this.top(1)).push(this.pop()); break; // APPEND
        case 0x65: { // APPENDS
          const items = this.popMark();
          const list = this.list(this.top());
          this.charge(items.length);
          for (const item of items) list.push(item);
          break;
        }
        case 0x7d: this.push(this.newDict([])); break; // EMPTY_DICT
        case 0x64: this.push(this.setItems(this.newDict([]), this.popMark())); break; // DICT
        case 0x73: { // SETITEM
          const value = this.pop();
          const key = this.pop();
          this.setItems(this.top(), [key, value]);
          break;
        }
        case 0x75: { // SETITEMS
          const items = this.popMark();
          this.setItems(this.top(), items);
          break;
        }
        case 0x8f: this.push(new Set()); break; // EMPTY_SET
        case 0x90: { // ADDITEMS
          const items = this.popMark();
          const set = this.top();
          if (!(set instanceof Set)) this.fail('ADDITEMS on something that is not a set');
          for (const item of items) set.add(item);
          break;
        }
        case 0x91: this.push(new Set(this.popMark())); break; // FROZENSET

        // Globals, calls and objects.
        case 0x63: { // GLOBAL
          const module = this.line();
          this.push(this.global(module, this.line()));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== 'string' || typeof name !== 'string') this.fail('STACK_GLOBAL needs two strings');
          this.push(this.global(module, name));
          break;
        }
        case 0x52: { // REDUCE
          const args = this.pop();
          this.push(this.call(this.pop(), args));
          break;
        }
        case 0x69: { // INST: calls module.name(*args)
          const module = this.line();
          const fn = this.global(module, this.line());
          this.push(this.call(fn, this.popMark()));
          break;
        }
        case 0x6f: { // OBJ: calls cls(*args)
          const [fn, ...args] = this.popMark();
          this.push(this.call(fn, args));
          break;
        }
        case 0x81: { // NEWOBJ: cls.__new__(cls, *args), which runs no user code for plain classes
          const args = this.pop();
          this.push(this.newObject(this.pop(), this.tuple(args)));
          break;
        }
        case 0x92: { // NEWOBJ_EX
          const kwargs = this.pop();
          const args = this.pop();
          const obj = this.newObject(this.pop(), this.tuple(args));
          if (kwargs !== null && typeof kwargs === 'object' && Object.keys(kwargs).length > 0) setKey(obj, '__kwargs__', kwargs);
          this.push(obj);
          break;
        }
        case 0x62: { // BUILD
          const state = this.pop();
          this.build(this.top(), state);
          break;
        }
        case 0x50: this.push(this.persistentLoad(this.line())); break; // PERSID
        case 0x51: this.push(this.persistentLoad(this.pop())); break; // BINPERSID
        default:
          // Includes EXT1/2/4 (the extension registry) and NEXT_BUFFER (out-of-band buffers).
          this.fail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, '0')}`);
      }
    }
  }

  // ---- Reading the pickle bytes ----

  private take(n: number): Uint8Array {
    if (this.pos + n > this.data.length) this.fail('truncated pickle');
    const out = this.data.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  private u8(): number {
    return this.take(1)[0]!;
  }
  private u16(): number {
    const b = this.take(2);
    return b[0]! | (b[1]! << 8);
  }
  private u32(): number {
    return this.i32() >>> 0;
  }
  private i32(): number {
    const b = this.take(4);
    return b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24);
  }
  private u64(): number {
    const b = this.take(8);
    const v = new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  }
  /** Checks a length read from the pickle against the bytes left, so no absurd length is allocated. */
  private length(n: number): number {
    const left = this.data.length - this.pos;
    if (n < 0 || n > left) this.fail(`length ${n} exceeds the ${left} bytes left in the pickle (truncated or corrupt)`);
    return n;
  }
  private lineBytes(): Uint8Array {
    const end = this.data.indexOf(0x0a, this.pos);
    if (end < 0) this.fail('truncated pickle (unterminated line)');
    const out = this.data.subarray(this.pos, end);
    this.pos = end + 1;
    return out;
  }
  private line(): string {
    return utf8(this.lineBytes());
  }
  private intLine(): number {
    const v = this.parseInt(this.line());
    if (typeof v !== 'number' || v < 0) this.fail('bad memo index');
    return v;
  }
  private parseInt(text: string): number | bigint {
    if (!/^[+-]?\d+$/.test(text) || text.length > MAX_INT_BYTES) this.fail(`bad integer '${text.slice(0, 40)}'`);
    return smallestInt(BigInt(text));
  }
  /** A float as Python's repr writes it (protocol 0). */
  private parseFloat(text: string): number {
    const special = new Map([['inf', Infinity], ['-inf', -Infinity], ['nan', NaN]]);
    if (special.has(text)) return special.get(text)!;
    if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text)) this.fail(`bad float '${text.slice(0, 40)}'`);
    return Number(text);
  }
  /** A little-endian two's-complement integer of n bytes (LONG1, LONG4). */
  private longBytes(n: number): number | bigint {
    if (n < 0 || n > MAX_INT_BYTES) this.fail(`integer of ${n} bytes is too large`);
    const b = this.take(n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (n > 0 && b[n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
    return smallestInt(v);
  }
  /** The inside of a protocol 0 STRING literal, which is quoted with ' or ". */
  private quoted(line: Uint8Array): Uint8Array {
    const q = line[0];
    if (line.length < 2 || (q !== 0x22 && q !== 0x27) || line[line.length - 1] !== q) this.fail('STRING argument is not quoted');
    return line.subarray(1, -1);
  }

  // ---- The stack ----

  private push(v: unknown): void {
    this.stack.push(v);
  }
  /** The value `depth` places below the top (0 = top), without popping; never crosses a MARK. */
  private top(depth = 0): unknown {
    const i = this.stack.length - 1 - depth;
    if (i < (this.marks.at(-1) ?? 0)) this.fail('pickle stack underflow');
    return this.stack[i];
  }
  private pop(): unknown {
    const v = this.top();
    this.stack.length--;
    return v;
  }
  private popMark(): unknown[] {
    const mark = this.marks.pop();
    if (mark === undefined) this.fail('MARK missing');
    return this.stack.splice(mark);
  }
  private memoGet(i: number): unknown {
    if (!this.memo.has(i)) this.fail(`memo entry ${i} missing`);
    return this.memo.get(i);
  }

  // ---- Python semantics ----

  private tuple(v: unknown): unknown[] {
    return Array.isArray(v) ? v : this.fail('expected a tuple of arguments');
  }
  private list(v: unknown): unknown[] {
    return Array.isArray(v) ? v : this.fail('APPEND to something that is not a list');
  }
  iterable(v: unknown): Iterable<unknown> {
    if (!(Array.isArray(v) || v instanceof Set)) this.fail('expected a list');
    this.charge(Array.isArray(v) ? v.length : v.size);
    return v;
  }
  isTensor(v: unknown): v is PickledTensor {
    return typeof v === 'object' && v !== null && this.tensors.has(v);
  }

  /** A dict (plain object) from [key, value] pairs. */
  newDict(pairs: unknown): object {
    const dict = {};
    this.dicts.add(dict);
    for (const pair of this.iterable(pairs)) {
      const [key, value] = this.tuple(pair);
      this.setItems(dict, [key, value]);
    }
    return dict;
  }

  /** dict[k] = v for a flat [k1, v1, k2, v2, ...] list (dicts and placeholder instances only). */
  private setItems(target: unknown, items: unknown[]): object {
    if (typeof target !== 'object' || target === null || !(this.dicts.has(target) || this.instances.has(target))) {
      this.fail('SETITEM on something that is not a dict');
    }
    if (items.length % 2) this.fail('SETITEMS with an odd number of items');
    this.charge(items.length);
    for (let i = 0; i < items.length; i += 2) {
      const key = items[i];
      if (typeof key !== 'string' && typeof key !== 'number' && typeof key !== 'bigint') this.fail(`unsupported dict key type ${typeOf(key)}`);
      setKey(target, String(key), items[i + 1]);
    }
    return target;
  }

  /** GLOBAL: dtypes are values; everything else is a name that only CALLABLES can give meaning. */
  private global(module: string, name: string): unknown {
    if (module === 'torch' && TORCH_DTYPES.has(name)) return name;
    return new PickleGlobal(`${MODULE_ALIASES.get(module) ?? module}.${name}`);
  }

  /** REDUCE, INST, OBJ: only whitelisted callables run, and they only build data. */
  private call(fn: unknown, args: unknown): unknown {
    const handler = fn instanceof PickleGlobal ? CALLABLES.get(fn.name) : undefined;
    if (!handler) this.fail(`refusing to call ${fn instanceof PickleGlobal ? `non-whitelisted global '${fn.name}'` : typeOf(fn)}`);
    return handler(this, this.tuple(args));
  }

  /** cls.__new__(cls, *args) for a class we do not know: an inert object naming the class. */
  newObject(cls: unknown, args: unknown[]): object {
    if (!(cls instanceof PickleGlobal)) this.fail(`cannot instantiate ${typeOf(cls)}`);
    const obj: Record<string, unknown> = { __class__: cls.name };
    if (args.length > 0) obj.__args__ = args;
    this.instances.add(obj);
    return obj;
  }

  /** BUILD: __setstate__ / __dict__.update. */
  private build(target: unknown, state: unknown): void {
    if (target instanceof NumpyDtype) {
      // numpy's dtype state is (version, byteorder, ...).
      const order = Array.isArray(state) ? state[1] : undefined;
      if (typeof order !== 'string') this.fail('bad numpy.dtype state');
      target.byteorder = order;
    } else if (typeof target === 'object' && target !== null && this.instances.has(target)) {
      // Default __setstate__: state is a __dict__, or (__dict__, slots), either possibly None.
      const parts = Array.isArray(state) && state.length === 2 ? state : [state];
      for (const part of parts) {
        if (part === null) continue;
        if (typeof part !== 'object' || !this.dicts.has(part)) {
          setKey(target, '__state__', state); // a custom __setstate__ argument: keep it as is
          return;
        }
        const entries = Object.entries(part);
        this.charge(entries.length);
        for (const [k, v] of entries) setKey(target, k, v);
      }
    } else if (typeof target === 'object' && target !== null && this.dicts.has(target) && state !== null && typeof state === 'object' && this.dicts.has(state)) {
      // Attributes of a dict (state_dict's _metadata): kept out of the dict's own keys.
      const entries = Object.entries(state);
      this.charge(entries.length);
      for (const [k, v] of entries) setKey(target, k, v, false);
    } else {
      this.fail(`BUILD on unsupported ${typeOf(target)}`);
    }
  }

  // ---- torch ----

  /** torch's persistent_load: ('storage', storage_type, key, location, numel) -> a 1-D tensor. */
  private persistentLoad(pid: unknown): PickledTensor {
    if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== 'storage') this.fail('unsupported persistent id');
    const [, type, key, , numel] = pid as unknown[];
    const dtype = type instanceof PickleGlobal ? STORAGE_DTYPES.get(type.name) : undefined;
    if (!dtype) this.fail(`unsupported storage type ${String(type)}`);
    if (typeof key !== 'string' || !isInt(numel) || numel < 0) this.fail('bad storage persistent id');
    const name = `${this.prefix}data/${key}`;
    const cached = this.storages.get(key);
    if (cached) {
      if (cached.dtype !== dtype || cached.shape[0] !== numel) this.fail(`storage '${name}' is used with two different types or sizes`);
      return cached;
    }
    const entry = this.zip.entries.get(name);
    if (!entry) this.fail(`storage '${name}' missing`);
    // Checked against the entry before reading it, so a storage can never claim more than the zip holds.
    if (entry.size !== numel * ITEM_SIZE[dtype]) this.fail(`storage '${name}' has ${entry.size} bytes, not ${numel} × ${ITEM_SIZE[dtype]}`);
    const buf = this.zip.read(entry, entry.size);
    const storage: PickledTensor = { dtype, shape: [numel], bytes: new Uint8Array(buf.buffer, buf.byteOffset, buf.length) };
    this.storages.set(key, storage);
    this.storageObjects.add(storage);
    this.tensors.add(storage);
    return storage;
  }

  /** torch._utils._rebuild_tensor_v2: a (possibly strided) view of a storage, made contiguous. */
  rebuildTensor(storage: unknown, offset: unknown, size: unknown, stride: unknown): PickledTensor {
    if (!(typeof storage === 'object' && storage !== null && this.storageObjects.has(storage))) {
      this.fail('_rebuild_tensor_v2 of something that is not a storage');
    }
    const src = storage as PickledTensor;
    const shape = this.tuple(size);
    const strides = this.tuple(stride);
    if (!isInt(offset) || offset < 0 || !shape.every((n) => isInt(n) && n >= 0) || strides.length !== shape.length || !strides.every((n) => isInt(n) && n >= 0)) {
      this.fail('bad tensor size, stride or offset');
    }
    const dims = shape as number[];
    const steps = strides as number[];
    const itemSize = ITEM_SIZE[src.dtype];
    const numel = dims.reduce((a, n) => a * n, 1);
    if (!Number.isSafeInteger(numel * itemSize)) this.fail(`tensor of shape [${dims}] is too large`);
    const tensor: PickledTensor = { dtype: src.dtype, shape: dims, bytes: new Uint8Array(0) };
    this.tensors.add(tensor);
    if (numel === 0) return tensor;

    // The view's extent (offset + Σ (size - 1) · stride) must lie inside its storage; computed in
    // BigInt so that hostile sizes and strides cannot overflow past the check.
    const available = src.shape[0]!;
    const last = dims.reduce((a, n, d) => a + BigInt(n - 1) * BigInt(steps[d]!), BigInt(offset));
    if (last >= BigInt(available)) this.fail(`tensor view (offset ${offset}, size [${dims}], stride [${steps}]) reaches element ${last} of its storage of ${available} elements`);
    let contiguous = true;
    for (let d = dims.length - 1, expected = 1; d >= 0; d--) {
      if (dims[d] !== 1 && steps[d] !== expected) contiguous = false;
      expected *= dims[d]!;
    }
    if (contiguous) {
      tensor.bytes = src.bytes.subarray(offset * itemSize, (offset + numel) * itemSize);
      return tensor;
    }
    // Checked before allocating: all copied views together stay within a small multiple of the file.
    const bytes = numel * itemSize;
    if (bytes > this.gatherBudget) {
      this.fail(`tensor view (size [${dims}], stride [${steps}]) would materialise ${bytes} bytes from a storage of ${available * itemSize}; the file's views may copy at most ${Math.max(GATHER_FLOOR, GATHER_FILE_RATIO * this.zip.size)} bytes in all (zero strides or repeated views?)`);
    }
    this.gatherBudget -= bytes;
    tensor.bytes = gather(src.bytes, itemSize, offset, dims, steps, numel);
    return tensor;
  }

  /** numpy.core.multiarray.scalar(dtype, bytes) -> a JS number (bigint beyond 2^53) or boolean. */
  numpyScalar(dtype: unknown, data: unknown): number | bigint | boolean {
    if (!(dtype instanceof NumpyDtype) || !(data instanceof Uint8Array)) this.fail('bad numpy scalar arguments');
    const decoder = NUMPY_SCALARS.get(dtype.kind);
    if (!decoder) this.fail(`numpy scalars of dtype '${dtype.kind}' are not supported`);
    const [size, read] = decoder;
    if (data.length !== size) this.fail(`numpy '${dtype.kind}' scalar has ${data.length} bytes`);
    return read(new DataView(data.buffer, data.byteOffset, size), dtype.byteorder !== '>');
  }
}

/** Copies a strided view into a new row-major buffer, a contiguous run of the last dimension at a time. */
function gather(src: Uint8Array, itemSize: number, offset: number, shape: number[], strides: number[], numel: number): Uint8Array {
  const out = new Uint8Array(numel * itemSize);
  const nd = shape.length;
  const inner = shape[nd - 1]!;
  const innerStride = strides[nd - 1]!;
  const index = new Array<number>(nd - 1).fill(0);
  let base = offset;
  for (let pos = 0; pos < out.length; ) {
    if (innerStride === 1) {
      out.set(src.subarray(base * itemSize, (base + inner) * itemSize), pos);
      pos += inner * itemSize;
    } else {
      for (let j = 0; j < inner; j++) {
        const from = (base + j * innerStride) * itemSize;
        for (let b = 0; b < itemSize; b++) out[pos++] = src[from + b]!;
      }
    }
    // Advance the outer indices like an odometer.
    for (let d = nd - 2; d >= 0; d--) {
      base += strides[d]!;
      if (++index[d]! < shape[d]!) break;
      base -= strides[d]! * shape[d]!;
      index[d] = 0;
    }
  }
  return out;
}

/** A short description of a value for error messages. */
function typeOf(v: unknown): string {
  if (v === null) return 'None';
  if (Array.isArray(v)) return 'list';
  if (v instanceof PickleGlobal) return `global '${v.name}'`;
  return typeof v === 'object' ? (v.constructor?.name ?? 'object') : typeof v;
}

function utf8(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8');
}

/** Python's codecs.escape_decode, for protocol 0 STRING: backslash escapes inside a quoted literal. */
function escapeDecode(raw: Uint8Array): Uint8Array {
  const simple: Record<string, number> = { '\\': 0x5c, "'": 0x27, '"': 0x22, a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11 };
  const out: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c !== 0x5c || i + 1 >= raw.length) {
      out.push(c);
      continue;
    }
    const e = String.fromCharCode(raw[++i]!);
    if (Object.hasOwn(simple, e)) out.push(simple[e]!);
    else if (e === '\n') continue; // line continuation
    else if (e === 'x' && /^[0-9a-fA-F]{2}$/.test(String.fromCharCode(raw[i + 1] ?? 0, raw[i + 2] ?? 0))) {
      out.push(parseInt(String.fromCharCode(raw[i + 1]!, raw[i + 2]!), 16));
      i += 2;
    } else if (e >= '0' && e <= '7') {
      let digits = e;
      while (digits.length < 3 && raw[i + 1] !== undefined && raw[i + 1]! >= 0x30 && raw[i + 1]! <= 0x37) digits += String.fromCharCode(raw[++i]!);
      out.push(parseInt(digits, 8) & 0xff);
    } else out.push(0x5c, raw[i]!); // unknown escapes stay as written
  }
  return Uint8Array.from(out);
}

/** Python's raw-unicode-escape codec, for protocol 0 UNICODE: latin-1 bytes plus \uXXXX and \UXXXXXXXX. */
function rawUnicodeEscapeDecode(raw: Uint8Array): string {
  const text = Buffer.from(raw.buffer, raw.byteOffset, raw.length).toString('latin1');
  return text.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, u4: string | undefined, u8: string | undefined) => {
    const cp = parseInt(u4 ?? u8!, 16);
    return cp <= 0x10ffff ? String.fromCodePoint(cp) : '\ufffd';
  });
}

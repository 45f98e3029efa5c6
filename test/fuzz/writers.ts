/**
 * Minimal writers the fuzz suite needs to make well-formed seeds and to re-wrap mutated insides
 * (so that a mutated pickle or safetensors header gets past the outer checks: zip CRCs, header
 * length prefixes, and reaches the inner parser): a STORED zip writer, a protocol-2 pickle of the
 * paper's .pt layout, safetensors split/join, and a `.npy` writer (numpy/lib/format.py's layout).
 */
import { crc32 } from 'node:zlib';

/** A zip archive of STORED entries (what torch.save writes). */
export function writeZip(entries: [string, Buffer][]): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of entries) {
    const nameBytes = Buffer.from(name, 'utf8');
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    parts.push(local, nameBytes, data);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(data.length, 20);
    cd.writeUInt32LE(data.length, 24);
    cd.writeUInt16LE(nameBytes.length, 28);
    cd.writeUInt32LE(offset, 42);
    central.push(cd, nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const cdBytes = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cdBytes.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cdBytes, eocd]);
}

/** Reads back the entries of a zip made by writeZip (or any STORED zip with a plain directory). */
export function readZipEntries(zip: Buffer): [string, Buffer][] | null {
  try {
    const eocd = zip.length - 22;
    if (zip.readUInt32LE(eocd) !== 0x06054b50) return null;
    const count = zip.readUInt16LE(eocd + 10);
    let p = zip.readUInt32LE(eocd + 16);
    const out: [string, Buffer][] = [];
    for (let i = 0; i < count; i++) {
      const size = zip.readUInt32LE(p + 20);
      const nameLength = zip.readUInt16LE(p + 28);
      const extra = zip.readUInt16LE(p + 30) + zip.readUInt16LE(p + 32);
      const name = zip.toString('utf8', p + 46, p + 46 + nameLength);
      const local = zip.readUInt32LE(p + 42);
      const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
      out.push([name, zip.subarray(start, start + size)]);
      p += 46 + nameLength + extra;
    }
    return out;
  } catch {
    return null;
  }
}

/** Protocol-2 pickle building blocks. */
class PickleWriter {
  private parts: Buffer[] = [Buffer.from([0x80, 2])];
  op(...bytes: number[]): this {
    this.parts.push(Buffer.from(bytes));
    return this;
  }
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    this.parts.push(Buffer.from([0x58]), len, b); // BINUNICODE
    return this;
  }
  int(n: number): this {
    const b = Buffer.alloc(5);
    b[0] = 0x4a; // BININT
    b.writeInt32LE(n, 1);
    this.parts.push(b);
    return this;
  }
  float(x: number): this {
    const b = Buffer.alloc(9);
    b[0] = 0x47; // BINFLOAT
    b.writeDoubleBE(x, 1);
    this.parts.push(b);
    return this;
  }
  global(module: string, name: string): this {
    this.parts.push(Buffer.from(`c${module}\n${name}\n`, 'latin1'));
    return this;
  }
  tuple(items: (() => void)[]): this {
    this.op(0x28); // MARK
    for (const item of items) item();
    return this.op(0x74); // TUPLE
  }
  done(): Buffer {
    return Buffer.concat([...this.parts, Buffer.from([0x2e])]);
  }
}

export interface PickleTensorSpec {
  key: string;
  storage: string;
  numel: number;
  offset: number;
  size: number[];
  stride: number[];
}

/**
 * The paper's .pt layout: `{'cfg': LanguageModelSAERunnerConfig(...) (an inert NEWOBJ + BUILD),
 * 'state_dict': OrderedDict(key -> _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()))}`.
 */
export function paperPickle(cfg: Record<string, string | number | boolean>, tensors: PickleTensorSpec[]): Buffer {
  const w = new PickleWriter();
  w.op(0x7d); // EMPTY_DICT: the root
  w.op(0x28); // MARK for SETITEMS
  w.str('cfg');
  w.global('sae_training.config', 'LanguageModelSAERunnerConfig').op(0x29, 0x81); // EMPTY_TUPLE, NEWOBJ
  w.op(0x7d, 0x28); // EMPTY_DICT, MARK
  for (const [k, v] of Object.entries(cfg)) {
    w.str(k);
    if (typeof v === 'string') w.str(v);
    else if (typeof v === 'boolean') w.op(v ? 0x88 : 0x89);
    else if (Number.isInteger(v)) w.int(v);
    else w.float(v);
  }
  w.op(0x75, 0x62); // SETITEMS, BUILD
  w.str('state_dict');
  w.global('collections', 'OrderedDict').op(0x29, 0x52); // EMPTY_TUPLE, REDUCE
  w.op(0x28); // MARK
  for (const t of tensors) {
    w.str(t.key);
    w.global('torch._utils', '_rebuild_tensor_v2');
    w.op(0x28); // MARK: args tuple
    w.tuple([() => w.str('storage'), () => w.global('torch', 'FloatStorage'), () => w.str(t.storage), () => w.str('cpu'), () => w.int(t.numel)]);
    w.op(0x51); // BINPERSID
    w.int(t.offset);
    w.tuple(t.size.map((n) => () => w.int(n)));
    w.tuple(t.stride.map((n) => () => w.int(n)));
    w.op(0x89); // False
    w.global('collections', 'OrderedDict').op(0x29, 0x52);
    w.op(0x74, 0x52); // TUPLE, REDUCE
  }
  w.op(0x75); // SETITEMS into the OrderedDict
  w.op(0x75); // SETITEMS into the root
  return w.done();
}

/** A torch.save-style zip: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`, `archive/version`. */
export function torchZip(pickle: Buffer, storages: [string, Buffer][]): Buffer {
  return writeZip([
    ['archive/data.pkl', pickle],
    ['archive/byteorder', Buffer.from('little')],
    ...storages.map(([k, b]): [string, Buffer] => [`archive/data/${k}`, b]),
    ['archive/version', Buffer.from('3\n')],
  ]);
}

/**
 * A `.npy` image written from the format's description: magic, version 1.0, u16 header length, the
 * dict literal padded with spaces to a multiple of 64 bytes and ended by a newline, then the data.
 */
export function npyBytes(descr: string, shape: number[], data: Buffer): Buffer {
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const pad = 64 - ((10 + dict.length + 1) % 64);
  const header = Buffer.from(`${dict}${' '.repeat(pad % 64)}\n`, 'latin1');
  const pre = Buffer.alloc(10);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]).copy(pre);
  pre.writeUInt16LE(header.length, 8);
  return Buffer.concat([pre, header, data]);
}

/** A safetensors file split into its header text and the rest, or null if the prefix is broken. */
export function splitSafetensors(file: Buffer): { header: string; data: Buffer } | null {
  if (file.length < 8) return null;
  const n = Number(file.readBigUInt64LE(0));
  if (n > file.length - 8) return null;
  return { header: file.toString('utf8', 8, 8 + n), data: file.subarray(8 + n) };
}

export function joinSafetensors(header: string, data: Buffer): Buffer {
  const h = Buffer.from(header, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

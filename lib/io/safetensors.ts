/**
 * The safetensors format (a u64 header length, a JSON header, then raw little-endian tensor
 * data): header parsing with strict validation, reading tensors through the native loader, and
 * atomic writing. Every problem is a FormatError naming the file and the offending field.
 */
import { closeSync, readSync } from 'node:fs';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { native } from '../native.js';
import { describe, parseJsonText } from './json.js';
import { Tensor, type DType } from '../tensor.js';
import { writeFileAtomic } from './atomic.js';
import { openRegularFile } from './files.js';

/** Safetensors dtype codes and their byte sizes. */
export const SAFETENSORS_DTYPES = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
} as const;
export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPES;

const DTYPE_OF: Record<SafetensorsDtype, DType> = {
  F64: 'float64', F32: 'float32', F16: 'float16', BF16: 'bfloat16', I64: 'int64', I32: 'int32', I16: 'int16', I8: 'int8', U8: 'uint8', BOOL: 'bool',
};
const CODE_OF = Object.fromEntries(Object.entries(DTYPE_OF).map(([code, dtype]) => [dtype, code])) as Record<DType, SafetensorsDtype>;

/** A tensor as described by a safetensors header. */
export interface SafetensorsEntry {
  key: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Byte range relative to the start of the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  path: string;
  /** Absolute byte offset of the data section (8 + header length). */
  dataStart: number;
  entries: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
}

/** Headers larger than this are refused as corrupt (real ones are a few hundred KB). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** A tensor name as quoted in messages: a hostile header may use megabyte-long names. */
function short(key: string): string {
  return key.length > 60 ? `${key.slice(0, 59)}…` : key;
}

function isNonNegativeInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Reads and validates the header of a safetensors file without reading its data. */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const invalid = (why: string) => `not a valid safetensors file: ${why}`;
  const { fd, size: fileSize } = openRegularFile(path, invalid);
  try {
    const fail = (why: string): never => {
      throw new FormatError(`${path}: ${invalid(why)}`, path);
    };
    if (fileSize < 8) fail(`the file has ${fileSize} bytes, fewer than the 8-byte header length`);
    const lengthBytes = Buffer.alloc(8);
    readSync(fd, lengthBytes, 0, 8, 0);
    const headerLength = lengthBytes.readBigUInt64LE(0);
    if (headerLength > BigInt(Math.min(fileSize - 8, MAX_HEADER_BYTES))) {
      fail(`the header length ${headerLength} exceeds the file size ${fileSize}`);
    }
    const n = Number(headerLength);
    const headerBytes = Buffer.alloc(n);
    if (readSync(fd, headerBytes, 0, n, 8) !== n) fail('the header is truncated');
    // Depth-checked: the header is hostile input like the rest of the file.
    const json = parseJsonText(headerBytes.toString('utf8'), path, `${invalid('the header is not valid JSON')}`);
    if (typeof json !== 'object' || json === null || Array.isArray(json)) fail('the header is not a JSON object');
    const dataStart = 8 + n;
    const dataSize = fileSize - dataStart;
    const entries = new Map<string, SafetensorsEntry>();
    let metadata: Record<string, string> = {};
    for (const [key, raw] of Object.entries(json as Record<string, unknown>)) {
      if (key === '__metadata__') {
        if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(`__metadata__ must map strings to strings, got ${describe(raw)}`);
        for (const [k, v] of Object.entries(raw as object)) {
          if (typeof v !== 'string') fail(`__metadata__ must map strings to strings, but field ${describe(k, 40)} is ${describe(v)}`);
        }
        metadata = raw as Record<string, string>;
        continue;
      }
      const name = short(key);
      const t = raw as object;
      if (typeof t !== 'object' || t === null || Array.isArray(t)) fail(`tensor '${name}' is not an object, got ${describe(t)}`);
      const field = (k: string): unknown => (Object.hasOwn(t, k) ? (t as Record<string, unknown>)[k] : undefined);
      const tDtype = field('dtype');
      const tShape = field('shape');
      if (typeof tDtype !== 'string' || !Object.hasOwn(SAFETENSORS_DTYPES, tDtype)) {
        fail(`tensor '${name}' has unsupported dtype ${describe(tDtype)} (supported: ${Object.keys(SAFETENSORS_DTYPES).join(', ')})`);
      }
      const dtype = tDtype as SafetensorsDtype;
      if (!Array.isArray(tShape) || !tShape.every(isNonNegativeInt)) fail(`tensor '${name}' has an invalid shape ${describe(tShape)}`);
      const shape = tShape as number[];
      const offsets = field('data_offsets');
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInt)) {
        fail(`tensor '${name}' has invalid data_offsets ${describe(offsets)}`);
      }
      const [begin, end] = offsets as [number, number];
      const bytes = shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPES[dtype];
      if (end < begin || end - begin !== bytes) {
        fail(`tensor '${name}': data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} ${describe(shape)} needs ${bytes}`);
      }
      if (end > dataSize) fail(`tensor '${name}' ends at data byte ${end} but the data section has ${dataSize} bytes (truncated file?)`);
      entries.set(key, { key, dtype, shape, begin, end });
    }
    const sorted = [...entries.values()].sort((a, b) => a.begin - b.begin);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      const cur = sorted[i]!;
      if (cur.begin < prev.end) fail(`tensors '${short(prev.key)}' and '${short(cur.key)}' overlap`);
    }
    return { path, dataStart, entries, metadata };
  } finally {
    closeSync(fd);
  }
}

/** Loads tensors (all, or the named ones) of a validated header onto the CPU (off the JS thread). */
export async function loadSafetensorsTensors(header: SafetensorsHeader, keys?: readonly string[]): Promise<Record<string, Tensor>> {
  const wanted = keys ?? [...header.entries.keys()];
  const entries = wanted.map((key) => {
    const entry = header.entries.get(key);
    if (!entry) throw new FormatError(`${header.path}: missing tensor '${key}'`, header.path);
    return entry;
  });
  const handles = await native().loadSafetensors(header.path, header.dataStart, entries);
  return Object.fromEntries(Object.entries(handles).map(([k, h]) => [k, new Tensor(h)]));
}

/** Reads a whole safetensors file: its tensors (on the CPU) and metadata. */
export async function readSafetensors(path: string): Promise<{ tensors: Record<string, Tensor>; metadata: Record<string, string> }> {
  const header = readSafetensorsHeader(path);
  return { tensors: await loadSafetensorsTensors(header), metadata: header.metadata };
}

/** A tensor given as raw little-endian bytes (for writers that produce data without libtorch). */
export interface RawTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  bytes: Uint8Array;
}

/**
 * Writes tensors to a safetensors file atomically. Keys are written in sorted order, the header
 * padded with spaces to a multiple of 8 bytes so the data stays aligned.
 */
export function writeSafetensors(path: string, tensors: Record<string, Tensor | RawTensor>, metadata?: Record<string, string>): void {
  const keys = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const datas: Uint8Array[] = [];
  let offset = 0;
  for (const key of keys) {
    const t = tensors[key]!;
    let raw: RawTensor;
    if (t instanceof Tensor) {
      raw = { dtype: CODE_OF[t.dtype], shape: t.shape, bytes: t.handle.rawBytes() };
    } else {
      raw = t;
      const expected = raw.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPES[raw.dtype];
      if (raw.bytes.length !== expected) {
        throw new InvalidArgumentError(`writeSafetensors: '${key}' has ${raw.bytes.length} bytes, ${raw.dtype} ${JSON.stringify(raw.shape)} needs ${expected}`);
      }
    }
    header[key] = { dtype: raw.dtype, shape: raw.shape, data_offsets: [offset, offset + raw.bytes.length] };
    offset += raw.bytes.length;
    datas.push(raw.bytes);
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileAtomic(path, [length, json, ...datas]);
}

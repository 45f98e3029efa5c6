/**
 * A minimal, read-only zip reader: enough for torch.save archives (STORED entries, ZIP64 when
 * the file is large) and ordinary zips (DEFLATE). It parses the central directory once and reads
 * entry contents lazily from the file descriptor, so a checkpoint of hundreds of MB is never held
 * in memory twice. Every offset and size is checked against the file size before use, and every
 * entry is checked against its CRC-32; each problem is a FormatError naming the file.
 */
import { constants as bufferConstants } from 'node:buffer';
import { closeSync, readSync } from 'node:fs';
import { crc32, inflateRawSync } from 'node:zlib';
import { FormatError } from '../errors.js';
import { openRegularFile } from './files.js';
import { capReason } from './json.js';

/** One file of the archive, as described by its central directory record. */
export interface ZipEntry {
  name: string;
  /** 0 = STORED, 8 = DEFLATE. */
  method: number;
  compressedSize: number;
  size: number;
  crc32: number;
  /** Offset of the entry's local header in the file. */
  localHeaderOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const EOCD_SIZE = 22;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
/** The EOCD record may be followed by a comment of up to 65535 bytes. */
const MAX_COMMENT = 0xffff;
/** readSync cannot read more than 2 GiB at once. */
const READ_CHUNK = 1 << 30;
/** DEFLATE cannot expand data by more than about 1032:1; a larger declared size is a lie. */
const MAX_DEFLATE_RATIO = 1032;
/**
 * All DEFLATE entries of one archive together may inflate to at most this many times the file's
 * size (or INFLATE_FLOOR, for small files). torch.save stores its records uncompressed and real
 * tensor data compresses a few percent, so only a decompression bomb comes near.
 */
const INFLATE_FILE_RATIO = 64;
const INFLATE_FLOOR = 256 * 1024 * 1024;

/** An open zip archive; call close() when done. */
export class ZipFile {
  readonly path: string;
  readonly size: number;
  /** Entries by name, in central directory order. */
  readonly entries: Map<string, ZipEntry>;
  private fd: number;
  /** Bytes DEFLATE entries may still inflate to (see INFLATE_FILE_RATIO). */
  private inflateBudget: number;

  private constructor(path: string, fd: number, size: number) {
    this.path = path;
    this.fd = fd;
    this.size = size;
    this.entries = new Map();
    this.inflateBudget = Math.max(INFLATE_FLOOR, INFLATE_FILE_RATIO * size);
  }

  /** Opens `path` and parses its central directory (throws FormatError if it is not a valid zip). */
  static open(path: string): ZipFile {
    const { fd, size } = openRegularFile(path);
    try {
      const zip = new ZipFile(path, fd, size);
      zip.readCentralDirectory();
      return zip;
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  /**
   * The uncompressed contents of `entry`, in a new buffer. `maxBytes` is what the caller can use
   * (a larger entry is refused before anything is read or inflated).
   */
  read(entry: ZipEntry, maxBytes = bufferConstants.MAX_LENGTH): Buffer {
    if (entry.size > Math.min(maxBytes, bufferConstants.MAX_LENGTH)) this.fail(`entry '${entry.name}' is too large (${entry.size} bytes, at most ${Math.min(maxBytes, bufferConstants.MAX_LENGTH)} expected)`);
    if (entry.method !== 0) {
      // Checked before inflating, so a bomb is refused at its declared size, never expanded.
      if (entry.size > MAX_DEFLATE_RATIO * entry.compressedSize + 1024) {
        this.fail(`entry '${entry.name}' declares ${entry.size} bytes from ${entry.compressedSize} compressed, beyond what DEFLATE can produce (corrupt zip or decompression bomb)`);
      }
      if (entry.size > this.inflateBudget) {
        this.fail(`entry '${entry.name}' would inflate the archive beyond ${INFLATE_FILE_RATIO} times its ${this.size} bytes (decompression bomb?)`);
      }
      this.inflateBudget -= entry.size;
    }
    const local = this.readAt(entry.localHeaderOffset, LOCAL_SIZE, `the local header of '${entry.name}'`);
    if (local.readUInt32LE(0) !== SIG_LOCAL) this.fail(`bad local header signature for '${entry.name}'`);
    // The local name and extra lengths may differ from the central ones (torch pads the extra
    // field so that data is 64-byte aligned), so the data offset must come from here.
    const dataStart = entry.localHeaderOffset + LOCAL_SIZE + local.readUInt16LE(26) + local.readUInt16LE(28);
    if (dataStart + entry.compressedSize > this.size) this.fail(`entry '${entry.name}' extends past the end of the file (truncated zip?)`);
    let data: Buffer;
    if (entry.method === 0) {
      data = this.readAt(dataStart, entry.size, `entry '${entry.name}'`);
    } else {
      const compressed = this.readAt(dataStart, entry.compressedSize, `entry '${entry.name}'`);
      try {
        data = inflateRawSync(compressed, { maxOutputLength: Math.max(entry.size, 1) });
      } catch (err) {
        this.fail(`entry '${entry.name}' does not inflate (${(err as Error).message})`);
      }
      if (data.length !== entry.size) this.fail(`entry '${entry.name}' inflates to ${data.length} bytes, not ${entry.size}`);
    }
    if (crc32(data) !== entry.crc32) this.fail(`entry '${entry.name}' fails its CRC-32 check (corrupt file?)`);
    return data;
  }

  private fail(why: string): never {
    // Cut: reasons quote entry names, which a hostile archive may make 64 KB long.
    throw new FormatError(`${this.path}: ${capReason(why)}`, this.path);
  }

  /** Reads exactly `length` bytes at `offset` into a new buffer that owns its memory. */
  private readAt(offset: number, length: number, what: string): Buffer {
    if (offset + length > this.size) this.fail(`${what} extends past the end of the file (truncated zip?)`);
    if (length > bufferConstants.MAX_LENGTH) this.fail(`${what} is too large (${length} bytes)`);
    const buf = Buffer.allocUnsafeSlow(length);
    for (let done = 0; done < length; ) {
      const n = readSync(this.fd, buf, done, Math.min(length - done, READ_CHUNK), offset + done);
      if (n === 0) this.fail(`${what} is truncated`);
      done += n;
    }
    return buf;
  }

  private readCentralDirectory(): void {
    if (this.size < EOCD_SIZE) this.fail(`not a zip archive (only ${this.size} bytes)`);
    const magic = this.readAt(0, 4, 'the zip signature').readUInt32LE(0);
    if (magic !== SIG_LOCAL && magic !== SIG_EOCD) this.fail('not a zip archive (bad signature)');
    // The EOCD record is the last thing in the file, before an optional comment: scan backwards.
    const tailLength = Math.min(this.size, EOCD_SIZE + MAX_COMMENT);
    const tailStart = this.size - tailLength;
    const tail = this.readAt(tailStart, tailLength, 'the end of the file');
    let eocd = -1;
    for (let i = tailLength - EOCD_SIZE; i >= 0; i--) {
      if (tail.readUInt32LE(i) === SIG_EOCD && i + EOCD_SIZE + tail.readUInt16LE(i + 20) === tailLength) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) this.fail('no end-of-central-directory record (truncated zip?)');
    if (tail.readUInt16LE(eocd + 4) !== 0 || tail.readUInt16LE(eocd + 6) !== 0) this.fail('multi-disk zip archives are not supported');
    let count = tail.readUInt16LE(eocd + 10);
    let cdSize = tail.readUInt32LE(eocd + 12);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    // The central directory must end where the (ZIP64) end records begin.
    let cdLimit = tailStart + eocd;

    // A ZIP64 locator right before the EOCD points to the ZIP64 EOCD, whose 64-bit fields
    // replace the saturated 16/32-bit ones.
    const locatorAt = tailStart + eocd - ZIP64_LOCATOR_SIZE;
    if (locatorAt >= 0) {
      const locator = this.readAt(locatorAt, ZIP64_LOCATOR_SIZE, 'the ZIP64 locator');
      if (locator.readUInt32LE(0) === SIG_ZIP64_LOCATOR) {
        const at = this.u64(locator, 8, 'ZIP64 end-of-central-directory offset');
        if (at + ZIP64_EOCD_SIZE > locatorAt) this.fail('the ZIP64 end-of-central-directory offset is out of range');
        const rec = this.readAt(at, ZIP64_EOCD_SIZE, 'the ZIP64 end-of-central-directory record');
        if (rec.readUInt32LE(0) !== SIG_ZIP64_EOCD) this.fail('bad ZIP64 end-of-central-directory signature');
        count = this.u64(rec, 32, 'ZIP64 entry count');
        cdSize = this.u64(rec, 40, 'ZIP64 central directory size');
        cdOffset = this.u64(rec, 48, 'ZIP64 central directory offset');
        cdLimit = at;
      }
    }
    if (cdOffset + cdSize > cdLimit) this.fail(`the central directory (offset ${cdOffset}, ${cdSize} bytes) lies outside the file (truncated zip?)`);
    if (count * CENTRAL_SIZE > cdSize) this.fail(`the central directory is too small for ${count} entries`);

    const cd = this.readAt(cdOffset, cdSize, 'the central directory');
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + CENTRAL_SIZE > cd.length || cd.readUInt32LE(p) !== SIG_CENTRAL) this.fail(`bad central directory entry ${i} (corrupt zip directory)`);
      const flags = cd.readUInt16LE(p + 8);
      const method = cd.readUInt16LE(p + 10);
      const nameLength = cd.readUInt16LE(p + 28);
      const extraLength = cd.readUInt16LE(p + 30);
      const commentLength = cd.readUInt16LE(p + 32);
      const end = p + CENTRAL_SIZE + nameLength + extraLength + commentLength;
      if (end > cd.length) this.fail(`central directory entry ${i} overruns the directory (corrupt zip directory)`);
      const name = cd.toString('utf8', p + CENTRAL_SIZE, p + CENTRAL_SIZE + nameLength);
      if (flags & 1) this.fail(`entry '${name}' is encrypted`);
      if (method !== 0 && method !== 8) this.fail(`entry '${name}' uses unsupported compression method ${method}`);
      const entry: ZipEntry = {
        name,
        method,
        compressedSize: cd.readUInt32LE(p + 20),
        size: cd.readUInt32LE(p + 24),
        crc32: cd.readUInt32LE(p + 16),
        localHeaderOffset: cd.readUInt32LE(p + 42),
      };
      this.applyZip64Extra(entry, cd.subarray(p + CENTRAL_SIZE + nameLength, p + CENTRAL_SIZE + nameLength + extraLength));
      if (method === 0 && entry.compressedSize !== entry.size) this.fail(`stored entry '${name}' has different compressed and uncompressed sizes`);
      if (entry.localHeaderOffset + LOCAL_SIZE + entry.compressedSize > cdOffset) {
        this.fail(`entry '${name}' lies outside the file's data area (corrupt zip directory)`);
      }
      if (this.entries.has(name)) this.fail(`duplicate entry '${name}'`);
      this.entries.set(name, entry);
      p = end;
    }
  }

  /** Replaces the saturated (0xFFFFFFFF) fields of `entry` with those of its ZIP64 extra field. */
  private applyZip64Extra(entry: ZipEntry, extra: Buffer): void {
    const fields = (['size', 'compressedSize', 'localHeaderOffset'] as const).filter((f) => entry[f] === 0xffffffff);
    if (fields.length === 0) return;
    for (let q = 0; q + 4 <= extra.length; ) {
      const id = extra.readUInt16LE(q);
      const length = extra.readUInt16LE(q + 2);
      if (q + 4 + length > extra.length) break;
      if (id === 0x0001) {
        // The 64-bit values appear in this fixed order, but only for the saturated fields.
        if (length < fields.length * 8) this.fail(`the ZIP64 extra field of '${entry.name}' is too short`);
        fields.forEach((f, k) => (entry[f] = this.u64(extra, q + 4 + 8 * k, `ZIP64 ${f} of '${entry.name}'`)));
        return;
      }
      q += 4 + length;
    }
    this.fail(`entry '${entry.name}' lacks the ZIP64 extra field its sizes require`);
  }

  private u64(buf: Buffer, offset: number, what: string): number {
    const v = buf.readBigUInt64LE(offset);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what} (${v}) is out of range`);
    return Number(v);
  }
}

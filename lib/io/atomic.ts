/**
 * Atomic file writes: data goes to a temporary file in the same folder, is flushed to disk, and
 * is renamed over the target. A reader (or a killed run) sees the old file or the new one, never
 * a half-written one. A failing write (disk full, permission denied, file too large, ...) removes
 * its temporary file and becomes an IoError naming the target.
 */
import { appendFileSync, closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { IoError, TranscodersError } from '../errors.js';

const MESSAGES: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EFBIG: 'file too large (a file-size limit, e.g. ulimit -f)',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  EIO: 'input/output error',
  ENOENT: 'no such file or folder',
  ENOTDIR: 'a component of the path is not a folder',
  EISDIR: 'is a folder',
  EMFILE: 'too many open files',
};

/**
 * `err` as the library's error: system errors become an IoError naming `path` and what was being
 * done (`action`, e.g. "cannot write"); the library's own errors pass through unchanged.
 */
export function toIoError(err: unknown, path: string, action: string): Error {
  if (err instanceof TranscodersError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return err instanceof Error ? err : new Error(String(err));
  return new IoError(`${path}: ${action} (${MESSAGES[code] ?? (err as Error).message}; ${code})`, path, code);
}

/** Writes `chunks` (in order) to `path` atomically. */
export function writeFileAtomic(path: string, chunks: Iterable<Uint8Array | string>): void {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd: number;
  try {
    fd = openSync(tmp, 'w');
  } catch (err) {
    throw toIoError(err, path, 'cannot write');
  }
  try {
    for (const chunk of chunks) {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      let offset = 0;
      while (offset < bytes.length) offset += writeSync(fd, bytes, offset, bytes.length - offset);
    }
    // Flushed before the rename: otherwise a crash of the machine could leave the new name on empty data.
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (err) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    rmSync(tmp, { force: true });
    throw toIoError(err, path, 'cannot write');
  }
}

/** Appends `text` to `path` (a log), failures as an IoError naming it. */
export function appendFileChecked(path: string, text: string): void {
  try {
    appendFileSync(path, text);
  } catch (err) {
    throw toIoError(err, path, 'cannot append to the log');
  }
}

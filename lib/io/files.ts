/** Opening files for reading, with the library's errors. */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { FormatError } from '../errors.js';

/**
 * Opens a regular file for reading and returns its descriptor (the caller closes it) and size.
 * A missing or unreadable path, or a folder, is a FormatError naming the file; `invalid` words the
 * latter ("not a regular file") for the caller's format.
 */
export function openRegularFile(path: string, invalid: (why: string) => string = (why) => why): { fd: number; size: number } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new FormatError(`${path}: cannot open (${(err as NodeJS.ErrnoException).code ?? String(err)})`, path);
  }
  const stat = fstatSync(fd);
  if (!stat.isFile()) {
    closeSync(fd);
    throw new FormatError(`${path}: ${invalid('not a regular file')}`, path);
  }
  return { fd, size: stat.size };
}

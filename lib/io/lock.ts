/**
 * An exclusive lock on an output folder, so that two trainings into the same folder refuse each
 * other instead of interleaving their checkpoints. The lock is a file holding the owner's pid and
 * host. It is created complete and exclusively: the content goes to a private temporary file that
 * is then hard-linked to the lock name, which (like open with O_EXCL) fails if the name exists, so
 * no process ever sees a lock without its owner. A lock whose owner is not alive (same host, no
 * such pid) is stale: it is reported and taken over.
 */
import { linkSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { IoError } from '../errors.js';
import { toIoError } from './atomic.js';

export const LOCK_FILE = 'transcoders.lock';

export interface LockOwner {
  pid: number;
  host: string;
  /** ISO time the lock was taken. */
  since: string;
  /** What holds it (e.g. "transcoders train"). */
  what: string;
}

export interface FolderLock {
  path: string;
  /** A stale lock that was taken over, if any (its owner was no longer running). */
  tookOver?: LockOwner;
  /** Removes the lock (only if it is still ours); safe to call more than once. */
  release(): void;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readOwner(path: string): LockOwner | null {
  try {
    const owner = JSON.parse(readFileSync(path, 'utf8')) as LockOwner;
    return Number.isInteger(owner.pid) && typeof owner.host === 'string' ? owner : null;
  } catch {
    return null;
  }
}

/**
 * Takes the lock of `dir` (which must exist) for this process, or throws an IoError (code EBUSY)
 * naming the running owner's pid and host.
 */
export function lockFolder(dir: string, what: string): FolderLock {
  const path = join(dir, LOCK_FILE);
  const me: LockOwner = { pid: process.pid, host: hostname(), since: new Date().toISOString(), what };
  const tmp = join(dir, `.${LOCK_FILE}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    writeFileSync(tmp, JSON.stringify(me) + '\n');
  } catch (err) {
    throw toIoError(err, path, 'cannot create the lock file');
  }
  let tookOver: LockOwner | undefined;
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        linkSync(tmp, path);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 5) throw toIoError(err, path, 'cannot create the lock file');
      }
      const owner = readOwner(path);
      if (owner && owner.host !== me.host) {
        throw new IoError(`${dir} is in use by process ${owner.pid} on host ${owner.host} (${owner.what}, since ${owner.since}); if it is no longer running there, remove ${path}`, path, 'EBUSY');
      }
      if (owner && alive(owner.pid)) {
        throw new IoError(`${dir} is in use by process ${owner.pid} (${owner.what}, since ${owner.since}): wait for it to finish or use another output folder`, path, 'EBUSY');
      }
      // Stale (owner gone) or unreadable (its writer died before linking cannot happen, so this is
      // a foreign or damaged file): move it aside under a unique name and try again. Of two
      // processes taking over at once, only one link succeeds.
      const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
      try {
        renameSync(path, aside);
        rmSync(aside, { force: true });
        tookOver = owner ?? { pid: -1, host: me.host, since: '', what: 'unreadable lock file' };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw toIoError(err, path, 'cannot take over the stale lock file');
      }
    }
  } finally {
    rmSync(tmp, { force: true });
  }
  let released = false;
  return {
    path,
    ...(tookOver && { tookOver }),
    release() {
      if (released) return;
      released = true;
      const owner = readOwner(path);
      if (owner && owner.pid === me.pid && owner.host === me.host && owner.since === me.since) rmSync(path, { force: true });
    },
  };
}

/**
 * Fake Hugging Face hub caches for tests, laid out as huggingface_hub writes them: each file's contents
 * in `blobs/<sha256>`, the snapshot entry a relative symlink `../../blobs/<sha256>` (one more `../` per
 * folder level inside the repo), and `refs/<name>` holding the commit hash.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** A commit-like 40-hex id derived from `seed`. */
export function fakeCommit(seed: string): string {
  return createHash('sha1').update(seed).digest('hex');
}

/**
 * Writes one snapshot of `repoId` into the cache at `root`: `files` maps repo paths to contents (or
 * `{ copyOf: path }` to copy a file from disk); `refs` names the branches and tags pointing at it.
 * Returns the snapshot folder.
 */
export function writeHubSnapshot(
  root: string,
  repoId: string,
  commit: string,
  files: Record<string, string | Buffer | { copyOf: string }>,
  refs: string[] = ['main'],
): string {
  const repoDir = join(root, `models--${repoId.split('/').join('--')}`);
  const snapshot = join(repoDir, 'snapshots', commit);
  mkdirSync(join(repoDir, 'blobs'), { recursive: true });
  for (const [path, content] of Object.entries(files)) {
    const bytes = typeof content === 'object' && !Buffer.isBuffer(content) ? readFileSync(content.copyOf) : Buffer.from(content);
    const sha = createHash('sha256').update(bytes).digest('hex');
    writeFileSync(join(repoDir, 'blobs', sha), bytes);
    const entry = join(snapshot, ...path.split('/'));
    mkdirSync(dirname(entry), { recursive: true });
    const up = '../'.repeat(path.split('/').length + 1);
    symlinkSync(`${up}blobs/${sha}`, entry);
  }
  mkdirSync(snapshot, { recursive: true });
  for (const ref of refs) {
    const refFile = join(repoDir, 'refs', ...ref.split('/'));
    mkdirSync(dirname(refFile), { recursive: true });
    writeFileSync(refFile, commit);
  }
  return snapshot;
}

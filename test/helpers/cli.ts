/** Running the compiled CLI (bin/transcoders.js over dist/) from tests. */
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Modification times of the files under `dir` whose names end with `ext`. */
function mtimes(dir: string, ext: string): number[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith(ext))
    .map((f) => statSync(join(dir, f)).mtimeMs);
}

/** The CLI, child-process and browser tests run the compiled library and viewer (dist/): rebuild them when a source is newer. */
export function ensureDist(): void {
  let stale = true;
  try {
    const outputs = mtimes(join(ROOT, 'dist'), '.js');
    const sources = [...mtimes(join(ROOT, 'lib'), '.ts'), ...mtimes(join(ROOT, 'lib/viewer'), '.html'), ...mtimes(join(ROOT, 'lib/viewer'), '.css')];
    stale = outputs.length === 0 || Math.max(...sources) > Math.min(...outputs);
  } catch {
    // no dist/ yet
  }
  if (!stale) return;
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' });
  if (tsc.status !== 0) throw new Error(`tsc -p tsconfig.build.json failed:\n${tsc.stdout}${tsc.stderr}`);
  const viewer = spawnSync(process.execPath, [join(ROOT, 'scripts/build-viewer.mjs')], { cwd: ROOT, encoding: 'utf8' });
  if (viewer.status !== 0) throw new Error(`scripts/build-viewer.mjs failed:\n${viewer.stdout}${viewer.stderr}`);
}

/** Runs `transcoders ...args` in `cwd`; returns the exit code and output. */
export function runCli(args: string[], cwd = ROOT): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/transcoders.js'), ...args], { cwd, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

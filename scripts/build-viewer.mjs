#!/usr/bin/env node
// Builds the browser viewer into dist/viewer/: lib/viewer/src/main.ts bundled by esbuild into one
// viewer.js (an IIFE: the page loads it with a plain <script>, which also works from file://, where
// module scripts are blocked), beside copies of lib/viewer/index.html and viewer.css. Nothing is
// fetched from elsewhere at run time. Exits non-zero on any error.
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'lib', 'viewer');
const out = join(root, 'dist', 'viewer');

try {
  mkdirSync(out, { recursive: true });
  const result = await build({
    entryPoints: [join(source, 'src', 'main.ts')],
    outfile: join(out, 'viewer.js'),
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    minify: true,
    sourcemap: false,
    legalComments: 'none',
    logLevel: 'warning',
  });
  if (result.errors.length > 0) process.exit(1);
  for (const file of ['index.html', 'viewer.css']) copyFileSync(join(source, file), join(out, file));
  console.log(`viewer: built ${out}`);
} catch (err) {
  // esbuild has printed its diagnostics already; anything else (a copy) is reported here.
  if (!err?.errors) console.error(`viewer: build failed: ${err?.message ?? err}`);
  process.exit(1);
}

#!/usr/bin/env node
// CLI entry point: runs the compiled CLI (dist/, built by `npm run build:ts` / on `npm ci`).
import { main } from '../dist/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err instanceof Error ? err.stack : err);
    process.exitCode = 1;
  },
);

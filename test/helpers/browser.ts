/**
 * Debian's chromium driven by playwright-core for the viewer's browser tests (`.ci/run` installs it;
 * nothing downloads a browser). TRANSCODERS_CHROMIUM overrides the executable. Screenshots go to
 * test-artifacts/ (TRANSCODERS_TEST_ARTIFACTS overrides), which CI keeps.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM = process.env.TRANSCODERS_CHROMIUM ?? '/usr/bin/chromium';
export const ARTIFACTS = process.env.TRANSCODERS_TEST_ARTIFACTS ?? new URL('../../test-artifacts/', import.meta.url).pathname;

/** A headless chromium; throws naming the missing executable (the test fails: it does not skip). */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`the browser tests need Debian's chromium at ${CHROMIUM} (apt-get install chromium; .ci/run installs it) or TRANSCODERS_CHROMIUM=/path/to/chromium`);
  }
  // The flags keep chromium from reaching for the network on its own (this machine has none).
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

/** The path of a screenshot artifact (the folder created). */
export function artifact(name: string): string {
  const dir = join(ARTIFACTS, 'viewer');
  mkdirSync(dir, { recursive: true });
  return join(dir, name);
}

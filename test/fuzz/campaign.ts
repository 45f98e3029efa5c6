/**
 * A fuzz campaign over one parser in this process: inputs [start, start + count) of (parser, seed),
 * with per-outcome counts and the slowest input. The short run of `npm test` and the worker of
 * `npm run fuzz` (scripts/fuzz.mjs, which adds crash and hang isolation) both use it.
 */
import { join } from 'node:path';
import { FuzzRng, hashSeed } from './mutators.js';
import { inputOf, runCase, type FuzzTarget } from './targets.js';

export interface CampaignResult {
  parser: string;
  inputs: number;
  outcomes: Record<string, number>;
  maxMs: number;
  slowest: number;
  /** The first few findings: index, outcome, message. */
  findings: { index: number; outcome: string; message?: string }[];
}

export function rngFor(parser: string, seed: number) {
  return (index: number) => new FuzzRng(hashSeed(parser, seed, index));
}

export async function runCampaign(
  target: FuzzTarget,
  work: string,
  seed: number,
  start: number,
  count: number,
  hooks: { before?: (index: number) => void | Promise<void>; after?: (index: number, outcome: string, ms: number, message?: string) => void } = {},
): Promise<CampaignResult> {
  const result: CampaignResult = { parser: target.name, inputs: 0, outcomes: {}, maxMs: 0, slowest: -1, findings: [] };
  const rngOf = rngFor(target.name, seed);
  const dir = join(work, `${target.name}-input`);
  for (let i = start; i < start + count; i++) {
    // Announced before the input is even generated, so that any crash is attributed to this index.
    await hooks.before?.(i);
    const c = inputOf(target, i, rngOf);
    const { outcome, ms, message } = await runCase(target, c, dir);
    hooks.after?.(i, outcome, ms, message);
    result.inputs++;
    result.outcomes[outcome] = (result.outcomes[outcome] ?? 0) + 1;
    if (ms > result.maxMs) {
      result.maxMs = ms;
      result.slowest = i;
    }
    if (outcome.startsWith('BAD:') && result.findings.length < 20) result.findings.push({ index: i, outcome, ...(message ? { message } : {}) });
  }
  return result;
}

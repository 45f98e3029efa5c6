/**
 * Up-front memory checks: work whose size follows from its options (a transcoder's width, a random
 * model's shape) is refused before it allocates anything when it cannot fit in this machine's memory,
 * with the figure and what it is made of, instead of failing minutes later with an allocation error.
 */
import { totalmem } from 'node:os';
import { InvalidArgumentError } from '../errors.js';

/** `n` bytes as a short human figure (e.g. "12.3 GiB"). */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 && unit > 0 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** One part of an estimate: what it is and how many bytes it takes. */
export interface MemoryPart {
  what: string;
  bytes: number;
}

/**
 * Throws an InvalidArgumentError when `parts` add up to more than the machine's memory (`limit`,
 * default the total physical memory: the check refuses only what cannot work at all).
 */
export function checkMemory(task: string, parts: readonly MemoryPart[], limit = totalmem()): void {
  const needed = parts.reduce((s, p) => s + p.bytes, 0);
  if (needed <= limit) return;
  const breakdown = parts.filter((p) => p.bytes > 0).map((p) => `${p.what} ${formatBytes(p.bytes)}`).join(', ');
  throw new InvalidArgumentError(`${task} needs about ${formatBytes(needed)} of memory (${breakdown}); this machine has ${formatBytes(limit)}`);
}

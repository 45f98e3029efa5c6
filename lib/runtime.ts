/** Process-wide settings of the libtorch runtime. */
import { InvalidArgumentError } from './errors.js';
import { native, type TorchInfo } from './native.js';

/**
 * Sets how many threads libtorch (intra-op) and OpenBLAS use for each operation. Applied on every
 * worker thread that runs library work. Defaults to the number of logical CPUs.
 */
export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`setNumThreads: expected a positive integer, got ${n}`);
  native().setNumThreads(n);
}

/** The thread count set by {@link setNumThreads}. */
export function getNumThreads(): number {
  return native().getNumThreads();
}

/** The intra-op thread count libtorch reports on a worker thread (where the library's work runs). */
export function workerNumThreads(): Promise<number> {
  return native().workerNumThreads();
}

/** Version and capabilities of the libtorch the addon was built against. */
export function torchInfo(): TorchInfo {
  return native().torchInfo();
}

export type { TorchInfo };

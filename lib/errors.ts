/**
 * Error classes of the library. Every failure of the native core arrives as one of these
 * (never as a crash of the process), with a message that names the cause.
 */

/** Base class of every error the library throws on purpose. */
export class TranscodersError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** An argument is wrong: out-of-range token ids, unknown hook names, wrong shapes, bad options. */
export class InvalidArgumentError extends TranscodersError {}

/** A file is missing, corrupt, or does not hold what it claims. `file` names it. */
export class FormatError extends TranscodersError {
  readonly file: string;
  constructor(message: string, file = '') {
    super(message);
    this.file = file;
  }
}

/**
 * A number went NaN or infinite where it must not: a training loss or gradient (training stops at that
 * step, the last checkpoint on disk stays the last good one), or weights being loaded.
 */
export class NumericalError extends TranscodersError {}

/** The work was stopped before it finished: its AbortSignal fired (a caller gave up, or a time limit ran out). */
export class CancelledError extends TranscodersError {}

/** Throws if `signal` fired: its reason when that is one of our errors, else a CancelledError. */
export function throwIfCancelled(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  const reason: unknown = signal.reason;
  if (reason instanceof TranscodersError) throw reason;
  throw new CancelledError(reason instanceof Error && reason.message ? `cancelled: ${reason.message}` : 'cancelled');
}

/**
 * A process group failed: a rank did not join or died, a collective timed out (lib/distributed/).
 * Every rank of a failed group gets one; the group cannot be used again.
 */
export class DistributedError extends TranscodersError {}

/** libtorch itself failed (out of memory, an unsupported operation on this device or dtype, ...). */
export class TorchError extends TranscodersError {}

/** The native addon could not be loaded; the message says how to build it. */
export class NativeLoadError extends TranscodersError {}

/**
 * Reading or writing a file failed for a reason outside the library's control (disk full,
 * permission denied, the file vanished). `path` names the file, `code` is the system's (ENOSPC, ...).
 */
export class IoError extends TranscodersError {
  readonly path: string;
  readonly code: string | undefined;
  constructor(message: string, path: string, code?: string) {
    super(message);
    this.path = path;
    this.code = code;
  }
}

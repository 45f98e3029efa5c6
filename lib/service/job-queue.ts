/**
 * The service's queue of heavy jobs (graphs, interventions, generations, on-demand feature cards):
 * one runs at a time (the model's device queue would serialise them anyway; here the wait is visible
 * and bounded), at most `maxWaiting` wait behind it, and every job has a time limit that counts from
 * its arrival, waiting included. A job's work receives an AbortSignal that fires when the limit runs
 * out or when its caller gives up (a client that disconnects); work checks it between steps, so a
 * stopped job frees the queue after the step it is in. A job that is stopped while still waiting
 * never starts.
 */
import { CancelledError, throwIfCancelled } from '../errors.js';

/** A job refused because the queue is full: the caller answers 429 with Retry-After. */
export class QueueFullError extends Error {
  constructor(readonly active: number, readonly limit: number) {
    super(`busy: ${active} jobs are running or waiting (at most ${limit})`);
  }
}

/** A job that ran past its time limit: the caller answers 503 with Retry-After. */
export class JobTimeoutError extends CancelledError {
  constructor(readonly seconds: number) {
    super(`the job ran past this service's time limit of ${seconds} s`);
  }
}

export interface JobOptions {
  /** Fires when the caller gives up (a disconnected client). */
  signal?: AbortSignal;
}

export class JobQueue {
  private running = 0;
  private waiting = 0;
  private stopped = 0;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(readonly maxWaiting: number, readonly timeLimitMs: number) {}

  /** Jobs running (0 or 1) and waiting, and how many were stopped (time limit, client gone) so far. */
  get counts(): { running: number; waiting: number; stopped: number } {
    return { running: this.running, waiting: this.waiting, stopped: this.stopped };
  }

  /**
   * Runs `work` in its turn with a signal that fires at the time limit or when `options.signal` does;
   * throws QueueFullError at once when the queue is full, JobTimeoutError past the limit.
   */
  /** Throws QueueFullError unless a job would be admitted now (for callers that must answer before running it). */
  checkRoom(): void {
    if (this.running + this.waiting > this.maxWaiting) throw new QueueFullError(this.running + this.waiting, this.maxWaiting + 1);
  }

  async run<T>(work: (signal: AbortSignal) => Promise<T>, options: JobOptions = {}): Promise<T> {
    this.checkRoom();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new JobTimeoutError(this.timeLimitMs / 1000)), this.timeLimitMs);
    const giveUp = () => controller.abort(new CancelledError('the client went away'));
    if (options.signal?.aborted) giveUp();
    options.signal?.addEventListener('abort', giveUp, { once: true });
    this.waiting++;
    const turn = this.tail.then(async () => {
      this.waiting--;
      this.running++;
      try {
        throwIfCancelled(controller.signal);
        return await work(controller.signal);
      } finally {
        this.running--;
      }
    });
    this.tail = turn.catch(() => undefined);
    try {
      return await turn;
    } catch (err) {
      if (controller.signal.aborted) {
        this.stopped++;
        // Work that stopped for the signal may throw its own error (a native call's): report the reason.
        if (!(err instanceof CancelledError)) throwIfCancelled(controller.signal);
      }
      throw err;
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', giveUp);
    }
  }
}

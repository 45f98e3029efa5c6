/**
 * One queue per device for heavy native work.
 *
 * Every heavy native call (a forward, a transcoder pass, an attribution step, a training run, ...)
 * runs on a libuv worker, and libtorch runs each one with all its intra-op threads. Several at once
 * on one device oversubscribe the cores (bench/concurrency.ts measures it), so the library runs them
 * one at a time per device, in arrival order: concurrency then costs no throughput, and a service
 * can fire calls freely.
 *
 * A job's turn is lent while its native side waits for a JS callback (a `replaceMlp` function, a
 * training progress or checkpoint callback): heavy calls made from inside that callback run first
 * (they would otherwise wait behind the very job that waits for them: a deadlock), and the job takes
 * its turn back, ahead of everyone, when the callback settles. While a job is suspended like this,
 * queued jobs that cannot call back into JS may use the device; queued jobs that can (they would
 * occupy a second libuv worker while waiting on JS, and libuv has only four) wait until no job of the
 * device is suspended.
 *
 * `TRANSCODERS_DEVICE_QUEUE=off` bypasses the queue (read at every call), for benchmarks.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * The queue key of a device name: lower case, `'cuda'` is `'cuda:0'` (the addon never changes
 * CUDA's current device, so an index-less CUDA device is device 0) and `'cpu:0'` is `'cpu'`.
 */
export function deviceKey(device: string): string {
  const d = device.trim().toLowerCase();
  if (d === 'cuda') return 'cuda:0';
  if (d === 'cpu:0') return 'cpu';
  return d;
}

/** Whether heavy calls go through the per-device queue (`TRANSCODERS_DEVICE_QUEUE=off` bypasses it). */
export function deviceQueueEnabled(): boolean {
  return process.env.TRANSCODERS_DEVICE_QUEUE !== 'off';
}

/** A running heavy job, as its work sees it. */
export interface HeavyJob {
  /**
   * Wraps a JS function the native side calls back while this job runs: while it runs the job's
   * turn is lent (to heavy calls it makes first), and the job takes the turn back when it settles.
   */
  callback<A extends unknown[], R>(fn: (...args: A) => R | Promise<R>): (...args: A) => Promise<R>;
}

export interface HeavyOptions {
  /** The work may call back into JS (and so wait on the JS thread while holding a libuv worker). */
  callbacks?: boolean;
}

/** Counters of one device's queue, for tests and monitoring. */
export interface DeviceQueueStats {
  /** Jobs whose native work is executing now (0 or 1). */
  executing: number;
  /** The most that ever executed at once since the last {@link resetDeviceQueueStats}. */
  maxExecuting: number;
  /** Jobs waiting for their turn (including suspended jobs waiting to resume). */
  waiting: number;
  /** Jobs whose native side waits for a JS callback. */
  suspended: number;
  /** Jobs finished since the last reset. */
  completed: number;
}

/** A callback of a job of device `key`, while it runs: heavy calls made inside it are nested. */
interface Scope {
  readonly key: string;
  open: boolean;
}

// Ranks of waiting entries: the lowest eligible rank goes first, then arrival order.
const RESUME = 0; // a suspended job whose callback settled
const NESTED = 1; // a call made inside an open callback of a job of this device
const LEAF = 2; // an outer call that never calls back into JS
const CALLER = 3; // an outer call that may call back (eligible only while no job is suspended)

interface Waiter {
  rank: () => number;
  start: () => void;
}

const scopes = new AsyncLocalStorage<readonly Scope[]>();

class DeviceQueue {
  readonly key: string;
  private busy = false;
  private suspended = 0;
  private readonly waiting: Waiter[] = [];
  private executing = 0;
  private maxExecuting = 0;
  private completed = 0;

  constructor(key: string) {
    this.key = key;
  }

  /** Resolves when this entry has the turn (the caller then owns it). */
  acquire(rank: () => number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.waiting.push({ rank, start: resolve });
      this.pick();
    });
  }

  /** Hands the free turn to the best eligible waiter, if any. */
  pick(): void {
    if (this.busy) return;
    let best = -1;
    let bestRank = Infinity;
    for (let i = 0; i < this.waiting.length; i++) {
      const rank = this.waiting[i]!.rank();
      if (rank === CALLER && this.suspended > 0) continue;
      if (rank < bestRank) {
        best = i;
        bestRank = rank;
      }
    }
    if (best < 0) return;
    const [waiter] = this.waiting.splice(best, 1);
    this.busy = true;
    this.executing++;
    this.maxExecuting = Math.max(this.maxExecuting, this.executing);
    waiter!.start();
  }

  /** The owner's native work has finished. */
  finish(): void {
    this.busy = false;
    this.executing--;
    this.completed++;
    this.pick();
  }

  /** The owner's native side now waits for a JS callback: the turn is free (call pick after). */
  suspend(): void {
    this.busy = false;
    this.executing--;
    this.suspended++;
  }

  /** A suspended job has its turn back. */
  resumed(): void {
    this.suspended--;
  }

  stats(): DeviceQueueStats {
    return { executing: this.executing, maxExecuting: this.maxExecuting, waiting: this.waiting.length, suspended: this.suspended, completed: this.completed };
  }

  resetStats(): void {
    this.maxExecuting = this.executing;
    this.completed = 0;
  }
}

const queues = new Map<string, DeviceQueue>();

function queueOf(key: string): DeviceQueue {
  let q = queues.get(key);
  if (!q) queues.set(key, (q = new DeviceQueue(key)));
  return q;
}

const BYPASSED: HeavyJob = { callback: (fn) => (...args) => Promise.resolve(fn(...args)) };

/**
 * Runs `work` (which starts one heavy native call and returns its Promise) when device `device` has
 * its turn. See the module comment for the order and the callback rules.
 */
export async function runOnDevice<T>(device: string, work: (job: HeavyJob) => Promise<T>, options: HeavyOptions = {}): Promise<T> {
  if (!deviceQueueEnabled()) return work(BYPASSED);
  const key = deviceKey(device);
  const q = queueOf(key);
  const chain = scopes.getStore() ?? [];
  const callsBack = options.callbacks ?? false;
  // Re-evaluated at every pick: a callback that has settled no longer makes its calls nested.
  await q.acquire(() => (chain.some((s) => s.key === key && s.open) ? NESTED : callsBack ? CALLER : LEAF));
  const job: HeavyJob = {
    callback: (fn) => async (...args) => {
      const scope: Scope = { key, open: true };
      q.suspend();
      let result: Promise<Awaited<ReturnType<typeof fn>>>;
      try {
        // Run the callback's synchronous part before handing the turn on, so that the heavy calls
        // it makes right away are queued (as nested) by the time the next job is picked.
        result = Promise.resolve(scopes.run([...chain, scope], () => fn(...args)));
      } catch (err) {
        result = Promise.reject(err);
      }
      q.pick();
      try {
        return await result;
      } finally {
        scope.open = false;
        await q.acquire(() => RESUME);
        q.resumed();
      }
    },
  };
  try {
    return await work(job);
  } finally {
    q.finish();
  }
}

/** Counters of the queue of `device` (see {@link DeviceQueueStats}). */
export function deviceQueueStats(device: string): DeviceQueueStats {
  return queueOf(deviceKey(device)).stats();
}

/** Resets `maxExecuting` and `completed` of the queue of `device`. */
export function resetDeviceQueueStats(device: string): void {
  queueOf(deviceKey(device)).resetStats();
}

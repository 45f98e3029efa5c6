/**
 * Concurrency: `calls` model.run calls fired at once (as a service would) against the same calls
 * awaited one by one, on the GPT-2-small-sized random model of bench/forward.ts, in the same run.
 * Measured three ways, in an order that alternates between rounds so that drift affects all alike: one by one,
 * concurrent through the per-device queue (lib/device-queue.ts), and concurrent with the queue
 * bypassed (TRANSCODERS_DEVICE_QUEUE=off), where every libuv worker runs libtorch with all threads.
 * The goal: concurrent <= 1.05x the one-by-one time.
 */
import { loadavg } from 'node:os';
import { getNumThreads, loadModel, setNumThreads, torchInfo } from '../lib/index.js';
import { benchModel } from './forward.js';

export interface ConcurrencyBenchResult {
  name: string;
  calls: number;
  batch: number;
  seq: number;
  threads: number;
  rounds: number;
  /** Median wall time of all calls, in ms. */
  sequentialMs: number;
  queuedMs: number;
  bypassedMs: number;
  /** queued / sequential (goal <= 1.05). */
  ratio: number;
  /** bypassed / sequential. */
  bypassedRatio: number;
  /** The 1-minute load average before and after (other processes on the machine skew the times). */
  loadAverage: [number, number];
  /**
   * Median CPU time this process used per mode (user + system, ms): less sensitive than wall time to
   * other processes, and it shows the threads of unqueued concurrent calls spinning against each other.
   */
  cpuMs: { sequential: number; queued: number; bypassed: number };
  /** Every round's wall times (ms), in the order measured. */
  raw: { sequential: number[]; queued: number[]; bypassed: number[] };
  torch: string;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export async function benchConcurrency(options: {
  cacheDir: string;
  calls?: number;
  batch?: number;
  seq?: number;
  rounds?: number;
  threads?: number;
}): Promise<ConcurrencyBenchResult> {
  const calls = options.calls ?? 20;
  const batch = options.batch ?? 1;
  const seq = options.seq ?? 128;
  const rounds = options.rounds ?? 3;
  const threads = options.threads ?? getNumThreads();
  setNumThreads(threads);
  const model = await loadModel(benchModel(options.cacheDir));
  const V = model.config.vocabSize;
  // A different prompt per call, as a service would get.
  const prompts = Array.from({ length: calls }, (_, c) =>
    Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, t) => (c * 104729 + b * 7919 + t * 31) % V)));
  const once = async (tokens: number[][]) => (await model.run(tokens)).logits!.dispose();
  const sequential = async () => {
    for (const p of prompts) await once(p);
  };
  const concurrent = async () => {
    await Promise.all(prompts.map(once));
  };
  const cpu: Record<'sequential' | 'queued' | 'bypassed', number[]> = { sequential: [], queued: [], bypassed: [] };
  const time = async (fn: () => Promise<void>, mode: keyof typeof cpu) => {
    const start = performance.now();
    const used = process.cpuUsage();
    await fn();
    const { user, system } = process.cpuUsage(used);
    cpu[mode].push((user + system) / 1000);
    return performance.now() - start;
  };
  const previous = process.env.TRANSCODERS_DEVICE_QUEUE;
  const bypass = (on: boolean) => {
    if (on) process.env.TRANSCODERS_DEVICE_QUEUE = 'off';
    else if (previous === undefined) delete process.env.TRANSCODERS_DEVICE_QUEUE;
    else process.env.TRANSCODERS_DEVICE_QUEUE = previous;
  };
  const seqMs: number[] = [];
  const queuedMs: number[] = [];
  const bypassedMs: number[] = [];
  const modes = [
    async () => (bypass(false), seqMs.push(await time(sequential, 'sequential'))),
    async () => (bypass(false), queuedMs.push(await time(concurrent, 'queued'))),
    async () => (bypass(true), bypassedMs.push(await time(concurrent, 'bypassed'))),
  ];
  const loadBefore = loadavg()[0]!;
  try {
    bypass(false);
    await once(prompts[0]!); // warm-up
    for (let r = 0; r < rounds; r++) {
      for (const mode of r % 2 === 0 ? modes : [...modes].reverse()) await mode();
    }
  } finally {
    bypass(false);
    model.dispose();
  }
  const s = median(seqMs);
  const q = median(queuedMs);
  const b = median(bypassedMs);
  return {
    name: `${calls} concurrent model.run vs one by one, gpt2-small ${batch}x${seq} cpu`,
    calls,
    batch,
    seq,
    threads,
    rounds,
    sequentialMs: s,
    queuedMs: q,
    bypassedMs: b,
    ratio: q / s,
    bypassedRatio: b / s,
    loadAverage: [loadBefore, loadavg()[0]!],
    cpuMs: { sequential: median(cpu.sequential), queued: median(cpu.queued), bypassed: median(cpu.bypassed) },
    raw: { sequential: seqMs, queued: queuedMs, bypassed: bypassedMs },
    torch: torchInfo().version,
  };
}

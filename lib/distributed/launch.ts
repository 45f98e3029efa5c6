/**
 * Local multi-process launch (`transcoders train --nproc N`), torchrun's job on one machine: N
 * copies of the same command, each with the launcher variables a cluster launcher would set
 * (MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE) and its share of the CPU threads. Rank 0's
 * output is the command's; the other ranks' error output is shown prefixed with their rank.
 *
 * A failed rank ends the run: the others see the broken group at their next collective and exit with
 * a DistributedError; any rank still running a grace period later is terminated. The exit status is
 * the first failure's. A SIGINT to the launcher is passed on once to every rank (each stops after its
 * current step, together with the others, and rank 0 writes a checkpoint).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';
import { InvalidArgumentError } from '../errors.js';

/** Set in the environment of the workers a local launch starts. */
export const LAUNCHED_ENV = 'TRANSCODERS_LAUNCHED';

export interface LaunchOptions {
  /** Processes to start (at least 1). */
  nproc: number;
  /** The command line of each worker after the node executable (e.g. the CLI script and its arguments). */
  args: string[];
  /** CPU threads per worker (default: the cores divided among the workers, at least 1). */
  threadsPerWorker?: number;
  /** The store's port (default: a free one). */
  port?: number;
  /** After the first failure, how long the other ranks get to exit on their own (default 30 s). */
  graceMs?: number;
  /** Where the other ranks' error output goes (default process.stderr). */
  stderr?: NodeJS.WritableStream;
}

export interface LaunchResult {
  /** 0 when every rank succeeded, else the first failed rank's exit status (1 for a signal). */
  code: number;
  /** One line per rank that did not succeed, first failure first. */
  failures: string[];
}

/** A free TCP port on the loopback interface (for the rendezvous store). */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/** Starts the workers and resolves once all of them have exited. */
export async function launchWorkers(options: LaunchOptions): Promise<LaunchResult> {
  const { nproc } = options;
  if (!Number.isInteger(nproc) || nproc < 1) throw new InvalidArgumentError(`--nproc must be a positive integer, got ${nproc}`);
  const threads = options.threadsPerWorker ?? Math.max(1, Math.floor(availableParallelism() / nproc));
  const port = options.port ?? (await freePort());
  const stderr = options.stderr ?? process.stderr;
  const graceMs = options.graceMs ?? 30_000;
  const children: ChildProcess[] = [];
  const failures: string[] = [];
  let code = 0;
  let grace: NodeJS.Timeout | undefined;
  const running = new Set<number>();

  const terminateRest = () => {
    for (const rank of running) children[rank]!.kill('SIGTERM');
    grace = setTimeout(() => {
      for (const rank of running) children[rank]!.kill('SIGKILL');
    }, 5_000);
  };
  const onSigint = () => {
    for (const rank of running) children[rank]!.kill('SIGINT');
  };
  process.on('SIGINT', onSigint);

  try {
    await new Promise<void>((done) => {
      for (let rank = 0; rank < nproc; rank++) {
        const env = {
          ...process.env,
          MASTER_ADDR: '127.0.0.1',
          MASTER_PORT: String(port),
          RANK: String(rank),
          LOCAL_RANK: String(rank),
          WORLD_SIZE: String(nproc),
          LOCAL_WORLD_SIZE: String(nproc),
          [LAUNCHED_ENV]: '1',
          OMP_NUM_THREADS: String(threads),
        };
        const child = spawn(process.execPath, [...options.args, '--threads', String(threads)], {
          env,
          stdio: rank === 0 ? ['ignore', 'inherit', 'inherit'] : ['ignore', 'ignore', 'pipe'],
        });
        children.push(child);
        running.add(rank);
        if (rank > 0) {
          let partial = '';
          child.stderr!.setEncoding('utf8');
          child.stderr!.on('data', (chunk: string) => {
            const lines = (partial + chunk).split('\n');
            partial = lines.pop()!;
            for (const line of lines) stderr.write(`[rank ${rank}] ${line}\n`);
          });
          child.stderr!.on('end', () => {
            if (partial) stderr.write(`[rank ${rank}] ${partial}\n`);
          });
        }
        child.on('error', (err) => {
          if (!running.delete(rank)) return;
          failures.push(`rank ${rank} could not start: ${err.message}`);
          if (code === 0) code = 1;
          if (running.size === 0) done();
        });
        child.on('exit', (exitCode, signal) => {
          if (!running.delete(rank)) return;
          if (exitCode !== 0) {
            failures.push(signal ? `rank ${rank} was killed by ${signal}` : `rank ${rank} exited with status ${exitCode}`);
            if (code === 0) {
              code = exitCode ?? 1;
              // The others fail at their next collective; stop whoever is still there after the grace period.
              grace = setTimeout(terminateRest, graceMs);
            }
          }
          if (running.size === 0) done();
        });
      }
    });
  } finally {
    process.off('SIGINT', onSigint);
    if (grace) clearTimeout(grace);
  }
  return { code, failures };
}

/**
 * Process groups on libtorch's c10d (lib/distributed/process-group.ts): the proof that this is the
 * engine torch.distributed runs on is that our ranks and Python's share one group. Python ranks run
 * test/reference/c10d_peer.py (torch.distributed.init_process_group over gloo, written from its
 * docs); Node ranks run test/helpers/c10d-worker.ts in child processes, from torch's launcher
 * variables. Every rank runs the same collectives (sum and max all-reduces, a broadcast, a barrier)
 * and every answer is checked against the values computed here by hand. A rank that never comes, or
 * that is killed, ends the others' join or collective with a DistributedError within the timeout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { DistributedError, InvalidArgumentError } from '../lib/errors.js';
import { joinOptionsFromEnv, ProcessGroup } from '../lib/distributed/process-group.js';
import { Tensor } from '../lib/tensor.js';

const PYTHON = '/usr/bin/python3';
const PEER = new URL('./reference/c10d_peer.py', import.meta.url).pathname;
const WORKER = new URL('./helpers/c10d-worker.ts', import.meta.url).pathname;
const ROOT = new URL('..', import.meta.url).pathname;

/** What every rank must get, from the contributions c10d_peer.py defines. */
function expected(world: number) {
  const sum = Array.from({ length: 6 }, (_, i) => Array.from({ length: world }, (_, r) => i * (r + 1) + r).reduce((a, b) => a + b, 0));
  const max = [world - 1 + 0.5, -1];
  return { sum, max, broadcast: [10 * world, 7] };
}

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
  });
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

/** A child rank; resolves with its exit code and output. */
function rank(kind: 'python' | 'node', port: number, r: number, world: number, env: Record<string, string> = {}) {
  const child = kind === 'python'
    ? spawn(PYTHON, [PEER, String(port), String(r), String(world)], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, ['--import', 'tsx', WORKER], {
      cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), RANK: String(r), WORLD_SIZE: String(world), ...env },
    });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => child.on('exit', (code) => done({ code, stdout, stderr })));
  return { child, exited, output: () => stdout };
}

/** This process as a rank: the collectives of c10d_peer.py. */
async function runCollectives(group: ProcessGroup) {
  const { rank: r, worldSize: world } = group;
  const x = Tensor.from(Float32Array.from({ length: 6 }, (_, i) => i * (r + 1) + r), [2, 3]);
  const summed = await group.allReduce(x);
  expect(summed.shape).toEqual([2, 3]);
  expect(Array.from(x.toFloat32Array())).toEqual(Array.from({ length: 6 }, (_, i) => i * (r + 1) + r)); // not changed in place
  const max = await group.allReduce(Tensor.from(Float64Array.from([r + 0.5, -(r + 1)]), [2]), 'max');
  expect(max.dtype).toBe('float64');
  const b = Tensor.from(r === world - 1 ? Float32Array.from([10 * world, 7]) : new Float32Array(2), [2]);
  const broadcast = await group.broadcast(b, world - 1);
  await group.barrier();
  return { sum: Array.from(summed.toFloat32Array()), max: Array.from(max.toTypedArray() as Float64Array), broadcast: Array.from(broadcast.toFloat32Array()) };
}

describe('process groups on c10d', () => {
  it('our rank 0 (hosting the store) and a torch.distributed rank 1 reduce, broadcast and meet as one group', async () => {
    const port = await freePort();
    const py = rank('python', port, 1, 2);
    const group = await ProcessGroup.join({ masterPort: port, rank: 0, worldSize: 2, timeoutMs: 30000 });
    expect([group.rank, group.worldSize]).toEqual([0, 2]);
    const ours = await runCollectives(group);
    group.leave();
    const done = await py.exited;
    expect(done.code, done.stderr).toBe(0);
    const theirs = JSON.parse(done.stdout) as { rank: number; sum: number[]; max: number[]; broadcast: number[] };
    expect(theirs.rank).toBe(1);
    const want = expected(2);
    expect(ours).toEqual(want);
    expect({ sum: theirs.sum, max: theirs.max, broadcast: theirs.broadcast }).toEqual(want);
  });

  it('a torch.distributed rank 0 hosting the store, our rank 1, and a Node child rank 2 (from launcher variables)', async () => {
    const port = await freePort();
    const py = rank('python', port, 0, 3);
    const child = rank('node', port, 2, 3);
    const group = await ProcessGroup.join({ masterPort: port, rank: 1, worldSize: 3, timeoutMs: 30000 });
    const ours = await runCollectives(group);
    group.leave();
    const [p, c] = [await py.exited, await child.exited];
    expect(p.code, p.stderr).toBe(0);
    expect(c.code, c.stderr).toBe(0);
    const want = expected(3);
    expect(ours).toEqual(want);
    for (const out of [p.stdout, c.stdout]) {
      const got = JSON.parse(out) as { sum: number[]; max: number[]; broadcast: number[] };
      expect({ sum: got.sum, max: got.max, broadcast: got.broadcast }).toEqual(want);
    }
  });

  it('a killed rank ends the others\' collective with a DistributedError within the timeout', async () => {
    const port = await freePort();
    const child = rank('node', port, 1, 2, { C10D_WORKER_HANG: '1' });
    const group = await ProcessGroup.join({ masterPort: port, rank: 0, worldSize: 2, timeoutMs: 5000 });
    await expect.poll(() => child.output(), { timeout: 30000 }).toContain('"joined":true');
    child.child.kill('SIGKILL');
    await child.exited;
    const t0 = performance.now();
    const err = await group.allReduce(Tensor.from(new Float32Array(4), [4])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DistributedError);
    expect((err as Error).message).toMatch(/allReduce on rank 0/);
    expect(performance.now() - t0).toBeLessThan(5000 + 3000);
    group.leave();
  });

  it('a rank that never comes ends the join with a DistributedError within the timeout', async () => {
    const port = await freePort();
    const t0 = performance.now();
    const err = await ProcessGroup.join({ masterPort: port, rank: 0, worldSize: 2, timeoutMs: 1500 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DistributedError);
    expect((err as Error).message).toMatch(/joining the process group \(rank 0 of 2 at 127\.0\.0\.1:\d+\)/);
    expect(performance.now() - t0).toBeLessThan(1500 + 8000); // 3.5 s measured: the store gives up after its own wait
  });

  it('refuses bad options and launcher variables, naming them', async () => {
    await expect(ProcessGroup.join({ rank: 2, worldSize: 2 })).rejects.toThrow(/rank must be an integer in \[0, 1\], got 2/);
    await expect(ProcessGroup.join({ rank: 0, worldSize: 0 })).rejects.toThrow(/worldSize must be an integer in \[1/);
    await expect(ProcessGroup.join({ rank: 0, worldSize: 1, masterPort: 70000 })).rejects.toThrow(/masterPort must be an integer in \[1, 65535\]/);
    await expect(ProcessGroup.join({ rank: 0 })).rejects.toThrow(InvalidArgumentError);
    expect(() => joinOptionsFromEnv({ RANK: 'one' })).toThrow(/RANK="one" is not a non-negative integer/);
    expect(joinOptionsFromEnv({ MASTER_ADDR: 'h', MASTER_PORT: '123', RANK: '1', WORLD_SIZE: '4' })).toEqual({ masterAddr: 'h', masterPort: 123, rank: 1, worldSize: 4 });
    // A world of one needs no peer; a left group refuses collectives.
    const port = await freePort();
    const solo = await ProcessGroup.join({ masterPort: port, rank: 0, worldSize: 1 });
    expect(Array.from((await solo.allReduce(Tensor.from(Float32Array.from([3]), [1]))).toFloat32Array())).toEqual([3]);
    solo.leave();
    await expect(solo.barrier()).rejects.toThrow(/left/);
  });
});

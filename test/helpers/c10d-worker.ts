/**
 * A Node rank for test/distributed.test.ts, started as a child process with torch's launcher
 * variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE): joins, runs the peer script's collectives
 * (test/reference/c10d_peer.py) and prints what it got as JSON; with C10D_WORKER_HANG=1 it joins,
 * says so, and waits to be killed.
 */
import { ProcessGroup } from '../../lib/distributed/process-group.js';
import { Tensor } from '../../lib/tensor.js';

const group = await ProcessGroup.join({ timeoutMs: Number(process.env.C10D_TIMEOUT_MS ?? 30000) });
const { rank, worldSize: world } = group;
if (process.env.C10D_WORKER_HANG === '1') {
  console.log(JSON.stringify({ rank, joined: true }));
  setInterval(() => undefined, 1000);
} else {
  const x = Tensor.from(Float32Array.from({ length: 6 }, (_, i) => i * (rank + 1) + rank), [2, 3]);
  const sum = Array.from((await group.allReduce(x)).toFloat32Array());
  const max = Array.from((await group.allReduce(Tensor.from(Float64Array.from([rank + 0.5, -(rank + 1)]), [2]), 'max')).toTypedArray() as Float64Array);
  const b = Tensor.from(rank === world - 1 ? Float32Array.from([10 * world, 7]) : new Float32Array(2), [2]);
  const broadcast = Array.from((await group.broadcast(b, world - 1)).toFloat32Array());
  await group.barrier();
  group.leave();
  console.log(JSON.stringify({ rank, sum, max, broadcast }));
}

/**
 * A process group on libtorch's c10d (native/distributed/process_group.h): the engine PyTorch's
 * torch.distributed runs on, joined through the same TCPStore rendezvous and with the same key
 * layout as torch.distributed.init_process_group's default group, so our workers and Python ones can
 * be ranks of one group. CPU tensors over gloo.
 *
 * The rendezvous follows torch's conventions: MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE (what
 * torchrun and SLURM launchers set) unless given; rank 0 hosts the store. Joining and every collective
 * run off the JS thread and fail with a DistributedError (a rank that does not come, or dies, or a
 * collective past the timeout) rather than hang.
 */
import { DistributedError, InvalidArgumentError } from '../errors.js';
import { native, type NativeProcessGroup, type ReduceOpName } from '../native.js';
import { Tensor } from '../tensor.js';

export type ReduceOp = ReduceOpName;

export interface JoinOptions {
  /** The store's host (default MASTER_ADDR, else 127.0.0.1). */
  masterAddr?: string;
  /** The store's port (default MASTER_PORT, else 29500). */
  masterPort?: number;
  /** This process's rank (default RANK). */
  rank?: number;
  /** Ranks in the group (default WORLD_SIZE). */
  worldSize?: number;
  /** For joining and for every collective, in ms (default 60 s). */
  timeoutMs?: number;
}

/** An integer environment variable, or undefined; an InvalidArgumentError naming it when it is not one. */
function intEnv(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d+$/.test(raw.trim())) throw new InvalidArgumentError(`${name}=${JSON.stringify(raw)} is not a non-negative integer`);
  return Number(raw);
}

/** The join options a launcher's environment gives (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE). */
export function joinOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): JoinOptions {
  const out: JoinOptions = {};
  if (env.MASTER_ADDR) out.masterAddr = env.MASTER_ADDR;
  const port = intEnv(env, 'MASTER_PORT');
  const rank = intEnv(env, 'RANK');
  const worldSize = intEnv(env, 'WORLD_SIZE');
  if (port !== undefined) out.masterPort = port;
  if (rank !== undefined) out.rank = rank;
  if (worldSize !== undefined) out.worldSize = worldSize;
  return out;
}

function checkInt(value: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
    throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(value)}`);
  }
  return value as number;
}

export class ProcessGroup {
  private constructor(private group: NativeProcessGroup | null, readonly rank: number, readonly worldSize: number) {}

  /** Joins the group (options, else the environment); resolves once every rank has joined. */
  static async join(options: JoinOptions = {}): Promise<ProcessGroup> {
    const o = { ...joinOptionsFromEnv(), ...options };
    if (o.worldSize === undefined) throw new InvalidArgumentError('worldSize is not given (nor WORLD_SIZE in the environment)');
    if (o.rank === undefined) throw new InvalidArgumentError('rank is not given (nor RANK in the environment)');
    const worldSize = checkInt(o.worldSize, 'worldSize', 1);
    const rank = checkInt(o.rank, 'rank', 0, worldSize - 1);
    const port = checkInt(o.masterPort ?? 29500, 'masterPort', 1, 65535);
    const timeoutMs = checkInt(o.timeoutMs ?? 60_000, 'timeoutMs', 1);
    const host = o.masterAddr ?? '127.0.0.1';
    if (typeof host !== 'string' || host.length === 0) throw new InvalidArgumentError('masterAddr must be a host name or address');
    const group = await native().Distributed.join({ host, port, rank, worldSize, timeoutMs });
    return new ProcessGroup(group, group.rank, group.worldSize);
  }

  /** The native group, for the training run (lib/transcoders/training-run.ts). @internal */
  handle(): unknown {
    if (!this.group) throw new DistributedError('this process group was left');
    return this.group.handle;
  }

  /** The element-wise reduction of `tensor` (a CPU tensor, the same shape and dtype on every rank) over all ranks. */
  async allReduce(tensor: Tensor, op: ReduceOp = 'sum'): Promise<Tensor> {
    return new Tensor(await native().Distributed.allReduce(this.handle(), tensor.handle, op));
  }

  /** Rank `root`'s `tensor` on every rank (every rank passes a tensor of that shape and dtype). */
  async broadcast(tensor: Tensor, root: number): Promise<Tensor> {
    checkInt(root, 'root', 0, this.worldSize - 1);
    return new Tensor(await native().Distributed.broadcast(this.handle(), tensor.handle, root));
  }

  /** Resolves when every rank has reached it. */
  async barrier(): Promise<void> {
    await native().Distributed.barrier(this.handle());
  }

  /** Leaves the group (this process's side; the others see a closed connection at their next collective). */
  leave(): void {
    if (this.group) native().Distributed.leave(this.group.handle);
    this.group = null;
  }
}

/**
 * Streaming statistics of one layer's features over a corpus (native/features/feature_stats.h): per
 * feature the count of activations > 0, the extremes, a histogram, the top-activating rows and a
 * uniform sample of the activating rows, each row with the feature's activation at every token.
 * Memory: features x (examples + samples) x context floats, whatever the corpus length. The state
 * is a set of tensors, so a pass can be checkpointed and resumed exactly.
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { native, type NativeTensor } from '../native.js';
import { Tensor } from '../tensor.js';

export interface FeatureStatsOptions {
  /** Features of the layer. */
  features: number;
  /** Tokens per row (context). */
  context: number;
  /** Top-activating rows kept per feature (default 10). */
  examples?: number;
  /** Rows of the uniform sample per feature (default 80). */
  samples?: number;
  /** Histogram bins, a power of two (default 64). */
  bins?: number;
  seed?: number;
  /** Mixed into the sample's random keys (layers sample independently). */
  layer?: number;
  device?: string;
  /** On the CPU too, the ATen path other devices take instead of the fused loops (tests compare the two). */
  portable?: boolean;
}

/** Names of the state's tensors, as the native side writes them (also the checkpoint's keys). */
export const FEATURE_STATS_TENSORS = [
  'count', 'act_max', 'act_min', 'hist', 'hist_exp', 'top_score', 'top_row', 'top_acts',
  'sample_key', 'sample_score', 'sample_row', 'sample_acts', 'tokens', 'batches',
] as const;

/** The state read back as arrays (row-major). */
export interface FeatureStatsArrays {
  features: number;
  context: number;
  examples: number;
  samples: number;
  bins: number;
  tokens: number;
  count: Float64Array;
  actMax: Float32Array;
  actMin: Float32Array;
  hist: Float64Array;
  histExp: Float64Array;
  topScore: Float32Array;
  topRow: Float64Array;
  topActs: Float32Array;
  sampleScore: Float32Array;
  sampleRow: Float64Array;
  sampleActs: Float32Array;
}

function positiveInt(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`feature statistics: ${name} must be a positive integer, got ${String(v)}`);
  return v;
}

export class FeatureStats {
  private constructor(
    readonly options: Required<FeatureStatsOptions>,
    private state: Record<string, NativeTensor>,
  ) {}

  private static resolve(options: FeatureStatsOptions): Required<FeatureStatsOptions> {
    const o = { examples: 10, samples: 80, bins: 64, seed: 0, layer: 0, device: 'cpu', portable: false, ...options };
    for (const key of ['features', 'context', 'examples', 'samples', 'bins'] as const) positiveInt(o[key], key);
    if ((o.bins & (o.bins - 1)) !== 0) throw new InvalidArgumentError(`feature statistics: bins must be a power of two, got ${o.bins}`);
    if (!Number.isSafeInteger(o.seed) || o.seed < 0) throw new InvalidArgumentError(`feature statistics: seed must be a non-negative integer, got ${o.seed}`);
    return o;
  }

  /** An empty state. */
  static create(options: FeatureStatsOptions): FeatureStats {
    const o = FeatureStats.resolve(options);
    return new FeatureStats(o, native().Features.featureStatsInit(o));
  }

  /** A state saved by {@link tensors} (a checkpoint); checked against the options on the first update. */
  static fromTensors(options: FeatureStatsOptions, tensors: Record<string, Tensor>): FeatureStats {
    const o = FeatureStats.resolve(options);
    const state: Record<string, NativeTensor> = {};
    for (const name of FEATURE_STATS_TENSORS) {
      const t = tensors[name];
      if (!(t instanceof Tensor)) throw new InvalidArgumentError(`feature statistics: the saved state has no tensor '${name}'`);
      state[name] = t.handle;
    }
    return new FeatureStats(o, state);
  }

  /** Folds in a batch: `acts` [B, T, F] (feature activations >= 0) of the rows `rows` (their indices in the data). */
  async update(acts: Tensor, rows: readonly number[]): Promise<void> {
    const ids = Tensor.from(BigInt64Array.from(rows, (r) => BigInt(r)), [rows.length], { dtype: 'int64' });
    try {
      this.state = await runOnDevice(this.options.device, () => native().Features.featureStatsUpdate(this.state, acts.handle, ids.handle, this.options));
    } finally {
      ids.dispose();
    }
  }

  /** Frees the state's native memory now (it is unusable afterwards). */
  dispose(): void {
    for (const t of Object.values(this.state)) t.dispose();
  }

  /** The state's tensors (for a checkpoint). */
  tensors(): Record<string, Tensor> {
    return Object.fromEntries(Object.entries(this.state).map(([k, v]) => [k, new Tensor(v)]));
  }

  /** The state as arrays on the CPU. */
  async arrays(): Promise<FeatureStatsArrays> {
    const read = async (name: string): Promise<ArrayLike<number | bigint>> => {
      const t = this.state[name]!;
      const cpu = t.device === 'cpu' ? t : await t.to('cpu', null);
      return cpu.toTypedArray() as ArrayLike<number | bigint>;
    };
    const f64 = (a: ArrayLike<number | bigint>) => Float64Array.from(a as ArrayLike<number>, (v) => Number(v));
    const f32 = async (name: string) => (await read(name)) as Float32Array;
    const o = this.options;
    const top = sortSlots(o.features, o.examples, o.context, f64(await read('top_row')), await f32('top_acts'), await f32('top_score'), null);
    const sample = sortSlots(o.features, o.samples, o.context, f64(await read('sample_row')), await f32('sample_acts'), await f32('sample_score'), (await read('sample_key')) as Float64Array);
    return {
      features: o.features, context: o.context, examples: o.examples, samples: o.samples, bins: o.bins,
      tokens: Number((await read('tokens'))[0]!),
      count: f64(await read('count')), actMax: await f32('act_max'), actMin: await f32('act_min'),
      hist: (await read('hist')) as Float64Array, histExp: f64(await read('hist_exp')),
      topScore: top.score, topRow: top.row, topActs: top.acts,
      sampleScore: sample.score, sampleRow: sample.row, sampleActs: sample.acts,
    };
  }
}

/**
 * The native slots are unordered; readers get each feature's filled slots first: the top ones by
 * score descending (ties: lower row first), the sample by its random key ascending (a uniformly
 * random order).
 */
function sortSlots(F: number, n: number, T: number, row: Float64Array, acts: Float32Array, score: Float32Array, key: Float64Array | null) {
  const out = { row: new Float64Array(F * n), acts: new Float32Array(F * n * T), score: new Float32Array(F * n) };
  const order = Array.from({ length: n }, (_, i) => i);
  for (let f = 0; f < F; f++) {
    const at = f * n;
    order.sort((a, b) => {
      const [ra, rb] = [row[at + a]!, row[at + b]!];
      if ((ra < 0) !== (rb < 0)) return ra < 0 ? 1 : -1;
      const byKey = key ? key[at + a]! - key[at + b]! : score[at + b]! - score[at + a]!;
      return byKey !== 0 ? byKey : ra - rb;
    });
    order.forEach((from, to) => {
      out.row[at + to] = row[at + from]!;
      out.score[at + to] = score[at + from]!;
      out.acts.set(acts.subarray((at + from) * T, (at + from + 1) * T), (at + to) * T);
    });
  }
  return out;
}

/**
 * Cross-layer transcoders (CLTs): one encoder per layer reading that layer's transcoder input, and
 * decoders from each layer into the MLP output of that layer and of every later one (docs/cross-layer.md).
 *
 *   pre_s = x_s W_enc[s] + b_enc[s];   f_s = act(pre_s);   y_t = sum_{s <= t} f_s W_dec_s[:, t - s] + b_dec[t] (+ x_t W_skip[t])
 *
 * Inputs and outputs are [N, L, d]: every layer's activations of the same N rows. The parameters
 * live in native memory; the maths runs off the JS thread in its device's queue.
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../io/json.js';
import type { Architecture } from '../models/config.js';
import type { Processing } from '../models/model.js';
import { native, type NativeCrossLayerTranscoder, type NativeTensor } from '../native.js';
import { Tensor } from '../tensor.js';
import { mlpHooks, type TranscoderArch } from './config.js';
import type { PlacementOptions } from './transcoder.js';

/** A CLT's architecture and sizes, and where it sits in a model. Stored as the native format's `cfg.json`. */
/**
 * A CLT's activation: the per-layer ones, or `batchtopk`: in training the N k largest activations of
 * each layer over a batch of N rows; elsewhere relu(pre) gated by a threshold that training estimates.
 */
export type CrossLayerArch = TranscoderArch | 'batchtopk';

export interface CrossLayerConfig {
  kind: 'cross_layer_transcoder';
  arch: CrossLayerArch;
  nLayers: number;
  dIn: number;
  dOut: number;
  /** Features per source layer. */
  dSae: number;
  /** A dense skip path `x_t W_skip[t]` per layer. */
  skip: boolean;
  /** TopK: active features per row and source layer (BatchTopK: on average over the batch). */
  k?: number;
  /** JumpReLU: width of the straight-through kernel (training only). */
  bandwidth?: number;
  /** Per layer, the hook each encoder reads (e.g. `blocks.3.ln2.hook_normalized`). */
  hookIn: string[];
  /** Per layer, the hook the decoders into it reconstruct (e.g. `blocks.3.hook_mlp_out`). */
  hookOut: string[];
  modelName?: string | null;
  processing?: Processing | null;
  /** Training hyper-parameters, for the record. */
  training?: Record<string, unknown>;
}

/** The hooks of every layer of an `nLayers` model of `arch` (the per-layer transcoders' conventions). */
export function crossLayerHooks(nLayers: number, arch: Architecture = 'gpt2'): { hookIn: string[]; hookOut: string[] } {
  const hooks = Array.from({ length: nLayers }, (_, l) => mlpHooks(l, arch));
  return { hookIn: hooks.map((h) => h.hookIn), hookOut: hooks.map((h) => h.hookOut) };
}

/** Validates a configuration (from a file or a caller); `source` names it in errors. */
export function validateCrossLayerConfig(cfg: Partial<CrossLayerConfig>, source: string): CrossLayerConfig {
  const fail = (why: string): never => {
    throw new InvalidArgumentError(`${source}: ${why}`);
  };
  const positive = (key: 'nLayers' | 'dIn' | 'dOut' | 'dSae' | 'k'): number => {
    const v = cfg[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > 2 ** 31 - 1) fail(`'${key}' must be a positive integer, got ${describe(v)}`);
    return v as number;
  };
  if (cfg.kind !== undefined && cfg.kind !== 'cross_layer_transcoder') fail(`'kind' must be "cross_layer_transcoder", got ${describe(cfg.kind)}`);
  if (cfg.arch !== 'relu' && cfg.arch !== 'topk' && cfg.arch !== 'jumprelu' && cfg.arch !== 'batchtopk') fail(`'arch' must be one of relu, topk, jumprelu, batchtopk, got ${describe(cfg.arch)}`);
  const nLayers = positive('nLayers');
  const defaults = crossLayerHooks(nLayers);
  const hooks = (key: 'hookIn' | 'hookOut'): string[] => {
    const v = cfg[key] ?? defaults[key];
    if (!Array.isArray(v) || v.length !== nLayers || v.some((h) => typeof h !== 'string')) fail(`'${key}' must be ${nLayers} hook names (one per layer), got ${describe(v)}`);
    return [...v];
  };
  const out: CrossLayerConfig = {
    kind: 'cross_layer_transcoder',
    arch: cfg.arch as CrossLayerArch,
    nLayers,
    dIn: positive('dIn'),
    dOut: positive('dOut'),
    dSae: positive('dSae'),
    skip: cfg.skip ?? false,
    hookIn: hooks('hookIn'),
    hookOut: hooks('hookOut'),
    modelName: cfg.modelName ?? null,
    processing: cfg.processing ?? null,
    ...(cfg.training ? { training: cfg.training } : {}),
  };
  if (typeof out.skip !== 'boolean') fail(`'skip' must be true or false, got ${describe(cfg.skip)}`);
  if (out.modelName !== null && typeof out.modelName !== 'string') fail(`'modelName' must be a string or null, got ${describe(cfg.modelName)}`);
  if (out.processing !== null && out.processing !== 'none' && out.processing !== 'transformerlens') fail(`'processing' must be "none", "transformerlens" or null, got ${describe(cfg.processing)}`);
  if (out.arch === 'topk' || out.arch === 'batchtopk') {
    out.k = positive('k');
    if (out.k > out.dSae) fail(`'k' = ${out.k} exceeds dSae = ${out.dSae}`);
  }
  if (out.arch === 'jumprelu') {
    const bandwidth = cfg.bandwidth ?? 1e-3;
    if (typeof bandwidth !== 'number' || !(bandwidth > 0)) fail(`'bandwidth' must be a positive number, got ${describe(cfg.bandwidth)}`);
    out.bandwidth = bandwidth;
  }
  return out;
}

/** Parameter names and shapes: `W_enc` [L, dIn, F], `b_enc` [L, F], `W_dec_s` [F, L - s, dOut], `b_dec` [L, dOut], `W_skip` [L, dIn, dOut], `threshold` [L, F] (jumprelu, batchtopk). */
export function crossLayerParameterShapes(c: CrossLayerConfig): Record<string, number[]> {
  const L = c.nLayers;
  const out: Record<string, number[]> = { W_enc: [L, c.dIn, c.dSae], b_enc: [L, c.dSae] };
  for (let s = 0; s < L; s++) out[`W_dec_${s}`] = [c.dSae, L - s, c.dOut];
  out.b_dec = [L, c.dOut];
  if (c.skip) out.W_skip = [L, c.dIn, c.dOut];
  if (c.arch === 'jumprelu' || c.arch === 'batchtopk') out.threshold = [L, c.dSae];
  return out;
}

/** Loss options as the native loss understands them (see native/transcoder/cross_layer_losses.h). */
export interface CrossLayerLossOptions {
  reconstruction?: 'fvu' | 'paper';
  /** `l1` and `tanh` weight each activation by the feature's decoder norm; `l0` is JumpReLU's. */
  sparsity?: 'none' | 'l1' | 'tanh' | 'l0';
  sparsityCoefficient?: number;
  /** c in tanh(c f ||W_dec||). */
  tanhScale?: number;
  /** Penalty on negative pre-activations (below the threshold for jumprelu). */
  preactCoefficient?: number;
  /** topk: AuxK weight. */
  auxkAlpha?: number;
  /** topk: dead features per row and layer AuxK uses (default dIn / 2). */
  kAux?: number;
  /** Bool/uint8 [L, dSae]: features counted dead (AuxK). */
  dead?: Tensor;
}

/** Every layer's activations [..., d] (e.g. one hook per layer of a run's cache) as one [rows, L, d] tensor. */
export async function stackLayers(tensors: readonly Tensor[]): Promise<Tensor> {
  if (tensors.length === 0) throw new InvalidArgumentError('stackLayers: give at least one tensor');
  return new Tensor(await runOnDevice(tensors[0]!.device, () => native().stackLayers(tensors.map((t) => t.handle))));
}

/** Per layer sums over a batch, from which exact dataset-wide metrics follow (float64 [L], [L, d]; int64 [L, F]). */
export interface CrossLayerBatchStats {
  rows: number;
  sumSquaredError: Tensor;
  sumSquaredY: Tensor;
  sumY: Tensor;
  activeSum: Tensor;
  fireCounts: Tensor;
}

export class CrossLayerTranscoder {
  readonly config: CrossLayerConfig;
  /** Where the parameters live (`'cpu'`, `'cuda'`, `'cuda:N'`, as given). */
  readonly device: string;
  /** @internal */
  readonly handle: NativeCrossLayerTranscoder;

  private constructor(config: CrossLayerConfig, device: string, handle: NativeCrossLayerTranscoder) {
    this.config = config;
    this.device = device;
    this.handle = handle;
  }

  private queued<T>(work: () => Promise<T>): Promise<T> {
    return runOnDevice(this.device, work);
  }

  /** A freshly initialised CLT: encoders U(±1/√F), decoders U(±1/√(L·dOut)), zero biases, thresholds at `initThreshold`. */
  static async create(config: Partial<CrossLayerConfig>, options: PlacementOptions & { seed?: number; initThreshold?: number } = {}): Promise<CrossLayerTranscoder> {
    const cfg = validateCrossLayerConfig(config, 'cross-layer transcoder config');
    const device = options.device ?? 'cpu';
    const handle = await native().CrossLayerTranscoder.create(cfg, { seed: options.seed ?? 0, device, dtype: options.dtype ?? 'float32', initThreshold: options.initThreshold });
    return new CrossLayerTranscoder(cfg, device, handle);
  }

  /** A CLT from given parameters (copied; see {@link crossLayerParameterShapes}); shapes are checked against the configuration. */
  static async fromParameters(config: Partial<CrossLayerConfig>, params: Record<string, Tensor>, options: PlacementOptions = {}): Promise<CrossLayerTranscoder> {
    const cfg = validateCrossLayerConfig(config, 'cross-layer transcoder config');
    const handles: Record<string, NativeTensor> = {};
    for (const [name, t] of Object.entries(params)) {
      if (!(t instanceof Tensor)) throw new InvalidArgumentError(`cross-layer transcoder parameter '${name}' must be a Tensor`);
      handles[name] = t.handle;
    }
    const device = options.device ?? 'cpu';
    const handle = await native().CrossLayerTranscoder.fromParams(cfg, handles, { device, dtype: options.dtype ?? 'float32' });
    return new CrossLayerTranscoder(cfg, device, handle);
  }

  /** Feature activations f [N, L, dSae] of inputs x [N, L, dIn]. */
  async encode(x: Tensor): Promise<Tensor> {
    return new Tensor(await this.queued(() => this.handle.encode(x.handle)));
  }

  /** Outputs y [N, L, dOut] of inputs x [N, L, dIn]; TopK decodes sparsely. */
  async forward(x: Tensor): Promise<Tensor> {
    return new Tensor(await this.queued(() => this.handle.forward(x.handle)));
  }

  /**
   * Loss terms on (x [N, L, dIn], y [N, L, dOut]): `pre`, `f`, `yHat`, `omega` (decoder norms [L, F]),
   * `layerFvu` [L], `reconstruction`, `sparsity`, `preact`, `auxk`, `total`, and with `grad` the
   * gradients of the total (`grad.<param>`), computed on copies of the parameters.
   */
  async loss(x: Tensor, y: Tensor, options: CrossLayerLossOptions = {}, { grad = false } = {}): Promise<Record<string, Tensor>> {
    const { dead, ...rest } = options;
    const out = await this.queued(() => this.handle.loss(x.handle, y.handle, { ...rest, ...(dead ? { dead: dead.handle } : {}) }, { grad }));
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, new Tensor(v)]));
  }

  /** Per-layer reconstruction and sparsity sums of one batch (for evaluation). */
  async batchStats(x: Tensor, y: Tensor): Promise<CrossLayerBatchStats> {
    const s = await this.queued(() => this.handle.batchStats(x.handle, y.handle));
    return {
      rows: s.rows,
      sumSquaredError: new Tensor(s.sumSquaredError),
      sumSquaredY: new Tensor(s.sumSquaredY),
      sumY: new Tensor(s.sumY),
      activeSum: new Tensor(s.activeSum),
      fireCounts: new Tensor(s.fireCounts),
    };
  }

  /** The parameters (sharing memory with the transcoder; they change while it trains). */
  parameters(): Record<string, Tensor> {
    return Object.fromEntries(Object.entries(this.handle.parameters()).map(([k, v]) => [k, new Tensor(v)]));
  }

  /** Bytes of the parameters (the decoders grow as L²: L(L+1)/2 · F · dOut entries). */
  get parameterBytes(): number {
    const bytes = { float32: 4, bfloat16: 2, float16: 2, float64: 8 } as Record<string, number>;
    return Object.values(this.parameters()).reduce((sum, t) => sum + t.size * (bytes[t.dtype] ?? 4), 0);
  }
}

/**
 * Transcoder: a wide, sparsely active replacement of one MLP sublayer (see config.ts for the
 * architectures). The parameters live in native memory; encode/decode/forward run off the JS thread.
 *
 *   pre = (x - b_dec) W_enc + b_enc;   f = act(pre);   y = f W_dec + b_dec_out (+ x W_skip)
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { native, type NativeTensor, type NativeTranscoder } from '../native.js';
import { Tensor, type DType } from '../tensor.js';
import { validateTranscoderConfig, type TranscoderConfig } from './config.js';

/** Parameter names and shapes (row-vector convention). */
export const PARAMETER_SHAPES = {
  W_enc: (c: TranscoderConfig) => [c.dIn, c.dSae],
  b_enc: (c: TranscoderConfig) => [c.dSae],
  W_dec: (c: TranscoderConfig) => [c.dSae, c.dOut],
  b_dec: (c: TranscoderConfig) => [c.dIn],
  b_dec_out: (c: TranscoderConfig) => [c.dOut],
  W_skip: (c: TranscoderConfig) => [c.dIn, c.dOut],
  threshold: (c: TranscoderConfig) => [c.dSae],
} as const;
export type ParameterName = keyof typeof PARAMETER_SHAPES;

/** The parameters a transcoder of this configuration has. */
export function parameterNames(c: TranscoderConfig): ParameterName[] {
  const names: ParameterName[] = ['W_enc', 'b_enc', 'W_dec', 'b_dec', 'b_dec_out'];
  if (c.skip) names.push('W_skip');
  if (c.arch === 'jumprelu') names.push('threshold');
  return names;
}

export interface PlacementOptions {
  /** `'cpu'` (default), `'cuda'`, `'cuda:N'`. */
  device?: string;
  /** Parameter dtype (default float32). */
  dtype?: Extract<DType, 'float32' | 'bfloat16' | 'float16'>;
}

/** Feature activations of a batch in compressed-row form (row n: `indices[offsets[n]..offsets[n+1]]`). */
export interface SparseActivations {
  offsets: Tensor;
  indices: Tensor;
  values: Tensor;
}

/** Loss options as the native loss understands them (see native/transcoder/losses.h). */
export interface LossOptions {
  reconstruction?: 'paper' | 'fvu';
  l1Coefficient?: number;
  l0Coefficient?: number;
  auxkAlpha?: number;
  kAux?: number;
  ghostGrads?: boolean;
  ghostResidual?: 'input' | 'target';
  /** Bool/uint8 [dSae]: features counted dead (ghost grads for relu, AuxK for topk). */
  dead?: Tensor;
}

export type BiasInit = 'mean' | 'geometric_median' | 'zeros';

/** The geometric median of points [N, d] (Weiszfeld's algorithm, float64 accumulation). */
export async function geometricMedian(points: Tensor, options: { maxIter?: number; ftol?: number; eps?: number } = {}): Promise<Tensor> {
  return new Tensor(await runOnDevice(points.device, () => native().geometricMedian(points.handle, options)));
}

export class Transcoder {
  readonly config: TranscoderConfig;
  /** Where the parameters live (`'cpu'`, `'cuda'`, `'cuda:N'`, as given). */
  readonly device: string;
  /** @internal */
  readonly handle: NativeTranscoder;

  private constructor(config: TranscoderConfig, device: string, handle: NativeTranscoder) {
    this.config = config;
    this.device = device;
    this.handle = handle;
  }

  /** Runs one heavy native call on this transcoder in its device's queue (see lib/device-queue.ts). */
  private queued<T>(work: () => Promise<T>): Promise<T> {
    return runOnDevice(this.device, work);
  }

  /** A freshly initialised transcoder (the paper's init: kaiming-uniform weights, unit-norm decoder rows, zero biases). */
  static async create(config: Partial<TranscoderConfig>, options: PlacementOptions & { seed?: number; initThreshold?: number } = {}): Promise<Transcoder> {
    const cfg = validateTranscoderConfig(config, 'transcoder config');
    const device = options.device ?? 'cpu';
    const handle = await native().Transcoder.create(cfg, { seed: options.seed ?? 0, device, dtype: options.dtype ?? 'float32', initThreshold: options.initThreshold });
    return new Transcoder(cfg, device, handle);
  }

  /** A transcoder from given parameters (copied); shapes are checked against the configuration. */
  static async fromParameters(config: Partial<TranscoderConfig>, params: Partial<Record<ParameterName, Tensor>>, options: PlacementOptions = {}): Promise<Transcoder> {
    const cfg = validateTranscoderConfig(config, 'transcoder config');
    const handles: Record<string, NativeTensor> = {};
    for (const [name, t] of Object.entries(params)) {
      if (!(t instanceof Tensor)) throw new InvalidArgumentError(`transcoder parameter '${name}' must be a Tensor`);
      handles[name] = t.handle;
    }
    const device = options.device ?? 'cpu';
    const handle = await native().Transcoder.fromParams(cfg, handles, { device, dtype: options.dtype ?? 'float32' });
    return new Transcoder(cfg, device, handle);
  }

  /** Dense feature activations `f` [..., dSae] of inputs x [..., dIn]. */
  async encode(x: Tensor): Promise<Tensor> {
    return new Tensor(await this.queued(() => this.handle.encode(x.handle)));
  }

  /** Non-zero feature activations of x [N, dIn] (or [..., dIn], flattened to rows). */
  async encodeSparse(x: Tensor): Promise<SparseActivations> {
    const s = await this.queued(() => this.handle.encodeSparse(x.handle));
    return { offsets: new Tensor(s.offsets!), indices: new Tensor(s.indices!), values: new Tensor(s.values!) };
  }

  /** Output [..., dOut] of activations f [..., dSae]; skip transcoders also need their input x. */
  async decode(f: Tensor, x?: Tensor): Promise<Tensor> {
    return new Tensor(await this.queued(() => this.handle.decode(f.handle, x?.handle)));
  }

  /** The transcoder's output for inputs x [..., dIn]. TopK decodes sparsely. */
  async forward(x: Tensor): Promise<Tensor> {
    return new Tensor(await this.queued(() => this.handle.forward(x.handle)));
  }

  /** Loss terms on (x [N, dIn], y [N, dOut]) and optionally the gradients of the total (`grad.<param>`). */
  async loss(x: Tensor, y: Tensor, options: LossOptions = {}, { grad = false } = {}): Promise<Record<string, Tensor>> {
    const { dead, ...rest } = options;
    const out = await this.queued(() => this.handle.loss(x.handle, y.handle, { ...rest, ...(dead ? { dead: dead.handle } : {}) }, { grad }));
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, new Tensor(v)]));
  }

  /**
   * Sets b_dec (input pre-bias) and b_dec_out from sample inputs x [N, dIn] and targets y [N, dOut]:
   * their mean, their geometric median (the paper's two options), or leaves them (`'zeros'`).
   */
  async initializeBiases(x: Tensor, y: Tensor, method: BiasInit = 'mean'): Promise<void> {
    await this.queued(() => this.handle.initializeBiases(x.handle, y.handle, method));
  }

  /** The parameters (sharing memory with the transcoder; they change while it trains). */
  parameters(): Record<ParameterName, Tensor> {
    return Object.fromEntries(Object.entries(this.handle.parameters()).map(([k, v]) => [k, new Tensor(v)])) as Record<ParameterName, Tensor>;
  }
}

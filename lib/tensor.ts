/**
 * Tensor: a handle over a libtorch tensor living in native memory (CPU or CUDA).
 * Release it with dispose() when done; otherwise the garbage collector frees it eventually
 * (its size is reported to V8, so large tensors count towards GC pressure).
 */
import { InvalidArgumentError } from './errors.js';
import { native, type NativeTensor } from './native.js';

/** Element types a Tensor can hold. */
export type DType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

export const DTYPES: readonly DType[] = ['float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool'];

/** What {@link Tensor.toTypedArray} returns (float16/bfloat16 are widened to Float32Array, bool is Uint8Array). */
export type TensorData = Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array;

/** Arrays {@link Tensor.from} accepts. Uint16Array carries raw float16/bfloat16 bits. */
export type TensorSource =
  | Float32Array
  | Float64Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | Uint16Array;

export interface FromOptions {
  /** Element type of the tensor; defaults to the array's own (Float64Array -> float64, Uint8Array -> uint8). */
  dtype?: DType;
  /**
   * Share the array's memory instead of copying it (default false: copy). Only possible when the
   * element types match and the data is aligned; otherwise the data is copied. A shared tensor
   * sees later writes to the array, like torch.from_numpy, and keeps the ArrayBuffer alive; the rule
   * is that its buffer must not be detached (transferred to a worker, `structuredClone` with
   * `transfer`) while the tensor is in use: using it afterwards throws an InvalidArgumentError
   * (checked whenever the tensor is read or passed to the library), and detaching it while an
   * operation on it is still running is undefined behaviour. The copy (default) has no such rule.
   */
  share?: boolean;
}

function defaultDtype(data: TensorSource): DType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof Int16Array) return 'int16';
  if (data instanceof Int8Array) return 'int8';
  if (data instanceof Uint8Array) return 'uint8';
  if (data instanceof Uint16Array) throw new InvalidArgumentError('Tensor.from: a Uint16Array holds raw 16-bit float bits; pass { dtype: "float16" | "bfloat16" }');
  throw new InvalidArgumentError(`Tensor.from: data must be a TypedArray, got ${Array.isArray(data) ? 'an Array' : typeof data}`);
}

/** Value ranges of the integer dtypes a JS number array may be converted to. */
const INT_RANGES = new Map<DType, [number, number]>([
  ['int8', [-128, 127]],
  ['uint8', [0, 255]],
  ['int16', [-32768, 32767]],
  ['int32', [-(2 ** 31), 2 ** 31 - 1]],
  ['int64', [-(2 ** 63), 2 ** 63]],
]);

/**
 * libtorch converts out-of-range numbers to integer dtypes by wrapping (300 -> 44 in int8) and NaN
 * to 0, silently; a value that does not fit is almost always a bug upstream, so it is refused with
 * the value and its index instead. Arrays whose own element type already fits are not scanned.
 */
function checkIntegerRange(data: TensorSource, dtype: DType): void {
  const range = INT_RANGES.get(dtype);
  if (!range || data instanceof BigInt64Array || data instanceof Uint16Array) return;
  const [lo, hi] = range;
  const fits =
    (data instanceof Int8Array && lo <= -128 && hi >= 127) ||
    (data instanceof Uint8Array && lo <= 0 && hi >= 255) ||
    (data instanceof Int16Array && lo <= -32768 && hi >= 32767) ||
    (data instanceof Int32Array && lo <= -(2 ** 31) && hi >= 2 ** 31 - 1);
  if (fits) return;
  for (let i = 0; i < data.length; i++) {
    const v = data[i] as number;
    // int64's upper bound 2^63 is exclusive; the others are inclusive integers.
    if (!Number.isFinite(v) || v < lo || v > hi || (dtype === 'int64' && v >= hi)) {
      throw new InvalidArgumentError(`Tensor.from: value ${v} at index ${i} does not fit ${dtype} (range [${lo}, ${dtype === 'int64' ? '2^63' : hi}${dtype === 'int64' ? ')' : ']'}${Number.isFinite(v) ? '' : '; non-finite values have no integer form'})`);
    }
  }
}

export class Tensor {
  /** @internal */
  readonly handle: NativeTensor;

  /** @internal Wraps a native handle; use {@link Tensor.from} to create tensors. */
  constructor(handle: NativeTensor) {
    this.handle = handle;
  }

  /**
   * Creates a CPU tensor from a TypedArray. `shape` defaults to `[data.length]`.
   * @example Tensor.from(new Float32Array([1, 2, 3, 4]), [2, 2])
   */
  static from(data: TensorSource, shape: readonly number[] = [data.length], options: FromOptions = {}): Tensor {
    const dtype = options.dtype ?? defaultDtype(data);
    if (!Array.isArray(shape) || !shape.every((n) => typeof n === 'number')) {
      throw new InvalidArgumentError(`Tensor.from: shape must be an array of numbers, got ${JSON.stringify(shape)}`);
    }
    checkIntegerRange(data, dtype);
    return new Tensor(native().Tensor.fromTypedArray(data, [...shape], dtype, options.share ?? false));
  }

  /** Dimensions, e.g. `[1, 12, 768]`. */
  get shape(): number[] {
    return this.handle.shape;
  }

  get dtype(): DType {
    return this.handle.dtype as DType;
  }

  /** `'cpu'`, `'cuda:0'`, ... */
  get device(): string {
    return this.handle.device;
  }

  /** Number of elements. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get disposed(): boolean {
    return this.handle.disposed;
  }

  /** Copies the data (row-major) into a new TypedArray on the JS heap. */
  toTypedArray(): TensorData {
    return this.handle.toTypedArray();
  }

  /** Copies the data into a Float32Array (any numeric dtype; int64 values must fit a double). */
  toFloat32Array(): Float32Array {
    const data = this.toTypedArray();
    if (data instanceof Float32Array) return data;
    if (data instanceof BigInt64Array) return Float32Array.from(data, (v) => Number(v));
    return Float32Array.from(data);
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new InvalidArgumentError(`item() needs a one-element tensor, this one has shape [${this.shape}]`);
    const v = this.toTypedArray()[0]!;
    return typeof v === 'bigint' ? Number(v) : v;
  }

  /** A copy on another device and/or with another dtype (runs off the JS thread). */
  async to(options: { device?: string; dtype?: DType }): Promise<Tensor> {
    return new Tensor(await this.handle.to(options.device ?? null, options.dtype ?? null));
  }

  /** Releases the native memory now. Using the tensor afterwards throws. */
  dispose(): void {
    this.handle.dispose();
  }

  toString(): string {
    return this.disposed ? 'Tensor(disposed)' : `Tensor(shape=[${this.shape}], dtype=${this.dtype}, device=${this.device})`;
  }
}

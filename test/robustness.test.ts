/**
 * Bad input: corrupt and truncated files, inconsistent configs, out-of-range tokens, bad options,
 * failing callbacks, disposed handles, bad devices, and the CLI. Every case must fail with the
 * library's own error class and a message naming the offending file, field, key or value, and
 * the process must survive: after each case a good model still runs (see afterEach).
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  FormatError,
  InvalidArgumentError,
  loadModel,
  loadSafetensorsTensors,
  readSafetensors,
  readSafetensorsHeader,
  Tensor,
  torchInfo,
  TorchError,
  writeSafetensors,
  type Model,
  type MlpReplacement,
  type TokensInput,
} from '../lib/index.js';
import { ensureDist } from './helpers/cli.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const V = TINY_GPT2.vocabSize; // 300
const CTX = TINY_GPT2.nCtx; // 32
const D = TINY_GPT2.dModel; // 32

type ErrorClass = typeof InvalidArgumentError | typeof FormatError | typeof TorchError;

/**
 * Runs `fn` (sync or async) and checks that it fails with exactly `cls` and a message matching
 * `message`. Returns the error for further checks (e.g. FormatError.file).
 */
async function expectError<C extends ErrorClass>(fn: () => unknown, cls: C, message: RegExp): Promise<InstanceType<C>> {
  let error: unknown = undefined;
  let threw = false;
  try {
    await fn();
  } catch (err) {
    threw = true;
    error = err;
  }
  expect(threw, `expected ${cls.name} matching ${message}, but nothing was thrown`).toBe(true);
  expect(error).toBeInstanceOf(cls);
  expect((error as Error).name).toBe(cls.name);
  expect((error as Error).message).toMatch(message);
  // Native errors must not leak C++ backtraces into messages.
  expect((error as Error).message).not.toMatch(/Exception raised from|frame #\d/);
  return error as InstanceType<C>;
}

/** Regex-escapes a literal (paths in messages). */
function lit(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---- fixtures ------------------------------------------------------------------------------------

let work: string; // every corrupted copy lives under here
let goodDir: string;
let shardedDir: string;
let model: Model; // the healthy model that must keep working after every bad call

const cleanup: string[] = [];
let copies = 0;

/** A fresh copy of a model folder that a test may corrupt. */
function copyModel(src: string = goodDir): string {
  const dst = join(work, `copy-${copies++}`);
  cpSync(src, dst, { recursive: true });
  return dst;
}

function editConfig(dir: string, edit: (cfg: Record<string, unknown>) => void): string {
  const file = join(dir, 'config.json');
  const cfg = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(cfg);
  writeFileSync(file, JSON.stringify(cfg));
  return file;
}

/** Rewrites a checkpoint with some tensors dropped and others added or replaced. */
async function rewriteCheckpoint(
  file: string,
  change: (tensors: Record<string, Tensor | { dtype: 'F32' | 'I32'; shape: number[]; bytes: Uint8Array }>) => void,
): Promise<void> {
  const { tensors, metadata } = await readSafetensors(file);
  const all: Parameters<typeof change>[0] = { ...tensors };
  change(all);
  writeSafetensors(file, all, metadata);
}

/** A safetensors file with a hand-made header (a string is written verbatim). */
function rawSafetensors(header: unknown, data: Uint8Array = new Uint8Array(0), declaredLength?: bigint): string {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(declaredLength ?? BigInt(json.length));
  const file = join(work, `raw-${copies++}.safetensors`);
  writeFileSync(file, Buffer.concat([length, json, data]));
  return file;
}

function f32(n: number): Uint8Array {
  return new Uint8Array(new Float32Array(n).fill(0.5).buffer);
}

/** A good call on the healthy model: proves the process and the native runtime survived. */
async function expectAlive(): Promise<void> {
  const out = await model.run([1, 2, 3]);
  expect(out.logits!.shape).toEqual([1, 3, V]);
  expect(Number.isFinite(out.logits!.toFloat32Array()[0])).toBe(true);
  out.logits!.dispose();
}

beforeAll(async () => {
  work = tempDir('transcoders-robustness-');
  cleanup.push(work);
  goodDir = makeTempModel(TINY_GPT2);
  shardedDir = makeTempModel({ ...TINY_GPT2, shards: 2 });
  cleanup.push(dirname(goodDir), dirname(shardedDir));
  model = await loadModel(goodDir);
});

afterEach(async () => {
  await expectAlive();
});

afterAll(() => {
  model?.dispose();
  for (const dir of cleanup) rmSync(dir, { recursive: true, force: true });
});

// ---- safetensors files ---------------------------------------------------------------------------

describe('truncated safetensors', () => {
  it('cut in the middle of the data section', async () => {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    const { dataStart } = readSafetensorsHeader(file);
    const size = statSync(file).size;
    truncateSync(file, dataStart + Math.floor((size - dataStart) / 2));
    const err = await expectError(() => loadModel(dir), FormatError, /tensor '[^']+' ends at data byte \d+ but the data section has \d+ bytes \(truncated file\?\)/);
    expect(err.file).toBe(file);
    expect(err.message).toContain(file);
    await expectError(() => readSafetensors(file), FormatError, new RegExp(`^${lit(file)}: not a valid safetensors file: .*truncated`));
  });

  it('cut inside the JSON header', async () => {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    const { dataStart } = readSafetensorsHeader(file);
    truncateSync(file, 8 + Math.floor((dataStart - 8) / 2));
    const err = await expectError(() => loadModel(dir), FormatError, /the header length \d+ exceeds the file size \d+/);
    expect(err.file).toBe(file);
  });

  it('shorter than the 8-byte length prefix (and empty)', async () => {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    truncateSync(file, 5);
    const err = await expectError(() => loadModel(dir), FormatError, /the file has 5 bytes, fewer than the 8-byte header length/);
    expect(err.file).toBe(file);
    truncateSync(file, 0);
    await expectError(() => readSafetensorsHeader(file), FormatError, /the file has 0 bytes/);
  });

  it('truncated after its header was read: the native loader re-checks instead of reading past the end', async () => {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    const header = readSafetensorsHeader(file);
    truncateSync(file, header.dataStart + 16);
    const err = await expectError(() => loadSafetensorsTensors(header), FormatError, /tensor '[^']+' ends at byte \d+ but the file has \d+ bytes \(truncated\?\)/);
    expect(err.file).toBe(file);
  });
});

describe('corrupt safetensors header', () => {
  it('invalid JSON', async () => {
    const file = rawSafetensors('{"w": {"dtype": "F32",');
    const err = await expectError(() => readSafetensorsHeader(file), FormatError, /the header is not valid JSON/);
    expect(err.file).toBe(file);
    expect(err.message.startsWith(`${file}: `)).toBe(true);
  });

  it('invalid JSON inside a model folder (through loadModel)', async () => {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    const bytes = readFileSync(file);
    bytes.write('#', 8); // the header's opening brace
    writeFileSync(file, bytes);
    const err = await expectError(() => loadModel(dir), FormatError, /not a valid safetensors file: the header is not valid JSON/);
    expect(err.file).toBe(file);
  });

  it('header length larger than the file', async () => {
    const file = rawSafetensors({ w: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32(1), 1_000_000n);
    await expectError(() => readSafetensorsHeader(file), FormatError, /the header length 1000000 exceeds the file size \d+/);
    const huge = rawSafetensors('{}', undefined, 2n ** 63n);
    await expectError(() => readSafetensorsHeader(huge), FormatError, /the header length 9223372036854775808 exceeds/);
  });

  it('a header that is not a JSON object', async () => {
    for (const header of ['[1, 2]', '42', 'null', '"text"']) {
      await expectError(() => readSafetensorsHeader(rawSafetensors(header)), FormatError, /the header is not a JSON object/);
    }
    await expectError(() => readSafetensorsHeader(rawSafetensors({ w: 7 })), FormatError, /tensor 'w' is not an object/);
    await expectError(() => readSafetensorsHeader(rawSafetensors({ __metadata__: { n: 1 } })), FormatError, /__metadata__ must map strings to strings/);
  });

  it('unsupported dtype', async () => {
    const file = rawSafetensors({ w: { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4));
    await expectError(() => readSafetensorsHeader(file), FormatError, /tensor 'w' has unsupported dtype "F8_E4M3" \(supported: F64, F32/);
    // Names of Object.prototype members are not dtypes either.
    for (const dtype of ['toString', 'constructor', '__proto__']) {
      const f = rawSafetensors({ w: { dtype, shape: [1], data_offsets: [0, 4] } }, f32(1));
      await expectError(() => readSafetensorsHeader(f), FormatError, new RegExp(`tensor 'w' has unsupported dtype "${dtype}"`));
    }
    await expectError(() => readSafetensorsHeader(rawSafetensors({ w: { shape: [1], data_offsets: [0, 4] } }, f32(1))), FormatError, /tensor 'w' has unsupported dtype undefined/);
  });

  it('bad shape', async () => {
    for (const shape of [[-1, 2], [1.5], ['4'], 4, null]) {
      const file = rawSafetensors({ w: { dtype: 'F32', shape, data_offsets: [0, 16] } }, f32(4));
      await expectError(() => readSafetensorsHeader(file), FormatError, new RegExp(`tensor 'w' has an invalid shape ${lit(JSON.stringify(shape))}`));
    }
  });

  it('data_offsets out of range of the data section', async () => {
    const file = rawSafetensors({ w: { dtype: 'F32', shape: [16], data_offsets: [0, 64] } }, f32(4));
    const err = await expectError(() => readSafetensorsHeader(file), FormatError, /tensor 'w' ends at data byte 64 but the data section has 16 bytes/);
    expect(err.file).toBe(file);
    for (const offsets of [[0], [0, -4], [0, '16'], 'x', [4, 0]]) {
      const f = rawSafetensors({ w: { dtype: 'F32', shape: [4], data_offsets: offsets } }, f32(4));
      await expectError(() => readSafetensorsHeader(f), FormatError, /tensor 'w'( has invalid data_offsets|: data_offsets \[4, 0\] hold -4 bytes)/);
    }
  });

  it('data_offsets whose size does not match dtype x shape', async () => {
    const file = rawSafetensors({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 12] } }, f32(4));
    await expectError(() => readSafetensorsHeader(file), FormatError, /tensor 'w': data_offsets \[0, 12\] hold 12 bytes but F32 \[4\] needs 16/);
    const big = rawSafetensors({ w: { dtype: 'F32', shape: [1e15, 1e15], data_offsets: [0, 4] } }, f32(1));
    await expectError(() => readSafetensorsHeader(big), FormatError, /tensor 'w': data_offsets \[0, 4\] hold 4 bytes but F32/);
  });

  it('overlapping tensors', async () => {
    const file = rawSafetensors(
      { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } },
      f32(6),
    );
    await expectError(() => readSafetensorsHeader(file), FormatError, /tensors 'a' and 'b' overlap/);
  });

  it('not a regular file, or no file at all', async () => {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    unlinkSync(file);
    mkdirSync(file);
    const err = await expectError(() => loadModel(dir), FormatError, /model\.safetensors: not a valid safetensors file: not a regular file/);
    expect(err.file).toBe(file);
    const missing = join(work, 'absent.safetensors');
    expect((await expectError(() => readSafetensors(missing), FormatError, /absent\.safetensors: cannot open \(ENOENT\)/)).file).toBe(missing);
  });

  it('asking the loader for a tensor the header does not have', async () => {
    const header = readSafetensorsHeader(join(goodDir, 'model.safetensors'));
    await expectError(() => loadSafetensorsTensors(header, ['wte.weight', 'nope']), FormatError, /missing tensor 'nope'/);
  });
});

// ---- checkpoint vs config ------------------------------------------------------------------------

describe('missing or mismatched tensors', () => {
  it('a tensor deleted from the checkpoint', async () => {
    const dir = copyModel();
    await rewriteCheckpoint(join(dir, 'model.safetensors'), (t) => {
      delete t['h.1.mlp.c_fc.bias'];
    });
    const err = await expectError(() => loadModel(dir), FormatError, /missing tensor 'h\.1\.mlp\.c_fc\.bias' in the checkpoint/);
    expect(err.file).toBe(dir);
  });

  it('an unexpected extra tensor', async () => {
    const dir = copyModel();
    await rewriteCheckpoint(join(dir, 'model.safetensors'), (t) => {
      t['h.0.mlp.gate.weight'] = { dtype: 'F32', shape: [4], bytes: f32(4) };
    });
    await expectError(() => loadModel(dir), FormatError, /unexpected tensor 'h\.0\.mlp\.gate\.weight' for a gpt2 model/);
  });

  it('a tensor with a wrong shape or dtype', async () => {
    const dir = copyModel();
    const file = join(dir, 'model.safetensors');
    await rewriteCheckpoint(file, (t) => {
      t['h.0.ln_1.weight'] = { dtype: 'F32', shape: [D - 1], bytes: f32(D - 1) };
    });
    const err = await expectError(() => loadModel(dir), FormatError, new RegExp(`tensor 'h\\.0\\.ln_1\\.weight' has shape \\[${D - 1}\\] but config\\.json implies \\[${D}\\]`));
    expect(err.file).toBe(file);
    await rewriteCheckpoint(file, (t) => {
      t['h.0.ln_1.weight'] = { dtype: 'I32', shape: [D], bytes: new Uint8Array(4 * D) };
    });
    await expectError(() => loadModel(dir), FormatError, /tensor 'h\.0\.ln_1\.weight' has dtype I32; weights must be/);
  });

  it('config.json n_embd disagrees with the weights', async () => {
    const dir = copyModel();
    editConfig(dir, (c) => (c.n_embd = 2 * D));
    const err = await expectError(() => loadModel(dir), FormatError, /model\.safetensors: tensor '[^']+' has shape \[[\d,]+\] but config\.json implies \[[\d,]+\]/);
    expect(err.file).toBe(join(dir, 'model.safetensors'));
  });

  it('config.json vocab_size disagrees with the weights', async () => {
    const dir = copyModel();
    editConfig(dir, (c) => (c.vocab_size = V + 100));
    await expectError(() => loadModel(dir), FormatError, new RegExp(`tensor 'wte\\.weight' has shape \\[${V},${D}\\] but config\\.json implies \\[${V + 100},${D}\\]`));
  });

  it('config.json declares more layers than the checkpoint has (also absurdly many, without building a huge table)', async () => {
    const dir = copyModel();
    editConfig(dir, (c) => (c.n_layer = 3));
    await expectError(() => loadModel(dir), FormatError, /missing tensor 'h\.2\.[^']+' in the checkpoint/);
    editConfig(dir, (c) => (c.n_layer = 1_000_000_000));
    const start = performance.now();
    await expectError(() => loadModel(dir), FormatError, /config\.json declares 1000000000 layers but the checkpoint holds only \d+ tensors/);
    expect(performance.now() - start).toBeLessThan(2000);
  });
});

describe('config.json', () => {
  it('unknown architecture: model_type "mamba"', async () => {
    const dir = copyModel();
    const file = editConfig(dir, (c) => (c.model_type = 'mamba'));
    const err = await expectError(() => loadModel(dir), FormatError, /unknown architecture: model_type "mamba" \(supported: gpt2, gpt_neox, llama, mistral, qwen2, qwen3, gemma2, gemma3_text\)/);
    expect(err.file).toBe(file);
    expect(err.message.startsWith(`${file}: `)).toBe(true);
  });

  it('missing model_type', async () => {
    const dir = copyModel();
    editConfig(dir, (c) => delete c.model_type);
    await expectError(() => loadModel(dir), FormatError, /config\.json: unknown architecture: model_type undefined/);
  });

  it('negative, zero, fractional or non-numeric n_layer', async () => {
    const dir = copyModel();
    for (const [value, shown] of [[-1, '-1'], [0, '0'], [1.5, '1.5'], ['2', '"2"'], [null, 'null']] as const) {
      editConfig(dir, (c) => (c.n_layer = value));
      await expectError(() => loadModel(dir), FormatError, new RegExp(`field 'n_layer' must be a positive integer, got ${lit(shown)}`));
    }
  });

  it('n_embd not divisible by n_head', async () => {
    const dir = copyModel();
    editConfig(dir, (c) => (c.n_embd = 30));
    await expectError(() => loadModel(dir), FormatError, /hidden size 30 is not divisible by the number of heads 4/);
  });

  it('other invalid fields', async () => {
    const dir = copyModel();
    editConfig(dir, (c) => (c.activation_function = 'gelu_fancy'));
    await expectError(() => loadModel(dir), FormatError, /field 'activation_function': unsupported activation "gelu_fancy"/);
    editConfig(dir, (c) => {
      c.activation_function = 'gelu_new';
      c.bos_token_id = V + 5;
    });
    await expectError(() => loadModel(dir), FormatError, new RegExp(`field 'bos_token_id' = ${V + 5} is outside the vocabulary of ${V}`));
  });

  it('config.json that is not JSON, or not an object', async () => {
    const dir = copyModel();
    const file = join(dir, 'config.json');
    writeFileSync(file, '{"model_type": "gpt2", n_layer: 2}');
    const err = await expectError(() => loadModel(dir), FormatError, /config\.json: invalid JSON \(/);
    expect(err.file).toBe(file);
    writeFileSync(file, '[1, 2, 3]');
    await expectError(() => loadModel(dir), FormatError, /config\.json: not a JSON object/);
  });

  it('missing config.json, missing folder, missing weights', async () => {
    const dir = copyModel();
    unlinkSync(join(dir, 'config.json'));
    const err = await expectError(() => loadModel(dir), FormatError, /config\.json: cannot read \(ENOENT\); is .* a Hugging Face model folder\?/);
    expect(err.file).toBe(join(dir, 'config.json'));
    await expectError(() => loadModel(join(work, 'no-such-model')), InvalidArgumentError, /model folder .*no-such-model does not exist/);
    const noWeights = copyModel();
    unlinkSync(join(noWeights, 'model.safetensors'));
    writeFileSync(join(noWeights, 'pytorch_model.bin'), '');
    await expectError(() => loadModel(noWeights), FormatError, /no model\.safetensors or model\.safetensors\.index\.json \(pytorch_model\.bin is not supported/);
  });
});

describe('sharded checkpoints', () => {
  it('loads when intact (control)', async () => {
    const m = await loadModel(shardedDir);
    expect((await m.run([1, 2])).logits!.shape).toEqual([1, 2, V]);
    m.dispose();
  });

  it('index.json pointing to a missing shard file', async () => {
    const dir = copyModel(shardedDir);
    const shard = readdirSync(dir).filter((f) => /^model-\d+-of-\d+\.safetensors$/.test(f)).sort()[1]!;
    unlinkSync(join(dir, shard));
    const err = await expectError(() => loadModel(dir), FormatError, new RegExp(`${lit(shard)}: cannot open \\(ENOENT\\)`));
    expect(err.file).toBe(join(dir, shard));
  });

  it("weight_map with a path containing '/' (or '\\\\', or a non-string)", async () => {
    const dir = copyModel(shardedDir);
    const index = join(dir, 'model.safetensors.index.json');
    const original = JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, unknown> };
    for (const bad of ['../model-00001-of-00002.safetensors', 'sub/model.safetensors', '..\\model.safetensors', 7]) {
      const json = structuredClone(original);
      json.weight_map['wte.weight'] = bad;
      writeFileSync(index, JSON.stringify(json));
      const err = await expectError(() => loadModel(dir), FormatError, /index\.json: 'weight_map' must map tensor names to shard file names in the same folder/);
      expect(err.file).toBe(index);
    }
    writeFileSync(index, JSON.stringify({ metadata: {} }));
    await expectError(() => loadModel(dir), FormatError, /'weight_map' must map/);
    writeFileSync(index, '{ not json');
    await expectError(() => loadModel(dir), FormatError, /index\.json: invalid JSON/);
  });
});

// ---- model.run inputs ----------------------------------------------------------------------------

describe('token ids', () => {
  const run = (tokens: TokensInput) => () => model.run(tokens);

  it('out of range as number arrays: negative, = vocab size, non-integer', async () => {
    await expectError(run([1, -1]), InvalidArgumentError, new RegExp(`token id -1 \\(row 0, position 1\\) is out of range \\[0, ${V}\\)`));
    await expectError(run([[1, 2], [3, V]]), InvalidArgumentError, new RegExp(`token id ${V} \\(row 1, position 1\\) is out of range \\[0, ${V}\\)`));
    await expectError(run([1.5, 2]), InvalidArgumentError, /token id 1\.5 \(row 0, position 0\) is not an integer/);
    await expectError(run([1, NaN]), InvalidArgumentError, /token id NaN \(row 0, position 1\) is not an integer/);
    await expectError(run([1, '2'] as unknown as number[]), InvalidArgumentError, /token id "2" \(row 0, position 1\) is not an integer/);
    await expectError(run([1, [2]] as unknown as number[]), InvalidArgumentError, /token id \[2\] \(row 0, position 1\) is not an integer/);
    await expectError(run(new Int32Array([1, V])), InvalidArgumentError, new RegExp(`token id ${V} is out of range \\[0, ${V}\\)`));
  });

  it('out of range in int64 / int32 tensors (checked natively)', async () => {
    await expectError(run(Tensor.from(new BigInt64Array([1n, -1n]))), InvalidArgumentError, new RegExp(`token id -1 is out of range \\[0, ${V}\\)`));
    await expectError(run(Tensor.from(new BigInt64Array([BigInt(V), 1n]))), InvalidArgumentError, new RegExp(`token id ${V} is out of range`));
    await expectError(run(Tensor.from(new BigInt64Array([1n, 2n ** 62n]))), InvalidArgumentError, /token id 4611686018427387904 is out of range/);
    await expectError(run(Tensor.from(new Int32Array([1, 2, V, 3]), [2, 2])), InvalidArgumentError, new RegExp(`token id ${V} is out of range`));
    await expectError(run(Tensor.from(new Int32Array([-7]))), InvalidArgumentError, /token id -7 is out of range/);
    // Non-integer ids: a float tensor is refused by dtype.
    await expectError(run(Tensor.from(new Float32Array([1, 2.5]))), InvalidArgumentError, /tokens must be int32 or int64, got Float/);
    await expectError(run(Tensor.from(new Int32Array([1, 2]), [1, 1, 2])), InvalidArgumentError, /tokens must have shape \[T\] or \[B, T\], got 3 dimensions/);
  });

  it('a sequence longer than the context (n_positions)', async () => {
    const long = Array.from({ length: CTX + 1 }, (_, i) => i % V);
    const msg = new RegExp(`sequence of ${CTX + 1} tokens is longer than the model's context of ${CTX}`);
    await expectError(run(long), InvalidArgumentError, msg);
    await expectError(run(Tensor.from(BigInt64Array.from(long, BigInt), [1, CTX + 1])), InvalidArgumentError, msg);
    // The context itself is fine.
    expect((await model.run(long.slice(0, CTX))).logits!.shape).toEqual([1, CTX, V]);
  });

  it('ragged batch rows: padded (test/padding.test.ts), but every row must be an array with a token', async () => {
    expect((await model.run([[1, 2, 3], [4, 5]])).lengths).toEqual([3, 2]);
    await expectError(run([[1, 2], 3] as unknown as number[][]), InvalidArgumentError, /tokens: row 1 is not an array of token ids \(got number\)/);
    await expectError(run([[1, 2], []]), InvalidArgumentError, /tokens: row 1 is empty \(every row of a batch needs at least one token\)/);
    await expectError(() => model.run([[1, 2], [3]], { padding: 'up' as 'left' }), InvalidArgumentError, /padding must be 'right' or 'left', got 'up'/);
  });

  it('empty tokens', async () => {
    await expectError(run([]), InvalidArgumentError, /tokens must not be empty/);
    await expectError(run([[]]), InvalidArgumentError, /tokens must not be empty/);
    await expectError(run(new Int32Array(0)), InvalidArgumentError, /tokens must not be empty/);
    await expectError(run(Tensor.from(new BigInt64Array(0), [1, 0])), InvalidArgumentError, /tokens must not be empty/);
    await expectError(() => model.loss([5]), InvalidArgumentError, /the loss needs at least 2 tokens per row/);
  });

  it('tokens of an unsupported type', async () => {
    await expectError(run(new Float32Array([1, 2]) as unknown as number[]), InvalidArgumentError, /tokens must be a string, an array of ids, .*; got Float32Array/);
    await expectError(run(42 as unknown as number[]), InvalidArgumentError, /tokens must be .*; got 42/);
  });
});

describe('hooks', () => {
  it('unknown hook name', async () => {
    await expectError(() => model.run([1, 2], { cache: ['blocks.0.hook_nope'] }), InvalidArgumentError, /unknown hook 'blocks\.0\.hook_nope'; see model\.hookNames/);
    await expectError(
      () => model.run([1, 2], { cache: ['blocks.7.hook_resid_post'] }),
      InvalidArgumentError,
      /unknown hook 'blocks\.7\.hook_resid_post' \(similar: blocks\.0\.hook_resid_post/,
    );
    await expectError(() => model.weight('blocks.0.attn.W_X'), InvalidArgumentError, /unknown weight 'blocks\.0\.attn\.W_X'/);
  });

  it('bad hook pattern', async () => {
    await expectError(() => model.run([1, 2], { cache: ['blocks.*.hook_nope'] }), InvalidArgumentError, /hook pattern 'blocks\.\*\.hook_nope' matches no hook of this model/);
    await expectError(() => model.run([1, 2], { cache: ['blocks.[0-9'] }), InvalidArgumentError, /unknown hook 'blocks\.\[0-9'/);
    await expectError(() => model.run([1, 2], { cache: [3 as unknown as string] }), InvalidArgumentError, /hook names must be strings, got 3/);
    await expectError(() => model.run([1, 2], { cache: 'blocks.0.hook_resid_pre' as unknown as string[] }), InvalidArgumentError, /hooks must be an array of hook names or patterns/);
  });
});

describe('replaceMlp', () => {
  const tokens = [1, 2, 3];
  const replace = (replaceMlp: Record<string | number, unknown>) => () => model.run(tokens, { replaceMlp: replaceMlp as Record<number, MlpReplacement> });

  it('a layer that does not exist', async () => {
    for (const layer of ['2', '-1', '1.5', 'x', '99']) {
      await expectError(replace({ [layer]: 'zero' }), InvalidArgumentError, new RegExp(`replaceMlp: layer ${lit(layer)} does not exist \\(the model has 2 layers\\)`));
    }
  });

  it('a bad spec', async () => {
    for (const [spec, shown] of [['ablate', "'ablate'"], [5, 'number'], [null, 'null'], [{}, 'object'], [{ value: [1, 2] }, 'object'], [{ mean: 0 }, 'object']] as const) {
      await expectError(replace({ 0: spec }), InvalidArgumentError, new RegExp(`replaceMlp\\[0\\]: expected 'zero', 'mean', .* or a function, got ${lit(shown)}`));
    }
  });

  it('a value or mean that does not broadcast to [B, T, d]', async () => {
    const bad = Tensor.from(new Float32Array(5));
    const msg = new RegExp(`the replacement value of layer 0's MLP output has shape \\[5\\], which does not broadcast to \\[1, 3, ${D}\\]`);
    await expectError(replace({ 0: { value: bad } }), InvalidArgumentError, msg);
    await expectError(replace({ 0: { mean: bad } }), InvalidArgumentError, msg);
    // A broadcastable value still works.
    expect((await replace({ 0: { value: Tensor.from(new Float32Array(D)) } })()).logits!.shape).toEqual([1, 3, V]);
  });

  it('a callback that throws (synchronously, asynchronously, a non-Error)', async () => {
    await expectError(replace({ 1: () => { throw new Error('boom'); } }), InvalidArgumentError, /the MLP replacement callback of layer 1 failed: boom/);
    await expectError(replace({ 0: async () => { throw new RangeError('async boom'); } }), InvalidArgumentError, /the MLP replacement callback of layer 0 failed: async boom/);
    await expectError(replace({ 1: () => { throw 'a string'; } }), InvalidArgumentError, /the MLP replacement callback of layer 1 failed: a string/);
  });

  it('a callback that returns a wrong-shape tensor', async () => {
    await expectError(replace({ 1: () => Tensor.from(new Float32Array(5)) }), InvalidArgumentError, new RegExp(`the replacement of layer 1's MLP output has shape \\[5\\], expected \\[1, 3, ${D}\\]`));
    await expectError(
      replace({ 0: () => Tensor.from(new Float32Array(2 * 3 * D), [2, 3, D]) }),
      InvalidArgumentError,
      new RegExp(`layer 0's MLP output has shape \\[2, 3, ${D}\\], expected \\[1, 3, ${D}\\]`),
    );
  });

  it('a callback that returns a non-tensor or a disposed tensor', async () => {
    for (const value of [42, undefined, { shape: [1, 3, D] }, new Float32Array(3 * D)]) {
      await expectError(replace({ 1: () => value }), InvalidArgumentError, /the MLP replacement callback of layer 1 failed: the replaceMlp callback of layer 1 must return a Tensor/);
    }
    await expectError(replace({ 1: async () => 'tensor' }), InvalidArgumentError, /must return a Tensor/);
    await expectError(
      replace({ 1: (input: Tensor) => { input.dispose(); return input; } }),
      InvalidArgumentError,
      /the MLP replacement callback of layer 1 failed: the value returned by an MLP replacement callback is a disposed Tensor/,
    );
  });

  it('the same layer twice (1 and "01"): rejected, and the callbacks do not keep the process alive', () => {
    ensureDist();
    // In a child process, so that a leaked thread-safe function shows up as a process that never exits.
    const script = [
      "import { loadModel } from './dist/index.js';",
      'const m = await loadModel(process.argv[1]);',
      'const cb = (x) => x;',
      "await m.run([1, 2], { replaceMlp: { 1: cb, '01': cb } }).catch((e) => console.log(`${e.name}: ${e.message}`));",
    ].join('\n');
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, goodDir], { cwd: ROOT, encoding: 'utf8', timeout: 20_000 });
    expect(r.signal, 'the child did not exit by itself').toBeNull();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe("InvalidArgumentError: layer 1's MLP is replaced twice");
  });

  it('many failing runs at once', async () => {
    const bad = [
      model.run([1, V]),
      model.run([1, 2], { replaceMlp: { 0: () => { throw new Error('x'); } } }),
      model.run([1, 2], { replaceMlp: { 1: () => Tensor.from(new Float32Array(1)) } }),
      model.run(Tensor.from(new BigInt64Array([-1n]))),
      model.run([1, 2], { cache: ['nope'] }),
    ];
    const results = await Promise.allSettled([...bad, ...bad.map(() => model.run([4, 5, 6]))]);
    expect(results.slice(0, bad.length).every((r) => r.status === 'rejected' && r.reason instanceof InvalidArgumentError)).toBe(true);
    expect(results.slice(bad.length).every((r) => r.status === 'fulfilled')).toBe(true);
  });
});

describe('disposed handles', () => {
  it('a disposed tensor used again', async () => {
    const t = Tensor.from(new Int32Array([1, 2, 3]));
    t.dispose();
    t.dispose(); // twice is fine
    expect(t.disposed).toBe(true);
    expect(String(t)).toBe('Tensor(disposed)');
    await expectError(() => t.shape, InvalidArgumentError, /this Tensor was disposed/);
    await expectError(() => t.toTypedArray(), InvalidArgumentError, /this Tensor was disposed/);
    await expectError(() => t.item(), InvalidArgumentError, /this Tensor was disposed/);
    await expectError(() => t.to({ dtype: 'float32' }), InvalidArgumentError, /this Tensor was disposed/);
    await expectError(() => model.run(t), InvalidArgumentError, /tokens is a disposed Tensor/);
    await expectError(() => model.run([1, 2], { replaceMlp: { 0: { value: t } } }), InvalidArgumentError, /replacement value is a disposed Tensor/);
    await expectError(() => writeSafetensors(join(work, 'disposed.safetensors'), { t }), InvalidArgumentError, /this Tensor was disposed/);
  });

  it('a disposed model used again', async () => {
    const m = await loadModel(goodDir);
    const w = m.weight('embed.W_E');
    m.dispose();
    m.dispose(); // twice is fine
    await expectError(() => m.run([1, 2]), InvalidArgumentError, /this model was disposed/);
    await expectError(() => m.loss([1, 2]), InvalidArgumentError, /this model was disposed/);
    await expectError(() => m.weight('embed.W_E'), InvalidArgumentError, /this model was disposed/);
    await expectError(() => m.weightNames(), InvalidArgumentError, /this model was disposed/);
    // Tensors taken from it before stay valid.
    expect(w.shape).toEqual([V, D]);
  });
});

describe('Tensor.from and devices', () => {
  it('a shape that does not match the data length', async () => {
    await expectError(() => Tensor.from(new Float32Array(4), [2, 3]), InvalidArgumentError, /Tensor\.from: shape holds 6 elements but the array has 4/);
    await expectError(() => Tensor.from(new Float32Array(4), [-2, -2]), InvalidArgumentError, /shape entries must be non-negative integers/);
    await expectError(() => Tensor.from(new Float32Array(4), [1.5, 2]), InvalidArgumentError, /shape entries must be non-negative integers/);
    await expectError(() => Tensor.from(new Float32Array(4), 4 as unknown as number[]), InvalidArgumentError, /Tensor\.from: shape must be an array of numbers, got 4/);
    await expectError(() => Tensor.from(new Float32Array(4), ['4'] as unknown as number[]), InvalidArgumentError, /shape must be an array of numbers, got \["4"\]/);
  });

  it('unknown dtype and unsupported data', async () => {
    await expectError(() => Tensor.from(new Float32Array(2), [2], { dtype: 'float8' as never }), InvalidArgumentError, /unknown dtype 'float8' \(expected float32/);
    await expectError(() => Tensor.from(new Uint16Array(2)), InvalidArgumentError, /a Uint16Array holds raw 16-bit float bits/);
    await expectError(() => Tensor.from(new Uint16Array(2), [2], { dtype: 'int32' }), InvalidArgumentError, /pass dtype 'float16' or 'bfloat16'/);
    await expectError(() => Tensor.from([1, 2, 3] as unknown as Float32Array), InvalidArgumentError, /Tensor\.from: data must be a TypedArray, got an Array/);
    await expectError(() => Tensor.from([1, 2, 3] as unknown as Float32Array, [3], { dtype: 'float32' }), InvalidArgumentError, /data must be a TypedArray/);
    await expectError(() => Tensor.from(new Float32Array(2)).to({ dtype: 'float8' as never }), InvalidArgumentError, /unknown dtype 'float8'/);
    await expectError(() => Tensor.from(new Float32Array(2)).to({ device: 'tpu' }), InvalidArgumentError, /unknown device 'tpu'/);
  });

  it('libtorch failures arrive as TorchError (overflowing shape)', async () => {
    await expectError(() => Tensor.from(new Float32Array(0), [2 ** 32, 2 ** 32]), TorchError, /^libtorch: .*overflow/i);
  });

  it.runIf(torchInfo().version.startsWith('1.') && !torchInfo().cudaAvailable)('float16 compute on CPU (libtorch 1.x) fails with a TorchError', async () => {
    const half = await loadModel(goodDir, { dtype: 'float16' });
    await expectError(() => half.run([1, 2]), TorchError, /^libtorch: .*not implemented for 'Half'/);
    half.dispose();
  });

  it('bad device strings in loadModel', async () => {
    await expectError(() => loadModel(goodDir, { device: 'tpu' }), InvalidArgumentError, /unknown device 'tpu' \(expected 'cpu', 'cuda' or 'cuda:N'\)/);
    await expectError(() => loadModel(goodDir, { device: '' }), InvalidArgumentError, /unknown device ''/);
    await expectError(() => loadModel(goodDir, { device: 'cpu:1' }), InvalidArgumentError, /unsupported device 'cpu:1'/);
    await expectError(() => loadModel(goodDir, { device: 0 as unknown as string }), InvalidArgumentError, /device must be a string .*, got 0/);
    await expectError(() => loadModel(goodDir, { dtype: 'float64' as never }), InvalidArgumentError, /dtype must be one of float32, bfloat16, float16, got 'float64'/);
    await expectError(() => loadModel(goodDir, { processing: 'tl' as never }), InvalidArgumentError, /processing must be one of none, transformerlens, got 'tl'/);
    if (torchInfo().cudaAvailable) {
      await expectError(() => loadModel(goodDir, { device: 'cuda:99' }), InvalidArgumentError, /device 'cuda:99' requested but only \d+ CUDA device\(s\) exist/);
    } else {
      for (const device of ['cuda', 'cuda:0', 'cuda:99']) {
        await expectError(() => loadModel(goodDir, { device }), InvalidArgumentError, new RegExp(`device '${device}' requested but CUDA is not available`));
      }
    }
  });
});

// ---- CLI -----------------------------------------------------------------------------------------

describe('CLI', () => {
  beforeAll(ensureDist);

  function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/transcoders.js'), ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  /** A readable error: `transcoders <cmd>: ...` on the first line of stderr, no stack trace. */
  function expectCliError(r: ReturnType<typeof cli>, status: number, firstLine: RegExp): void {
    expect(r.status, r.stderr).toBe(status);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines[0]).toMatch(firstLine);
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(r.stderr).not.toMatch(/node:internal|\.js:\d+:\d+/);
    expect(r.stdout).toBe('');
  }

  it('run <dir> --tokens 1,2,99999: exit 2, one line naming the id', () => {
    const r = cli('run', goodDir, '--tokens', '1,2,99999');
    expectCliError(r, 2, new RegExp(`^transcoders run: token id 99999 \\(row 0, position 2\\) is out of range \\[0, ${V}\\)$`));
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
  });

  it('run --bogus: exit 2, names the option and points at --help, on one line', () => {
    const r = cli('run', '--bogus');
    expectCliError(r, 2, /^transcoders run: unknown option --bogus; run 'transcoders run --help' for the options$/);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
  });

  it('other bad arguments: exit 2 for bad input, exit 1 for bad files', () => {
    expectCliError(cli('run', goodDir, '--tokens', '1,x'), 2, /^transcoders run: --tokens must be a comma-separated list of non-negative integers, got '1,x'$/);
    expectCliError(cli('run', goodDir, '--tokens', '1,2', '--device', 'tpu'), 2, /^transcoders run: unknown device 'tpu'/);
    const truncated = copyModel();
    truncateSync(join(truncated, 'model.safetensors'), 100);
    expectCliError(cli('run', truncated, '--tokens', '1,2'), 1, new RegExp(`^transcoders run: ${lit(join(truncated, 'model.safetensors'))}: not a valid safetensors file: `));
    // A folder that is not there is a usage error, named before anything is read.
    expectCliError(cli('info', join(work, 'missing-model')), 2, /^transcoders info: <model-dir> .*missing-model: no such file or folder$/);
    // A folder without its config.json is a bad model folder.
    expectCliError(cli('info', work), 1, new RegExp(`^transcoders info: ${lit(join(work, 'config.json'))}: cannot read \\(ENOENT\\)`));
  });
});

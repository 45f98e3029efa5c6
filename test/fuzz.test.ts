/**
 * Parser robustness: the hostile inputs of the reliability issue, each of which used to hang,
 * crash, exhaust memory or fail with a bare RangeError/TypeError, and a short seeded fuzz run of
 * every parser (the long run is `npm run fuzz`, see docs/robustness.md). Every rejection must be a
 * library error naming the file (FormatError with `file` set) or, for bad arguments, an
 * InvalidArgumentError naming the value.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDeflateRaw } from 'node:zlib';
import { crc32 } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { FormatError, InvalidArgumentError } from '../lib/errors.js';
import { readJsonFile } from '../lib/io/json.js';
import { readSafetensorsHeader, writeSafetensors } from '../lib/io/safetensors.js';
import { readTorchCheckpoint } from '../lib/io/torch-pickle.js';
import { readModelConfig } from '../lib/models/config.js';
import { Tensor } from '../lib/tensor.js';
import { Tokenizer } from '../lib/tokenizer/tokenizer.js';
import { trainByteLevelBpe } from '../lib/tokenizer/train-bpe.js';
import { CACHE_FORMAT, readCacheMeta, readCacheShards } from '../lib/transcoders/activation-cache.js';
import { checkCheckpoint } from '../lib/transcoders/checkpoints.js';
import { loadNativeTranscoder } from '../lib/transcoders/formats/native.js';
import { loadSaeLensTranscoder } from '../lib/transcoders/formats/saelens.js';
import { runCampaign } from './fuzz/campaign.js';
import { makeTargets, PARSERS, type FuzzTarget } from './fuzz/targets.js';
import { paperPickle, torchZip, writeZip } from './fuzz/writers.js';
import { values } from './helpers/fixtures.js';
import { tempDir } from './helpers/fixtures.js';

/** Runs `fn` and returns the FormatError it must throw, checking that it names `file`. */
async function formatError(fn: () => unknown, file: string, message: RegExp): Promise<FormatError> {
  let error: unknown;
  try {
    await fn();
  } catch (err) {
    error = err;
  }
  expect(error, `expected a FormatError matching ${message}`).toBeInstanceOf(FormatError);
  const e = error as FormatError;
  expect(e.file).toBe(file);
  expect(e.message).toContain(file);
  expect(e.message).toMatch(message);
  expect(e.message.length).toBeLessThan(1000);
  return e;
}

const rssMb = () => process.memoryUsage().rss / 2 ** 20;

describe('.pt views and zip entries: memory bounded by what the file declares and holds', () => {
  const dir = tempDir('fuzz-pt-');
  const cfg = { hook_point: 'blocks.0.ln2.hook_normalized', hook_point_layer: 0 };

  it('64 zero-stride views of a 1-element storage (16 GB asked) fail before allocating', async () => {
    const views = Array.from({ length: 64 }, (_, i) => ({ key: `v${i}`, storage: '0', numel: 1, offset: 0, size: [1 << 16, 1 << 10], stride: [0, 0] }));
    const file = join(dir, 'zero-stride.pt');
    writeFileSync(file, torchZip(paperPickle(cfg, views), [['0', Buffer.alloc(4)]]));
    expect(readFileSync(file).length).toBeLessThan(16 * 1024); // a few KB of pickle asking for 16 GB
    const before = rssMb();
    await formatError(() => readTorchCheckpoint(file), file, /would materialise 268435456 bytes from a storage of 4.*zero strides/);
    expect(rssMb() - before).toBeLessThan(100);
  });

  it('the same storage viewed transposed many times is bounded in total, not per view', async () => {
    // 4 MB of storage, viewed transposed 40 times: each view alone is fine, together 160 MB > 64 MB + 4 x file.
    const views = Array.from({ length: 40 }, (_, i) => ({ key: `t${i}`, storage: '0', numel: 1 << 20, offset: 0, size: [1024, 1024], stride: [1, 1024] }));
    const file = join(dir, 'repeated.pt');
    writeFileSync(file, torchZip(paperPickle(cfg, views), [['0', Buffer.alloc(4 << 20)]]));
    await formatError(() => readTorchCheckpoint(file), file, /may copy at most \d+ bytes in all/);
  });

  it('a view reaching past its storage names the offset, size and stride', async () => {
    const file = join(dir, 'past.pt');
    writeFileSync(file, torchZip(paperPickle(cfg, [{ key: 'W', storage: '0', numel: 4, offset: 1, size: [2, 2], stride: [2, 1] }]), [['0', Buffer.alloc(16)]]));
    await formatError(() => readTorchCheckpoint(file), file, /offset 1, size \[2,2\], stride \[2,1\]\) reaches element 4 of its storage of 4 elements/);
  });

  it('a storage whose zip entry is smaller than its declared numel fails before reading', async () => {
    const file = join(dir, 'short-storage.pt');
    writeFileSync(file, torchZip(paperPickle(cfg, [{ key: 'W', storage: '0', numel: 1 << 30, offset: 0, size: [1 << 30], stride: [1] }]), [['0', Buffer.alloc(16)]]));
    await formatError(() => readTorchCheckpoint(file), file, /storage 'archive\/data\/0' has 16 bytes, not 1073741824 × 4/);
  });

  /** A zip whose storage entry is DEFLATE-compressed zeros, streamed so the test never holds them. */
  async function deflateBomb(file: string, bytes: number, declared = bytes): Promise<void> {
    const chunks: Buffer[] = [];
    const deflate = createDeflateRaw({ level: 9 });
    deflate.on('data', (c: Buffer) => chunks.push(c));
    const done = new Promise((resolve) => deflate.on('end', resolve));
    const zeros = Buffer.alloc(1 << 20);
    let crc = 0;
    for (let left = bytes; left > 0; left -= zeros.length) {
      const piece = zeros.subarray(0, Math.min(left, zeros.length));
      crc = crc32(piece, crc);
      if (!deflate.write(piece)) await new Promise((r) => deflate.once('drain', r));
    }
    deflate.end();
    await done;
    const compressed = Buffer.concat(chunks);
    const pkl = paperPickle(cfg, [{ key: 'W', storage: '0', numel: declared / 4, offset: 0, size: [declared / 4], stride: [1] }]);
    // writeZip stores; patch the storage entry into a DEFLATE one by hand.
    const stored = writeZip([['archive/data.pkl', pkl], ['archive/data/0', compressed]]);
    const cdStart = stored.readUInt32LE(stored.length - 22 + 16);
    let p = cdStart;
    for (let i = 0; i < 2; i++) {
      const nameLength = stored.readUInt16LE(p + 28);
      const name = stored.toString('utf8', p + 46, p + 46 + nameLength);
      if (name === 'archive/data/0') {
        stored.writeUInt16LE(8, p + 10);
        stored.writeUInt32LE(crc, p + 16);
        stored.writeUInt32LE(declared, p + 24);
      }
      p += 46 + nameLength;
    }
    writeFileSync(file, stored);
  }

  it('a deflate bomb (272 MB of zeros in about 270 KB) is refused before inflating', async () => {
    const file = join(dir, 'bomb.pt');
    await deflateBomb(file, 272 << 20); // just over the 256 MiB floor of the inflate budget
    expect(readFileSync(file).length).toBeLessThan(1 << 20);
    const before = rssMb();
    await formatError(() => readTorchCheckpoint(file), file, /would inflate the archive beyond 64 times its \d+ bytes \(decompression bomb\?\)/);
    expect(rssMb() - before).toBeLessThan(100);
  }, 30_000);

  it('a declared size DEFLATE cannot produce from the compressed bytes is refused', async () => {
    const file = join(dir, 'liar.pt');
    await deflateBomb(file, 1 << 20, 1 << 30);
    await formatError(() => readTorchCheckpoint(file), file, /declares 1073741824 bytes from \d+ compressed, beyond what DEFLATE can produce/);
  });

  it('an honest small DEFLATE storage still loads', async () => {
    const file = join(dir, 'small-deflate.pt');
    await deflateBomb(file, 4096);
    const root = readTorchCheckpoint(file) as { state_dict: { W: { shape: number[]; bytes: Uint8Array } } };
    expect(root.state_dict.W.shape).toEqual([1024]);
    expect(root.state_dict.W.bytes.every((b) => b === 0)).toBe(true);
  });
});

describe('tokenizer.json ids are validated against the vocabulary first', () => {
  const tokenizer = trainByteLevelBpe(['the war lasted from the year 1732 to the year 1780'], { vocabSize: 280, specialTokens: ['<|endoftext|>'] }) as {
    model: { vocab: Record<string, number> };
    added_tokens: { id: number; content: string }[];
  };

  it('a vocab id of 2^31 fails at once, naming the token and the id', async () => {
    const dir = tempDir('fuzz-tok-');
    const bad = structuredClone(tokenizer);
    bad.model.vocab['the'] = 2 ** 31;
    const file = join(dir, 'tokenizer.json');
    writeFileSync(file, JSON.stringify(bad));
    const t0 = Date.now();
    await formatError(() => Tokenizer.fromFile(file), file, /model\.vocab': token "the" has id 2147483648, outside the vocabulary's \d+ ids/);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('an added token id beyond the vocabulary, or of the wrong type, names the added token', async () => {
    const dir = tempDir('fuzz-tok-');
    const file = join(dir, 'tokenizer.json');
    for (const id of [2 ** 31, -1, 1.5, '3']) {
      const bad = structuredClone(tokenizer);
      (bad.added_tokens[0] as { id: unknown }).id = id;
      writeFileSync(file, JSON.stringify(bad));
      await formatError(() => Tokenizer.fromFile(file), file, /added_tokens\[0\]': token "<\|endoftext\|>" has id/);
    }
  });

  it('the intact tokenizer still loads (control)', () => {
    const dir = tempDir('fuzz-tok-');
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
    const tok = Tokenizer.fromFile(join(dir, 'tokenizer.json'));
    expect(tok.decode(tok.encode('the year 1732'))).toBe('the year 1732');
  });
});

describe('deeply nested JSON is a FormatError naming the file and field, in every JSON the library reads', () => {
  const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);

  it('config.json, cfg.json (native and SAELens), meta.json, tokenizer.json, state.json and safetensors headers', async () => {
    const dir = tempDir('fuzz-deep-');
    const cases: [string, string, () => unknown][] = [
      ['model/config.json', `{"model_type":"gpt2","n_embd":${deep(100000)}}`, () => readModelConfig(join(dir, 'model'))],
      ['native/cfg.json', `{"format":"transcoders","version":1,"training":${deep(100000)}}`, () => loadNativeTranscoder(join(dir, 'native'))],
      ['saelens/cfg.json', `{"architecture":${deep(100000)}}`, () => loadSaeLensTranscoder(join(dir, 'saelens'))],
      ['layer_0/meta.json', `{"format":"${CACHE_FORMAT}","shards":${deep(100000)}}`, () => readCacheMeta(join(dir, 'layer_0'))],
      ['tok/tokenizer.json', `{"model":{"type":"BPE","vocab":{},"merges":[]},"normalizer":${deep(100000)}}`, () => Tokenizer.fromFile(join(dir, 'tok', 'tokenizer.json'))],
      ['any.json', deep(1_000_000), () => readJsonFile(join(dir, 'any.json'))],
    ];
    for (const [rel, text] of cases) {
      mkdirSync(join(dir, rel, '..'), { recursive: true });
      writeFileSync(join(dir, rel), text);
    }
    writeFileSync(join(dir, 'saelens', 'sae_weights.safetensors'), Buffer.alloc(0));
    for (const [rel, , fn] of cases) {
      const e = await formatError(fn, join(dir, rel), /nests deeper than 64 levels at field '/);
      expect(e.message).not.toMatch(/Maximum call stack/);
    }
    // The field path is named: config.json's n_embd.
    await formatError(() => readModelConfig(join(dir, 'model')), join(dir, 'model', 'config.json'), /at field 'n_embd(\[0\])+…?'/);

    const st = join(dir, 'deep.safetensors');
    const header = Buffer.from(`{"__metadata__":{"a":${deep(100000)}}}`);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(st, Buffer.concat([len, header]));
    await formatError(() => readSafetensorsHeader(st), st, /nests deeper than 64 levels at field '__metadata__\.a/);

    // state.json of a training checkpoint: its reason names the file and the nesting.
    const ckpt = join(dir, 'step_000000001');
    mkdirSync(ckpt);
    writeFileSync(join(ckpt, 'manifest.json'), JSON.stringify({ format: 'transcoders-checkpoint', version: 1, step: 1, files: [] }));
    writeFileSync(join(ckpt, 'state.json'), `{"step":1,"layers":[0],"changes":${deep(100000)}}`);
    const checked = checkCheckpoint(ckpt);
    if ('state' in checked) throw new Error('a state.json nested 100000 deep was accepted');
    expect(checked.reason).toMatch(/state\.json.*nests deeper than 64 levels|not a checkpoint manifest/);
  });

  it('long values are quoted cut short', async () => {
    const dir = tempDir('fuzz-long-');
    mkdirSync(join(dir, 'model'));
    const file = join(dir, 'model', 'config.json');
    writeFileSync(file, JSON.stringify({ model_type: 'gpt2', n_embd: 'x'.repeat(1_000_000) }));
    const e = await formatError(() => readModelConfig(join(dir, 'model')), file, /field 'n_embd' must be a positive integer, got "x+…/);
    expect(e.message.length).toBeLessThan(300);
  });
});

describe('activation cache meta.json is validated, and against its shards', () => {
  function makeCache(mutate: (meta: Record<string, unknown>) => void = () => {}, shardRows = [8, 4]): string {
    const dir = join(tempDir('fuzz-cache-'), 'layer_2');
    mkdirSync(dir, { recursive: true });
    const shards = shardRows.map((rows, s) => {
      const file = `shard_${String(s).padStart(5, '0')}.safetensors`;
      const f = (n: number) => Buffer.from(new Float32Array(n).fill(s).buffer);
      writeSafetensors(join(dir, file), { input: { dtype: 'F32', shape: [rows, 8], bytes: f(rows * 8) }, target: { dtype: 'F32', shape: [rows, 6], bytes: f(rows * 6) } });
      return { file, rows };
    });
    const meta: Record<string, unknown> = {
      format: CACHE_FORMAT, version: 1, model: '/m', processing: 'none', layer: 2, hookIn: 'blocks.2.ln2.hook_normalized', hookOut: 'blocks.2.hook_mlp_out',
      dtype: 'float32', dIn: 8, dOut: 6, count: 12, contextSize: 4, tokenFile: '/t.safetensors', shards,
    };
    mutate(meta);
    writeFileSync(join(dir, 'meta.json'), JSON.stringify(meta));
    return dir;
  }

  it('reads an intact cache (control)', () => {
    const shards = readCacheShards(makeCache());
    expect(shards.map((s) => [s.rows, s.dIn, s.dOut])).toEqual([[8, 8, 6], [4, 8, 6]]);
  });

  it('wrong types and ranges fail naming the field (no Invalid typed array length)', async () => {
    const bad: [string, unknown, RegExp][] = [
      ['dIn', -512, /field 'dIn' must be an integer in \[1, 1048576\], got -512/],
      ['dOut', '6', /field 'dOut' must be an integer/],
      ['count', 1e300, /field 'count' must be an integer/],
      ['contextSize', 0, /field 'contextSize' must be an integer/],
      ['dtype', 'float64', /field 'dtype' must be "float32" or "bfloat16"/],
      ['layer', 'constructor', /field 'layer' must be an integer/],
      ['shards', { length: 2 }, /field 'shards' must be a list/],
      ['version', 2, /field 'version' is 2/],
    ];
    for (const [key, value, message] of bad) {
      const dir = makeCache((m) => (m[key] = value));
      await formatError(() => readCacheShards(dir), join(dir, 'meta.json'), message);
    }
    const traversal = makeCache((m) => ((m.shards as { file: string }[])[0]!.file = '../../etc/passwd.safetensors'));
    await formatError(() => readCacheShards(traversal), join(traversal, 'meta.json'), /shards\[0\]\.file' must be a file name/);
  });

  it('a wrong dIn, count, layer or dtype is caught against the shards instead of being mis-read', async () => {
    let dir = makeCache((m) => (m.dIn = 4));
    await formatError(() => readCacheShards(dir), join(dir, 'shard_00000.safetensors'), /'input' has shape \[8,8\], but meta\.json says \[8, 4\]/);
    dir = makeCache((m) => (m.count = 16));
    await formatError(() => readCacheShards(dir), join(dir, 'meta.json'), /field 'count' is 16 but the shards hold 12 rows/);
    dir = makeCache((m) => ((m.shards as { rows: number }[])[1]!.rows = 8), [8, 4]);
    await formatError(() => readCacheShards(dir), join(dir, 'meta.json'), /field 'count' is 12 but the shards hold 16 rows/);
    dir = makeCache((m) => (m.layer = 3));
    await formatError(() => readCacheShards(dir), join(dir, 'meta.json'), /"blocks\.2\.ln2\.hook_normalized"\/"blocks\.2\.hook_mlp_out", which are not hooks of layer 3/);
    dir = makeCache((m) => (m.dtype = 'bfloat16'));
    await formatError(() => readCacheShards(dir), join(dir, 'shard_00000.safetensors'), /'input' has dtype F32, but meta\.json says bfloat16 \(BF16\)/);
  });
});

describe('config.json keys never resolve to Object.prototype members', () => {
  it('activation_function "constructor" / hidden_act "toString" are unsupported activations, not TypeErrors', async () => {
    const dir = tempDir('fuzz-proto-');
    const file = join(dir, 'config.json');
    const gpt2 = { model_type: 'gpt2', n_layer: 1, n_embd: 16, n_head: 2, n_positions: 16, vocab_size: 300 };
    const neox = { model_type: 'gpt_neox', num_hidden_layers: 1, hidden_size: 16, num_attention_heads: 2, max_position_embeddings: 16, vocab_size: 300 };
    for (const [cfg, key] of [[gpt2, 'activation_function'], [neox, 'hidden_act']] as const) {
      for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
        writeFileSync(file, JSON.stringify({ ...cfg, [key]: name }));
        await formatError(() => readModelConfig(dir), file, new RegExp(`field '${key}': unsupported activation "${name}" \\(supported: gelu_new`));
      }
    }
    // A "__proto__" key in the file is data, not a prototype: the fields it holds are not seen.
    writeFileSync(file, `{"__proto__":{"model_type":"gpt2","n_layer":1},"n_embd":16}`);
    await formatError(() => readModelConfig(dir), file, /unknown architecture: model_type undefined/);
  });
});

describe('integer conversion of JS numbers refuses what does not fit', () => {
  it('out-of-range and non-finite values name the value and its index', () => {
    const cases: [Float32Array | Float64Array | Int32Array | Int16Array, 'int8' | 'uint8' | 'int16' | 'int32', RegExp][] = [
      [new Float32Array([1, 300]), 'int8', /value 300 at index 1 does not fit int8 \(range \[-128, 127\]\)/],
      [new Float32Array([0, 1, NaN]), 'int8', /value NaN at index 2 does not fit int8.*non-finite/],
      [new Float64Array([Infinity]), 'int32', /value Infinity at index 0 does not fit int32/],
      [new Int16Array([5, -1]), 'uint8', /value -1 at index 1 does not fit uint8/],
      [new Int32Array([40000]), 'int16', /value 40000 at index 0 does not fit int16/],
      [new Float64Array([2 ** 31]), 'int32', /value 2147483648 at index 0 does not fit int32/],
    ];
    for (const [data, dtype, message] of cases) {
      expect(() => Tensor.from(data, [data.length], { dtype })).toThrow(InvalidArgumentError);
      expect(() => Tensor.from(data, [data.length], { dtype })).toThrow(message);
    }
  });

  it('values that fit convert exactly', () => {
    expect(values(Tensor.from(new Float32Array([-128, 0, 127]), [3], { dtype: 'int8' }))).toEqual([-128, 0, 127]);
    expect(values(Tensor.from(new Float64Array([0, 255]), [2], { dtype: 'uint8' }))).toEqual([0, 255]);
    expect(values(Tensor.from(new Int32Array([-32768, 32767]), [2], { dtype: 'int16' }))).toEqual([-32768, 32767]);
  });
});

describe('seeded fuzzing of every parser (short run; `npm run fuzz` is the long one)', () => {
  /** Inputs per parser in this run: a few hundred each keeps the whole suite well under a minute. */
  const INPUTS = Number(process.env.TRANSCODERS_FUZZ_INPUTS ?? 200);
  let targets: FuzzTarget[];
  let work: string;
  beforeAll(async () => {
    work = tempDir('fuzz-short-');
    targets = await makeTargets(work);
  }, 60_000);

  it('covers every parser', () => {
    expect(targets.map((t) => t.name).sort()).toEqual([...PARSERS].sort());
  });

  for (const parser of PARSERS) {
    it(`${parser}: ${INPUTS} inputs, only library errors naming the file, none slower than 10 s`, async () => {
      const target = targets.find((t) => t.name === parser)!;
      const result = await runCampaign(target, work, 20261201, 0, INPUTS);
      expect(result.inputs).toBe(INPUTS);
      expect(result.findings, JSON.stringify(result.findings.slice(0, 3), null, 1)).toEqual([]);
      expect(result.maxMs).toBeLessThan(10_000);
      // The mutators must actually reach the parsers' checks: both acceptances and rejections occur.
      expect(result.outcomes.ok ?? 0).toBeGreaterThan(0);
      expect(result.outcomes.FormatError ?? 0).toBeGreaterThan(INPUTS / 4);
    }, 60_000);
  }
});

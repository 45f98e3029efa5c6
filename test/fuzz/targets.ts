/**
 * The parsers under fuzz: for each, well-formed seed inputs (files written by the library's own
 * writers, or by the hand-written writers of ./writers.ts), a format-aware mutation of an input, and
 * the entry point that reads it. An input is a set of files (a `Case`) written into a fresh folder.
 *
 * The oracle (classify) accepts a read that succeeds, or one that fails with a library error
 * (TranscodersError subclass) whose message names a file of the input and stays short; anything
 * else (a TypeError, a RangeError, a FormatError without its `file`, a message quoting megabytes)
 * is a finding.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { TranscodersError, FormatError } from '../../lib/errors.js';
import { readTokenFileHeader, readTokenRows, writeTokenFile } from '../../lib/data/token-file.js';
import { loadSafetensorsTensors, readSafetensors, readSafetensorsHeader, writeSafetensors } from '../../lib/io/safetensors.js';
import { loadModel } from '../../lib/models/model.js';
import { createRandomModel } from '../../lib/models/random.js';
import { Tokenizer } from '../../lib/tokenizer/tokenizer.js';
import { CACHE_FORMAT, readCacheShards } from '../../lib/transcoders/activation-cache.js';
import { exportCircuitTracerSet, loadCircuitTracerTranscoder } from '../../lib/transcoders/formats/circuit-tracer.js';
import { loadNativeTranscoder, saveTranscoder } from '../../lib/transcoders/formats/native.js';
import { loadGemmaScope2Transcoder, loadGemmaScopeTranscoder } from '../../lib/transcoders/formats/gemma-scope.js';
import { loadPaperTranscoder } from '../../lib/transcoders/formats/paper.js';
import { exportSaeLens, loadSaeLensTranscoder } from '../../lib/transcoders/formats/saelens.js';
import { exportSparsify, loadSparsifyTranscoder } from '../../lib/transcoders/formats/sparsify.js';
import { Transcoder } from '../../lib/transcoders/transcoder.js';
import type { Tensor } from '../../lib/tensor.js';
import { FuzzRng, mutateBytes, mutateJson, mutateYaml } from './mutators.js';
import { joinSafetensors, npyBytes, paperPickle, readZipEntries, splitSafetensors, torchZip, writeZip } from './writers.js';

/** Files of one input, by path relative to its folder. */
export type Case = Map<string, Buffer>;

export interface FuzzTarget {
  name: string;
  /** Path (relative to the input folder) the parser is given; '' for the folder itself. */
  entry: string;
  seeds: Case[];
  run(path: string): Promise<void>;
}

export const PARSERS = ['safetensors', 'token-file', 'torch-pt', 'saelens', 'sparsify', 'native', 'circuit-tracer', 'model', 'activation-cache', 'tokenizer', 'gemma-scope', 'gemma-scope-2'] as const;
export type ParserName = (typeof PARSERS)[number];

/** Messages longer than this quote far too much of the input (values must be cut short). */
export const MAX_MESSAGE = 2000;

export type Outcome = 'ok' | string;

/** 'ok', the library error's class name, or 'BAD:<why>' for a finding. */
export function classify(err: unknown, root: string): Outcome {
  if (err === undefined) return 'ok';
  if (!(err instanceof TranscodersError)) {
    const name = err instanceof Error ? err.constructor.name : typeof err;
    return `BAD:${name}`;
  }
  if (err instanceof FormatError && !err.file) return `BAD:${err.name} without file`;
  if (!err.message.includes(root)) return `BAD:${err.name} not naming the file`;
  if (err.message.length > MAX_MESSAGE) return `BAD:${err.name} message of ${err.message.length} chars`;
  return err.name;
}

/** Writes `c` into `dir` (emptied first). */
export function writeCase(dir: string, c: Case): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const [rel, data] of c) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), data);
  }
}

function readCase(dir: string): Case {
  const out: Case = new Map();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

/** Mutates one file of a JSON/YAML/safetensors/zip-aware kind (sometimes a second one too). */
export function mutateCase(seed: Case, rng: FuzzRng, others: Case[]): Case {
  const out: Case = new Map(seed);
  const files = [...seed.keys()];
  const rounds = rng.chance(0.15) ? 2 : 1;
  for (let r = 0; r < rounds; r++) {
    const name = rng.pick(files);
    const data = out.get(name)!;
    const donor = rng.pick(others).get(name) ?? data;
    out.set(name, mutateFile(name, data, rng, donor));
  }
  return out;
}

function mutateFile(name: string, data: Buffer, rng: FuzzRng, donor: Buffer): Buffer {
  if (name.endsWith('.json')) return rng.chance(0.75) ? Buffer.from(mutateJson(data.toString('utf8'), rng)) : mutateBytes(data, rng, donor);
  if (name.endsWith('.yaml')) return rng.chance(0.75) ? Buffer.from(mutateYaml(data.toString('utf8'), rng)) : mutateBytes(data, rng, donor);
  if (name.endsWith('.safetensors') && rng.chance(0.6)) {
    // Structure-aware: mutate the JSON header and re-frame it, so the mutation reaches the header checks.
    const parts = splitSafetensors(data);
    if (parts) return joinSafetensors(mutateJson(parts.header, rng), rng.chance(0.2) ? mutateBytes(parts.data, rng) : parts.data);
  }
  if (name.endsWith('.npz') && rng.chance(0.7)) {
    // Structure-aware: mutate one .npy member (its header most often) inside a valid zip (right CRCs).
    const entries = readZipEntries(data);
    if (entries && entries.length > 0) {
      const i = rng.int(entries.length);
      const [n, b] = entries[i]!;
      entries[i] = [n, rng.chance(0.7) && b.length > 128 ? Buffer.concat([mutateBytes(b.subarray(0, 128), rng), b.subarray(128)]) : mutateBytes(b, rng)];
      return writeZip(entries);
    }
  }
  if (name.endsWith('.pt') && rng.chance(0.7)) {
    // Structure-aware: mutate the pickle or a storage inside a valid zip (right CRCs), so the
    // mutation reaches the unpickler and the view checks rather than the zip reader.
    const entries = readZipEntries(data);
    if (entries) {
      const i = rng.chance(0.8) ? entries.findIndex(([n]) => n.endsWith('data.pkl')) : rng.int(entries.length);
      // (An earlier round may have mangled the entry names: then there is no pickle to re-wrap.)
      if (i >= 0 && entries.some(([e]) => e.endsWith('data.pkl'))) {
        const [n, b] = entries[i]!;
        entries[i] = [n, mutateBytes(b, rng)];
        const pkl = entries.find(([e]) => e.endsWith('data.pkl'))![1];
        return torchZip(pkl, entries.filter(([e]) => e.includes('/data/')).map(([e, d]) => [e.slice(e.lastIndexOf('/') + 1), d]));
      }
    }
  }
  return mutateBytes(data, rng, donor);
}

// ---- Seeds ----

function f32(n: number, seed: number): Buffer {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(seed * 7.1 + i * 1.3) * 0.5;
  return Buffer.from(a.buffer);
}

async function tinyTranscoder(layer: number, arch: 'relu' | 'topk' | 'jumprelu', skip: boolean): Promise<Transcoder> {
  return Transcoder.create(
    { arch, dIn: 8, dOut: 8, dSae: 16, skip, ...(arch === 'topk' ? { k: 4 } : {}), hookIn: `blocks.${layer}.ln2.hook_normalized`, hookOut: `blocks.${layer}.hook_mlp_out`, layer },
    { seed: layer + 1 },
  );
}

async function folderSeeds(work: string, name: string, write: (dir: string, i: number) => Promise<void> | void, n: number): Promise<Case[]> {
  const out: Case[] = [];
  for (let i = 0; i < n; i++) {
    const dir = join(work, `${name}-${i}`);
    mkdirSync(dir, { recursive: true });
    await write(dir, i);
    out.push(readCase(dir));
  }
  return out;
}

function disposeAll(tensors: Record<string, Tensor>): void {
  for (const t of Object.values(tensors)) t.dispose();
}

/** Builds the targets (seeds written under `work`). */
export async function makeTargets(work: string, only?: readonly string[]): Promise<FuzzTarget[]> {
  const want = (n: ParserName) => !only || only.includes(n);
  const targets: FuzzTarget[] = [];
  const archs = [['relu', false], ['topk', true], ['jumprelu', false]] as const;

  if (want('safetensors')) {
    const seeds = await folderSeeds(work, 'st', (dir, i) => {
      writeSafetensors(join(dir, 'x.safetensors'), {
        a: { dtype: 'F32', shape: [2, 3], bytes: f32(6, i) },
        b: { dtype: 'I64', shape: [2], bytes: Buffer.from(new BigInt64Array([1n, -2n]).buffer) },
        c: { dtype: i ? 'BF16' : 'F16', shape: [4], bytes: Buffer.alloc(8, 0x3c) },
        d: { dtype: 'U8', shape: [0], bytes: Buffer.alloc(0) },
      }, i ? { note: 'seed', n: String(i) } : undefined);
    }, 2);
    targets.push({ name: 'safetensors', entry: 'x.safetensors', seeds, run: async (p) => disposeAll((await readSafetensors(p)).tensors) });
  }

  if (want('token-file')) {
    const seeds = await folderSeeds(work, 'tok', async (dir, i) => {
      const rows = Array.from({ length: 3 + i }, (_, r) => Int32Array.from({ length: 8 }, (_, j) => (r * 8 + j) % 300));
      await writeTokenFile(join(dir, 'tokens.safetensors'), rows, { contextSize: 8, tokenizer: 'gpt2', bos: i ? 'paper' : 'none', sources: ['a.txt'], documents: 2, ...(i ? { maxDocumentTokens: 9 } : {}) });
    }, 2);
    targets.push({
      name: 'token-file', entry: 'tokens.safetensors', seeds,
      run: async (p) => {
        const h = readTokenFileHeader(p);
        await readTokenRows(h, 0, Math.min(h.rows, 16));
      },
    });
  }

  if (want('torch-pt')) {
    // The paper's layout; W_dec is a transposed view of its storage, so strided gathers are exercised.
    const seeds: Case[] = [0, 1].map((i) => {
      const cfg = { model_name: 'gpt2-small', hook_point: 'blocks.0.ln2.hook_normalized', hook_point_layer: 0, is_transcoder: true, out_hook_point: 'blocks.0.hook_mlp_out', d_in: 8, d_sae: 16, l1_coefficient: 1.4e-4, lr: 4e-4 };
      const specs = [
        { key: 'W_enc', storage: '0', numel: 128, offset: 0, size: [8, 16], stride: [16, 1] },
        { key: 'b_enc', storage: '1', numel: 16, offset: 0, size: [16], stride: [1] },
        { key: 'W_dec', storage: '2', numel: 128, offset: 0, size: [16, 8], stride: i ? [1, 16] : [8, 1] },
        { key: 'b_dec', storage: '3', numel: 16, offset: 0, size: [8], stride: [1] },
        { key: 'b_dec_out', storage: '3', numel: 16, offset: 8, size: [8], stride: [1] },
      ];
      const storages: [string, Buffer][] = [['0', f32(128, i)], ['1', f32(16, i + 1)], ['2', f32(128, i + 2)], ['3', f32(16, i + 3)]];
      return new Map([['t.pt', torchZip(paperPickle(cfg, specs), storages)]]);
    });
    targets.push({ name: 'torch-pt', entry: 't.pt', seeds, run: async (p) => void (await loadPaperTranscoder(p)) });
  }

  if (want('saelens')) {
    const seeds = await folderSeeds(work, 'saelens', async (dir, i) => exportSaeLens(await tinyTranscoder(0, archs[i]![0] === 'topk' ? 'relu' : archs[i]![0], archs[i]![1]), dir), 3);
    targets.push({ name: 'saelens', entry: '', seeds, run: async (p) => void (await loadSaeLensTranscoder(p)) });
  }

  if (want('sparsify')) {
    const seeds = await folderSeeds(work, 'sparsify', async (dir, i) => exportSparsify(await tinyTranscoder(0, 'topk', i === 1), dir), 2);
    targets.push({ name: 'sparsify', entry: '', seeds, run: async (p) => void (await loadSparsifyTranscoder(p)) });
  }

  if (want('native')) {
    const seeds = await folderSeeds(work, 'native', async (dir, i) => saveTranscoder(await tinyTranscoder(i, archs[i]![0], archs[i]![1]), dir), 3);
    targets.push({ name: 'native', entry: '', seeds, run: async (p) => void (await loadNativeTranscoder(p)) });
  }

  if (want('circuit-tracer')) {
    const seeds = await folderSeeds(work, 'ct', async (dir, i) => exportCircuitTracerSet([await tinyTranscoder(0, i ? 'jumprelu' : 'relu', i === 1), await tinyTranscoder(1, i ? 'jumprelu' : 'relu', i === 1)], dir), 2);
    targets.push({ name: 'circuit-tracer', entry: '', seeds, run: async (p) => void (await loadCircuitTracerTranscoder(p, { layer: 1 })) });
  }

  if (want('gemma-scope')) {
    const [d, F] = [8, 16];
    const seeds = await folderSeeds(work, 'gs1', (dir, i) => {
      mkdirSync(join(dir, 'layer_0'));
      const arrays: [string, number[]][] = [['W_enc', [d, F]], ['W_dec', [F, d]], ['b_enc', [F]], ['b_dec', [d]], ['threshold', [F]]];
      writeFileSync(join(dir, 'layer_0', 'params.npz'), writeZip(arrays.map(([n, shape], k) => [`${n}.npy`, npyBytes('<f4', shape, f32(shape.reduce((a, b) => a * b, 1), i * 5 + k))])));
    }, 2);
    targets.push({ name: 'gemma-scope', entry: 'layer_0/params.npz', seeds, run: async (p) => void (await loadGemmaScopeTranscoder(p)) });
  }

  if (want('gemma-scope-2')) {
    const [d, F] = [8, 16];
    const seeds = await folderSeeds(work, 'gs2', (dir, i) => {
      const t = (shape: number[], k: number) => ({ dtype: 'F32' as const, shape, bytes: f32(shape.reduce((a, b) => a * b, 1), i * 7 + k) });
      writeSafetensors(join(dir, 'params.safetensors'), {
        w_enc: t([d, F], 0), w_dec: t([F, d], 1), b_enc: t([F], 2), b_dec: t([d], 3), threshold: t([F], 4),
        ...(i ? { affine_skip_connection: t([d, d], 5) } : {}),
      });
      writeFileSync(join(dir, 'config.json'), JSON.stringify({
        hf_hook_point_in: 'model.layers.2.pre_feedforward_layernorm.output', hf_hook_point_out: 'model.layers.2.post_feedforward_layernorm.output',
        width: F, model_name: 'google/gemma-3-1b-pt', architecture: 'jump_relu', l0: 3, affine_connection: i === 1, type: 'transcoder',
      }));
    }, 2);
    targets.push({ name: 'gemma-scope-2', entry: '', seeds, run: async (p) => void (await loadGemmaScope2Transcoder(p)) });
  }

  if (want('model') || want('tokenizer')) {
    const seeds = await folderSeeds(work, 'model', (dir, i) => {
      createRandomModel(dir, { arch: i ? 'gpt_neox' : 'gpt2', nLayers: 1, dModel: 16, nHeads: 2, vocabSize: 300, nCtx: 16, std: 0.2 });
    }, 2);
    if (want('model')) {
      targets.push({ name: 'model', entry: '', seeds, run: async (p) => (await loadModel(p)).dispose() });
    }
    if (want('tokenizer')) {
      const tokSeeds = seeds.map((c) => new Map([['tokenizer.json', c.get('tokenizer.json')!]]));
      targets.push({
        name: 'tokenizer', entry: 'tokenizer.json', seeds: tokSeeds,
        run: async (p) => {
          const tok = Tokenizer.fromFile(p);
          tok.decode(tok.encode('The war lasted from 1732 to 17'));
        },
      });
    }
  }

  if (want('activation-cache')) {
    const seeds = await folderSeeds(work, 'cache', (dir, i) => {
      const layerDir = join(dir, `layer_${i}`);
      mkdirSync(layerDir, { recursive: true });
      const rows = [8, 4];
      const shards = rows.map((r, s) => {
        const file = `shard_${String(s).padStart(5, '0')}.safetensors`;
        const code = i ? 'BF16' : 'F32';
        const bytes = (n: number) => (i ? Buffer.alloc(n * 2, 0x3f) : f32(n, s));
        writeSafetensors(join(layerDir, file), { input: { dtype: code, shape: [r, 8], bytes: bytes(r * 8) }, target: { dtype: code, shape: [r, 8], bytes: bytes(r * 8) } });
        return { file, rows: r };
      });
      const meta = {
        format: CACHE_FORMAT, version: 1, model: '/models/tiny', processing: 'none', layer: i, hookIn: `blocks.${i}.ln2.hook_normalized`, hookOut: `blocks.${i}.hook_mlp_out`,
        dtype: i ? 'bfloat16' : 'float32', dIn: 8, dOut: 8, count: 12, contextSize: 4, tokenFile: '/data/tokens.safetensors', shards,
      };
      writeFileSync(join(layerDir, 'meta.json'), JSON.stringify(meta, null, 2));
    }, 2);
    targets.push({
      name: 'activation-cache', entry: '', seeds,
      run: async (p) => {
        const layer = readdirSync(p).find((n) => n.startsWith('layer_')) ?? 'layer_0';
        for (const shard of readCacheShards(join(p, layer))) disposeAll(await loadSafetensorsTensors(readSafetensorsHeader(shard.path), ['input', 'target']));
      },
    });
  }
  return targets;
}

/** The input of (target, seed, index): a seed as is for the first indices, then mutants. */
export function inputOf(target: FuzzTarget, index: number, rngOf: (i: number) => FuzzRng): Case {
  if (index < target.seeds.length) return target.seeds[index]!;
  const rng = rngOf(index);
  return mutateCase(rng.pick(target.seeds), rng, target.seeds);
}

/** Runs one input: writes it to `dir`, reads it, and says how that went. */
export async function runCase(target: FuzzTarget, c: Case, dir: string): Promise<{ outcome: Outcome; ms: number; message?: string }> {
  writeCase(dir, c);
  const t0 = performance.now();
  let error: unknown;
  try {
    await target.run(join(dir, target.entry));
  } catch (err) {
    error = err;
  }
  const ms = performance.now() - t0;
  const outcome = classify(error, dir);
  return { outcome, ms, ...(error !== undefined ? { message: String((error as Error)?.message ?? error).slice(0, 300) } : {}) };
}

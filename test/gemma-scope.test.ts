/**
 * Gemma Scope transcoders (lib/transcoders/formats/gemma-scope.ts, lib/io/npy.ts) and circuit-tracer sets
 * whose `transcoders:` entries are hf:// URIs (resolved offline, beside the config or in the hub cache).
 * Fixtures are written with numpy (np.savez, np.savez_compressed, np.lib.format with version 2/3 headers,
 * Fortran order, big-endian) and the independent safetensors writer; reference outputs are computed in
 * numpy from the raw arrays with Google's JumpReLU ((pre > threshold) · relu(pre)), 1e-5 relative.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FormatError } from '../lib/errors.js';
import { readSafetensors } from '../lib/io/safetensors.js';
import type { Tensor } from '../lib/tensor.js';
import {
  detectTranscoderFormat,
  exportCircuitTracer,
  exportSaeLens,
  hookOfHfHookPoint,
  layerFromGemmaScopePath,
  loadGemmaScope2Transcoder,
  loadGemmaScopeTranscoder,
  loadTranscoder,
  stringifyYaml,
} from '../lib/transcoders/formats/index.js';
import type { Transcoder } from '../lib/transcoders/transcoder.js';
import { loadTranscoderSet } from '../lib/transcoders/transcoder-set.js';
import { DEVICE, tempDir } from './helpers/fixtures.js';
import { fakeCommit, writeHubSnapshot } from './helpers/hub-cache.js';
import { maxDiff, PYTHON } from './helpers/reference.js';

const SCRIPT = new URL('./reference/gemma_scope_reference.py', import.meta.url).pathname;

function python(args: string[], env: Record<string, string> = {}): void {
  const r = spawnSync(PYTHON, [SCRIPT, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  if (r.status !== 0) throw new Error(`gemma_scope_reference.py failed (${r.status}): ${r.stderr}`);
}

interface Fixture {
  dir: string;
  ref: Record<string, Tensor>;
}

/** Writes a fixture with numpy into `<root>/<sub>` and reads its reference outputs. */
async function fixture(root: string, sub: string, kind: 'gs1' | 'gs2', seed: number, flags: string[] = [], layer = 0): Promise<Fixture> {
  const dir = join(root, sub);
  python(['fixture', dir, kind, String(seed), '24', '40', ...flags], { GS_LAYER: String(layer) });
  const parent = join(dir, '..');
  return { dir, ref: (await readSafetensors(join(parent, `reference-${seed}.safetensors`))).tensors };
}

function expectClose(actual: Tensor, expected: Tensor, what: string): void {
  expect(actual.shape, what).toEqual(expected.shape);
  const { diff, scale } = maxDiff(actual, expected);
  expect(diff, `${what}: max diff ${diff} at scale ${scale}`).toBeLessThanOrEqual(1e-5 * Math.max(1, scale));
}

/** `t` on the test device. */
async function onDevice(t: Tensor): Promise<Tensor> {
  return DEVICE === 'cpu' ? t : t.to({ device: DEVICE });
}

/** encode, decode and forward of `tc` against the numpy reference. */
async function expectMatches(tc: Transcoder, ref: Record<string, Tensor>, label: string): Promise<void> {
  const x = await onDevice(ref.x!);
  const f = await tc.encode(x);
  expectClose(f, ref.f!, `${label} encode`);
  expect(f.toFloat32Array().some((v) => v > 0), `${label}: some features fire`).toBe(true);
  expect(f.toFloat32Array().some((v) => v === 0), `${label}: some do not`).toBe(true);
  expectClose(await tc.decode(await onDevice(ref.f!), x), ref.y!, `${label} decode`);
  expectClose(await tc.forward(x), ref.y!, `${label} forward`);
}

let work: string;
beforeAll(() => {
  work = tempDir('gemma-scope-');
});

describe('Gemma Scope 1 (params.npz)', () => {
  it('loads np.savez and np.savez_compressed files and computes what the numpy reference does', async () => {
    for (const [sub, flags] of [
      ['gs1-plain/layer_3/width_16k/average_l0_5', []],
      ['gs1-compressed/layer_3/width_16k/average_l0_5', ['--compressed']],
    ] as const) {
      const fx = await fixture(work, sub, 'gs1', 11, [...flags]);
      expect(detectTranscoderFormat(join(fx.dir, 'params.npz'))).toBe('gemma-scope');
      expect(detectTranscoderFormat(fx.dir)).toBe('gemma-scope');
      const tc = await loadTranscoder(fx.dir, { device: DEVICE });
      expect(tc.config).toMatchObject({ arch: 'jumprelu', dIn: 24, dOut: 24, dSae: 40, skip: false, layer: 3, hookIn: 'blocks.3.mlp.hook_in', hookOut: 'blocks.3.mlp.hook_out', processing: 'none' });
      await expectMatches(tc, fx.ref, sub);
    }
  });

  it("clamps negative thresholds at 0, as Google's (pre > threshold) · relu(pre) does", async () => {
    const fx = await fixture(work, 'gs1-neg/layer_2/params-folder', 'gs1', 12, ['--negative-threshold']);
    const tc = await loadGemmaScopeTranscoder(join(fx.dir, 'params.npz'), { device: DEVICE });
    expect(Math.min(...tc.parameters().threshold.toFloat32Array())).toBe(0);
    await expectMatches(tc, fx.ref, 'negative thresholds');
  });

  it('takes the layer from the path (layer_L/ or layer_L_...), else from the caller, else refuses', async () => {
    expect(layerFromGemmaScopePath('/x/layer_12/width_16k/average_l0_82/params.npz')).toBe(12);
    expect(layerFromGemmaScopePath('transcoder_all/layer_5_width_16k_l0_big_affine/params.safetensors')).toBe(5);
    expect(layerFromGemmaScopePath('/x/layers/params.npz')).toBeUndefined();
    const fx = await fixture(work, 'gs1-nolayer/somewhere', 'gs1', 13);
    await expect(loadGemmaScopeTranscoder(fx.dir)).rejects.toThrow(/cannot tell which layer .* pass \{ layer \}/);
    const tc = await loadGemmaScopeTranscoder(fx.dir, { layer: 7 });
    expect(tc.config.hookIn).toBe('blocks.7.mlp.hook_in');
  });

  it('reads version 2.0 and 3.0 headers, Fortran order, big-endian, float16 and float64 members, deflated', async () => {
    const dir = join(work, 'corrupt');
    python(['corrupt', dir]);
    const ref = (await readSafetensors(join(dir, 'unusual-reference.safetensors'))).tensors;
    const tc = await loadTranscoder(join(dir, 'unusual', 'layer_3', 'params.npz'));
    expect(tc.config.layer).toBe(3);
    await expectMatches(tc, ref, 'unusual npz');
  });

  it('refuses malformed files with FormatErrors naming the file and the array', async () => {
    const dir = join(work, 'corrupt');
    const cases: [string, RegExp][] = [
      ['bad-magic', /array 'W_enc': not a \.npy array \(bad magic/],
      ['truncated-data', /array 'W_dec': shape \(12, 8\) of <f4 needs 384 bytes of data, the file has 379 \(truncated\?\)/],
      ['wrong-shape', /array 'W_dec' has shape \[12,7\], expected \[12,8\]/],
      ['nan', /array 'threshold' holds NaN or infinite values/],
      ['bf16', /array 'b_enc': dtype '\|V2' is raw 2-byte data, as bfloat16 is saved/],
      ['version-4', /array 'b_dec': unsupported \.npy version 4\.0/],
      ['missing', /missing array 'threshold'/],
      ['int-dtype', /array 'b_enc': dtype '<i4' is not supported/],
      ['extra', /unexpected array 'W_skip'/],
      ['not-zip', /not a zip archive/],
      ['cut', /params\.npz: /],
    ];
    for (const [name, message] of cases) {
      const file = join(dir, name, 'layer_3', 'params.npz');
      const err = await loadTranscoder(file).then(
        () => null,
        (e: unknown) => e as Error,
      );
      expect(err, name).toBeInstanceOf(FormatError);
      expect(err!.message, name).toMatch(message);
      expect(err!.message.startsWith(file), name).toBe(true);
      expect((err as FormatError).file, name).toBe(file);
    }
  });

  it('round-trips through the circuit-tracer and SAELens exports', async () => {
    const fx = await fixture(work, 'gs1-rt/layer_1/w', 'gs1', 14);
    const tc = await loadTranscoder(fx.dir);
    const ct = join(work, 'gs1-rt', 'layer_1.safetensors');
    exportCircuitTracer(tc, ct);
    await expectMatches(await loadTranscoder(ct), fx.ref, 'circuit-tracer export');
    const sl = join(work, 'gs1-rt', 'saelens');
    exportSaeLens(tc, sl);
    await expectMatches(await loadTranscoder(sl), fx.ref, 'SAELens export');
  });
});

describe('Gemma Scope 2 (params.safetensors + config.json)', () => {
  it('loads with and without the affine skip connection (applied as x · affine_skip_connection)', async () => {
    for (const [sub, flags] of [
      ['gs2/transcoder_all/layer_4_width_16k_l0_small_affine', ['--skip']],
      ['gs2/transcoder_all/layer_4_width_16k_l0_small', []],
    ] as const) {
      const fx = await fixture(work, sub, 'gs2', 21, [...flags], 4);
      expect(detectTranscoderFormat(fx.dir)).toBe('gemma-scope-2');
      expect(detectTranscoderFormat(join(fx.dir, 'params.safetensors'))).toBe('gemma-scope-2');
      const tc = await loadTranscoder(fx.dir, { device: DEVICE });
      expect(tc.config).toMatchObject({
        arch: 'jumprelu', dIn: 24, dOut: 24, dSae: 40, skip: flags.length > 0, layer: 4,
        hookIn: 'blocks.4.mlp.hook_in', hookOut: 'blocks.4.hook_mlp_out', modelName: 'google/gemma-3-1b-pt', processing: 'none',
      });
      await expectMatches(tc, fx.ref, sub);
      // Through the circuit-tracer export (W_skip transposed there, back here) the function is kept.
      const out = join(work, `ct-${flags.length}.safetensors`);
      exportCircuitTracer(tc, out);
      await expectMatches(await loadTranscoder(out), fx.ref, `${sub} via circuit-tracer`);
    }
  });

  it('maps config.json hook points, and refuses a config that disagrees with the tensors', async () => {
    expect(hookOfHfHookPoint('model.layers.9.pre_feedforward_layernorm.output')).toEqual({ hook: 'blocks.9.mlp.hook_in', layer: 9 });
    expect(hookOfHfHookPoint('model.layers.9.post_feedforward_layernorm.output')).toEqual({ hook: 'blocks.9.hook_mlp_out', layer: 9 });
    expect(hookOfHfHookPoint('model.layers.9.self_attn.o_proj.input')).toBeUndefined();
    const fx = await fixture(work, 'gs2-bad/layer_2_width_16k', 'gs2', 22, ['--skip'], 2);
    const cfgFile = join(fx.dir, 'config.json');
    const good = JSON.parse(readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    for (const [change, message] of [
      [{ width: 41 }, /'width' is 41 but .* has 40 features/],
      [{ affine_connection: false }, /'affine_connection' is false but .* has 'affine_skip_connection'/],
      [{ architecture: 'topk' }, /'architecture' "topk" is not supported/],
      [{ hf_hook_point_in: 'model.layers.2.self_attn.output' }, /'hf_hook_point_in' "model.layers.2.self_attn.output" is not a module point .* pass \{ hookIn, hookOut \}/],
      [{ hf_hook_point_out: 'model.layers.3.post_feedforward_layernorm.output' }, /in layer 2 but 'hf_hook_point_out' in layer 3/],
    ] as const) {
      writeFileSync(cfgFile, JSON.stringify({ ...good, ...change }));
      const err = await loadGemmaScope2Transcoder(fx.dir).then(() => null, (e: unknown) => e as Error);
      expect(err).toBeInstanceOf(FormatError);
      expect(err!.message).toMatch(message);
      expect(err!.message.startsWith(cfgFile)).toBe(true);
    }
    // The caller's hooks make an unknown module point acceptable.
    writeFileSync(cfgFile, JSON.stringify({ ...good, hf_hook_point_in: 'model.layers.2.self_attn.output', hf_hook_point_out: 'x' }));
    const tc = await loadGemmaScope2Transcoder(fx.dir, { hookIn: 'blocks.2.mlp.hook_in', hookOut: 'blocks.2.hook_mlp_out' });
    expect(tc.config.hookIn).toBe('blocks.2.mlp.hook_in');
  });

  it('refuses wrong shapes and NaN naming the file and the tensor', async () => {
    const root = join(work, 'gs2-tensors');
    mkdirSync(root, { recursive: true });
    const code = `
import sys, numpy as np, torch
sys.path.insert(0, ${JSON.stringify(new URL('./reference/', import.meta.url).pathname)})
from safetensors_io import save_file
d, F = 6, 10
t = {"w_enc": np.ones((d, F)), "w_dec": np.ones((F, d)), "b_enc": np.ones(F), "b_dec": np.ones(d), "threshold": np.ones(F)}
def write(name, **ch):
    u = dict(t); u.update(ch)
    save_file({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in u.items()}, f"{sys.argv[1]}/{name}.safetensors")
write("w_dec_shape", w_dec=np.ones((F, d + 1)))
write("w_enc_shape", w_enc=np.ones((F, d)))
nan = np.ones(F); nan[2] = np.nan
write("nan", threshold=nan)
write("skip_shape", affine_skip_connection=np.ones((d, 3)))
`;
    const r = spawnSync(PYTHON, ['-c', code, root], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    for (const [name, message] of [
      ['w_dec_shape', /tensor 'w_dec' has shape \[10,7\], expected \[10,6\]/],
      ['w_enc_shape', /tensor 'w_enc' has shape \[10,6\], expected \[d_in, 10\]/],
      ['nan', /tensor 'threshold' holds NaN or infinite values/],
      ['skip_shape', /tensor 'affine_skip_connection' has shape \[6,3\], expected \[6,6\]/],
    ] as const) {
      const file = join(root, `${name}.safetensors`);
      const err = await loadGemmaScope2Transcoder(file, { layer: 0 }).then(() => null, (e: unknown) => e as Error);
      expect(err, name).toBeInstanceOf(FormatError);
      expect(err!.message, name).toMatch(message);
      expect(err!.message.startsWith(file), name).toBe(true);
    }
  });
});

describe('circuit-tracer sets with hf:// entries, offline', () => {
  let saved: NodeJS.ProcessEnv;
  beforeEach(() => {
    saved = { ...process.env };
  });
  afterEach(() => {
    process.env = saved;
  });

  const GS_COMMIT = fakeCommit('gemma-scope');
  const SET_COMMIT = fakeCommit('set');
  const paths = [0, 1].map((l) => `layer_${l}/width_16k/average_l0_${10 + l}/params.npz`);

  /** A hub cache with the Gemma Scope repo (2 layers) and a set repo whose config.yaml lists hf:// URIs. */
  async function hub(revision: string | null): Promise<{ root: string; refs: Fixture[]; uris: string[] }> {
    const root = join(tempDir('hub-'), 'hub');
    const refs: Fixture[] = [];
    const files: Record<string, { copyOf: string }> = {};
    for (const [l, p] of paths.entries()) {
      const fx = await fixture(tempDir(), `l${l}`, 'gs1', 30 + l);
      refs.push(fx);
      files[p] = { copyOf: join(fx.dir, 'params.npz') };
    }
    writeHubSnapshot(root, 'google/gemma-scope-2b-pt-transcoders', GS_COMMIT, files, ['main']);
    const uris = paths.map((p) => `hf://google/gemma-scope-2b-pt-transcoders/${p}${revision ? `?revision=${revision}` : ''}`);
    const config = stringifyYaml({ model_name: 'google/gemma-2-2b', model_kind: 'transcoder_set', feature_input_hook: 'ln2.hook_normalized', feature_output_hook: 'hook_mlp_out', transcoders: uris });
    writeHubSnapshot(root, 'mntss/gemma-scope-transcoders', SET_COMMIT, { 'config.yaml': config, 'README.md': '# set' });
    return { root, refs, uris };
  }

  it('loads a set repo whose entries live in another repo of the cache (by branch and by commit)', async () => {
    for (const revision of [null, GS_COMMIT]) {
      const { root, refs } = await hub(revision);
      process.env.HF_HUB_CACHE = root;
      const set = await loadTranscoderSet('mntss/gemma-scope-transcoders');
      expect(set.map((t) => t.config.layer)).toEqual([0, 1]);
      for (const [l, tc] of set.entries()) {
        expect(tc.config).toMatchObject({ arch: 'jumprelu', hookIn: `blocks.${l}.ln2.hook_normalized`, hookOut: `blocks.${l}.hook_mlp_out`, modelName: 'google/gemma-2-2b', processing: 'none' });
        await expectMatches(tc, refs[l]!.ref, `layer ${l}`);
      }
    }
  });

  it('prefers files beside config.yaml, by repo path (file names alone are ambiguous here)', async () => {
    const { refs, uris } = await hub(null);
    process.env.HF_HUB_CACHE = join(tempDir(), 'empty-hub');
    const dir = tempDir('set-');
    writeFileSync(join(dir, 'config.yaml'), stringifyYaml({ model_kind: 'transcoder_set', feature_input_hook: 'ln2.hook_normalized', feature_output_hook: 'hook_mlp_out', transcoders: uris }));
    for (const [l, p] of paths.entries()) {
      mkdirSync(join(dir, p, '..'), { recursive: true });
      writeFileSync(join(dir, p), readFileSync(join(refs[l]!.dir, 'params.npz')));
    }
    const set = await loadTranscoderSet(dir);
    expect(set.map((t) => t.config.layer)).toEqual([0, 1]);
    await expectMatches(set[1]!, refs[1]!.ref, 'beside the config');
  });

  it('names every place it looked when an entry is found nowhere', async () => {
    const { uris } = await hub('v9');
    process.env.HF_HUB_CACHE = join(tempDir(), 'empty-hub');
    const dir = tempDir('set-');
    writeFileSync(join(dir, 'config.yaml'), stringifyYaml({ model_kind: 'transcoder_set', feature_input_hook: 'ln2.hook_normalized', feature_output_hook: 'hook_mlp_out', transcoders: uris }));
    const err = await loadTranscoderSet(dir).then(() => null, (e: unknown) => e as Error);
    expect(err).toBeInstanceOf(FormatError);
    expect(err!.message).toContain(uris[0]!);
    expect(err!.message).toContain(`${join(dir, paths[0]!)} (absent)`);
    expect(err!.message).not.toContain(`${join(dir, 'params.npz')} (absent)`);
    expect(err!.message).toContain(`the Hugging Face cache ${process.env.HF_HUB_CACHE} (chosen by HF_HUB_CACHE)`);
    expect(err!.message).toContain('hf download google/gemma-scope-2b-pt-transcoders --revision v9');
  });

  it('Gemma Scope 2 sets from a repo subfolder (org/name/subfolder)', async () => {
    const root = join(tempDir('hub-'), 'hub');
    const fx = await fixture(tempDir(), 'layer_0_width_16k_l0_small_affine', 'gs2', 40, ['--skip'], 0);
    const base = 'transcoder_all/layer_0_width_16k_l0_small_affine';
    writeHubSnapshot(root, 'google/gemma-scope-2-1b-pt', GS_COMMIT, {
      [`${base}/params.safetensors`]: { copyOf: join(fx.dir, 'params.safetensors') },
      [`${base}/config.json`]: { copyOf: join(fx.dir, 'config.json') },
    });
    const config = stringifyYaml({ model_name: 'google/gemma-3-1b-pt', model_kind: 'transcoder_set', feature_input_hook: 'mlp.hook_in', feature_output_hook: 'hook_mlp_out', transcoders: [`hf://google/gemma-scope-2-1b-pt/${base}/params.safetensors`] });
    writeHubSnapshot(root, 'mwhanna/gemma-scope-2-1b-pt', SET_COMMIT, { 'transcoder_all/width_16k_l0_small_affine/config.yaml': config });
    process.env.HF_HUB_CACHE = root;
    const [tc] = await loadTranscoderSet('mwhanna/gemma-scope-2-1b-pt/transcoder_all/width_16k_l0_small_affine');
    expect(tc!.config).toMatchObject({ layer: 0, skip: true, hookIn: 'blocks.0.mlp.hook_in', hookOut: 'blocks.0.hook_mlp_out', modelName: 'google/gemma-3-1b-pt' });
    await expectMatches(tc!, fx.ref, 'Gemma Scope 2 set');
  });
});

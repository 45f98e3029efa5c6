/**
 * Resolution of Hugging Face repo ids in the local hub cache (lib/io/hf-cache.ts), offline: fake cache
 * trees as huggingface_hub lays them out (snapshot entries symlinked into blobs/, refs/main, a tag, a
 * commit revision), the environment variables' precedence, the not-found messages, and loadModel and
 * the CLI reading a model through the cache.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FormatError, InvalidArgumentError } from '../lib/errors.js';
import {
  hubCacheLocation,
  parseHfUri,
  parseHubReference,
  repoIdOfCachePath,
  resolveHfUri,
  resolveModelSource,
  resolveTranscoderSource,
} from '../lib/io/hf-cache.js';
import { main } from '../lib/cli/main.js';
import { loadModel } from '../lib/models/model.js';
import { createRandomModel } from '../lib/models/random.js';
import { exportedModelName } from '../lib/transcoders/formats/common.js';
import { tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { fakeCommit, writeHubSnapshot } from './helpers/hub-cache.js';

const C1 = fakeCommit('one');
const C2 = fakeCommit('two');

function cacheWithRepo(): { root: string; env: NodeJS.ProcessEnv } {
  const root = join(tempDir('hf-cache-'), 'hub');
  writeHubSnapshot(root, 'org/name', C1, { 'config.json': '{"v": 1}', 'sub/layer_0.safetensors': 'x' }, ['main']);
  writeHubSnapshot(root, 'org/name', C2, { 'config.json': '{"v": 2}' }, ['v2.0', 'pr/7']);
  return { root, env: { HF_HUB_CACHE: root, HOME: tempDir('home-') } };
}

describe('repo ids', () => {
  it('parses org/name, bare names, paths inside the repo and revisions', () => {
    expect(parseHubReference('meta-llama/Llama-3.2-1B')).toEqual({ repoId: 'meta-llama/Llama-3.2-1B', path: '', revision: null });
    expect(parseHubReference('gpt2@main')).toEqual({ repoId: 'gpt2', path: '', revision: 'main' });
    expect(parseHubReference('mwhanna/gemma-scope-2-1b-pt/transcoder_all/width_16k_l0_small_affine@abc', { allowPath: true })).toEqual({
      repoId: 'mwhanna/gemma-scope-2-1b-pt',
      path: 'transcoder_all/width_16k_l0_small_affine',
      revision: 'abc',
    });
    expect(parseHfUri('hf://google/gemma-scope-2b-pt-transcoders/layer_3/width_16k/average_l0_54/params.npz?revision=abc')).toEqual({
      repoId: 'google/gemma-scope-2b-pt-transcoders',
      path: 'layer_3/width_16k/average_l0_54/params.npz',
      revision: 'abc',
    });
  });

  it("rejects '..', empty parts, odd characters and paths after a model id", () => {
    for (const [spec, why] of [
      ['org/../etc', "'..' is not allowed"],
      ['org//name', 'empty path component'],
      ['org/na me', "'na me' may only hold"],
      ['org/name;rm', "'name;rm' may only hold"],
      ['org/na--me', "contains '--'"],
      ['org/name@../../x', 'is not a branch, tag or commit name'],
      ['org/name/sub', 'without a path after it'],
    ] as const) {
      expect(() => parseHubReference(spec), spec).toThrow(InvalidArgumentError);
      expect(() => parseHubReference(spec), spec).toThrow(why);
    }
    expect(() => parseHubReference('org/name/a/../../b', { allowPath: true })).toThrow("'..' is not allowed");
    // As an argument: neither a local path nor an id, and the message says both.
    expect(() => resolveModelSource('org/../x', { env: {} })).toThrow(/org\/\.\.\/x: no such file or folder, and not a Hugging Face repo id \('\.\.' is not allowed\)/);
  });

  it('knows the repo of a snapshot path (for exported model names)', () => {
    const snap = `/c/hub/models--meta-llama--Llama-3.2-1B/snapshots/${C1}`;
    expect(repoIdOfCachePath(snap)).toBe('meta-llama/Llama-3.2-1B');
    expect(repoIdOfCachePath(`${snap}/sub/file.safetensors`)).toBe('meta-llama/Llama-3.2-1B');
    expect(repoIdOfCachePath('/c/hub/models--x/snapshots/notacommit')).toBeNull();
    expect(exportedModelName(snap)).toBe('meta-llama/Llama-3.2-1B');
  });
});

describe('the cache root', () => {
  it('follows huggingface_hub: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub', () => {
    const env = { HF_HUB_CACHE: '/a', HUGGINGFACE_HUB_CACHE: '/b', HF_HOME: '/c', XDG_CACHE_HOME: '/d', HOME: '/home/u' };
    expect(hubCacheLocation(env)).toEqual({ root: '/a', chosenBy: 'HF_HUB_CACHE' });
    expect(hubCacheLocation({ ...env, HF_HUB_CACHE: '' }).root).toBe('/b');
    expect(hubCacheLocation({ HF_HOME: '/c', XDG_CACHE_HOME: '/d', HOME: '/home/u' }).root).toBe('/c/hub');
    expect(hubCacheLocation({ XDG_CACHE_HOME: '/d', HOME: '/home/u' }).root).toBe('/d/huggingface/hub');
    expect(hubCacheLocation({ HOME: '/home/u' }).root).toBe('/home/u/.cache/huggingface/hub');
    expect(hubCacheLocation({ HF_HOME: '~/hf', HOME: '/home/u' }).root).toBe('/home/u/hf/hub');
  });

  it('reads a repo from each of them', () => {
    const home = tempDir('home-');
    const hfHome = tempDir('hf-home-');
    writeHubSnapshot(join(home, '.cache', 'huggingface', 'hub'), 'org/default', C1, { 'config.json': 'd' });
    writeHubSnapshot(join(hfHome, 'hub'), 'org/fromhome', C1, { 'config.json': 'h' });
    expect(readFileSync(join(resolveModelSource('org/default', { env: { HOME: home } }), 'config.json'), 'utf8')).toBe('d');
    expect(readFileSync(join(resolveModelSource('org/fromhome', { env: { HOME: home, HF_HOME: hfHome } }), 'config.json'), 'utf8')).toBe('h');
    // HF_HOME wins over the default, so the default's repo is not found, and the message points to it.
    expect(() => resolveModelSource('org/default', { env: { HOME: home, HF_HOME: hfHome } })).toThrow(
      new RegExp(`exists: set HF_HUB_CACHE=${join(home, '.cache', 'huggingface', 'hub')} to use it`),
    );
  });
});

describe('snapshots and revisions', () => {
  it('follows refs/main to the snapshot, whose files are symlinks into blobs/', () => {
    const { root, env } = cacheWithRepo();
    const dir = resolveModelSource('org/name', { env });
    expect(dir).toBe(join(root, 'models--org--name', 'snapshots', C1));
    expect(readFileSync(join(dir, 'config.json'), 'utf8')).toBe('{"v": 1}');
    expect(realpathSync(join(dir, 'config.json'))).toContain(`${join('models--org--name', 'blobs')}`);
  });

  it('takes a tag, a nested ref, a commit hash, and paths inside the repo', () => {
    const { root, env } = cacheWithRepo();
    expect(resolveModelSource('org/name@v2.0', { env })).toBe(join(root, 'models--org--name', 'snapshots', C2));
    expect(resolveModelSource('org/name@pr/7', { env })).toBe(join(root, 'models--org--name', 'snapshots', C2));
    expect(resolveModelSource(`org/name@${C2}`, { env })).toBe(join(root, 'models--org--name', 'snapshots', C2));
    expect(resolveTranscoderSource('org/name/sub', { env })).toBe(join(root, 'models--org--name', 'snapshots', C1, 'sub'));
    expect(resolveTranscoderSource('org/name/sub/layer_0.safetensors@main', { env })).toBe(join(root, 'models--org--name', 'snapshots', C1, 'sub', 'layer_0.safetensors'));
  });

  it('prefers an existing local path', () => {
    const { env } = cacheWithRepo();
    const cwd = tempDir('cwd-');
    mkdirSync(join(cwd, 'org', 'name'), { recursive: true });
    const before = process.cwd();
    try {
      process.chdir(cwd);
      expect(resolveModelSource('org/name', { env })).toBe(join(realpathSync(cwd), 'org', 'name'));
    } finally {
      process.chdir(before);
    }
  });
});

describe('not found: every place looked at, the missing piece, how to fix it', () => {
  it('no cache folder at all', () => {
    const env = { HF_HUB_CACHE: join(tempDir(), 'none'), HOME: tempDir() };
    const err = catchError(() => resolveModelSource('meta-llama/Llama-3.2-1B', { env }));
    expect(err).toBeInstanceOf(FormatError);
    expect(err.message).toContain(`the Hugging Face cache folder ${env.HF_HUB_CACHE} does not exist`);
    expect(err.message).toContain(`the local path ${join(process.cwd(), 'meta-llama', 'Llama-3.2-1B')} (does not exist)`);
    expect(err.message).toContain('(chosen by HF_HUB_CACHE)');
    expect(err.message).toContain('`hf download meta-llama/Llama-3.2-1B`');
    expect(err.message).toContain('`huggingface-cli download meta-llama/Llama-3.2-1B`');
    expect(err.message).toContain('copy its cache folder models--meta-llama--Llama-3.2-1B into');
  });

  it('no repo folder', () => {
    const { env } = cacheWithRepo();
    expect(() => resolveModelSource('org/other', { env })).toThrow(/no folder models--org--other in the Hugging Face cache/);
  });

  it('no refs/<revision>: lists the snapshots and refs present', () => {
    const { env } = cacheWithRepo();
    const err = catchError(() => resolveModelSource('org/name@dev', { env }));
    expect(err.message).toMatch(/has no refs\/dev/);
    expect(err.message).toContain(`snapshots present: ${[C1, C2].sort().join(', ')}`);
    expect(err.message).toContain('refs present: main, pr/7, v2.0');
    expect(err.message).toContain('--revision dev');
  });

  it('no refs/main', () => {
    const { root, env } = cacheWithRepo();
    rmSync(join(root, 'models--org--name', 'refs', 'main'));
    expect(() => resolveModelSource('org/name', { env })).toThrow(/has no refs\/main/);
  });

  it('a ref whose snapshot is missing, and a commit that was never downloaded', () => {
    const { root, env } = cacheWithRepo();
    rmSync(join(root, 'models--org--name', 'snapshots', C2), { recursive: true });
    expect(() => resolveModelSource('org/name@v2.0', { env })).toThrow(new RegExp(`has no snapshots/${C2} \\(refs/v2.0 -> ${C2}`));
    expect(() => resolveModelSource(`org/name@${fakeCommit('three')}`, { env })).toThrow(/has no snapshots\/.*\(commit /);
  });

  it('a corrupt ref is refused before it becomes a path', () => {
    const { root, env } = cacheWithRepo();
    writeFileSync(join(root, 'models--org--name', 'refs', 'main'), '../../../etc');
    expect(() => resolveModelSource('org/name', { env })).toThrow(/refs\/main: expected a 40-character commit hash/);
  });

  it('a path missing in the snapshot, and a symlink to a missing blob', () => {
    const { root, env } = cacheWithRepo();
    expect(() => resolveTranscoderSource('org/name/nothing', { env })).toThrow(/the snapshot .* has no nothing \(it holds config.json, sub\)/);
    const blobs = join(root, 'models--org--name', 'blobs');
    for (const b of readdirSync(blobs)) rmSync(join(blobs, b));
    expect(() => resolveTranscoderSource('org/name/config.json', { env })).toThrow(/config.json is a symlink to a missing blob \(an interrupted download\?\)/);
  });

  it('hf:// URIs: beside the config first (same path, then same name), then the cache, else an error naming all', () => {
    const { root, env } = cacheWithRepo();
    const setDir = tempDir('set-');
    const uri = 'hf://org/name/sub/layer_0.safetensors';
    expect(resolveHfUri(uri, setDir, { env })).toBe(join(root, 'models--org--name', 'snapshots', C1, 'sub', 'layer_0.safetensors'));
    writeFileSync(join(setDir, 'layer_0.safetensors'), 'beside');
    expect(resolveHfUri(uri, setDir, { env })).toBe(join(setDir, 'layer_0.safetensors'));
    // Not by name alone when several entries share it (Gemma Scope's params.npz).
    expect(resolveHfUri(uri, setDir, { env, uniqueName: false })).toBe(join(root, 'models--org--name', 'snapshots', C1, 'sub', 'layer_0.safetensors'));
    mkdirSync(join(setDir, 'sub'));
    writeFileSync(join(setDir, 'sub', 'layer_0.safetensors'), 'same path');
    expect(resolveHfUri(uri, setDir, { env })).toBe(join(setDir, 'sub', 'layer_0.safetensors'));
    const err = catchError(() => resolveHfUri('hf://org/name/sub/layer_9.safetensors?revision=v2.0', setDir, { env }));
    expect(err).toBeInstanceOf(FormatError);
    expect(err.message).toContain(`${join(setDir, 'sub', 'layer_9.safetensors')} (absent)`);
    expect(err.message).toContain(`${join(setDir, 'layer_9.safetensors')} (absent)`);
    expect(err.message).toContain('has no sub/layer_9.safetensors');
    expect(err.message).toContain("--revision v2.0 --include 'sub/layer_9.safetensors'");
  });
});

describe('models through the cache', () => {
  let saved: NodeJS.ProcessEnv;
  beforeEach(() => {
    saved = { ...process.env };
  });
  afterEach(() => {
    process.env = saved;
  });

  /** A random GPT-2 in a fake cache as org/tiny-gpt2; HF_HUB_CACHE points there. */
  function cachedModel(): { root: string; source: string } {
    const source = createRandomModel(join(tempDir(), 'src'), TINY_GPT2);
    const root = join(tempDir('hf-cache-'), 'hub');
    const files = Object.fromEntries(readdirSync(source).map((f) => [f, { copyOf: join(source, f) }]));
    writeHubSnapshot(root, 'org/tiny-gpt2', C1, files);
    process.env.HF_HUB_CACHE = root;
    return { root, source };
  }

  it("loadModel('org/name') reads the snapshot and computes what the original folder does", async () => {
    const { root, source } = cachedModel();
    const viaCache = await loadModel('org/tiny-gpt2');
    const direct = await loadModel(source);
    expect(viaCache.dir).toBe(join(root, 'models--org--tiny-gpt2', 'snapshots', C1));
    expect(viaCache.tokenizer).not.toBeNull();
    const tokens = [[1, 5, 9, 2, 7]];
    const a = (await viaCache.run(tokens)).logits!.toFloat32Array();
    const b = (await direct.run(tokens)).logits!.toFloat32Array();
    expect(a).toEqual(b);
    viaCache.dispose();
    direct.dispose();
    await expect(loadModel('org/missing')).rejects.toThrow(/no folder models--org--missing in the Hugging Face cache/);
  });

  it('the CLI takes a repo id as <model-dir>, and reports a miss in one line', async () => {
    const { root } = cachedModel();
    const out: string[] = [];
    const err: string[] = [];
    const log = vi.spyOn(console, 'log').mockImplementation((s: unknown) => void out.push(String(s)));
    const error = vi.spyOn(console, 'error').mockImplementation((s: unknown) => void err.push(String(s)));
    try {
      expect(await main(['info', 'org/tiny-gpt2', '--json'])).toBe(0);
      expect(JSON.parse(out.join('\n')).dir).toBe(join(root, 'models--org--tiny-gpt2', 'snapshots', C1));
      expect(await main(['info', 'org/absent'])).toBe(1);
      expect(err.join('\n')).toMatch(/^transcoders info: org\/absent: no folder models--org--absent in the Hugging Face cache/);
      expect(err.join('\n')).not.toContain('\n');
      // A path written as one keeps the plain message.
      expect(await main(['info', './no/such/model'])).toBe(2);
      expect(err.at(-1)).toBe('transcoders info: <model-dir> ./no/such/model: no such file or folder');
    } finally {
      log.mockRestore();
      error.mockRestore();
    }
    expect(existsSync(root)).toBe(true);
  });
});

function catchError(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected an error');
}

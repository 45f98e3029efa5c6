/**
 * The local Hugging Face hub cache, read offline: a model or transcoder-set argument that is a repo id
 * (`meta-llama/Llama-3.2-1B`, `mntss/gemma-scope-transcoders@main`, `org/name/subfolder`) and not an
 * existing local path resolves to the files `huggingface_hub` downloaded there. Nothing is ever
 * downloaded; when the files are not there, the error says every place that was looked at, which piece
 * is missing, and how to put the files there.
 *
 * The cache layout (huggingface_hub's `file_download.py`):
 *
 *   <root>/models--<org>--<name>/refs/<branch or tag>      the commit hash the name points to
 *   <root>/models--<org>--<name>/snapshots/<commit>/...    the files, usually symlinks into ../../blobs/
 *   <root>/models--<org>--<name>/blobs/<sha>               the contents
 *
 * and the root is `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE` (its old name), else `$HF_HOME/hub`,
 * else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, as huggingface_hub's
 * `constants.py` decides. Only model repos are read (`models--`), never datasets or spaces.
 */
import { existsSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve, sep } from 'node:path';
import { FormatError, InvalidArgumentError } from '../errors.js';

/** Where the hub cache is, and which setting chose it (for messages). */
export interface HubCacheLocation {
  root: string;
  /** e.g. `HF_HUB_CACHE`, `HF_HOME (+ /hub)`, `the default (~/.cache/huggingface/hub)`. */
  chosenBy: string;
}

/** A repo id with an optional path inside the repo and an optional revision. */
export interface HubReference {
  /** `org/name` (or a bare `name`, as legacy ids such as `gpt2` are). */
  repoId: string;
  /** Path inside the repo (`''` for the repo itself), `/`-separated. */
  path: string;
  /** A branch, tag or full commit hash; null for the default branch `main`. */
  revision: string | null;
}

/** What a resolved snapshot is. */
export interface HubSnapshot {
  /** `<root>/models--org--name/snapshots/<commit>`. */
  dir: string;
  commit: string;
  cache: HubCacheLocation;
}

/** Options of the resolvers; `env` replaces process.env (tests). */
export interface HubCacheOptions {
  env?: NodeJS.ProcessEnv;
}

const COMMIT = /^[0-9a-f]{40}$/;
/** One component of a repo id or of a path inside a repo (huggingface_hub's REPO_ID_REGEX, per part). */
const NAME_PART = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const PATH_PART = /^[A-Za-z0-9_][A-Za-z0-9._=+-]*$/;
/** huggingface_hub refuses longer repo names. */
const MAX_NAME = 96;

/** The home folder as `env` says (HOME), else the system's. */
function homeOf(env: NodeJS.ProcessEnv): string {
  return env.HOME || homedir();
}

function expandHome(p: string, env: NodeJS.ProcessEnv): string {
  return p === '~' || p.startsWith('~/') ? join(homeOf(env), p.slice(1)) : p;
}

/** The hub cache root this process would use, following huggingface_hub's precedence. */
export function hubCacheLocation(env: NodeJS.ProcessEnv = process.env): HubCacheLocation {
  const set = (name: string) => (env[name] !== undefined && env[name] !== '' ? env[name]! : undefined);
  const hubCache = set('HF_HUB_CACHE');
  if (hubCache) return { root: resolve(expandHome(hubCache, env)), chosenBy: 'HF_HUB_CACHE' };
  const legacy = set('HUGGINGFACE_HUB_CACHE');
  if (legacy) return { root: resolve(expandHome(legacy, env)), chosenBy: 'HUGGINGFACE_HUB_CACHE' };
  const home = set('HF_HOME');
  if (home) return { root: resolve(expandHome(home, env), 'hub'), chosenBy: 'HF_HOME (its hub/ folder)' };
  const xdg = set('XDG_CACHE_HOME');
  if (xdg) return { root: resolve(expandHome(xdg, env), 'huggingface', 'hub'), chosenBy: 'XDG_CACHE_HOME (its huggingface/hub/ folder)' };
  return { root: join(homeOf(env), '.cache', 'huggingface', 'hub'), chosenBy: 'the default, as HF_HUB_CACHE and HF_HOME are not set' };
}

/** Whether `spec` is written as a path (absolute, `./`, `../`, `~`, a backslash, a trailing slash), so never a repo id. */
export function isWrittenAsPath(spec: string): boolean {
  return isAbsolute(spec) || spec.startsWith('.') || spec.startsWith('~') || spec.includes('\\') || spec.endsWith('/');
}

function checkRevision(revision: string, spec: string): void {
  const parts = revision.split('/');
  if (revision === '' || !parts.every((p) => /^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(p) && !p.includes('..'))) {
    throw new InvalidArgumentError(`${spec}: the revision '${revision}' is not a branch, tag or commit name (letters, digits, '.', '_', '-', '/' between parts; no '..')`);
  }
}

/**
 * Parses `org/name`, `name`, `org/name@revision` and, with `allowPath`, `org/name/path/inside@revision`.
 * Invalid ids (`..`, empty parts, characters Hugging Face does not allow) are InvalidArgumentErrors that say why.
 */
export function parseHubReference(spec: string, { allowPath = false }: { allowPath?: boolean } = {}): HubReference {
  const bad = (why: string): never => {
    throw new InvalidArgumentError(`${spec}: not a Hugging Face repo id (${why}); expected org/name${allowPath ? '[/path]' : ''}[@revision]`);
  };
  if (typeof spec !== 'string' || spec === '') bad('empty');
  if (spec.length > 1000) bad('too long');
  const at = spec.indexOf('@');
  const idPart = at >= 0 ? spec.slice(0, at) : spec;
  const revision = at >= 0 ? spec.slice(at + 1) : null;
  if (revision !== null) checkRevision(revision, spec);
  if (idPart.includes('..')) bad("'..' is not allowed");
  const parts = idPart.split('/');
  if (parts.some((p) => p === '')) bad('empty path component');
  const repoParts = parts.length === 1 ? parts : parts.slice(0, 2);
  const rest = parts.length > 2 ? parts.slice(2) : [];
  if (rest.length > 0 && !allowPath) bad('a model is named org/name, without a path after it');
  for (const p of repoParts) {
    if (!NAME_PART.test(p)) bad(`'${p}' may only hold letters, digits, '.', '_' and '-', and must start with a letter or digit`);
    if (p.length > MAX_NAME) bad(`'${p.slice(0, 20)}…' is longer than ${MAX_NAME} characters`);
    if (p.includes('--')) bad(`'${p}' contains '--'`);
    if (p.endsWith('.git')) bad(`'${p}' ends with '.git'`);
  }
  for (const p of rest) if (!PATH_PART.test(p)) bad(`the path component '${p}' may only hold letters, digits, '.', '_', '-', '=', '+'`);
  return { repoId: repoParts.join('/'), path: rest.join('/'), revision };
}

/**
 * Parses circuit-tracer's `hf://org/repo/path/in/repo?revision=REV` (huggingface_hub's own URI form,
 * as circuit-tracer's `parse_hf_uri` reads it: the repo is the first two components, the rest a path).
 */
export function parseHfUri(uri: string): HubReference {
  if (!uri.startsWith('hf://')) throw new InvalidArgumentError(`${uri}: not an hf:// URI`);
  const [body, query = ''] = uri.slice('hf://'.length).split('?', 2) as [string, string?];
  let revision: string | null = null;
  for (const pair of query.split('&').filter(Boolean)) {
    const [key, value = ''] = pair.split('=', 2) as [string, string?];
    if (key === 'revision') revision = decodeURIComponent(value) || null;
  }
  const parts = body.split('/');
  if (parts.length < 3) throw new InvalidArgumentError(`${uri}: an hf:// URI names a file: hf://org/repo/path/to/file`);
  return parseHubReference(`${body}${revision ? `@${revision}` : ''}`, { allowPath: true });
}

/** The cache folder name of a model repo: `models--org--name`. */
export function repoFolderName(repoId: string): string {
  return `models--${repoId.split('/').join('--')}`;
}

/** `org/name` of a path inside a snapshot folder of the hub cache (`…/models--org--name/snapshots/<commit>/…`), or null. */
export function repoIdOfCachePath(path: string): string | null {
  const parts = resolve(path).split(sep);
  for (let i = parts.length - 3; i >= 0; i--) {
    const m = /^models--(.+)$/.exec(parts[i]!);
    if (m && parts[i + 1] === 'snapshots' && COMMIT.test(parts[i + 2] ?? '')) return m[1]!.split('--').join('/');
  }
  return null;
}

function listOrNone(dir: string, filter: (name: string) => boolean = () => true): string[] {
  try {
    return readdirSync(dir).filter(filter).sort();
  } catch {
    return [];
  }
}

/** Every ref name under `refs/` (nested ones such as `pr/1` included). */
function refNames(refsDir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const name of listOrNone(join(refsDir, prefix))) {
    const rel = prefix ? `${prefix}/${name}` : name;
    let isDir = false;
    try {
      isDir = statSync(join(refsDir, rel)).isDirectory();
    } catch {
      continue;
    }
    if (isDir) out.push(...refNames(refsDir, rel));
    else out.push(rel);
  }
  return out;
}

function downloadHint(ref: HubReference, cache: HubCacheLocation): string {
  const rev = ref.revision ? ` --revision ${ref.revision}` : '';
  const include = ref.path ? ` --include '${ref.path}${/\.[A-Za-z0-9]+$/.test(ref.path) ? '' : '/*'}'` : '';
  return (
    `nothing is downloaded: on a machine with network run \`hf download ${ref.repoId}${rev}${include}\` (or \`huggingface-cli download ${ref.repoId}${rev}${include}\`), ` +
    `then copy its cache folder ${repoFolderName(ref.repoId)} into ${cache.root} here (or set HF_HUB_CACHE to a cache that holds it), ` +
    `or download with --local-dir DIR, copy DIR here and pass DIR instead of ${ref.repoId}`
  );
}

/** A FormatError for a cache miss: what is missing, where else was looked, how to fix it. */
function miss(spec: string, ref: HubReference, cache: HubCacheLocation, missing: string, file: string, env: NodeJS.ProcessEnv, looked: string[] = []): FormatError {
  const lookedAt = [...looked, `the Hugging Face cache ${cache.root} (chosen by ${cache.chosenBy})`];
  // A cache elsewhere that has the repo: the likeliest fix is an environment variable.
  const others = otherCacheRoots(env).filter((r) => r !== cache.root && existsSync(join(r, repoFolderName(ref.repoId))));
  const elsewhere = others.length > 0 ? `; ${others.map((r) => join(r, repoFolderName(ref.repoId))).join(', ')} exists: set HF_HUB_CACHE=${others[0]} to use it` : '';
  return new FormatError(`${spec}: ${missing}; looked at ${lookedAt.join(', ')}${elsewhere}; ${downloadHint(ref, cache)}`, file);
}

/** The other conventional cache roots (to suggest one that has the repo). */
function otherCacheRoots(env: NodeJS.ProcessEnv): string[] {
  const roots = new Set<string>();
  for (const name of ['HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE']) if (env[name]) roots.add(resolve(expandHome(env[name]!, env)));
  if (env.HF_HOME) roots.add(resolve(expandHome(env.HF_HOME, env), 'hub'));
  if (env.XDG_CACHE_HOME) roots.add(resolve(expandHome(env.XDG_CACHE_HOME, env), 'huggingface', 'hub'));
  roots.add(join(homeOf(env), '.cache', 'huggingface', 'hub'));
  return [...roots];
}

/**
 * The snapshot folder of `repoId` at `revision` (a full commit hash used directly, or a branch/tag name
 * looked up in `refs/`; default `main`). `spec` names the argument in errors.
 */
export function resolveHubSnapshot(ref: HubReference, options: HubCacheOptions & { spec?: string; looked?: string[] } = {}): HubSnapshot {
  const env = options.env ?? process.env;
  const spec = options.spec ?? ref.repoId;
  const cache = hubCacheLocation(env);
  const repoDir = join(cache.root, repoFolderName(ref.repoId));
  const looked = options.looked ?? [];
  if (!existsSync(cache.root)) throw miss(spec, ref, cache, `the Hugging Face cache folder ${cache.root} does not exist`, cache.root, env, looked);
  if (!existsSync(repoDir)) throw miss(spec, ref, cache, `no folder ${repoFolderName(ref.repoId)} in the Hugging Face cache (the repo was never downloaded here)`, repoDir, env, looked);
  const revision = ref.revision ?? 'main';
  const snapshots = listOrNone(join(repoDir, 'snapshots'), (n) => COMMIT.test(n));
  const present = `snapshots present: ${snapshots.length > 0 ? snapshots.join(', ') : 'none'}; refs present: ${refNames(join(repoDir, 'refs')).join(', ') || 'none'}`;
  let commit: string;
  if (COMMIT.test(revision)) {
    commit = revision;
  } else {
    const refFile = join(repoDir, 'refs', ...revision.split('/'));
    let text: string;
    try {
      text = readFileSync(refFile, 'utf8').trim();
    } catch {
      throw miss(spec, ref, cache, `${repoDir} has no refs/${revision} (the revision '${revision}' was never downloaded; ${present}; pass ${ref.repoId}@<commit> for one of those snapshots)`, refFile, env, looked);
    }
    // The ref's content becomes a path: only a commit hash may pass.
    if (!COMMIT.test(text)) throw new FormatError(`${refFile}: expected a 40-character commit hash, got ${JSON.stringify(text.slice(0, 60))} (corrupt cache?)`, refFile);
    commit = text;
  }
  const dir = join(repoDir, 'snapshots', commit);
  if (!existsSync(dir)) {
    const via = commit === revision ? `commit ${commit}` : `refs/${revision} -> ${commit}`;
    throw miss(spec, ref, cache, `${repoDir} has no snapshots/${commit} (${via}; ${present})`, dir, env, looked);
  }
  return { dir, commit, cache };
}

/**
 * The local path of `ref` (its snapshot folder, or the file or folder `ref.path` inside it). A snapshot
 * entry that is a symlink to a missing blob (an interrupted download) is a FormatError saying so.
 */
export function resolveHubPath(ref: HubReference, options: HubCacheOptions & { spec?: string; looked?: string[] } = {}): string {
  const snapshot = resolveHubSnapshot(ref, options);
  if (ref.path === '') return snapshot.dir;
  const target = join(snapshot.dir, ...ref.path.split('/'));
  if (existsSync(target)) return target;
  const env = options.env ?? process.env;
  const spec = options.spec ?? `${ref.repoId}/${ref.path}`;
  let dangling = false;
  try {
    dangling = lstatSync(target).isSymbolicLink();
  } catch {
    // absent
  }
  const why = dangling
    ? `${target} is a symlink to a missing blob (an interrupted download?)`
    : `the snapshot ${snapshot.dir} has no ${ref.path} (it holds ${listOrNone(snapshot.dir).slice(0, 12).join(', ') || 'nothing'})`;
  throw miss(spec, ref, snapshot.cache, why, target, env, options.looked);
}

/**
 * A model argument: an existing local path as it is (resolved), else a repo id (`org/name[@revision]`)
 * resolved to its snapshot folder in the hub cache. A path written as one (absolute, `./`, ...) that does
 * not exist is returned resolved, for the caller's own "does not exist" message.
 */
export function resolveModelSource(spec: string, options: HubCacheOptions = {}): string {
  return resolveSource(spec, false, options);
}

/**
 * A transcoder argument: an existing local file or folder as it is, else `org/name[/path][@revision]`
 * resolved in the hub cache (the snapshot folder, or the subfolder or file `path` inside it).
 */
export function resolveTranscoderSource(spec: string, options: HubCacheOptions = {}): string {
  return resolveSource(spec, true, options);
}

function resolveSource(spec: string, allowPath: boolean, options: HubCacheOptions): string {
  if (typeof spec !== 'string') throw new InvalidArgumentError(`expected a path or a Hugging Face repo id, got ${spec === null ? 'null' : typeof spec}`);
  const local = resolve(spec);
  if (existsSync(spec) || isWrittenAsPath(spec)) return local;
  let ref: HubReference;
  try {
    ref = parseHubReference(spec, { allowPath });
  } catch (err) {
    throw new InvalidArgumentError(`${spec}: no such file or folder, and ${(err as Error).message.slice(spec.length + 2)}`);
  }
  return resolveHubPath(ref, { ...options, spec, looked: [`the local path ${local} (does not exist)`] });
}

/**
 * The local file an `hf://org/repo/path?revision=REV` URI of a circuit-tracer config names: first the
 * same path, then the same file name, inside `besideDir` (a downloaded set keeps its files beside its
 * config.yaml), then the hub cache snapshot of that repo and revision. `uniqueName` says whether the
 * file name alone identifies the file (false when several entries share it, as Gemma Scope's
 * `params.npz` do). Never the network.
 */
export function resolveHfUri(uri: string, besideDir: string, options: HubCacheOptions & { uniqueName?: boolean } = {}): string {
  const ref = parseHfUri(uri);
  const parts = ref.path.split('/');
  const candidates = [join(besideDir, ...parts), ...(options.uniqueName !== false && parts.length > 1 ? [join(besideDir, parts[parts.length - 1]!)] : [])];
  const found = candidates.find((c) => existsSync(c) && statSync(c).isFile());
  if (found) return found;
  return resolveHubPath(ref, { ...options, spec: uri, looked: candidates.map((c) => `${c} (absent)`) });
}
